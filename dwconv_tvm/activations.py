"""Keras activations by name: fused TIR expressions for the elementwise ones, NumPy for the rest.

Elementwise activations are fused into the kernel's epilogue (`fuse`). Those that look across an
axis (softmax, log_softmax, sparsemax, glu) run after the kernel on its output (`apply_numpy`),
over the last axis as Keras does.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

_SELU_ALPHA = 1.6732632423543772848170429916717
_SELU_SCALE = 1.0507009873554804934193349852946


def _fused_table() -> dict[str, Callable]:
    """name -> f(x, T) building the TIR expression of the activation of `x` (T = tvm.tirx)."""

    def c(x, v):
        from tvm import tirx

        return tirx.const(v, str(x.ty))

    def softplus(x, T):
        return T.max(x, c(x, 0.0)) + T.log1p(T.exp(-T.abs(x)))

    def sigmoid(x, T):
        return T.sigmoid(x)

    def relu6(x, T):
        return T.min(T.max(x, c(x, 0.0)), c(x, 6.0))

    def hard_sigmoid(x, T):
        return relu6(x + c(x, 3.0), T) / c(x, 6.0)

    def where(cond, a, b, T):
        return T.Select(cond, a, b)

    return {
        "relu": lambda x, T: T.max(x, c(x, 0.0)),
        "relu6": relu6,
        "leaky_relu": lambda x, T: where(x >= c(x, 0.0), x, x * c(x, 0.2), T),
        "elu": lambda x, T: where(x > c(x, 0.0), x, T.exp(x) - c(x, 1.0), T),
        "selu": lambda x, T: c(x, _SELU_SCALE)
        * where(x > c(x, 0.0), x, c(x, _SELU_ALPHA) * (T.exp(x) - c(x, 1.0)), T),
        "celu": lambda x, T: T.max(x, c(x, 0.0)) + T.min(c(x, 0.0), T.exp(x) - c(x, 1.0)),
        "softplus": softplus,
        "softsign": lambda x, T: x / (c(x, 1.0) + T.abs(x)),
        "squareplus": lambda x, T: (x + T.sqrt(x * x + c(x, 4.0))) * c(x, 0.5),
        "soft_shrink": lambda x, T: where(
            x > c(x, 0.5), x - c(x, 0.5), where(x < c(x, -0.5), x + c(x, 0.5), c(x, 0.0), T), T
        ),
        "sparse_plus": lambda x, T: where(
            x <= c(x, -1.0),
            c(x, 0.0),
            where(x >= c(x, 1.0), x, (x + c(x, 1.0)) * (x + c(x, 1.0)) * c(x, 0.25), T),
            T,
        ),
        "silu": lambda x, T: x * sigmoid(x, T),
        "swish": lambda x, T: x * sigmoid(x, T),
        "gelu": lambda x, T: c(x, 0.5) * x * (c(x, 1.0) + T.erf(x * c(x, 1.0 / math.sqrt(2.0)))),
        "tanh": lambda x, T: T.tanh(x),
        "tanh_shrink": lambda x, T: x - T.tanh(x),
        "hard_tanh": lambda x, T: T.min(T.max(x, c(x, -1.0)), c(x, 1.0)),
        "hard_shrink": lambda x, T: where(T.abs(x) > c(x, 0.5), x, c(x, 0.0), T),
        "sigmoid": sigmoid,
        "sparse_sigmoid": lambda x, T: where(
            x <= c(x, -1.0),
            c(x, 0.0),
            where(x >= c(x, 1.0), c(x, 1.0), (x + c(x, 1.0)) * c(x, 0.5), T),
            T,
        ),
        "exponential": lambda x, T: T.exp(x),
        "hard_sigmoid": hard_sigmoid,
        "hard_silu": lambda x, T: x * hard_sigmoid(x, T),
        "hard_swish": lambda x, T: x * hard_sigmoid(x, T),
        "mish": lambda x, T: x * T.tanh(softplus(x, T)),
        "log_sigmoid": lambda x, T: -softplus(-x, T),
    }


_FUSED = _fused_table()
FUSED_ACTIVATIONS = frozenset(_FUSED)


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def _log_softmax(x: np.ndarray) -> np.ndarray:
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def _sparsemax(x: np.ndarray) -> np.ndarray:
    # Keras 3's formula on every backend: tau sums the cumulative sums over the support (the
    # paper takes the cumulative sum at k), so outputs need not sum to 1. Matched on purpose.
    z = np.sort(x, axis=-1)[..., ::-1]
    k = np.arange(1, x.shape[-1] + 1, dtype=x.dtype)
    cumsum = np.cumsum(z, axis=-1)
    support = z - (cumsum - 1) / k > 0
    k_z = support.sum(axis=-1, keepdims=True)
    tau = (np.where(support, cumsum, 0).sum(axis=-1, keepdims=True) - 1) / k_z
    return np.maximum(x - tau, 0)


def _glu(x: np.ndarray) -> np.ndarray:
    if x.shape[-1] % 2:
        raise ValueError(
            "glu expects the size of the last axis to be even. "
            f"Received: output shape {x.shape}"
        )
    a, b = np.split(x, 2, axis=-1)
    return a * (1 / (1 + np.exp(-b)))


POST_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "softmax": _softmax,
    "log_softmax": _log_softmax,
    "sparsemax": _sparsemax,
    "glu": _glu,
}

# Keras serializes these aliases under the function's own name.
ALIASES = {"swish": "silu", "hard_swish": "hard_silu"}

# Keras names that need arguments Keras cannot pass when called by name.
_NEEDS_ARGUMENTS = {"threshold"}

ALL_ACTIVATIONS = frozenset(FUSED_ACTIVATIONS | set(POST_ACTIVATIONS) | {"linear"})


def fuse(name: str, x, tirx_module=None):
    """Returns the TIR expression `activation(x)` for a fusable activation name.

    Args:
        name: A name in `FUSED_ACTIVATIONS`.
        x: A TIR expression (float32 or float64).
        tirx_module: `tvm.tirx`, passed to avoid importing TVM here.

    Returns:
        The TIR expression.
    """
    if tirx_module is None:
        from tvm import tirx as tirx_module
    return _FUSED[name](x, tirx_module)


def check_name(name: str) -> str:
    """Validates an activation name the way Keras's `activations.get` does; canonicalizes aliases.

    Args:
        name: A Keras activation name.

    Returns:
        The canonical name (`swish` -> `silu`, `hard_swish` -> `hard_silu`).

    Raises:
        ValueError: If Keras would not accept the name for a layer's `activation`.
    """
    if name in _NEEDS_ARGUMENTS:
        raise ValueError(
            f"The activation '{name}' needs arguments (threshold, default_value); "
            "pass a callable instead, e.g. activation=lambda x: keras.activations.threshold(x, 0.0, 0.0)."
        )
    if name not in ALL_ACTIVATIONS:
        raise ValueError(f"Could not interpret activation function identifier: {name}")
    return ALIASES.get(name, name)


def apply_post(name: str, y: np.ndarray) -> np.ndarray:
    """Applies a non-elementwise activation over the last axis of the kernel output.

    Args:
        name: A name in `POST_ACTIVATIONS`.
        y: Kernel output.

    Returns:
        A new array of the same dtype (glu halves the last axis).
    """
    work = y.astype(np.float64 if y.dtype == np.float64 else np.float32)
    return POST_ACTIVATIONS[name](work).astype(y.dtype, copy=False)
