"""Probe: does splitting the channels across threads balance 7 row tiles over 2 threads?

The NHWC template runs row tiles (or row x column tiles) in parallel. Several MobileNetV2
layers have 7 row tiles, which 2 threads split 4 + 3. This builds the template's schedule with
given knob values, optionally also splitting the channels into `halves` parts inside each row
tile (parallel over row tile x channel part), checks every variant against the first, and times
the bare kernels back to back, interleaved over 15 rounds.

    python benchmarks/probes/channel_halves.py SIZE_CHANNELS_STRIDE BLOCKS,Y,X,DEPTH,HALVES ...
    python benchmarks/probes/channel_halves.py 7_960_1 1,1,7,3,1 1,1,7,3,2
"""

from __future__ import annotations

import sys
import timeit

import numpy as np
import tvm
from tvm import s_tir

from dwconv_tvm.compute import depthwise_module
from dwconv_tvm.schedules.common import accumulate_in_registers, has_block
from dwconv_tvm.schedules.cpu import vector_lanes
from dwconv_tvm.spec import DepthwiseSpec
from dwconv_tvm.targets import resolve_target

TARGET = resolve_target("host")


def build(spec: DepthwiseSpec, blocks: int, y_tile: int, x_tile: int, depth: int, halves: int):
    """The template's NHWC schedule with fixed knobs; `halves` > 1 adds the channel split."""
    sch = s_tir.Schedule(depthwise_module(spec))
    padded = has_block(sch, "pad")
    if padded:
        sch.compute_inline(sch.get_sblock("pad"))
    n, y, x, o = sch.get_loops(sch.get_sblock("output"))
    yo, yi = sch.split(y, [None, y_tile])
    xo, xi = sch.split(x, [None, x_tile])
    if halves > 1:
        part, oo, ob, oi = sch.split(o, [halves, None, blocks, vector_lanes(spec, TARGET)])
        sch.reorder(n, yo, part, xo, oo, yi, xi, ob, oi)
        sch.parallel(sch.fuse(*[n, yo, part, xo][: depth + 1]))
    else:
        oo, ob, oi = sch.split(o, [None, blocks, vector_lanes(spec, TARGET)])
        sch.reorder(n, yo, xo, oo, yi, xi, ob, oi)
        sch.parallel(sch.fuse(*[n, yo, xo][:depth]))
    accumulate_in_registers(sch, oo, 4, vectorize_innermost=True, scope="global")
    for loop in (yi, xi, ob):
        sch.unroll(loop)
    sch.vectorize(oi)
    if depth == 2 and padded:
        sch.annotate(xo, "pragma_loop_partition_hint", 1)
    return tvm.compile(sch.mod, target=TARGET).mod["main"]


def main() -> None:
    size, channels, stride = map(int, sys.argv[1].split("_"))
    spec = DepthwiseSpec.from_keras((1, size, size, channels), 3, stride, "same")
    rng = np.random.default_rng(0)
    args = [rng.random(shape, np.float32) for shape in (spec.input_shape, spec.kernel_shape, spec.bias_shape)]
    kernels, expected = {}, None
    for config in sys.argv[2:]:
        fn = build(spec, *(int(v) for v in config.split(",")))
        out = np.empty(spec.output_shape, np.float32)
        fn(*args, out)
        expected = out.copy() if expected is None else expected
        np.testing.assert_allclose(out, expected, atol=1e-4, err_msg=config)
        kernels[config] = (fn, out)
    times: dict[str, list[float]] = {config: [] for config in kernels}
    for _ in range(15):
        for config, (fn, out) in kernels.items():
            best = min(timeit.repeat(lambda: fn(*args, out), number=200, repeat=3))
            times[config].append(best / 200 * 1e6)
    for config, samples in times.items():
        print(f"{sys.argv[1]} {config:>12}: median {np.median(samples):.2f} us")


if __name__ == "__main__":
    main()
