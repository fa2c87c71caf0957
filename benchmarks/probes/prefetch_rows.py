"""Probe: software prefetch of the next row tile's new input rows, on a layer's shipped schedule.

The layer's schedule for stride-1 NHWC (the shipped record, or the template's default) is
printed as TVMScript and, inside its channel-block loop, given `llvm.prefetch` calls for the
input rows that the thread's next row tile reads and this one does not (`ROWS` rows from
`AHEAD` rows below the tile's first output row, `COLS` columns from the tile's first). Every
variant is checked against the plain kernel, then all are timed back to back, interleaved over
7 rounds, cycling through `SETS` input/output pairs (1: warm caches; 16: inputs from DRAM).

    python benchmarks/probes/prefetch_rows.py BATCH SIZE CHANNELS SETS TILE_ROWS TILE_COLS
    python benchmarks/probes/prefetch_rows.py 8 56 144 1 4 1

TILE_ROWS x TILE_COLS must be the schedule's register tile (`dwconv-tvm info` names the record;
the probe prints it). A prefetch is a hint, so addresses past the tensor's end are harmless;
rows and columns are clamped anyway.
"""

from __future__ import annotations

import itertools
import re
import sys

import numpy as np
import tvm

from dwconv_tvm import build
from dwconv_tvm.runtime import aligned_copy, aligned_empty
from dwconv_tvm.spec import DepthwiseSpec
from dwconv_tvm.targets import resolve_target
from dwconv_tvm.timing import seconds_per_call

TARGET = resolve_target("host")


def with_prefetch(text: str, size: int, tile: tuple[int, int], ahead: int, rows: int, cols: int):
    """The scheduled module's TVMScript `text` with prefetches at the top of the channel loop."""
    tile_rows, tile_cols = tile
    row_tiles, col_tiles = size // tile_rows, size // tile_cols
    if "i0_i1_0_i2_0_fused" in text:  # parallel over batch x row tiles x column tiles
        f = "i0_i1_0_i2_0_fused"
        n, yo, xo = f"{f} // {row_tiles * col_tiles}", f"({f} // {col_tiles}) % {row_tiles}", f"{f} % {col_tiles}"
    else:  # parallel over batch x row tiles, column tiles serial
        f = "i0_i1_0_fused"
        n, yo, xo = f"{f} // {row_tiles}", f"{f} % {row_tiles}", "i2_0"
    y = f"T.min(({yo}) * {tile_rows} + {ahead} + pr, {size - 1})"
    x = f"T.min(({xo}) * {tile_cols} + pc, {size - 1})"

    def insert(match):
        pad = match.group(1) + "    "
        return (
            f"{match.group(0)}\n{pad}for pr, pc in T.grid({rows}, {cols}):\n"
            f'{pad}    with T.sblock("prefetch"):\n{pad}        T.reads()\n{pad}        T.writes()\n'
            f'{pad}        T.evaluate(T.call_llvm_intrin("void", "llvm.prefetch.p0", '
            f"T.address_of(X[{n}, {y}, {x}, i3_0 * 16]), T.uint32(0), T.uint32(3), T.uint32(1)))"
        )

    return tvm.script.from_source(re.sub(r"( *)for i3_0 in range\(\d+\):", insert, text))


def main() -> None:
    batch, size, channels, sets, tile_rows, tile_cols = map(int, sys.argv[1:7])
    spec = DepthwiseSpec.from_keras((batch, size, size, channels), 3, 1, "same")
    mod, name = build.schedule_for(spec, TARGET)
    print(spec.key, name)
    variants = {"plain": mod}
    for ahead, rows, cols in [(tile_rows + 1, tile_rows, tile_cols), (2 * tile_rows + 1, tile_rows, tile_cols),
                              (tile_rows + 1, tile_rows, tile_cols + 2)]:
        variants[f"{rows}x{cols} from row +{ahead}"] = with_prefetch(mod.script(), size, (tile_rows, tile_cols),
                                                                   ahead, rows, cols)
    kernels = {label: tvm.compile(m, target=TARGET)["main"] for label, m in variants.items()}
    rng = np.random.default_rng(0)
    xs = [aligned_copy(rng.standard_normal(spec.input_shape), np.float32) for _ in range(sets)]
    ys = [aligned_empty(spec.output_shape, np.float32) for _ in range(sets)]
    for y in ys:
        y[...] = 0  # touch the pages before timing
    kernel = rng.standard_normal(spec.kernel_shape).astype(np.float32)
    bias = rng.standard_normal(spec.bias_shape).astype(np.float32)
    expected = None
    for label, fn in kernels.items():
        fn(xs[0], kernel, bias, ys[0])
        expected = ys[0].copy() if expected is None else expected
        np.testing.assert_allclose(ys[0], expected, atol=1e-5, err_msg=label)
    times: dict[str, list[float]] = {label: [] for label in kernels}
    for _ in range(7):
        for label, fn in kernels.items():
            pairs = itertools.cycle(list(zip(xs, ys)))

            def call(fn=fn, pairs=pairs):
                x, y = next(pairs)
                fn(x, kernel, bias, y)

            seconds_per_call(call, 0.01, 3)
            times[label].append(seconds_per_call(call, 0.1, 3) * 1e6)
    for label, samples in times.items():
        print(f"{label:>22}: median {np.median(samples):.1f} us")


if __name__ == "__main__":
    main()
