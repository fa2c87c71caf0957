"""Test session set-up: a private kernel cache and Keras home, Keras on the torch backend."""

import os
import tempfile

_session_dir = tempfile.mkdtemp(prefix="dwconv-tvm-tests-")
# Set before dwconv_tvm or keras is imported anywhere in the session.
os.environ["DWCONV_TVM_CACHE"] = os.path.join(_session_dir, "cache")
os.environ["KERAS_HOME"] = os.path.join(_session_dir, "keras-home")
os.environ.setdefault("KERAS_BACKEND", "torch")

import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
