"""CPU schedule template for depthwise convolution (x86 AVX2/AVX-512, Arm NEON).

A template on `tvm.s_tir.Schedule` whose choices are knobs (`sample_categorical`) carrying good
default decisions, so the same function gives a deterministic untuned schedule and, under
MetaSchedule, a search space.

NHWC (channels_last): the innermost loop covers output channels, one SIMD vector (or two) wide;
`y_tile` output rows x `x_tile` output columns form a register tile whose accumulators stay in
vector registers while the unrolled kernel taps stream over them, so each weight vector is
loaded once per tile and each input vector is reused across the kernel row (and, with two or
more rows, across the rows of the tile that read it); batch x row tiles run in parallel, or, on
layers whose data fits the caches, batch x narrow channel chunks (each thread sweeps every row of
its slice, so the input rows shared by consecutive row tiles are still in L1). The
zero padding is inlined: its bounds check depends on the pixel, not the channel, so it is one
uniform branch per vector, and the column-tile loop is split (TVM's LoopPartition, by a hint)
into the border tiles and the interior, which runs without checks. Channel counts that are not
a multiple of the vector width use the largest power-of-two vector that divides them (odd
counts run scalar over channels).

NCHW (channels_first): the innermost loop covers output columns, one vector wide, with a tile of
output rows; each (batch, channel) plane runs in parallel. The bounds check here would vary per
lane, so a small padded band of input rows is materialized in registers/L1 per row tile instead.

Memory traffic (per call): input and output once each plus the weights, `spec.compulsory_bytes`;
with fp32 3x3 that is 18 FLOP per >= 8 bytes, so the schedule's job is to stream, not to compute.
"""

from __future__ import annotations

from dwconv_tvm import prefetch
from dwconv_tvm.spec import DepthwiseSpec

from .common import accumulate_in_registers, has_block, knob


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


def _divisors(n: int, low: int, high: int) -> list[int]:
    return [d for d in range(low, high + 1) if n % d == 0]


def default_x_tile(out_width: int) -> int:
    """Register-tile width with one output row per tile: the largest divisor of the output
    width up to 7 (measured best or tied on znver4 for 3x3 and 5x5), else 4 columns with a
    predicated tail."""
    fits = _divisors(out_width, 3, 7)
    return fits[-1] if fits else min(4, out_width)


def default_tile(out_height: int, out_width: int) -> tuple[int, int]:
    """Default register tile `(rows, columns)`: 2 x 4 where both divide the output, since two
    rows share their middle input rows in registers (znver4, MobileNetV2 3x3: 10-15% faster
    than 1 x 7, while 2 x 7 and 4 x 4 spill); else one row of `default_x_tile` columns."""
    if out_height % 2 == 0 and out_width % 4 == 0:
        return 2, 4
    return 1, default_x_tile(out_width)


# Accumulator vectors a multi-row tile may hold: beyond this the tile spills (2 x 7 and 4 x 4
# ran 1.5-2x slower than 2 x 4 on znver4; one-row tiles keep their old, wider range).
MAX_TILE_VECTORS = 12

# Input bytes a register tile may read over the channels it sweeps before moving one tile to the
# right: the next tile rereads part of that window, so it should still be in L1 (32-48 KB on
# the x86 cores we know). Wider windows are swept in channel chunks, each over the whole row.
L1_WINDOW_BYTES = 32 * 1024


def tile_window(spec: DepthwiseSpec, y_tile: int, x_tile: int) -> tuple[int, int]:
    """Input rows x columns a `y_tile` x `x_tile` register tile of output pixels reads."""
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel, spec.strides, spec.dilation
    return (y_tile - 1) * sh + (kh - 1) * dh + 1, (x_tile - 1) * sw + (kw - 1) * dw + 1


def tile_window_bytes(spec: DepthwiseSpec, y_tile: int, x_tile: int) -> int:
    """Input bytes a `y_tile` x `x_tile` NHWC register tile reads across all channels."""
    rows, columns = tile_window(spec, y_tile, x_tile)
    return rows * columns * spec.channels * spec.itemsize


# Per-image input + output bytes up to which the untuned NHWC schedule runs channel chunks in
# parallel: on znver5 (1 MB L2 per core), untuned, that ran the MobileNetV2 layers up to
# 56x56x144 s2 (2.25 MB) 1.14-1.53x faster than their tuned row-parallel records (28x28x192 s2:
# 1.02x), tied on 56x56x144 s1 (3.6 MB) and lost 1.16x on 112x112x96 s2 (6 MB).
CHANNEL_PARALLEL_BYTES = 5 * 2**19


# Software prefetch of the input (`dwconv_tvm.prefetch`) for layers whose data comes from DRAM.
# The knob exists from `PREFETCH_BYTES` of input + output per call and is on by default from
# `PREFETCH_DEFAULT_BYTES` in row-parallel schedules. znver4 (32 MB of L3, shared), template
# defaults, back to back: batch 8 112x112x96 s2 (48 MB) 1.28x, 112x112x32 (26 MB) Winograd
# 1.15x, 56x56x144 s1 (29 MB) 1.17-1.21x with the data from DRAM; 56x56x144 s2 (18 MB, channel
# chunks) 0.90x, and the batch-1 layers of 3-4 MB, whose data stays in L2/L3, 0.94-0.98x.
PREFETCH_BYTES = 8 * 2**20
PREFETCH_DEFAULT_BYTES = 24 * 2**20
# Register tiles ahead: 1 and 2 gained 1.17-1.21x from DRAM on 56x56x144 s1, 4 1.10-1.13x.
PREFETCH_DISTANCE = 2


def _prefetch_knob(sch, spec: DepthwiseSpec, loop, tile: tuple[int, int], step: tuple[int, int], vectors: int,
                   lanes: int, row_parallel: bool) -> None:
    """Marks `loop`, the channel loop of a register tile of `tile` output rows x columns and
    `vectors` vectors of `lanes` output channels that moves `step` input rows x columns from one
    tile to the next, for a prefetch of the input that the tile `PREFETCH_DISTANCE` to the right
    adds (its new rows x new columns), where the layer's data is large enough to offer it and
    the knob says so."""
    data_bytes = spec.batch * image_bytes(spec)
    if data_bytes < PREFETCH_BYTES:
        return
    if not knob(sch, [0, 1], int(row_parallel and data_bytes >= PREFETCH_DEFAULT_BYTES)):
        return
    window = tile_window(spec, *tile)
    new_rows, new_cols = (min(w, s) for w, s in zip(window, step))
    input_lanes = max(1, lanes // spec.depth_multiplier)  # a vector of output channels reads these
    sch.annotate(loop, prefetch.ANNOTATION, prefetch.plan(
        window[0] - new_rows, new_rows, PREFETCH_DISTANCE * step[1] + window[1] - new_cols, new_cols, vectors,
        input_lanes))


def default_chunks(window_bytes: int, candidates: list[int]) -> int:
    """Fewest channel chunks whose window fits `L1_WINDOW_BYTES` (else the most there are)."""
    return next((c for c in candidates if window_bytes <= L1_WINDOW_BYTES * c), candidates[-1])


def schedule(sch, spec: DepthwiseSpec, target) -> None:
    """Applies the CPU template to `sch` (a `tvm.s_tir.Schedule` of `spec`'s PrimFunc).

    Args:
        sch: The schedule, from `compute.depthwise_primfunc(spec)`.
        spec: The workload.
        target: The CPU `tvm.target.Target`.
    """
    lanes = vector_lanes(spec, target)
    if has_block(sch, "M"):
        _schedule_winograd(sch, spec, lanes)
    elif spec.layout == "NHWC":
        _schedule_nhwc(sch, spec, lanes)
    else:
        _schedule_nchw(sch, spec, lanes)


def image_bytes(spec: DepthwiseSpec) -> int:
    """Input + output bytes of one image of the batch."""
    inputs = spec.height * spec.width * spec.channels
    outputs = spec.out_height * spec.out_width * spec.out_channels
    return (inputs + outputs) * spec.itemsize


def prefers_channel_parallel(spec: DepthwiseSpec) -> bool:
    """Whether the untuned NHWC schedule runs channel chunks in parallel: its data fits
    `CHANNEL_PARALLEL_BYTES` per image."""
    return image_bytes(spec) <= CHANNEL_PARALLEL_BYTES


def channel_chunk_candidates(vectors: int) -> list[int]:
    """Chunk counts for channel-parallel schedules: chunks of 1, 2 or 4 vectors, at least two
    chunks (on znver5, chunks of 3-10 vectors were never faster than those of 2, and two wide
    chunks, of 6-30 vectors, ran 1.15-1.5x slower)."""
    return sorted({vectors // per for per in (1, 2, 4) if vectors % per == 0 and vectors // per >= 2})


def channel_vector(channels: int, lanes: int) -> int:
    """Channels per NHWC vector: the largest power of two up to `lanes` that divides the count.
    Exact vectors only: TVM turns a predicated (masked) tail into slow code (36 channels: 111 us
    with a 16-wide masked tail vs 26 us with 4-wide vectors on 56x56)."""
    return max(d for d in _divisors(channels, 1, lanes) if d & (d - 1) == 0)


def _schedule_nhwc(sch, spec: DepthwiseSpec, lanes: int) -> None:
    padded = has_block(sch, "pad")
    if padded:
        sch.compute_inline(sch.get_sblock("pad"))
    out = sch.get_sblock("output")
    n, y, x, o = sch.get_loops(out)
    channels = spec.out_channels
    vec = channel_vector(channels, lanes)
    blocks = knob(sch, [1, 2] if channels % (2 * vec) == 0 else [1], 1)
    vectors = channels // (vec * blocks)
    by_channels = prefers_channel_parallel(spec) and vectors >= 2
    rows_default, x_default = (1, default_x_tile(spec.out_width)) if by_channels else default_tile(
        spec.out_height, spec.out_width)
    y_tile = knob(sch, [r for r in (1, 2, 4) if spec.out_height % r == 0], rows_default)
    # 3 (predicated tail) gives 4 x 3 tiles: 12 accumulator chains where two FMA pipes of 4-cycle
    # latency need 8 (Zen 5: 1.05-1.08x over 2 x 4 on 56x56x144 s1, back to back).
    x_candidates = [c for c in _divisors(spec.out_width, 1, 12) + [3, 4, 8] if c <= spec.out_width]
    if y_tile > 1:
        x_candidates = [c for c in x_candidates if c * y_tile * blocks <= MAX_TILE_VECTORS]
    if y_tile != rows_default:
        x_default = default_x_tile(spec.out_width)
    # 1 is always a candidate: 1 x 4 rows x 2 blocks stays within the budget.
    x_tile = knob(sch, x_candidates, x_default if x_default in x_candidates else max(x_candidates))
    yo, yi = sch.split(y, [None, y_tile])
    xo, xi = sch.split(x, [None, x_tile])
    # What runs in parallel: 2, the batch x row tiles; 3, the batch x row tiles x column tiles;
    # 1, the batch x channel chunks (each thread sweeps all rows of a narrow channel slice, so the
    # rows a tile shares with the next stay in L1 and 7-row layers balance over 2 threads).
    depth = knob(sch, [2, 3] + ([1] if vectors >= 2 else []), 1 if by_channels else 2)
    if depth == 1:
        candidates = channel_chunk_candidates(vectors)  # default: 2 vectors each (1 if odd)
        chunks = knob(sch, candidates, vectors // 2 if vectors // 2 in candidates else vectors)
        # The rows in 2 bands, each a task of its own: an odd task count (9 chunks split 5 + 4
        # over 2 threads) becomes an even one. Back to back on znver5, 56x56x144 s1 and s2 (56
        # and 28 row tiles) ran 1.07-1.08x faster; 14x14x576 (14, a band of 7) 1.07x slower.
        row_tiles = spec.out_height // y_tile
        band_candidates = [1, 2] if row_tiles % 2 == 0 else [1]
        odd_tasks = spec.batch * chunks % 2 == 1
        bands = knob(sch, band_candidates, 2 if 2 in band_candidates and row_tiles >= 16 and odd_tasks else 1)
        oc, oo, ob, oi = sch.split(o, [chunks, None, blocks, vec])
        yb, yo = sch.split(yo, [bands, None])
        sch.reorder(n, oc, yb, yo, xo, oo, yi, xi, ob, oi)
        sch.parallel(sch.fuse(n, oc, yb))
    else:
        # Channel chunks outside the column tiles (row-parallel schedules with more than one
        # column tile): 14x14x576 with 2 x 4 tiles reads a 55 KB window per tile; in 3 chunks it
        # ran 1.43x faster on znver5, while layers whose windows fit L1 gained nothing.
        chunk_candidates = [1]
        if depth == 2 and spec.out_width > x_tile:
            chunk_candidates = [c for c in (1, 2, 3, 4) if vectors % c == 0]
        window = tile_window_bytes(spec, y_tile, x_tile)
        chunks = knob(sch, chunk_candidates, default_chunks(window, chunk_candidates))
        if chunks > 1:
            oc, oo, ob, oi = sch.split(o, [chunks, None, blocks, vec])
            sch.reorder(n, yo, oc, xo, oo, yi, xi, ob, oi)
        else:  # the schedule (and its trace) of the templates before chunks existed
            oo, ob, oi = sch.split(o, [None, blocks, vec])
            sch.reorder(n, yo, xo, oo, yi, xi, ob, oi)
        sch.parallel(sch.fuse(*[n, yo, xo][:depth]))
    accumulate_in_registers(sch, oo, 4, vectorize_innermost=True, scope="global")
    _prefetch_knob(sch, spec, oo, (y_tile, x_tile), (y_tile * spec.strides[0], x_tile * spec.strides[1]), blocks, vec,
                   row_parallel=depth != 1)
    sch.unroll(yi)
    sch.unroll(xi)
    sch.unroll(ob)
    sch.vectorize(oi)
    if depth != 3 and padded:
        # Border column tiles apart from interior ones, which then run without bounds checks
        # (znver4: 5-14% on 28x28 and larger; the row checks left are one branch per tile).
        sch.annotate(xo, "pragma_loop_partition_hint", 1)


def winograd_rows(out_height: int) -> tuple[list[int], int]:
    """Output rows per Winograd register tile: candidates and default. Consecutive rows share
    their transformed input rows, so more rows load and transform less; the default is the
    largest divisor of the height up to 7 (znver4, 56x56x144 and 112x112x32: 7 and 4 rows
    tied, 8 and 14 ran 1.1-1.2x slower), or 4 with a predicated tail."""
    fits = _divisors(out_height, 1, 14)
    default = max(r for r in fits if r <= 7)
    if default == 1 and out_height > 4:
        default = 4
    return sorted(set(fits) | ({4} if out_height > 4 else set())), default


def _schedule_winograd(sch, spec: DepthwiseSpec, lanes: int) -> None:
    """NHWC Winograd F(2, 3) (`compute.winograd_tensors`): a register tile of `rows` output
    rows x 1 column pair x one channel vector; per output row, the 4 transformed products of
    its pair accumulate over the 3 kernel rows in registers, and the tile's rows share each
    transformed input row (the compiler keeps them from one row to the next). Row tiles or
    channel chunks run in parallel, as in the direct template; each task first transforms the
    kernel rows of its channels (`U`), vectorized."""
    if has_block(sch, "pad"):
        sch.compute_inline(sch.get_sblock("pad"))
    out = sch.get_sblock("output")
    n, y, x, o = sch.get_loops(out)
    channels = spec.out_channels
    vec = channel_vector(channels, lanes)
    vectors = channels // vec
    by_channels = prefers_channel_parallel(spec) and vectors >= 2
    row_candidates, row_default = winograd_rows(spec.out_height)
    rows = knob(sch, row_candidates, row_default)
    # 2: batch x row tiles in parallel; 1: batch x channel chunks (each thread sweeps all rows).
    depth = knob(sch, [2] + ([1] if vectors >= 2 else []), 1 if by_channels else 2)
    yo, yi = sch.split(y, [None, rows])
    xo, xr = sch.split(x, [None, 2])
    if depth == 1:
        candidates = channel_chunk_candidates(vectors)  # default: one vector each
        chunks = knob(sch, candidates, vectors if vectors in candidates else candidates[-1])
        oc, oo, oi = sch.split(o, [chunks, None, vec])
        sch.reorder(n, oc, yo, xo, oo, yi, xr, oi)
        tasks = sch.fuse(n, oc)
    else:
        oo, oi = sch.split(o, [None, vec])
        sch.reorder(n, yo, xo, oo, yi, xr, oi)
        tasks = sch.fuse(n, yo)
    sch.parallel(tasks)
    products = sch.get_sblock("M")
    sch.compute_at(products, yi, preserve_unit_loops=True)
    j, c, ry = sch.get_loops(products)[-3:]
    sch.reorder(ry, j, c)
    sch.unroll(ry)
    sch.unroll(j)
    sch.vectorize(c)
    sch.decompose_reduction(products, ry)
    _prefetch_knob(sch, spec, oo, (rows, 2), (rows, 2), 1, vec, row_parallel=depth != 1)
    sch.unroll(yi)
    sch.unroll(xr)
    sch.vectorize(oi)
    # Border column pairs apart from interior ones, which then run without bounds checks.
    sch.annotate(xo, "pragma_loop_partition_hint", 1)
    # The kernel transform inside each task, for the channels the task uses: with it computed
    # once ahead of the parallel part, the 7x7 to 28x28 layers took 1.15-4.2x as long (znver4,
    # back to back, same knobs; 14x14x576 in row tiles 24.6 against 10.3 us).
    kernel_rows = sch.get_sblock("U")
    sch.compute_at(kernel_rows, tasks, preserve_unit_loops=True)
    uj, uc = sch.get_loops(kernel_rows)[-2:]
    _, uci = sch.split(uc, [None, vec])
    sch.unroll(uj)
    sch.vectorize(uci)


def _schedule_nchw(sch, spec: DepthwiseSpec, lanes: int) -> None:
    out = sch.get_sblock("output")
    n, o, y, x = sch.get_loops(out)
    xv = knob(sch, [lanes // 2, lanes] if lanes >= 2 else [1], lanes)
    y_tile = knob(sch, [1, 2, 4], 4 if spec.out_height >= 4 else 1)
    yo, yi = sch.split(y, [None, y_tile])
    xo, xi = sch.split(x, [None, xv])
    sch.reorder(n, o, yo, xo, yi, xi)
    sch.parallel(sch.fuse(n, o))
    accumulate_in_registers(sch, xo, 2, vectorize_innermost=True, scope="global")
    sch.unroll(yi)
    sch.vectorize(xi)
    if has_block(sch, "pad"):
        pad = sch.get_sblock("pad")
        # A band of padded input rows per row tile (full width), or a patch per register tile.
        band = knob(sch, [0, 1], 1)
        sch.compute_at(pad, yo if band else xo, preserve_unit_loops=True)
        sch.set_scope(pad, 0, "local")
        _, inner = sch.split(sch.get_loops(pad)[-1], [None, xv])
        sch.vectorize(inner)
