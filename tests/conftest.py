"""Test session set-up: a private kernel cache and Keras home, Keras on the torch backend."""

import os
import tempfile
import threading

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


@pytest.fixture
def run_in_threads():
    """Runs `work(i)` on `count` threads at once, i = 0..count-1, and waits for all of them."""

    def run(work, count: int = 6) -> None:
        threads = [threading.Thread(target=work, args=(i,)) for i in range(count)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    return run
