"""The tensor-expression definition of depthwise convolution, for both layouts.

TE stages, whose block names the schedules rely on:

- `pad` (only when padding reaches the input): the zero-padded view of the input as an
  `if_then_else`. Schedules inline it into the reduction or materialize a small tile of it
  (registers, L1, GPU shared memory), so no padded copy of the whole input ever exists.
- `depthwise`: the reduction over the kernel taps, accumulated in float32 (float64 for float64
  inputs).
- `output`: the epilogue, `activation(depthwise + bias)` cast to the spec's dtype.

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

    conds_needed = need_top or need_bottom or need_left or need_right
    if conds_needed:
        # A padded view of the input as its own stage: schedules inline it (NHWC: the bounds
        # check is uniform across a channel vector) or materialize only a small tile of it
        # (NCHW), so no padded copy of the whole input ever exists.
        pad_shape = (
            (spec.batch, h + top + spec.padding[2], w + left + spec.padding[3], spec.channels)
            if nhwc
            else (spec.batch, spec.channels, h + top + spec.padding[2], w + left + spec.padding[3])
        )

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

        source = te.compute(pad_shape, padded, name="pad")
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
        value = conv(*idx)
        if b is not None:
            bias = b[o].astype(acc) if spec.dtype != acc else b[o]
            value = value + bias
        if spec.activation is not None:
            value = activations.fuse(spec.activation, value, tirx)
        return value.astype(spec.dtype) if spec.dtype != acc else value

    out = te.compute(spec.output_shape, epilogue, name="output")
    return [t for t in (x, k, b, out) if t is not None]


@functools.lru_cache(maxsize=256)
def depthwise_primfunc(spec: DepthwiseSpec):
    """The schedulable PrimFunc of `spec`, accepting buffers aligned to their element size.

    Args:
        spec: The workload.

    Returns:
        A `tvm.tirx.PrimFunc` named `main`.
    """
    from tvm import te

    func = te.create_prim_func(depthwise_tensors(spec), index_dtype_override=index_dtype(spec))
    return relax_alignment(func, spec.itemsize)


def depthwise_module(spec: DepthwiseSpec):
    """`depthwise_primfunc(spec)` as the `main` function of an IRModule: what schedules and
    tuning records are keyed on."""
    import tvm

    return tvm.IRModule({"main": depthwise_primfunc(spec)})


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
