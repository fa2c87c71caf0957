"""CUDA schedule template for depthwise convolution.

NHWC: output channels run across the threads of a block, so every global load and store of a
warp touches consecutive addresses (coalesced); each thread computes `x_tile` output columns
in registers. The block's input tile plus halo (kernel rows x the columns its tile needs x its
channels) is staged in shared memory by the `pad` stage itself, so the zero padding is applied
while filling shared memory and never exists in global memory. Each thread keeps its kernel
taps in registers. float16 handles two adjacent channels per thread (half2 loads and stores,
fp32 accumulation as cuDNN does).

NCHW: output columns run across threads (coalesced along width), each thread computes
`y_tile` output rows; shared-memory input tile and register weights as above.

Knobs (`sample_categorical`, with default decisions): threads per block and the per-thread tile.
"""

from __future__ import annotations

from dwconv_tvm.spec import DepthwiseSpec

from .common import accumulate_in_registers, has_block, knob


def _thread_candidates(extent: int, limit: int = 256) -> list[int]:
    """Thread counts that divide `extent` (no idle lanes), preferring whole warps."""
    divisors = [d for d in range(1, min(extent, limit) + 1) if extent % d == 0]
    warps = [d for d in divisors if d % 32 == 0]
    return warps or [max(divisors)]


def schedule(sch, spec: DepthwiseSpec, target) -> None:
    """Applies the CUDA template to `sch` (a `tvm.s_tir.Schedule` of `spec`'s PrimFunc).

    Args:
        sch: The schedule, from `compute.depthwise_primfunc(spec)`.
        spec: The workload.
        target: The CUDA `tvm.target.Target`.
    """
    if spec.layout == "NHWC":
        _schedule_nhwc(sch, spec)
    else:
        _schedule_nchw(sch, spec)


def _stage_input_in_shared(sch, conv, block_loop, threads: int, vector: int) -> None:
    """Fills the block's input tile (+ halo, zero padding applied) in shared memory."""
    if has_block(sch, "pad"):
        stage = sch.get_sblock("pad")
        sch.compute_at(stage, block_loop, preserve_unit_loops=True)
        sch.set_scope(stage, 0, "shared")
    else:
        stage = sch.cache_read(conv, "X", "shared")
        sch.compute_at(stage, block_loop, preserve_unit_loops=True)
    fused = sch.fuse(*sch.get_loops(stage)[1:])  # everything under the block loop
    if vector > 1:
        fused, lanes = sch.split(fused, [None, vector])
        sch.vectorize(lanes)
    _, tx = sch.split(fused, [None, threads])
    sch.bind(tx, "threadIdx.x")


def _weights_in_registers(sch, conv, thread_loop) -> None:
    weights = sch.cache_read(conv, "K", "local")
    sch.compute_at(weights, thread_loop, preserve_unit_loops=True)


def _schedule_nhwc(sch, spec: DepthwiseSpec) -> None:
    out = sch.get_sblock("output")
    n, y, x, o = sch.get_loops(out)
    pair = 2 if spec.dtype == "float16" and spec.out_channels % 2 == 0 and spec.depth_multiplier == 1 else 1
    lanes_extent = spec.out_channels // pair
    threads = knob(sch, _thread_candidates(lanes_extent), max(_thread_candidates(lanes_extent, 128)))
    x_tile = knob(sch, [d for d in (1, 2, 4) if d <= spec.out_width], min(4, spec.out_width) if spec.out_width >= 4 else 1)
    xo, xi = sch.split(x, [None, x_tile])
    oo, tx, ov = sch.split(o, [None, threads, pair])
    sch.reorder(n, y, xo, oo, tx, xi, ov)
    block = sch.fuse(n, y, xo, oo)
    sch.bind(block, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    conv = accumulate_in_registers(sch, tx, 2, vectorize_innermost=True)
    sch.unroll(xi)
    sch.vectorize(ov)
    _weights_in_registers(sch, conv, tx)
    _stage_input_in_shared(sch, conv, block, threads, pair)


def _schedule_nchw(sch, spec: DepthwiseSpec) -> None:
    out = sch.get_sblock("output")
    n, o, y, x = sch.get_loops(out)
    threads = knob(sch, [32, 64, 128], 64 if spec.out_width > 32 else 32)
    y_tile = knob(sch, [d for d in (1, 2, 4) if d <= spec.out_height], min(4, spec.out_height) if spec.out_height >= 4 else 1)
    yo, yi = sch.split(y, [None, y_tile])
    xo, tx = sch.split(x, [None, threads])
    sch.reorder(n, o, yo, xo, tx, yi)
    block = sch.fuse(n, o, yo, xo)
    sch.bind(block, "blockIdx.x")
    sch.bind(tx, "threadIdx.x")
    conv = accumulate_in_registers(sch, tx, 1, vectorize_innermost=False)
    sch.unroll(yi)
    _weights_in_registers(sch, conv, tx)
    _stage_input_in_shared(sch, conv, block, threads, 1)
