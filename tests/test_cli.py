"""The `dwconv-tvm` command as a user runs it."""

import os
import subprocess
import sys

import pytest


def _cli(*args):
    command = [sys.executable, "-m", "dwconv_tvm.cli", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=os.environ.copy())


def test_demo_runs_and_checks_against_reference():
    result = _cli("demo")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "(4, 10, 10, 12) -> output (4, 3, 3, 12)" in out
    assert "(4, 10, 10, 12) -> output (4, 8, 8, 36)" in out
    assert "(1, 112, 112, 32) -> output (1, 112, 112, 32)" in out
    assert "MISMATCH" not in out and "all outputs match the NumPy reference" in out


@pytest.mark.parametrize("command", ["info", "targets"])
def test_info_and_targets(command):
    result = _cli(command)
    assert result.returncode == 0, result.stderr
    assert "llvm" in result.stdout


def test_info_says_when_a_target_has_no_shipped_logs():
    # Records of one CPU model never apply to another: a user on a CPU we did not tune for is
    # told which keys are shipped and how to tune for theirs.
    haswell = '{"kind": "llvm", "mcpu": "haswell", "num-cores": 2}'
    result = _cli("info", "--target", haswell)
    assert result.returncode == 0, result.stderr
    assert "no shipped logs for llvm-haswell (shipped: " in result.stdout and "llvm-znver4" in result.stdout
    assert f"--target '{haswell}'" in result.stdout
    shipped = _cli("info", "--target", '{"kind": "llvm", "mcpu": "znver4", "num-cores": 2}')
    assert shipped.returncode == 0 and "no shipped logs" not in shipped.stdout


def test_info_rejects_bad_layer_arguments_before_printing():
    # A half-printed report above an error reads as if the target part were fine to act on.
    result = _cli("info", "--model", "mobilenet_v2", "--batch", "0")
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "`batch` must be > 0" in result.stderr


@pytest.mark.parametrize("buffered", [False, True])
def test_output_into_a_closed_pipe_ends_quietly(buffered):
    # As `dwconv-tvm info --model mobilenet_v2 | head -1`: the reader leaves early. Unbuffered
    # (PYTHONUNBUFFERED, common in containers) a print fails; buffered, the final flush does.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if not buffered:
        env["PYTHONUNBUFFERED"] = "1"
    command = [sys.executable, "-m", "dwconv_tvm.cli", "info", "--model", "mobilenet_v2"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env) as proc:
        if not buffered:
            assert proc.stdout.readline().startswith(b"dwconv-tvm")
        proc.stdout.close()
        stderr = proc.stderr.read().decode()
        assert proc.wait(timeout=600) == 141
    assert "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_bad_target_is_a_clear_error():
    result = _cli("demo", "--target", "no-such-target")
    assert result.returncode == 2
    assert "Invalid `target`" in result.stderr and "Traceback" not in result.stderr
