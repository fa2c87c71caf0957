"""Kernel cache (memory and disk), compile-time errors, CompiledOp argument checks, big tensors."""

import json
import os
import subprocess
import sys
import textwrap
import weakref

import numpy as np
import pytest

import dwconv_tvm
from dwconv_tvm import DepthwiseSpec, build
from dwconv_tvm.compute import depthwise_primfunc
from reference import depthwise

SPEC = DepthwiseSpec.from_keras((1, 11, 9, 6), 3, 2, "same", 2, activation="relu")


def _run_python(code: str, env: dict) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_memory_cache_returns_same_op():
    assert dwconv_tvm.compile(SPEC) is dwconv_tvm.compile(SPEC, "host")


def test_second_process_loads_instead_of_compiling(tmp_path):
    env = {**os.environ, "DWCONV_TVM_CACHE": str(tmp_path)}
    code = """
        import dwconv_tvm, dwconv_tvm.build as b
        from dwconv_tvm import DepthwiseSpec
        calls = []
        original = b._build
        b._build = lambda *a: calls.append(1) or original(*a)
        op = dwconv_tvm.compile(DepthwiseSpec.from_keras((1, 11, 9, 6), 3, 2, "same", 2, activation="relu"))
        print(len(calls), op.path)
    """
    first = _run_python(code, env).split()
    second = _run_python(code, env).split()
    assert first[0] == "1" and second[0] == "0" and first[1] == second[1]
    sidecar = json.loads(open(first[1][:-3] + ".json").read())
    assert sidecar["spec"] == SPEC.to_dict() and sidecar["schedule"] == "default:llvm"
    assert "llvm" in sidecar["target"] and sidecar["tvm_version"]


def test_cache_key_separates_targets_and_specs(tmp_path):
    host = dwconv_tvm.resolve_target("host")
    other = dwconv_tvm.resolve_target({"kind": "llvm", "mcpu": "haswell", "num-cores": 2})
    other_spec = DepthwiseSpec.from_keras((1, 11, 9, 6), 3, 2, "same", 2)
    paths = {
        build.kernel_path(SPEC, host, "default:llvm", tmp_path),
        build.kernel_path(SPEC, other, "default:llvm", tmp_path),
        build.kernel_path(other_spec, host, "default:llvm", tmp_path),
        build.kernel_path(SPEC, host, "tuned:user:0123456789ab", tmp_path),
    }
    assert len(paths) == 4
    assert build.kernel_path(SPEC, host, "default:llvm", tmp_path).parent.name == dwconv_tvm.target_key(host)


@pytest.mark.parametrize("damage", ["truncate_so", "garbage_json", "foreign_json"])
def test_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch, rng, damage):
    monkeypatch.setenv("DWCONV_TVM_CACHE", str(tmp_path))
    spec = DepthwiseSpec.from_keras((1, 7, 7, 3), 3, 1, "valid", 1, use_bias=False)
    monkeypatch.setattr(build, "_memory", {})
    op = dwconv_tvm.compile(spec)
    so, sidecar = op.path, op.path.with_suffix(".json")
    if damage == "truncate_so":
        truncated = so.read_bytes()[:100]
        so.unlink()  # a new file: the loaded library keeps its own mapping
        so.write_bytes(truncated)
    elif damage == "garbage_json":
        sidecar.write_text("{")
    else:
        data = json.loads(sidecar.read_text())
        data["spec"]["channels"] = 99
        sidecar.write_text(json.dumps(data))
    monkeypatch.setattr(build, "_memory", {})
    with pytest.warns(UserWarning, match="Ignoring cache entry"):
        again = dwconv_tvm.compile(spec)
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    k = rng.standard_normal(spec.kernel_shape).astype(np.float32)
    np.testing.assert_allclose(again(x, k), depthwise(x, k), atol=1e-5)
    assert json.loads(sidecar.read_text())["spec"] == spec.to_dict()


def test_no_temporary_files_left(tmp_path, monkeypatch):
    monkeypatch.setenv("DWCONV_TVM_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "_memory", {})
    dwconv_tvm.compile(DepthwiseSpec.from_keras((1, 6, 6, 2), 3))
    names = [p.name for p in tmp_path.rglob("*") if p.is_file()]
    assert len(names) == 2 and not any(n.startswith(".") for n in names)


@pytest.mark.parametrize("umask", [0o022, 0o077], ids=["umask-022", "umask-077"])
def test_written_files_get_the_permissions_of_a_plain_open(tmp_path, umask):
    # Exported libraries, their sidecars and shared tuning logs are read by other users (a
    # service account, a teammate): the temporary file's owner-only mode must not stick.
    previous = os.umask(umask)
    try:
        dwconv_tvm.export(DepthwiseSpec.from_keras((1, 6, 6, 2), 3), tmp_path / "dw.so")
    finally:
        os.umask(previous)
    sidecar, library = (tmp_path / "dw.json").stat().st_mode & 0o777, (tmp_path / "dw.so").stat().st_mode & 0o777
    assert sidecar == 0o666 & ~umask
    assert library & 0o444 == 0o444 & ~umask  # readable by whoever a plain linker output is


def test_unwritable_cache_warns_and_compiles_in_memory(tmp_path, monkeypatch, rng):
    # A read-only home (containers, serverless apps) must not stop the layer from running.
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("DWCONV_TVM_CACHE", str(blocker / "cache"))
    monkeypatch.setattr(build, "_memory", {})
    spec = DepthwiseSpec.from_keras((1, 6, 6, 2), 3)
    with pytest.warns(UserWarning, match="kernel cache .* cannot be written.*DWCONV_TVM_CACHE"):
        op = dwconv_tvm.compile(spec)
    assert op.path is None
    x = rng.standard_normal(spec.input_shape).astype(np.float32)
    k = rng.standard_normal(spec.kernel_shape).astype(np.float32)
    b = rng.standard_normal(spec.bias_shape).astype(np.float32)
    np.testing.assert_allclose(op(x, k, b), depthwise(x, k, b), atol=1e-5)


def test_use_cache_false_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("DWCONV_TVM_CACHE", str(tmp_path))
    monkeypatch.setattr(build, "_memory", {})
    op = dwconv_tvm.compile(DepthwiseSpec.from_keras((1, 6, 6, 2), 3), use_cache=False)
    assert op.path is None and not any(tmp_path.rglob("*.so"))


def test_compile_argument_errors():
    with pytest.raises(TypeError, match="spec"):
        dwconv_tvm.compile((1, 5, 5, 2))
    with pytest.raises(ValueError, match="target"):
        dwconv_tvm.compile(SPEC, target="no-such-target")
    with pytest.raises(TypeError, match="target"):
        dwconv_tvm.compile(SPEC, target=42)
    with pytest.raises(ValueError, match="No schedule"):
        dwconv_tvm.compile(SPEC, target={"kind": "c"})


def test_op_argument_errors(rng):
    op = dwconv_tvm.compile(SPEC)
    x = rng.standard_normal(SPEC.input_shape).astype(np.float32)
    k = rng.standard_normal(SPEC.kernel_shape).astype(np.float32)
    b = np.zeros(SPEC.bias_shape, np.float32)
    with pytest.raises(ValueError, match="`x` must have shape"):
        op(x[:, :-1], k, b)
    with pytest.raises(TypeError, match="`x` must have dtype float32"):
        op(x.astype(np.float64), k, b)
    with pytest.raises(ValueError, match="`kernel` must have shape"):
        op(x, k[:2], b)
    with pytest.raises(ValueError, match="`bias` is required"):
        op(x, k)
    with pytest.raises(ValueError, match="`out` must have shape"):
        op(x, k, b, out=np.empty((1, 2, 3, 4), np.float32))
    with pytest.raises(ValueError, match="overlap"):
        op(x, k, b, out=_aliasing_out(x))
    with pytest.raises(TypeError, match="`x` must be a NumPy array"):
        op("not an array", k, b)
    no_bias = dwconv_tvm.compile(DepthwiseSpec.from_keras((1, 11, 9, 6), 3, use_bias=False))
    with pytest.raises(ValueError, match="`bias` must be None"):
        no_bias(x, k[..., :1], b)


def _op_arguments(rng, scale=1.0):
    x = rng.standard_normal(SPEC.input_shape).astype(np.float32) * np.float32(scale)
    return x, rng.standard_normal(SPEC.kernel_shape).astype(np.float32), rng.standard_normal(SPEC.bias_shape).astype(np.float32)


def _op_expected(x, k, b):
    return np.maximum(depthwise(x, k, b, strides=(2, 2), padding="same"), 0)


def test_op_reuses_dropped_outputs_and_never_held_ones(rng):
    op = dwconv_tvm.compile(SPEC)
    x, k, b = _op_arguments(rng)
    first = op(x, k, b)
    assert first.ctypes.data % 64 == 0
    pooled = weakref.ref(first)
    del first
    again = op(x, k, b)
    assert again is pooled()  # dropped, so reused
    np.testing.assert_allclose(again, _op_expected(x, k, b), atol=1e-5)
    kept = again[0, 1:]  # a view holds the buffer
    values = kept.copy()
    del again
    later = [op(x * np.float32(s), k, b) for s in (2.0, 3.0, 4.0)]
    assert not any(np.shares_memory(kept, z) for z in later)
    np.testing.assert_array_equal(kept, values)
    for s, z in zip((2.0, 3.0, 4.0), later):
        np.testing.assert_allclose(z, _op_expected(x * np.float32(s), k, b), atol=1e-4)
    # Arguments off the fast path: a strided view (copied), a read-only array, another dtype object.
    strided = np.repeat(x, 2, axis=3)[..., ::2]
    readonly = x.copy()
    readonly.flags.writeable = False
    for variant in (strided, readonly, x.astype(np.dtype(np.float32, metadata={"unit": "m"}))):
        np.testing.assert_allclose(op(variant, k, b), _op_expected(x, k, b), atol=1e-5)
    with pytest.raises(TypeError, match="`x` must have dtype float32"):
        op(x.astype(">f4"), k, b)


def test_op_concurrent_calls_from_threads(rng, run_in_threads):
    # Each thread compares a result it holds while the others call: a pooled array handed to
    # another thread too early would be overwritten under it.
    op = dwconv_tvm.compile(SPEC)
    _, k, b = _op_arguments(rng)
    inputs = [_op_arguments(rng)[0] for _ in range(6)]
    expected = [op(x, k, b).copy() for x in inputs]
    errors = []

    def work(i):
        for r in range(60):
            j = (i + r) % len(inputs)
            y = op(inputs[j], k, b)
            if not np.array_equal(y, expected[j]):
                errors.append(j)

    run_in_threads(work)
    assert errors == []


def test_op_keeps_no_large_outputs_alive(rng, monkeypatch):
    # Ops stay in the process's compile cache: a pool there would hold its outputs for good.
    from dwconv_tvm import runtime

    cached = dwconv_tvm.compile(SPEC)
    x, k, b = _op_arguments(rng)
    nbytes = int(np.prod(SPEC.output_shape)) * 4
    for limit, kept in ((nbytes, True), (nbytes - 1, False)):
        monkeypatch.setattr(runtime, "POOLED_OUTPUT_BYTES", limit)
        op = runtime.CompiledOp(cached.module, SPEC, cached.target, cached.schedule)
        y = op(x, k, b)
        np.testing.assert_allclose(y, _op_expected(x, k, b), atol=1e-5)
        ref = weakref.ref(y)
        del y
        assert (ref() is not None) == kept


def _aliasing_out(x):
    size = int(np.prod(SPEC.output_shape))
    return x.reshape(-1)[:size].reshape(SPEC.output_shape)


def test_index_dtype_switches_to_int64():
    small = depthwise_primfunc(SPEC)
    assert "int64" not in small.script()
    big = DepthwiseSpec("NHWC", 1, 1, 2**27 + 8, 16, (1, 1), dtype="float16")
    assert big.max_elements > 2**31 - 1
    assert "T.int64" in depthwise_primfunc(big).script()


def test_more_than_2_31_elements_compute_correctly():
    # 2^31 + 128 float16 elements in and out (4 GiB each): the tail is only reachable with
    # 64-bit offsets; 32-bit indexing would wrap around and write/read the wrong place.
    spec = DepthwiseSpec("NHWC", 1, 1, 2**27 + 8, 16, (1, 1), dtype="float16")
    x = np.empty(spec.input_shape, np.float16)  # untouched pages stay virtual
    tail = np.arange(64, dtype=np.float16).reshape(4, 16)
    x[0, 0, -4:] = tail
    x[0, 0, :4] = 1
    k = np.full(spec.kernel_shape, 2, np.float16)
    b = np.full(spec.bias_shape, 0.5, np.float16)
    y = dwconv_tvm.compile(spec)(x, k, b)
    np.testing.assert_array_equal(y[0, 0, -4:], tail * 2 + np.float16(0.5))
    np.testing.assert_array_equal(y[0, 0, :4], np.full((4, 16), 2.5, np.float16))


def test_interrupted_write_keeps_previous_file(tmp_path):
    from dwconv_tvm import cache

    target = tmp_path / "kernel.so"
    target.write_bytes(b"previous")

    def dies_halfway(tmp):
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.atomic_write(target, dies_halfway, suffix=".so")
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["kernel.so"]
