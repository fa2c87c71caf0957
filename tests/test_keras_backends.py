"""dwconv_tvm.keras on Keras's JAX and TensorFlow backends, against keras.layers.DepthwiseConv2D.

Keras's backend is fixed per process and this session runs on torch, so each backend's checks
run in one child process (keras_backend_checks.py).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

CHECKS = Path(__file__).with_name("keras_backend_checks.py")
CASES = ["relu6", "channels_first_softmax", "strided_no_bias"]
MODULES = {"jax": "jax", "tensorflow": "tensorflow"}
# Where each backend runs our kernel (1) or Keras's code (0), beyond eager calls.
KERNEL_USED = {
    "jax": {"eager": 1, "jit": 1, "vmap": 1, "predict": 1},
    # Graphs (tf.function, and so predict) run Keras's code: see tensorflow_checks.
    "tensorflow": {"eager": 1, "graph": 0, "predict": 0},
}
EAGER_TYPE = {"jax": "ArrayImpl", "tensorflow": "EagerTensor"}
RUNS = [(backend, how) for backend, hows in KERNEL_USED.items() for how in hows]

_runs: dict[str, subprocess.CompletedProcess] = {}


def seen(backend: str) -> dict:
    """The child process's report for `backend` (run once per session, failed or not)."""
    if importlib.util.find_spec(MODULES[backend]) is None:
        pytest.skip(f"{backend} is not installed")
    if backend not in _runs:
        env = {**os.environ, "KERAS_BACKEND": backend}
        _runs[backend] = subprocess.run([sys.executable, str(CHECKS), backend], capture_output=True, text=True,
                                        env=env, timeout=600)
    result = _runs[backend]
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend,how", RUNS)
def test_inference_matches_keras(backend, how, case):
    found = seen(backend)[case][how]
    assert found["kernels"] == KERNEL_USED[backend][how]
    assert found["gap"] < 1e-5
    if how == "eager":
        assert found["type"] == EAGER_TYPE[backend]  # the backend's own tensor back


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("backend", list(KERNEL_USED))
def test_shape_inference_and_training_compile_no_kernel(backend, case):
    assert seen(backend)[case]["kernels_after_model_building"] == 0
    assert seen(backend)[case]["training_kernels"] == 0


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("wrt", ["grad", "weight_grad"])  # input and weights; weights alone
@pytest.mark.parametrize("backend", list(KERNEL_USED))
def test_gradients_of_inference_calls_match_keras(backend, wrt, case):
    found = seen(backend)[case][wrt]
    assert found["kernels"] == 1  # the forward pass ran our kernel
    assert all(gap < 1e-5 * max(1.0, found["scale"]) for gap in found["gaps"])
