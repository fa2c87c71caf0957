"""Default CPU schedule: vectorize over the contiguous axis, register-tile, parallel rows.

NHWC: the innermost loop runs over output channels, one SIMD vector wide; a few output
columns form a register tile whose accumulators stay in vector registers while the kernel
taps (unrolled) stream over them; the batch x output-row loop is parallel.
NCHW: the innermost loop runs over output columns, one SIMD vector wide, for each
(batch, channel) plane in parallel.

In both, the accumulator lives in registers (`local` scope) and bias + activation are applied
in the epilogue before the single store to the output, and padding stays an inline predicate.
"""

from __future__ import annotations

from dwconv_tvm.spec import DepthwiseSpec

_ITEMSIZE = {"float16": 2, "float32": 4, "float64": 8}


def simd_bits(target) -> int:
    """Vector register width of a CPU target, in bits (128 without a known SIMD extension)."""
    from tvm.target import codegen

    triple = str(target.attrs.get("mtriple") or "")
    if triple.startswith(("aarch64", "arm")):
        return 128
    if codegen.target_has_features("avx512f", target):
        return 512
    if codegen.target_has_features("avx2", target) or codegen.target_has_features("avx", target):
        return 256
    return 128


def vector_lanes(spec: DepthwiseSpec, target) -> int:
    """Elements per SIMD vector of the accumulator type (float16 computes in float32)."""
    acc_bytes = 8 if spec.dtype == "float64" else 4
    return max(1, simd_bits(target) // (8 * acc_bytes))


def largest_divisor(n: int, limit: int) -> int:
    """The largest power of two <= `limit` that divides `n` (at least 1)."""
    best = 1
    p = 1
    while p <= limit:
        if n % p == 0:
            best = p
        p *= 2
    return best


def schedule(sch, spec: DepthwiseSpec, target) -> None:
    """Applies the default CPU schedule to `sch` (a `tvm.s_tir.Schedule` of `spec`).

    Args:
        sch: The schedule, created from `compute.depthwise_primfunc(spec)`.
        spec: The workload.
        target: The CPU `tvm.target.Target`.
    """
    lanes = vector_lanes(spec, target)
    if spec.layout == "NHWC":
        _schedule_nhwc(sch, spec, lanes)
    else:
        _schedule_nchw(sch, spec, lanes)


def _accumulate_at(sch, loop, tile_loops: int) -> None:
    """Moves the reduction under `loop` into registers, taps outermost, spatial tile inside."""
    conv = sch.get_sblock("depthwise")
    sch.compute_at(conv, loop, preserve_unit_loops=True)
    sch.set_scope(conv, 0, "local")
    loops = sch.get_loops(conv)
    spatial, (ry, rx) = loops[-2 - tile_loops : -2], loops[-2:]
    sch.reorder(ry, rx, *spatial)
    return conv, ry, rx, spatial


def _schedule_nhwc(sch, spec: DepthwiseSpec, lanes: int) -> None:
    out = sch.get_sblock("output")
    n, y, x, o = sch.get_loops(out)
    vec = largest_divisor(spec.out_channels, lanes)
    # Enough output columns to fill the vector registers with accumulators, no more.
    x_tile = largest_divisor(spec.out_width, 8) if vec > 1 else 1
    xo, xi = sch.split(x, [None, x_tile])
    oo, oi = sch.split(o, [None, vec])
    sch.reorder(n, y, xo, oo, xi, oi)
    sch.parallel(sch.fuse(n, y))
    conv, ry, rx, (cxi, coi) = _accumulate_at(sch, oo, 2)
    sch.unroll(ry)
    sch.unroll(rx)
    sch.unroll(cxi)
    sch.vectorize(coi)
    sch.decompose_reduction(conv, ry)
    sch.unroll(xi)
    sch.vectorize(oi)


def _schedule_nchw(sch, spec: DepthwiseSpec, lanes: int) -> None:
    out = sch.get_sblock("output")
    n, o, y, x = sch.get_loops(out)
    vec = largest_divisor(spec.out_width, lanes)
    xo, xi = sch.split(x, [None, vec])
    sch.parallel(sch.fuse(n, o, y))
    conv, ry, rx, (cxi,) = _accumulate_at(sch, xo, 1)
    sch.unroll(ry)
    sch.unroll(rx)
    sch.vectorize(cxi)
    sch.decompose_reduction(conv, ry)
    sch.vectorize(xi)
