"""Schedules tested structurally (CPU and CUDA, no GPU needed), CUDA export and nvcc builds."""

import itertools
import json
import re
import shutil
import struct

import pytest

import dwconv_tvm
from dwconv_tvm import DepthwiseSpec, build
from dwconv_tvm.schedules import cpu as cpu_schedule

HOST = dwconv_tvm.resolve_target("host")
AVX512 = dwconv_tvm.resolve_target({"kind": "llvm", "mcpu": "skylake-avx512", "num-cores": 4})
AVX2 = dwconv_tvm.resolve_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 4})
NEON = dwconv_tvm.resolve_target({"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "num-cores": 4})
CUDA_TARGETS = [dwconv_tvm.resolve_target({"kind": "cuda", "arch": a}) for a in ("sm_80", "sm_90")]


def _script(spec, target):
    mod, name = build.schedule_for(spec, target)
    return mod.script(), name


@pytest.mark.parametrize("target,lanes", [(AVX512, 16), (AVX2, 8), (NEON, 4)], ids=["avx512", "avx2", "neon"])
def test_simd_width_from_target(target, lanes):
    assert cpu_schedule.vector_lanes(DepthwiseSpec("NHWC", 1, 8, 8, 32), target) == lanes
    assert cpu_schedule.vector_lanes(DepthwiseSpec("NHWC", 1, 8, 8, 32, dtype="float64"), target) == lanes // 2


def test_nhwc_cpu_structure():
    spec = DepthwiseSpec.from_keras((1, 56, 56, 144), 3, 1, "same", activation="relu6")
    script, name = _script(spec, AVX512)
    assert name == "default:llvm"
    assert "T.parallel(28)" in script  # batch x pairs of output rows
    assert "T.vectorized(16)" in script  # one AVX-512 vector of channels
    assert script.count("T.unroll(3)") >= 2  # kernel taps unrolled
    assert 'T.sblock("pad")' not in script  # padding inlined, no padded copy


@pytest.mark.parametrize("layout", ["NHWC", "NCHW"])
def test_cpu_accumulators_need_no_workspace_calls(layout):
    # A `local` tile became a TVMBackendAllocWorkspace/Free pair per parallel task (10-15%
    # of a large layer); the tile must instead be a stack slot LLVM keeps in registers.
    import tvm

    data_format = "channels_last" if layout == "NHWC" else "channels_first"
    shape = (1, 56, 56, 144) if layout == "NHWC" else (1, 144, 56, 56)
    spec = DepthwiseSpec.from_keras(shape, 3, 1, "valid", data_format=data_format)
    mod, _ = build.schedule_for(spec, AVX512, use_records=False)
    asm = tvm.compile(mod, target=AVX512).mod.inspect_source("asm")
    assert "vfmadd" in asm
    assert "TVMBackendAllocWorkspace@" not in asm


def test_nhwc_register_tile_follows_output_size():
    for width, tile in [(112, 7), (56, 7), (28, 7), (14, 7), (7, 7), (12, 6), (10, 5), (13, 4)]:
        assert cpu_schedule.default_x_tile(width) == tile
    for (height, width), tile in [((112, 112), (2, 4)), ((28, 28), (2, 4)), ((14, 14), (1, 7)),
                                  ((7, 7), (1, 7)), ((9, 12), (1, 6))]:
        assert cpu_schedule.default_tile(height, width) == tile


def test_nhwc_multi_row_tiles_stay_within_the_register_budget():
    from tvm import s_tir

    from dwconv_tvm.schedules.common import forced_knobs, knob_space

    spec = DepthwiseSpec.from_keras((1, 56, 56, 32), 3, 1, "same")

    def apply():
        cpu_schedule.schedule(s_tir.Schedule(dwconv_tvm.compute.depthwise_module(spec)), spec, AVX512)

    tiles = set()
    for decisions in knob_space(apply):
        with forced_knobs(decisions) as plan:
            apply()
        blocks, rows, columns = plan.values[:3]
        tiles.add((rows, columns))
        if rows > 1:
            assert rows * columns * blocks <= cpu_schedule.MAX_TILE_VECTORS
    assert {rows for rows, _ in tiles} == {1, 2, 4}
    assert (4, 3) in tiles  # 12 accumulators, the last column tile predicated (56 = 18 x 3 + 2)


def test_nhwc_interior_column_tiles_run_without_bounds_checks():
    # The column-tile loop carries a partition hint; TVM's LoopPartition must then split it
    # into the left border tile, 12 interior tiles and the right border tile (of 14).
    from tvm import s_tir, transform

    spec = DepthwiseSpec.from_keras((1, 56, 56, 144), 3, 1, "same")
    mod, _ = build.schedule_for(spec, AVX512, use_records=False)
    lower = transform.Sequential([
        s_tir.transform.LowerInitBlock(), s_tir.transform.ConvertBlocksToOpaque(),
        s_tir.transform.LowerOpaqueBlock(), s_tir.transform.LoopPartition(),
    ])
    script = lower(mod).script()
    assert "for i2_0, i3_0 in T.grid(12, 9):" in script
    assert script.count("for i3_0 in range(9):") == 2


@pytest.mark.parametrize("shape,kernel,strides,dilation", [
    ((1, 10, 12, 32), 3, 1, 1),
    ((1, 10, 12, 32), 3, 2, 1),  # "same" pads only after: (0, 0, 1, 1)
    ((1, 9, 11, 32), 5, 2, 1),
    ((1, 12, 13, 16), 3, 1, 2),
])
def test_every_nhwc_knob_combination_is_exact_with_padding(shape, kernel, strides, dilation, rng):
    # Tuning may pick any point of the space: each must match the reference, border tiles
    # (split off by the loop partition) and predicated column tails included.
    from knob_checks import assert_every_knob_combination_matches
    from reference import depthwise

    spec = DepthwiseSpec.from_keras(shape, kernel, strides, "same", dilation_rate=dilation)
    x = rng.standard_normal(spec.input_shape).astype("float32")
    k = rng.standard_normal(spec.kernel_shape).astype("float32")
    b = rng.standard_normal(spec.bias_shape).astype("float32")
    want = depthwise(x, k, b, (strides,) * 2, "same", (dilation,) * 2)
    assert_every_knob_combination_matches(spec, "direct", HOST, (x, k, b), want, min_space=12)


def _plan(spec, decisions=(), target=AVX512):
    from tvm import s_tir

    from dwconv_tvm.schedules.common import forced_knobs

    sch = s_tir.Schedule(dwconv_tvm.compute.depthwise_module(spec))
    with forced_knobs(decisions) as plan:
        cpu_schedule.schedule(sch, spec, target)
    return sch, plan


ROW_PARALLEL, TILE_PARALLEL, CHANNEL_PARALLEL = 1, 2, 0  # decision indices of the parallel knob


def test_nhwc_wide_windows_are_swept_in_channel_chunks():
    # 14x14x576 in 1 x 7 row-parallel tiles reads 3 x 9 x 576 floats (62 KB) per tile: the
    # default sweeps it in 2 chunks of 31 KB so the next tile finds its shared columns in L1.
    spec = DepthwiseSpec.from_keras((1, 14, 14, 576), 3, 1, "same")
    _, plan = _plan(spec, (*_plan(spec)[1].chosen[:3], ROW_PARALLEL))
    assert plan.values == [1, 1, 7, 2, 2] and plan.sizes[-1] == 4  # chunks of 1, 2, 3 or 4
    # Windows that fit L1 keep one chunk, and so do tiles as wide as the output (no next tile).
    assert _plan(DepthwiseSpec.from_keras((1, 56, 56, 144), 3, 1, "same"))[1].values[-2:] == [2, 1]
    seven_spec = DepthwiseSpec.from_keras((1, 7, 7, 960), 3, 1, "same")
    _, seven = _plan(seven_spec, (*_plan(seven_spec)[1].chosen[:3], ROW_PARALLEL))
    assert seven.values[-2:] == [2, 1] and seven.sizes[-1] == 1


def test_nhwc_small_layers_run_channel_chunks_in_parallel():
    # Up to CHANNEL_PARALLEL_BYTES per image, threads split the channels, each sweeping all rows
    # of its slice in 1 x 7 tiles: 7 row tiles no longer split 4 + 3 over 2 threads.
    sch, plan = _plan(DepthwiseSpec.from_keras((1, 7, 7, 960), 3, 1, "same"))
    assert plan.values == [1, 1, 7, 1, 30, 1]  # 60 vectors in chunks of 2; 7 rows: one band
    assert plan.sizes[3:] == [3, 3, 1]  # 3 parallel layouts; chunks of 1, 2 or 4 vectors
    assert "T.parallel(30)" in sch.mod.script()
    # 9 vectors: chunks of 1, and the 28 rows in 2 bands so that 18 tasks split evenly.
    sch, plan = _plan(DepthwiseSpec.from_keras((1, 28, 28, 144), 3, 1, "same"))
    assert plan.values[3:] == [1, 9, 2] and "T.parallel(18)" in sch.mod.script()
    assert _plan(DepthwiseSpec.from_keras((2, 28, 28, 144), 3, 1, "same"))[1].values[3:] == [1, 9, 1]  # even
    _, short = _plan(DepthwiseSpec.from_keras((1, 14, 14, 144), 3, 1, "same"))  # bands of 7 rows ran slower
    assert short.values[3:] == [1, 9, 1] and short.sizes[5] == 2
    for big in [(1, 56, 56, 144), (1, 112, 112, 96)]:  # beyond the caches: row tiles in parallel
        assert _plan(DepthwiseSpec.from_keras(big, 3, 1, "same"))[1].values[3] == 2
    # One vector of channels cannot be split: no channel-parallel layout.
    assert _plan(DepthwiseSpec.from_keras((1, 8, 8, 16), 3, 1, "same"))[1].sizes[3] == 2


@pytest.mark.parametrize("layout", [CHANNEL_PARALLEL, ROW_PARALLEL, TILE_PARALLEL],
                         ids=["channel-parallel", "row-parallel", "tile-parallel"])
def test_every_channel_chunk_count_is_exact(layout, rng):
    import numpy as np
    import tvm

    from reference import depthwise

    spec = DepthwiseSpec.from_keras((2, 6, 10, 192), 3, 1, "same")  # 12 AVX-512 vectors, 24 AVX2 ones
    x, k, b = (rng.standard_normal(shape).astype("float32") for shape in (spec.input_shape, spec.kernel_shape, spec.bias_shape))
    want = depthwise(x, k, b, (1, 1), "same", (1, 1))
    _, default = _plan(spec, target=HOST)
    _, first = _plan(spec, (*default.chosen[:3], layout), HOST)
    counts = [_plan(spec, (*default.chosen[:3], layout, c), HOST)[1].values[4] for c in range(first.sizes[4])]
    vectors = 192 // (16 if cpu_schedule.simd_bits(HOST) == 512 else 8)
    expected = {CHANNEL_PARALLEL: sorted({vectors // p for p in (1, 2, 4)}),
                ROW_PARALLEL: [1, 2, 3, 4], TILE_PARALLEL: [1]}[layout]
    assert counts == expected
    bands = range(2) if layout == CHANNEL_PARALLEL else [0]  # the channel layout's rows in 1 or 2 bands
    for index, band in itertools.product(range(len(counts)), bands):
        sch, plan = _plan(spec, (*default.chosen[:3], layout, index, band), HOST)
        got = np.empty(spec.output_shape, "float32")
        tvm.compile(sch.mod, target=HOST).mod["main"](x, k, b, got)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(plan.values))


@pytest.mark.parametrize("layout", [CHANNEL_PARALLEL, ROW_PARALLEL, TILE_PARALLEL],
                         ids=["channel-parallel", "row-parallel", "tile-parallel"])
@pytest.mark.parametrize("shape,kernel,strides,padding,options", [
    ((2, 9, 11, 12), (3, 2), (2, 1), "same", {"depth_multiplier": 3}),  # 36 channels: 4-wide vectors
    ((1, 12, 10, 64), (3, 3), (1, 1), "valid", {"dilation_rate": 2, "dtype": "float16"}),
    ((1, 8, 8, 32), (5, 5), (1, 1), "same", {"dtype": "float64"}),
], ids=["multiplier-unequal-strides", "float16-dilated-valid", "float64-5x5"])
def test_every_parallel_layout_is_exact(shape, kernel, strides, padding, options, layout, rng):
    # Small test shapes default to the channel-parallel layout: the row- and tile-parallel ones,
    # which large layers default to, are forced here over dtypes, multipliers and strides.
    import numpy as np
    import tvm

    from reference import depthwise

    spec = DepthwiseSpec.from_keras(shape, kernel, strides, padding, **options)
    x, k, b = (rng.standard_normal(s).astype(spec.dtype) for s in (spec.input_shape, spec.kernel_shape, spec.bias_shape))
    want = depthwise(x, k, b, strides, padding, spec.dilation)
    _, default = _plan(spec, target=HOST)
    assert default.values[3] == 1  # channel-parallel by default
    sch, plan = _plan(spec, (*default.chosen[:3], layout), HOST)
    assert plan.values[3] == {CHANNEL_PARALLEL: 1, ROW_PARALLEL: 2, TILE_PARALLEL: 3}[layout]
    got = np.empty(spec.output_shape, spec.dtype)
    tvm.compile(sch.mod, target=HOST).mod["main"](x, k, b, got)
    tolerance = {"float16": 2e-2, "float32": 1e-5, "float64": 1e-10}[spec.dtype]
    np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance, err_msg=str(plan.values))


def test_nchw_cpu_structure():
    spec = DepthwiseSpec.from_keras((1, 32, 28, 28), 3, 1, "same", data_format="channels_first")
    script, _ = _script(spec, AVX512)
    assert "T.parallel(32)" in script and "T.vectorized(16)" in script
    assert 'pad_local' in script  # only a padded band of rows is materialized, in registers/L1


def test_knobs_are_recorded_in_the_trace():
    from tvm import s_tir

    spec = DepthwiseSpec.from_keras((1, 28, 28, 192), 3, 1, "same")
    sch = s_tir.Schedule(dwconv_tvm.compute.depthwise_module(spec))
    cpu_schedule.schedule(sch, spec, AVX512)
    kinds = [inst.kind.name for inst in sch.trace.insts]
    assert kinds.count("SampleCategorical") >= 3


CUDA_SPECS = [
    DepthwiseSpec.from_keras((1, 112, 112, 32), 3, 1, "same", activation="relu6"),
    DepthwiseSpec.from_keras((2, 56, 56, 144), 3, 2, "same", dtype="float16"),
    DepthwiseSpec.from_keras((1, 14, 14, 672), 5, 1, "same", depth_multiplier=2),
    DepthwiseSpec.from_keras((1, 9, 7, 6), (3, 2), (2, 1), "valid", use_bias=False),
    DepthwiseSpec.from_keras((1, 32, 28, 28), 3, 1, "same", data_format="channels_first"),
    DepthwiseSpec.from_keras((1, 33, 13, 11), 5, 1, "same", data_format="channels_first", dtype="float16"),
]


@pytest.mark.parametrize("spec", CUDA_SPECS, ids=lambda s: s.key)
def test_cuda_source_generation(spec):
    executable, name = build.build_executable(spec, CUDA_TARGETS[1])
    assert name == "default:cuda"
    source = executable.mod.imports[0].inspect_source()
    assert '__global__' in source and "threadIdx.x" in source and "blockIdx.x" in source
    assert "__shared__" in source  # input tile + halo staged in shared memory
    assert "__syncthreads()" in source
    assert "K_local" in source  # weights in registers
    bounds = [int(b) for b in re.findall(r"__launch_bounds__\((\d+)\)", source)]
    assert bounds and max(bounds) <= 1024
    if spec.dtype == "float16" and spec.layout == "NHWC":
        assert "half2" in source  # two channels per thread


def test_cuda_nhwc_threads_run_over_channels():
    mod, _ = build.schedule_for(CUDA_SPECS[0], CUDA_TARGETS[0])
    script = mod.script()
    assert 'thread_binding(32, thread="threadIdx.x")' in script  # 32 channels -> a full warp


@pytest.mark.parametrize("target", CUDA_TARGETS, ids=["sm_80", "sm_90"])
def test_cuda_export_library_without_gpu(tmp_path, target):
    path = dwconv_tvm.export(CUDA_SPECS[1], tmp_path / "dw_cuda.so", target)
    data = path.read_bytes()
    assert data[:4] == b"\x7fELF"
    # TVM 0.27 ships CUDA kernels as source, compiled by the CUDA runtime when loaded on a GPU.
    assert b"__global__" in data and b"main_kernel" in data
    sidecar = json.loads(path.with_suffix(".json").read_text())
    assert sidecar["target"] == str(target) and sidecar["spec"] == CUDA_SPECS[1].to_dict()
    assert sidecar["schedule"] == "default:cuda"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is needed to compile CUDA ahead of time")
@pytest.mark.parametrize("target", CUDA_TARGETS, ids=["sm_80", "sm_90"])
@pytest.mark.parametrize("spec", [CUDA_SPECS[1], CUDA_SPECS[2], CUDA_SPECS[5]], ids=["nhwc-fp16", "nhwc-dm2-k5", "nchw-fp16"])
def test_generated_cuda_compiles_with_nvcc(target, spec):
    cubin = build.cuda_binary(spec, target)
    assert cubin[:4] == b"\x7fELF"
    assert struct.unpack_from("<H", cubin, 18)[0] == 190  # EM_CUDA


def test_compile_cuda_without_gpu_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DWCONV_TVM_CACHE", str(tmp_path))
    with pytest.raises(RuntimeError, match="cannot run on this machine"):
        dwconv_tvm.compile(CUDA_SPECS[3], {"kind": "cuda", "arch": "sm_80"})


def test_prefetch_is_offered_for_layers_beyond_the_caches():
    from dwconv_tvm import prefetch

    # Batch 1 layers (3-4 MB) stay in the caches: no knob, no prefetch.
    sch, plan = _plan(DepthwiseSpec.from_keras((1, 56, 56, 144), 3, 1, "same"))
    assert prefetch.ANNOTATION not in sch.mod.script() and len(plan.sizes) == 5
    # Batch 8, row tiles of 2 x 4 in parallel: on by default. The tile two to the right adds
    # input rows 2-3 of its 4 x 6 window and its last 4 columns (2 * 4 + 2 from this tile's first).
    sch, plan = _plan(DepthwiseSpec.from_keras((8, 56, 56, 144), 3, 1, "same"))
    assert plan.values == [1, 2, 4, 2, 1, 1] and plan.sizes[-1] == 2
    assert f'"{prefetch.ANNOTATION}": [2, 2, 10, 4, 1, 16]' in sch.mod.script()
    # Stride 2 with channel chunks in parallel (18 MB): offered, off by default.
    sch, plan = _plan(DepthwiseSpec.from_keras((8, 56, 56, 144), 3, 2, "same"))
    assert plan.values[3] == 1 and plan.sizes[-1] == 2 and plan.values[-1] == 0
    assert prefetch.ANNOTATION not in sch.mod.script()
    # Winograd, 7-row tiles of one column pair: rows 2-8 of 9, columns 2 * 2 + 2 and + 3.
    from tvm import s_tir

    spec = DepthwiseSpec.from_keras((8, 56, 56, 144), 3, 1, "same")
    sch = s_tir.Schedule(dwconv_tvm.compute.depthwise_module(spec, "winograd"))
    cpu_schedule.schedule(sch, spec, AVX512)
    assert f'"{prefetch.ANNOTATION}": [2, 7, 6, 2, 1, 16]' in sch.mod.script()


@pytest.mark.parametrize("algorithm,shape,kernel,strides,dilation,multiplier", [
    ("direct", (2, 10, 12, 32), 3, 1, 1, 1),
    ("direct", (1, 9, 11, 32), 5, 2, 1, 1),
    ("direct", (1, 12, 13, 16), 3, 1, 2, 1),
    ("direct", (1, 8, 9, 8), 3, 1, 1, 2),  # 16 output channels read 8 input ones
    ("winograd", (2, 10, 12, 32), 3, 1, 1, 1),
])
def test_every_knob_combination_with_prefetch_is_exact(algorithm, shape, kernel, strides, dilation, multiplier, rng,
                                                       monkeypatch):
    # Prefetches read ahead of the tile, past the last row and column at the borders (clamped
    # there): every layout and tile with them must still give the reference (those without are
    # the other tests' spaces).
    from knob_checks import assert_every_knob_combination_matches
    from reference import depthwise

    monkeypatch.setattr(cpu_schedule, "PREFETCH_BYTES", 0)
    spec = DepthwiseSpec.from_keras(shape, kernel, strides, "same", dilation_rate=dilation, depth_multiplier=multiplier)
    x, k, b = (rng.standard_normal(s).astype("float32") for s in (spec.input_shape, spec.kernel_shape, spec.bias_shape))
    want = depthwise(x, k, b, (strides,) * 2, "same", (dilation,) * 2)
    assert_every_knob_combination_matches(spec, algorithm, HOST, (x, k, b), want, min_space=3, last_decision=1)


def test_prefetch_survives_trace_replay_and_reaches_the_machine_code(monkeypatch):
    # Tuning records keep the decision as a loop annotation in their traces; every build turns
    # it into prefetch instructions (`prefetcht1` on x86: into L2).
    import tvm
    from tvm import s_tir

    from dwconv_tvm import prefetch

    monkeypatch.setattr(cpu_schedule, "PREFETCH_BYTES", 0)
    spec = DepthwiseSpec.from_keras((1, 16, 16, 32), 3, 1, "same")
    _, default = _plan(spec, target=AVX512)
    tuned, plan = _plan(spec, (*default.chosen[:-1], 1), AVX512)
    assert plan.values[-1] == 1
    replayed = s_tir.Schedule(dwconv_tvm.compute.depthwise_module(spec))
    tuned.trace.apply_to_schedule(replayed, remove_postproc=False)
    rewritten = prefetch.apply(replayed.mod)
    assert 'T.sblock("prefetch")' in rewritten.script() and prefetch.ANNOTATION not in rewritten.script()
    asm = tvm.compile(rewritten, target=AVX512).mod.inspect_source("s")
    assert "prefetcht1" in asm
    untouched, _ = _plan(spec, (*default.chosen[:-1], 0), AVX512)
    plain = untouched.mod
    assert prefetch.apply(plain) is plain
    assert "prefetch" not in tvm.compile(plain, target=AVX512).mod.inspect_source("s")
