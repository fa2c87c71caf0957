"""dwconv-tvm: a Keras-compatible DepthwiseConv2D whose compute is a TVM-compiled kernel.

    >>> import numpy as np, dwconv_tvm
    >>> layer = dwconv_tvm.DepthwiseConv2D(3, padding="same", activation="relu6")
    >>> layer(np.random.rand(1, 56, 56, 144).astype("float32")).shape
    (1, 56, 56, 144)
"""

from .targets import configure_host_threads

configure_host_threads()  # before TVM's thread pool first starts

from .build import compile  # noqa: A004, E402
from .deploy import export, load  # noqa: E402
from .layer import DepthwiseConv2D  # noqa: E402
from .runtime import CompiledOp, aligned_empty  # noqa: E402
from .spec import DepthwiseSpec  # noqa: E402
from .targets import resolve_target, target_key  # noqa: E402
from .tuning import tune  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "CompiledOp",
    "DepthwiseConv2D",
    "DepthwiseSpec",
    "aligned_empty",
    "compile",
    "export",
    "load",
    "resolve_target",
    "target_key",
    "tune",
    "__version__",
]
