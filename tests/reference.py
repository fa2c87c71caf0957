"""An independent float64 NumPy reference, written apart from the package's code paths.

It works in NCHW with Keras's output-size formulas and its own "same" padding arithmetic, and
gathers each tap with explicit index arrays (the package's reference slices padded NHWC).
"""

from __future__ import annotations

import math

import numpy as np


def keras_same_pads(size: int, k: int, s: int, d: int) -> tuple[int, int]:
    out = math.ceil(size / s)
    effective = (k - 1) * d + 1
    total = max((out - 1) * s + effective - size, 0)
    return total // 2, total - total // 2


def depthwise(x, kernel, bias=None, strides=(1, 1), padding="valid", dilation=(1, 1), data_format="channels_last"):
    """Keras DepthwiseConv2D forward without activation, float64."""
    x = np.asarray(x, np.float64)
    if data_format == "channels_last":
        x = x.transpose(0, 3, 1, 2)
    n, c, h, w = x.shape
    kh, kw, kc, dm = kernel.shape
    assert kc == c
    sh, sw = strides
    dh, dw = dilation
    if padding == "same":
        (pt, pb), (pl, pr) = keras_same_pads(h, kh, sh, dh), keras_same_pads(w, kw, sw, dw)
        oh, ow = math.ceil(h / sh), math.ceil(w / sw)
    else:
        pt = pb = pl = pr = 0
        oh = (h - (kh - 1) * dh - 1) // sh + 1
        ow = (w - (kw - 1) * dw - 1) // sw + 1
    out = np.zeros((n, c, dm, oh, ow))
    rows = np.arange(oh) * sh - pt
    cols = np.arange(ow) * sw - pl
    for i in range(kh):
        for j in range(kw):
            r = rows + i * dh
            q = cols + j * dw
            valid = ((r >= 0) & (r < h))[:, None] & ((q >= 0) & (q < w))[None, :]
            gathered = x[:, :, np.clip(r, 0, h - 1)][:, :, :, np.clip(q, 0, w - 1)] * valid
            out += gathered[:, :, None] * np.asarray(kernel[i, j], np.float64)[None, :, :, None, None]
    out = out.reshape(n, c * dm, oh, ow)
    if bias is not None:
        out += np.asarray(bias, np.float64)[None, :, None, None]
    return out.transpose(0, 2, 3, 1) if data_format == "channels_last" else out


def _softplus(x):
    return np.logaddexp(0.0, x)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _erf(x):
    return np.vectorize(math.erf, otypes=[np.float64])(x)


ACTIVATIONS = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "relu6": lambda x: np.minimum(np.maximum(x, 0), 6),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.2 * x),
    "elu": lambda x: np.where(x > 0, x, np.expm1(x)),
    "selu": lambda x: 1.0507009873554805 * np.where(x > 0, x, 1.6732632423543772 * np.expm1(x)),
    "celu": lambda x: np.where(x >= 0, x, np.expm1(x)),
    "softplus": _softplus,
    "softsign": lambda x: x / (1 + np.abs(x)),
    "squareplus": lambda x: (x + np.sqrt(x * x + 4)) / 2,
    "soft_shrink": lambda x: np.sign(x) * np.maximum(np.abs(x) - 0.5, 0),
    "sparse_plus": lambda x: np.where(x <= -1, 0, np.where(x >= 1, x, (x + 1) ** 2 / 4)),
    "silu": lambda x: x * _sigmoid(x),
    "swish": lambda x: x * _sigmoid(x),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / math.sqrt(2))),
    "tanh": np.tanh,
    "tanh_shrink": lambda x: x - np.tanh(x),
    "hard_tanh": lambda x: np.clip(x, -1, 1),
    "hard_shrink": lambda x: np.where(np.abs(x) > 0.5, x, 0),
    "sigmoid": _sigmoid,
    "sparse_sigmoid": lambda x: np.clip((x + 1) / 2, 0, 1),
    "exponential": np.exp,
    "hard_sigmoid": lambda x: np.clip(x / 6 + 0.5, 0, 1),
    "hard_silu": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "hard_swish": lambda x: x * np.clip(x / 6 + 0.5, 0, 1),
    "mish": lambda x: x * np.tanh(_softplus(x)),
    "log_sigmoid": lambda x: -_softplus(-x),
    "softmax": lambda x: np.exp(x - x.max(-1, keepdims=True)) / np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True),
    "log_softmax": lambda x: (x - x.max(-1, keepdims=True)) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1, keepdims=True)),
    "glu": lambda x: x[..., : x.shape[-1] // 2] * _sigmoid(x[..., x.shape[-1] // 2 :]),
}


def sparsemax(x):
    """Keras 3's sparsemax (every backend): threshold from the summed cumulative sums of the
    support, which differs from the paper's (outputs need not sum to 1)."""
    out = np.empty(x.shape)
    flat_in, flat_out = np.ascontiguousarray(x).reshape(-1, x.shape[-1]), out.reshape(-1, x.shape[-1])
    for row, dest in zip(flat_in, flat_out):
        z = sorted(row, reverse=True)
        running, support_sums, k = 0.0, 0.0, 0
        for j, value in enumerate(z, start=1):
            running += value
            if value - (running - 1) / j > 0:
                support_sums += running
                k += 1
        dest[:] = np.maximum(row - (support_sums - 1) / k, 0)
    return out


ACTIVATIONS["sparsemax"] = sparsemax
TOLERANCE = {"float16": 2e-2, "float32": 1e-4, "float64": 1e-9}
