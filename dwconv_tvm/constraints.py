"""Keras 3 weight constraints in NumPy: `constraint(w)` returns the projected weights.

As in Keras, a layer stores its constraints and exposes them; they are applied after an
optimizer update (here: `DepthwiseConv2D.apply_constraints()`), never during a forward call.
"""

from __future__ import annotations

import numpy as np

from .serialization import KerasObject, Registry

EPSILON = 1e-7  # keras.config.epsilon()


class Constraint(KerasObject):
    """Base: the identity projection."""

    def __call__(self, w: np.ndarray) -> np.ndarray:
        return w


def _norms(w: np.ndarray, axis) -> np.ndarray:
    return np.sqrt(np.square(w).sum(axis=tuple(np.atleast_1d(axis)), keepdims=True))


class MaxNorm(Constraint):
    """Caps the norm along `axis` at `max_value`.

    Args:
        max_value: Maximum norm.
        axis: Axis (or axes) along which norms are computed.
    """

    def __init__(self, max_value: float = 2, axis: int | list[int] = 0):
        self.max_value, self.axis = max_value, axis

    def __call__(self, w):
        norms = _norms(w, self.axis)
        return (w * (np.clip(norms, 0, self.max_value) / (EPSILON + norms))).astype(w.dtype)

    def get_config(self):
        return {"max_value": self.max_value, "axis": self.axis}


class MinMaxNorm(Constraint):
    """Keeps the norm along `axis` within `[min_value, max_value]`, moved by `rate`.

    Args:
        min_value: Minimum norm.
        max_value: Maximum norm.
        rate: Fraction of the way to move towards the clipped norm.
        axis: Axis (or axes) along which norms are computed.
    """

    def __init__(self, min_value: float = 0.0, max_value: float = 1.0, rate: float = 1.0, axis: int | list[int] = 0):
        self.min_value, self.max_value, self.rate, self.axis = min_value, max_value, rate, axis

    def __call__(self, w):
        norms = _norms(w, self.axis)
        desired = self.rate * np.clip(norms, self.min_value, self.max_value) + (1 - self.rate) * norms
        return (w * (desired / (EPSILON + norms))).astype(w.dtype)

    def get_config(self):
        return {"min_value": self.min_value, "max_value": self.max_value, "rate": self.rate, "axis": self.axis}


class NonNeg(Constraint):
    """Clamps weights at zero from below."""

    def __call__(self, w):
        return np.maximum(w, 0).astype(w.dtype)


class UnitNorm(Constraint):
    """Scales to unit norm along `axis`.

    Args:
        axis: Axis (or axes) along which norms are computed.
    """

    def __init__(self, axis: int | list[int] = 0):
        self.axis = axis

    def __call__(self, w):
        return (w / (EPSILON + _norms(w, self.axis))).astype(w.dtype)

    def get_config(self):
        return {"axis": self.axis}


REGISTRY = Registry("constraint", "keras.constraints", [MaxNorm, MinMaxNorm, NonNeg, UnitNorm])
get = REGISTRY.get
serialize = REGISTRY.serialize
