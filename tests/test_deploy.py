"""Named targets, `dwconv-tvm compile`, cross-compiling, `dwconv_tvm.load`, and the
runtime-only Python and C++ example apps, checked against the layer's numbers."""

import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

import dwconv_tvm
from dwconv_tvm import DepthwiseSpec, deploy
from dwconv_tvm.targets import named_target
from reference import ACTIVATIONS, depthwise

ROOT = Path(__file__).resolve().parents[1]
SPEC = DepthwiseSpec.from_keras((1, 12, 12, 16), 3, 1, "same", activation="relu6")
ELF_MACHINE = {"x86_64": 62, "aarch64": 183}


def _elf_machine(data: bytes) -> int:
    assert data[:4] == b"\x7fELF"
    return int.from_bytes(data[18:20], "little")


def _inputs(spec, rng):
    x = rng.standard_normal(spec.input_shape).astype(spec.dtype)
    k = rng.standard_normal(spec.kernel_shape).astype(spec.dtype)
    b = rng.standard_normal(spec.bias_shape).astype(spec.dtype) if spec.bias else None
    return x, k, b


def _expected(x, k, b):
    return ACTIVATIONS["relu6"](depthwise(x, k, b, padding="same"))


@pytest.mark.parametrize("name,key", [
    ("x86-64-avx2", "llvm-haswell"), ("x86-64-avx512", "llvm-skylake-avx512"),
    ("aarch64", "llvm-aarch64-cortex-a72"), ("cuda", "cuda-sm_80"), ("cuda:sm_90", "cuda-sm_90"),
])
def test_named_targets(name, key):
    assert dwconv_tvm.target_key(name) == key


def test_named_target_arguments():
    assert named_target("cuda", "sm_90")["arch"] == "sm_90"
    assert named_target("nope") is None
    with pytest.raises(ValueError, match="arch"):
        named_target("cuda", "90")
    with pytest.raises(ValueError, match="arch"):
        named_target("x86-64-avx2", "sm_90")
    with pytest.raises(ValueError, match="named target"):
        dwconv_tvm.resolve_target("not-a-target")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    return dwconv_tvm.export(SPEC, tmp_path_factory.mktemp("export") / "dw.so")


def test_export_writes_library_and_sidecar(exported):
    sidecar = json.loads(exported.with_suffix(".json").read_text())
    assert sidecar["entry"] == "main" and sidecar["kind"] == "shared-library"
    assert [a["name"] for a in sidecar["arguments"]] == ["x", "kernel", "bias", "out"]
    assert sidecar["arguments"][0] == {"name": "x", "shape": [1, 12, 12, 16], "layout": "NHWC", "dtype": "float32"}
    assert sidecar["arguments"][1]["layout"] == "HWCM" and sidecar["arguments"][-1]["output"] is True
    assert DepthwiseSpec.from_dict(sidecar["spec"]) == SPEC
    assert sidecar["tvm_version"] and sidecar["schedule"].startswith(("default:", "tuned:"))
    assert _elf_machine(exported.read_bytes()) == ELF_MACHINE[deploy.host_arch()]
    if deploy.host_arch() == "x86_64":  # what the app-side CPU check reads
        assert {"AVX", "SSE42"} <= set(sidecar["cpu_features"])


@pytest.fixture(scope="module")
def foreign_cpu_export(tmp_path_factory):
    """`(library, extension this CPU lacks)`: an export that loads here and would die of SIGILL."""
    from numpy._core._multiarray_umath import __cpu_features__ as host

    if deploy.host_arch() != "x86_64":
        pytest.skip("x86 targets")
    # Bulldozer's FMA4/XOP and Sapphire Rapids' AVX512-FP16: no CPU has both.
    cpu, lacking = next((c, f) for c, f in (("bdver2", "FMA4"), ("sapphirerapids", "AVX512FP16")) if not host.get(f))
    target = {"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": cpu}
    return dwconv_tvm.export(SPEC, tmp_path_factory.mktemp("foreign") / f"dw_{cpu}.so", target), lacking


def test_load_checks_calls_against_the_sidecar(exported, rng):
    op = dwconv_tvm.load(exported)
    x, k, b = _inputs(SPEC, rng)
    np.testing.assert_allclose(op(x, k, b), _expected(x, k, b), atol=1e-4)
    with pytest.raises(ValueError, match=r"`x` must have shape \(1, 12, 12, 16\)"):
        op(x[:, :6], k, b)
    with pytest.raises(TypeError, match="dtype float32"):
        op(x.astype(np.float64), k, b)
    with pytest.raises(ValueError, match="`bias` is required"):
        op(x, k)


def test_load_refuses_damaged_or_missing_sidecars(exported, tmp_path):
    copy = tmp_path / "dw.so"
    shutil.copy(exported, copy)
    with pytest.raises(ValueError, match="sidecar"):
        dwconv_tvm.load(copy)
    (tmp_path / "dw.json").write_text("{not json")
    with pytest.raises(ValueError, match="sidecar"):
        dwconv_tvm.load(copy)
    shutil.copy(exported.with_suffix(".json"), tmp_path / "dw.json")
    with open(copy, "ab") as f:
        f.write(b"tampered")
    with pytest.raises(ValueError, match="checksum"):
        dwconv_tvm.load(copy)
    with pytest.raises(ValueError, match="No library"):
        dwconv_tvm.load(tmp_path / "missing.so")


def test_named_cpu_target_runs_here(tmp_path, rng):
    path = dwconv_tvm.export(SPEC, tmp_path / "dw_avx2.so", "x86-64-avx2")
    x, k, b = _inputs(SPEC, rng)
    np.testing.assert_allclose(dwconv_tvm.load(path)(x, k, b), _expected(x, k, b), atol=1e-4)


def test_library_for_a_cpu_with_more_extensions_is_refused(foreign_cpu_export):
    # Loading works, but the first call would die of SIGILL: refuse with a clear error first.
    path, lacking = foreign_cpu_export
    target = json.loads(path.with_suffix(".json").read_text())["target"]
    with pytest.raises(RuntimeError, match=f"{lacking}.*this CPU lacks"):
        dwconv_tvm.load(path)
    with pytest.raises(RuntimeError, match=lacking):
        dwconv_tvm.compile(SPEC, target, use_cache=False)
    assert dwconv_tvm.targets.missing_cpu_features(dwconv_tvm.targets.target_text("host")) == ()


def test_aarch64_without_a_cross_linker_writes_an_object_archive(tmp_path, monkeypatch):
    monkeypatch.setenv(deploy.CROSS_CC_ENV, "no-such-cross-gcc")
    with pytest.warns(UserWarning, match="No cross linker for aarch64"):
        path = dwconv_tvm.export(SPEC, tmp_path / "dw_arm.so", "aarch64")
    assert path.suffix == ".tar" and json.loads(path.with_suffix(".json").read_text())["kind"] == "object-archive"
    with tarfile.open(path) as archive:
        objects = [m for m in archive.getmembers() if m.name.endswith(".o")]
        assert objects and all(_elf_machine(archive.extractfile(m).read()) == 183 for m in objects)
    with pytest.raises(ValueError, match="object archive"):
        dwconv_tvm.load(path)


@pytest.mark.skipif(deploy.cross_compiler("aarch64") is None,
                    reason="needs Debian's gcc-aarch64-linux-gnu (.ci/run installs it)")
def test_aarch64_cross_linked_shared_library(tmp_path):
    path = dwconv_tvm.export(SPEC, tmp_path / "dw_arm.so", "aarch64")
    assert path.suffix == ".so" and _elf_machine(path.read_bytes()) == 183
    with pytest.raises(RuntimeError, match="cannot run on this machine"):
        dwconv_tvm.load(path)


def _cli(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "dwconv_tvm.cli", *args], capture_output=True, text=True,
                          timeout=600, **kwargs)


LAYER_FLAGS = ["--input-shape", "1,12,12,16", "--kernel-size", "3", "--strides", "1", "--padding", "same",
               "--depth-multiplier", "1", "--data-format", "channels_last", "--dilation-rate", "1",
               "--activation", "relu6", "--dtype", "float32"]


def test_cli_compile_then_runtime_only_python_app(tmp_path, rng):
    result = _cli("compile", *LAYER_FLAGS, "--target", "host", "-o", str(tmp_path / "dw.so"))
    assert result.returncode == 0, result.stderr
    assert "main(x(1, 12, 12, 16), kernel(3, 3, 16, 1), bias(16,), out(1, 12, 12, 16))" in result.stdout
    x, k, b = _inputs(SPEC, rng)
    for name, value in (("x", x), ("k", k), ("b", b)):
        np.save(tmp_path / f"{name}.npy", value)
    # The app in a fresh interpreter; afterwards neither dwconv_tvm nor the TVM compiler is loaded.
    script = (
        "import runpy, sys; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__'); "
        "loaded = sorted({m.split('.')[0] for m in sys.modules} & {'tvm', 'dwconv_tvm'}); print('loaded', loaded)"
    )
    app = subprocess.run(
        [sys.executable, "-c", script, str(ROOT / "examples" / "runtime_only.py"), "dw.so", "--x", "x.npy",
         "--kernel", "k.npy", "--bias", "b.npy", "--out", "y.npy"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert app.returncode == 0, app.stderr
    assert "loaded []" in app.stdout
    layer = dwconv_tvm.DepthwiseConv2D(3, padding="same", activation="relu6")
    layer.build(SPEC.input_shape)
    layer.set_weights([k, b])
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), layer(x))


def test_cli_compile_for_cuda_without_gpu(tmp_path):
    result = _cli("compile", *LAYER_FLAGS, "--target", "cuda", "--arch", "sm_90", "-o", str(tmp_path / "dw.so"))
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "dw.json").read_text())["target"].find('"arch":"sm_90"') > 0


@pytest.mark.parametrize("args,needle", [
    (["--model", "mobilenet_v2"], "one layer"),
    (LAYER_FLAGS + ["--target", "host", "--arch", "sm_90"], "arch"),
    (LAYER_FLAGS + ["--target", "nope"], "named target"),
    (["--input-shape", "1,12,12"], "ndim=4"),
])
def test_cli_compile_errors(args, needle, tmp_path):
    result = _cli("compile", *args, "-o", str(tmp_path / "dw.so"))
    assert result.returncode == 2 and needle in result.stderr, result.stderr


def test_export_names_a_path_where_no_folder_can_be_made(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(ValueError, match="`path` must be in a folder this process can create"):
        dwconv_tvm.export(DepthwiseSpec.from_keras((1, 6, 6, 2), 3), blocker / "libs" / "dw.so")


@pytest.fixture(scope="module")
def cpp_app(tmp_path_factory):
    """The C++ example app, built with CMake."""
    if shutil.which("cmake") is None:
        pytest.skip("needs cmake")
    build_dir = tmp_path_factory.mktemp("cpp") / "build"
    configure = subprocess.run(
        ["cmake", "-S", str(ROOT / "examples" / "cpp"), "-B", str(build_dir), f"-DPython_EXECUTABLE={sys.executable}"],
        capture_output=True, text=True, timeout=300,
    )
    assert configure.returncode == 0, configure.stdout + configure.stderr
    built = subprocess.run(["cmake", "--build", str(build_dir)], capture_output=True, text=True, timeout=600)
    assert built.returncode == 0, built.stdout + built.stderr
    return build_dir / "dwconv_app"


def test_cpp_app_matches_the_layer(cpp_app, exported, tmp_path, rng):
    x, k, b = _inputs(SPEC, rng)
    for name, value in (("x", x), ("k", k), ("b", b)):
        value.tofile(tmp_path / f"{name}.bin")
    run = subprocess.run(
        [str(cpp_app), str(exported), "x.bin", "k.bin", "b.bin", "out.bin"],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )
    assert run.returncode == 0, run.stderr
    out = np.fromfile(tmp_path / "out.bin", np.float32).reshape(SPEC.output_shape)
    layer = dwconv_tvm.DepthwiseConv2D(3, padding="same", activation="relu6")
    layer.build(SPEC.input_shape)
    layer.set_weights([k, b])
    np.testing.assert_array_equal(out, layer(x))
    short = subprocess.run([str(cpp_app), str(exported), "x.bin", "out.bin"],
                           capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert short.returncode == 2 and "expected 4 tensor files" in short.stderr


def test_cpp_app_refuses_a_library_for_a_cpu_with_more_extensions(cpp_app, foreign_cpu_export, tmp_path):
    path, lacking = foreign_cpu_export
    for name in ("x", "k", "b"):
        (tmp_path / f"{name}.bin").write_bytes(b"")
    run = subprocess.run([str(cpp_app), str(path), "x.bin", "k.bin", "b.bin", "out.bin"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert run.returncode == 3 and lacking in run.stderr and "this CPU lacks" in run.stderr, run.stderr


def test_runtime_only_python_app_refuses_a_library_for_a_cpu_with_more_extensions(foreign_cpu_export, tmp_path):
    path, lacking = foreign_cpu_export
    for name in ("x", "k", "b"):
        np.save(tmp_path / f"{name}.npy", np.zeros(1, np.float32))
    app = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "runtime_only.py"), str(path), "--x", "x.npy", "--kernel", "k.npy",
         "--bias", "b.npy", "--out", "y.npy"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300,
    )
    assert app.returncode == 1 and lacking in app.stderr and "this CPU lacks" in app.stderr, app.stderr
    assert not (tmp_path / "y.npy").exists()
