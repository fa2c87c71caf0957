"""Keras 3 weight regularizers in NumPy: `reg(weights)` returns the scalar penalty."""

from __future__ import annotations

import numpy as np

from .serialization import KerasObject, Registry


def _float32(value: float) -> float:
    # Keras stores the factors as float32 (`l1=0.01` serializes as 0.009999999776482582).
    return float(np.float32(value))


class Regularizer(KerasObject):
    """Base: `reg(x)` returns a NumPy scalar."""

    def __call__(self, x: np.ndarray):
        return np.float32(0.0)


def _check_factor(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or not np.isfinite(value):
        raise ValueError(f"Value for argument `{name}` must be a non-negative float. Received: {name}={value}")
    return value


class L1(Regularizer):
    """`l1 * sum(|x|)`.

    Args:
        l1: Factor (>= 0).
    """

    def __init__(self, l1: float = 0.01):
        self.l1 = _float32(_check_factor("l1", l1))

    def __call__(self, x):
        return np.asarray(self.l1, x.dtype) * np.abs(x).sum()

    def get_config(self):
        return {"l1": self.l1}


class L2(Regularizer):
    """`l2 * sum(x**2)`.

    Args:
        l2: Factor (>= 0).
    """

    def __init__(self, l2: float = 0.01):
        self.l2 = float(_check_factor("l2", l2))

    def __call__(self, x):
        return np.asarray(self.l2, x.dtype) * np.square(x).sum()

    def get_config(self):
        return {"l2": self.l2}


class L1L2(Regularizer):
    """`l1 * sum(|x|) + l2 * sum(x**2)`.

    Args:
        l1: L1 factor (>= 0).
        l2: L2 factor (>= 0).
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0):
        self.l1 = float(_check_factor("l1", l1))
        self.l2 = float(_check_factor("l2", l2))

    def __call__(self, x):
        total = np.asarray(0.0, x.dtype)
        if self.l1:
            total = total + np.asarray(self.l1, x.dtype) * np.abs(x).sum()
        if self.l2:
            total = total + np.asarray(self.l2, x.dtype) * np.square(x).sum()
        return total

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2}


class OrthogonalRegularizer(Regularizer):
    """Penalizes non-orthogonal rows (or columns) of a rank-2 weight, as Keras does.

    Args:
        factor: Factor (>= 0).
        mode: `"rows"` or `"columns"`.
    """

    def __init__(self, factor: float = 0.01, mode: str = "rows"):
        self.factor = _float32(_check_factor("factor", factor))
        if mode not in {"rows", "columns"}:
            raise ValueError(f"Invalid value for argument `mode`. Expected one of {{'rows', 'columns'}}. Received: mode={mode}")
        self.mode = mode

    def __call__(self, x):
        if x.ndim != 2:
            raise ValueError(f"Inputs to OrthogonalRegularizer must have rank 2. Received: inputs.shape={x.shape}")
        axis = 1 if self.mode == "rows" else 0
        unit = x / np.maximum(np.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
        product = unit @ unit.T if self.mode == "rows" else unit.T @ unit
        size = product.shape[0]
        off_diagonal = product * (1.0 - np.eye(size, dtype=x.dtype))
        pairs = size * (size - 1.0) / 2.0
        return np.asarray(self.factor * 0.5 * np.abs(off_diagonal).sum() / pairs, x.dtype)

    def get_config(self):
        return {"factor": self.factor, "mode": self.mode}


REGISTRY = Registry("regularizer", "keras.regularizers", [L1, L2, L1L2, OrthogonalRegularizer])
get = REGISTRY.get
serialize = REGISTRY.serialize
