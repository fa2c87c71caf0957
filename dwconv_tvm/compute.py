"""The tensor-expression definition of depthwise convolution, for both layouts.

TE stages, whose block names the schedules rely on:

- `pad` (only when padding reaches the input): the zero-padded view of the input as an
  `if_then_else`. Schedules inline it into the reduction or materialize a small tile of it
  (registers, L1, GPU shared memory), so no padded copy of the whole input ever exists.
- `depthwise`: the reduction over the kernel taps, accumulated in float32 (float64 for float64
  inputs).
- `output`: the epilogue, `activation(depthwise + bias)` cast to the spec's dtype.

`winograd_tensors` computes stride-1 3x3 NHWC float32 specs another way (Winograd F(2, 3)
along the rows, stages `pad`, `U`, `M`, `output`): fewer multiply-adds for more additions, which
pays on CPUs that issue additions on pipes of their own. Tuning measures both algorithms
(`algorithms`); each has its own workload in the tuning logs.

Memory traffic per call (what a schedule should reach): every input element is read at least
once, every output element written once, plus the kernel and bias:
`spec.compulsory_bytes`. At fp32 3x3 that is 18 FLOP for >= 8 bytes: memory-bound on GPUs and
on CPUs with two vector FMA pipes, but compute-bound for stride-1 layers on CPUs that retire one
512-bit FMA per cycle per core (AMD Zen 4; see the README's Performance section).
"""

from __future__ import annotations

import functools

from . import activations
from .spec import DepthwiseSpec

_INT32_MAX = 2**31 - 1
PARAM_NAMES = ("X", "K", "B", "out")


def accumulator_dtype(dtype: str) -> str:
    """float16 accumulates in float32; float32 and float64 accumulate in their own type."""
    return "float64" if dtype == "float64" else "float32"


def index_dtype(spec: DepthwiseSpec) -> str:
    """int64 loop and index arithmetic once any buffer exceeds 2^31 - 1 elements."""
    return "int64" if spec.max_elements > _INT32_MAX else "int32"


def kernel_arguments(spec: DepthwiseSpec) -> list[dict]:
    """The compiled kernel's calling convention, as exported in sidecars: its arguments in
    order (`x`, `kernel`, `bias` when the spec has one, then `out`, written by the kernel), each
    a dense C-order tensor of the given shape, dtype and layout."""
    layout = spec.layout
    arguments = [
        {"name": "x", "shape": list(spec.input_shape), "layout": layout},
        {"name": "kernel", "shape": list(spec.kernel_shape), "layout": "HWCM"},
    ]
    if spec.bias:
        arguments.append({"name": "bias", "shape": list(spec.bias_shape), "layout": "C"})
    arguments.append({"name": "out", "shape": list(spec.output_shape), "layout": layout, "output": True})
    for argument in arguments:
        argument["dtype"] = spec.dtype
    return arguments


def _pad_stage(x, spec: DepthwiseSpec, padded_hw: tuple[int, int], needs: tuple[bool, bool, bool, bool]):
    """The zero-padded view of the input as its own TE stage, `padded_hw` (rows, columns) in
    the spatial axes, with a bounds check on the borders `needs` names (top, bottom, left,
    right). Schedules inline it (NHWC: the bounds check is uniform across a channel vector) or
    materialize only a small tile of it (NCHW), so no padded copy of the whole input ever
    exists."""
    from tvm import te, tirx

    top, left = spec.padding[0], spec.padding[1]
    h, w = spec.height, spec.width
    need_top, need_bottom, need_left, need_right = needs
    nhwc = spec.layout == "NHWC"
    pad_shape = (spec.batch, *padded_hw, spec.channels) if nhwc else (spec.batch, spec.channels, *padded_hw)

    def padded(*idx):
        if nhwc:
            n, py, px, c = idx
        else:
            n, c, py, px = idx
        iy, ix = py - top, px - left
        conds = []
        if need_top:
            conds.append(iy >= 0)
        if need_bottom:
            conds.append(iy < h)
        if need_left:
            conds.append(ix >= 0)
        if need_right:
            conds.append(ix < w)
        value = x[n, iy, ix, c] if nhwc else x[n, c, iy, ix]
        # `likely` marks each bound for TVM's LoopPartition: a schedule that hints a loop gets
        # it split into border and interior parts, and the interior runs without checks.
        likely = [tirx.likely(bound) for bound in conds]
        return tirx.if_then_else(tirx.all(*likely), value, tirx.const(0.0, spec.dtype))

    return te.compute(pad_shape, padded, name="pad")


def _epilogue(spec: DepthwiseSpec, b, value, o):
    """`activation(value + bias[o])` in the accumulator type, cast to the spec's dtype."""
    from tvm import tirx

    acc = accumulator_dtype(spec.dtype)
    if b is not None:
        bias = b[o].astype(acc) if spec.dtype != acc else b[o]
        value = value + bias
    if spec.activation is not None:
        value = activations.fuse(spec.activation, value, tirx)
    return value.astype(spec.dtype) if spec.dtype != acc else value


def depthwise_tensors(spec: DepthwiseSpec) -> list:
    """TE placeholders and stages of `spec`, in kernel argument order.

    Args:
        spec: The workload.

    Returns:
        `[X, K, B, out]` without bias, `[X, K, out]` without: the kernel's arguments.
    """
    from tvm import te, tirx

    kh, kw = spec.kernel
    sh, sw = spec.strides
    dh, dw = spec.dilation
    top, left, _, _ = spec.padding
    dm = spec.depth_multiplier
    acc = accumulator_dtype(spec.dtype)
    nhwc = spec.layout == "NHWC"
    h, w = spec.height, spec.width

    x = te.placeholder(spec.input_shape, spec.dtype, name="X")
    k = te.placeholder(spec.kernel_shape, spec.dtype, name="K")
    b = te.placeholder(spec.bias_shape, spec.dtype, name="B") if spec.bias else None
    ry = te.reduce_axis((0, kh), name="ry")
    rx = te.reduce_axis((0, kw), name="rx")

    # Only the borders that padding can reach get a bounds check.
    need_top, need_left = top > 0, left > 0
    need_bottom = (spec.out_height - 1) * sh - top + (kh - 1) * dh >= h
    need_right = (spec.out_width - 1) * sw - left + (kw - 1) * dw >= w

    def channel(o):
        return (o, 0) if dm == 1 else (o // dm, o % dm)

    if need_top or need_bottom or need_left or need_right:
        padded_hw = (h + top + spec.padding[2], w + left + spec.padding[3])
        source = _pad_stage(x, spec, padded_hw, (need_top, need_bottom, need_left, need_right))
        offset_y, offset_x = top, left
    else:
        source = x
        offset_y, offset_x = 0, 0

    def read_input(n, c, iy, ix):
        py, px = iy + offset_y, ix + offset_x
        value = source[n, py, px, c] if nhwc else source[n, c, py, px]
        return value.astype(acc) if spec.dtype != acc else value

    def tap(n, y, xx, o):
        c, m = channel(o)
        iy = y * sh - top + ry * dh  # in input coordinates; read_input shifts into `source`
        ix = xx * sw - left + rx * dw
        weight = k[ry, rx, c, m]
        weight = weight.astype(acc) if spec.dtype != acc else weight
        return te.sum(read_input(n, c, iy, ix) * weight, axis=[ry, rx])

    if nhwc:
        conv = te.compute(spec.output_shape, lambda n, y, xx, o: tap(n, y, xx, o), name="depthwise")
    else:
        conv = te.compute(spec.output_shape, lambda n, o, y, xx: tap(n, y, xx, o), name="depthwise")

    def epilogue(*idx):
        o = idx[3] if nhwc else idx[1]
        return _epilogue(spec, b, conv(*idx), o)

    out = te.compute(spec.output_shape, epilogue, name="output")
    return [t for t in (x, k, b, out) if t is not None]


# Algorithms a CPU kernel can compute a spec with (`depthwise_module`'s `algorithm`).
ALGORITHMS = ("direct", "winograd")


def algorithms(spec: DepthwiseSpec, target) -> tuple[str, ...]:
    """The algorithms a kernel of `spec` for `target` (a resolved `tvm.target.Target`) can be
    tuned over, the default (`"direct"`) first: Winograd on CPUs where it applies."""
    return ALGORITHMS if target.kind.name == "llvm" and winograd_applies(spec) else ALGORITHMS[:1]


def winograd_applies(spec: DepthwiseSpec) -> bool:
    """Whether `winograd_tensors` computes `spec`: NHWC float32, 3x3 kernel, stride 1,
    dilation 1, depth multiplier 1 and at least 2 output columns."""
    return (spec.layout == "NHWC" and spec.dtype == "float32" and spec.kernel == (3, 3)
            and spec.strides == (1, 1) and spec.dilation == (1, 1) and spec.depth_multiplier == 1
            and spec.out_width >= 2)


def winograd_tensors(spec: DepthwiseSpec) -> list:
    """TE stages of `spec` as Winograd F(2, 3) along the rows (1D, per pair of output columns).

    Each pair of outputs of a kernel row takes 4 multiplies of transformed inputs instead of 6,
    at the cost of additions: per output 6 multiply-adds and about 5 additions instead of 9
    multiply-adds. CPUs whose additions issue on pipes of their own (AMD Zen 4 and 5) run it
    faster; where additions share the FMA pipes (Intel) it is slower. The products and sums
    round differently from the direct sum (relative differences around 1e-6 in float32).

    Stages (block names the CPU template relies on):

    - `pad` (when padding reaches the input), as in `depthwise_tensors`;
    - `U` (3 x 4 x C): the kernel rows transformed, `g0, (g0+g1+g2)/2, (g0-g1+g2)/2, g2`;
    - `M` (N x H_out x ceil(W_out/2) x 4 x C): per output row and column pair, the sum over the
      kernel rows of the transformed input row (`d0-d2, d1+d2, d2-d1, d1-d3`) times `U`;
    - `output`: `M0+M1+M2` for even columns, `M1-M2-M3` for odd ones, then the epilogue.

    Args:
        spec: A workload for which `winograd_applies` is true.

    Returns:
        `[X, K, B, out]` with bias, `[X, K, out]` without.

    Raises:
        ValueError: If `winograd_applies(spec)` is false.
    """
    from tvm import te, tirx

    if not winograd_applies(spec):
        raise ValueError(f"Winograd F(2, 3) does not compute {spec.key}: it needs NHWC float32, a 3x3 kernel, "
                         "stride 1, dilation 1, depth multiplier 1 and 2 or more output columns.")
    h, w = spec.height, spec.width
    top, left = spec.padding[0], spec.padding[1]
    out_h, out_w = spec.out_height, spec.out_width
    pairs = (out_w + 1) // 2
    x = te.placeholder(spec.input_shape, spec.dtype, name="X")
    k = te.placeholder(spec.kernel_shape, spec.dtype, name="K")
    b = te.placeholder(spec.bias_shape, spec.dtype, name="B") if spec.bias else None
    # Rows and columns read, in padded coordinates: out_h + 2 rows; an odd output width reads
    # one column past the last output's window.
    rows, columns = out_h + 2, 2 * pairs + 2
    needs = (top > 0, rows - top > h, left > 0, columns - left > w)
    source = _pad_stage(x, spec, (rows, columns), needs) if any(needs) else x  # no needs: no padding
    half = tirx.const(0.5, spec.dtype)

    def by_index(j, values):
        return tirx.Select(j == 0, values[0], tirx.Select(j == 1, values[1], tirx.Select(j == 2, values[2], values[3])))

    def transformed_kernel(row, j, c):
        g0, g1, g2 = (k[row, col, c, 0] for col in range(3))
        return by_index(j, [g0, (g0 + g1 + g2) * half, (g0 - g1 + g2) * half, g2])

    u = te.compute((3, 4, spec.channels), transformed_kernel, name="U")
    ry = te.reduce_axis((0, 3), name="ry")

    def transformed_input(n, py, pair, j, c):
        d0, d1, d2, d3 = (source[n, py, 2 * pair + q, c] for q in range(4))
        return by_index(j, [d0 - d2, d1 + d2, d2 - d1, d1 - d3])

    m = te.compute(
        (spec.batch, out_h, pairs, 4, spec.channels),
        lambda n, y, pair, j, c: te.sum(transformed_input(n, y + ry, pair, j, c) * u[ry, j, c], axis=ry),
        name="M",
    )

    def epilogue(n, y, xx, c):
        pair = xx // 2
        even = m[n, y, pair, 0, c] + m[n, y, pair, 1, c] + m[n, y, pair, 2, c]
        odd = m[n, y, pair, 1, c] - m[n, y, pair, 2, c] - m[n, y, pair, 3, c]
        return _epilogue(spec, b, tirx.Select(xx % 2 == 0, even, odd), c)

    out = te.compute(spec.output_shape, epilogue, name="output")
    return [t for t in (x, k, b, out) if t is not None]


@functools.lru_cache(maxsize=256)
def depthwise_primfunc(spec: DepthwiseSpec, algorithm: str = "direct"):
    """The schedulable PrimFunc of `spec`, accepting buffers aligned to their element size.

    Args:
        spec: The workload.
        algorithm: `"direct"` (`depthwise_tensors`) or `"winograd"` (`winograd_tensors`).

    Returns:
        A `tvm.tirx.PrimFunc` named `main`.

    Raises:
        ValueError: On an unknown algorithm, or Winograd for a spec it does not compute.
    """
    from tvm import te

    if algorithm not in ALGORITHMS:
        raise ValueError(f"`algorithm` must be one of {ALGORITHMS}. Received: {algorithm!r}")
    tensors = depthwise_tensors(spec) if algorithm == "direct" else winograd_tensors(spec)
    func = te.create_prim_func(tensors, index_dtype_override=index_dtype(spec))
    return relax_alignment(func, spec.itemsize)


def depthwise_module(spec: DepthwiseSpec, algorithm: str = "direct"):
    """`depthwise_primfunc(spec, algorithm)` as the `main` function of an IRModule: what
    schedules and tuning records are keyed on."""
    import tvm

    return tvm.IRModule({"main": depthwise_primfunc(spec, algorithm)})


def relax_alignment(func, align: int):
    """Re-declares every buffer parameter of `func` with `data_alignment=align`.

    TVM assumes 64-byte-aligned arguments and emits aligned vector moves (`vmovaps`) once the
    target has AVX, but NumPy and most frameworks only guarantee 16 bytes: a misaligned array
    would crash the process. 0.27's PrimFunc keeps buffers as typed Vars and `specialize`
    refuses a new alignment, so the parameters' buffer types are rewritten in TVM's JSON form
    of the function (a TVMScript round trip does the same in about 15x the time: 70-80 ms per
    function, paid on every layer's first call).

    Args:
        func: A PrimFunc from `te.create_prim_func`.
        align: The alignment, in bytes, that callers guarantee.

    Returns:
        The equivalent PrimFunc with relaxed parameter alignment.

    Raises:
        RuntimeError: If TVM's JSON format changed and the rewrite cannot be verified.
    """
    import json

    import tvm

    graph = json.loads(tvm.ir.save_json(func))
    nodes = graph["nodes"]
    try:
        for index in nodes[nodes[graph["root_index"]]["data"]["params"]]["data"]:
            buffer_type = nodes[nodes[index]["data"]["ty"]]
            if buffer_type["type"] != "tirx.BufferType":
                raise KeyError(buffer_type["type"])
            buffer_type["data"]["data_alignment"] = align
    except (KeyError, TypeError, IndexError) as err:
        raise RuntimeError(f"Unexpected PrimFunc JSON from TVM {tvm.__version__}: {err!r}") from None
    relaxed = tvm.ir.load_json(json.dumps(graph))
    for old, new in zip(func.params, relaxed.params, strict=True):
        same = [list(map(int, old.shape)), str(old.dtype)] == [list(map(int, new.shape)), str(new.dtype)]
        if not same or int(new.data_alignment) != align:
            raise RuntimeError(f"Relaxing the alignment of buffer {old.name} failed")
    return relaxed
