"""dwconv-tvm: a Keras-compatible DepthwiseConv2D whose compute is a TVM-compiled kernel.

    >>> import numpy as np, dwconv_tvm
    >>> layer = dwconv_tvm.DepthwiseConv2D(3, padding="same", activation="relu6")
    >>> layer(np.random.rand(1, 56, 56, 144).astype("float32")).shape
    (1, 56, 56, 144)
"""

from .build import compile  # noqa: A004
from .layer import DepthwiseConv2D
from .runtime import CompiledOp
from .spec import DepthwiseSpec
from .targets import resolve_target, target_key

__version__ = "0.1.0"

__all__ = [
    "CompiledOp",
    "DepthwiseConv2D",
    "DepthwiseSpec",
    "compile",
    "resolve_target",
    "target_key",
    "__version__",
]
