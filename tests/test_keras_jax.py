"""dwconv_tvm.keras on Keras's JAX backend: eager calls, jit, vmap, predict and gradients.

The checks run in one child process (keras_jax_checks.py), since Keras's backend is fixed per
process and this session runs on torch.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("jax")

CHECKS = Path(__file__).with_name("keras_jax_checks.py")
CASES = ["relu6", "channels_first_softmax", "strided_no_bias"]


@pytest.fixture(scope="module")
def seen():
    env = {**os.environ, "KERAS_BACKEND": "jax"}
    result = subprocess.run([sys.executable, str(CHECKS)], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("how", ["eager", "jit", "vmap", "predict"])
def test_inference_runs_the_kernel_and_matches_keras(seen, case, how):
    found = seen[case][how]
    assert found["kernels"] == 1
    assert found["gap"] < 1e-5
    if how == "eager":
        assert found["type"] == "ArrayImpl"  # a JAX array back


@pytest.mark.parametrize("case", CASES)
def test_shape_inference_and_training_compile_no_kernel(seen, case):
    assert seen[case]["kernels_after_model_building"] == 0
    assert seen[case]["training_kernels"] == 0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("wrt", ["grad", "weight_grad"])  # input and weights; weights alone
def test_gradients_of_inference_calls_match_keras(seen, case, wrt):
    found = seen[case][wrt]
    assert found["kernels"] == 1  # the forward pass ran our kernel
    assert all(gap < 1e-5 * max(1.0, found["scale"]) for gap in found["gaps"])
