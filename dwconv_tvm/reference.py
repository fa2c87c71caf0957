"""A plain float64 NumPy depthwise convolution, for the demo's and benchmarks' checks."""

from __future__ import annotations

import numpy as np

from .spec import DepthwiseSpec


def depthwise_reference(spec: DepthwiseSpec, x: np.ndarray, kernel: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """`depthwise_conv2d(x, kernel) + bias` in float64, without activation.

    Args:
        spec: The workload (layout, strides, dilation, explicit padding).
        x: Input in the spec's layout.
        kernel: `(kh, kw, C, depth_multiplier)`.
        bias: `(C * depth_multiplier,)` or None.

    Returns:
        The float64 output in the spec's layout.
    """
    nhwc = x.astype(np.float64)
    if spec.layout == "NCHW":
        nhwc = nhwc.transpose(0, 2, 3, 1)
    top, left, bottom, right = spec.padding
    padded = np.pad(nhwc, ((0, 0), (top, bottom), (left, right), (0, 0)))
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel, spec.strides, spec.dilation
    oh, ow = spec.out_height, spec.out_width
    acc = np.zeros((spec.batch, oh, ow, spec.channels, spec.depth_multiplier))
    for i in range(kh):
        for j in range(kw):
            window = padded[:, i * dh : i * dh + (oh - 1) * sh + 1 : sh, j * dw : j * dw + (ow - 1) * sw + 1 : sw]
            acc += window[..., None] * kernel[i, j].astype(np.float64)
    out = acc.reshape(spec.batch, oh, ow, spec.out_channels)
    if bias is not None:
        out = out + bias.astype(np.float64)
    return out.transpose(0, 3, 1, 2) if spec.layout == "NCHW" else out
