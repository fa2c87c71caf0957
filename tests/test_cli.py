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


def test_bad_target_is_a_clear_error():
    result = _cli("demo", "--target", "no-such-target")
    assert result.returncode == 2
    assert "Invalid `target`" in result.stderr and "Traceback" not in result.stderr
