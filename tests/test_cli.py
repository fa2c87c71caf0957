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


def _layer_lines(stdout: str) -> dict[str, str]:
    """`info`'s per-layer lines: what it says, by spec key."""
    return dict(line.split(": ", 1) for line in stdout.splitlines() if line.startswith("nhwc_"))


def test_info_names_the_layers_that_prefetch_their_input():
    # Shipped Zen 4 logs, batch 8: the 48 MB 112x112x96 s2 layer runs a prefetching record, the
    # 18 MB 56x56x144 s2 one does not.
    znver4 = '{"kind": "llvm", "mcpu": "znver4", "num-cores": 2}'
    result = _cli("info", "--model", "mobilenet_v2", "--batch", "8", "--target", znver4)
    assert result.returncode == 0, result.stderr
    lines = _layer_lines(result.stdout)
    assert "tuned direct with input prefetch" in lines["nhwc_n8_h112_w112_c96_k3x3_s2x2_d1x1_p0.0.1.1_m1_nobias_linear_float32"]
    assert "prefetch" not in lines["nhwc_n8_h56_w56_c144_k3x3_s2x2_d1x1_p0.0.1.1_m1_nobias_linear_float32"]
    # Without logs, the default: it prefetches from 24 MB in row-parallel layouts.
    untuned = _cli("info", "--model", "mobilenet_v2", "--batch", "8", "--target", "x86-64-avx512")
    lines = _layer_lines(untuned.stdout)
    assert lines["nhwc_n8_h112_w112_c96_k3x3_s2x2_d1x1_p0.0.1.1_m1_nobias_linear_float32"] == (
        "hand-written default (direct, input prefetch)")
    assert lines["nhwc_n8_h7_w7_c960_k3x3_s1x1_d1x1_p1.1.1.1_m1_nobias_linear_float32"] == "hand-written default (direct)"


def test_info_on_a_target_kind_without_a_schedule_is_an_error_before_printing():
    # Layers on such a target do not compile: no "hand-written default" line may say otherwise.
    result = _cli("info", "--input-shape", "1,8,8,16", "--target", "c")
    assert result.returncode == 2 and result.stdout == ""
    assert "No schedule for target kind 'c'. Supported kinds: ['cuda', 'llvm']" in result.stderr
    assert _cli("info", "--target", "c").returncode == 0  # without layers: the target report


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
