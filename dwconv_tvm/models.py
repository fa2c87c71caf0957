"""Depthwise layers of well-known models at 224x224, as specs to tune or benchmark.

Each layer is `(input size, channels, kernel, stride)` with "same" padding; in these models the
depthwise convolution has no bias and is followed by BatchNormalization and the activation, so
the specs carry neither. MobileNetV1's stride-2 layers pad (0, 1) explicitly before a "valid"
convolution in Keras, which is what "same" pads at even sizes.
"""

from __future__ import annotations

from .spec import DepthwiseSpec

MODELS: dict[str, list[tuple[int, int, int, int]]] = {
    "mobilenet_v2": [
        (112, 32, 3, 1), (112, 96, 3, 2), (56, 144, 3, 1), (56, 144, 3, 2), (28, 192, 3, 1),
        (28, 192, 3, 2), (14, 384, 3, 1), (14, 576, 3, 1), (14, 576, 3, 2), (7, 960, 3, 1),
    ],
    # Channel counts in powers of two, 256 and up: pixels 1-4 KB apart alias in L1, and the
    # untuned defaults ran 1.2-1.9x slower than the best schedules of the space on znver4.
    "mobilenet_v1": [
        (112, 32, 3, 1), (112, 64, 3, 2), (56, 128, 3, 1), (56, 128, 3, 2), (28, 256, 3, 1),
        (28, 256, 3, 2), (14, 512, 3, 1), (14, 512, 3, 2), (7, 1024, 3, 1),
    ],
    "efficientnet_b0": [
        (112, 32, 3, 1), (112, 96, 3, 2), (56, 144, 3, 1), (56, 144, 5, 2), (28, 240, 5, 1),
        (28, 240, 3, 2), (14, 480, 3, 1), (14, 480, 5, 1), (14, 672, 5, 1), (14, 672, 5, 2),
        (7, 1152, 5, 1), (7, 1152, 3, 1),
    ],
}


def model_specs(name: str, batch: int = 1, dtype: str = "float32", data_format: str = "channels_last") -> list[DepthwiseSpec]:
    """The distinct depthwise workloads of a model.

    Args:
        name: A key of `MODELS` (`mobilenet_v2`, `mobilenet_v1`, `efficientnet_b0`).
        batch: Batch size.
        dtype: Compute dtype.
        data_format: `"channels_last"` or `"channels_first"`.

    Returns:
        One spec per distinct layer.

    Raises:
        ValueError: For an unknown model name.
    """
    if name not in MODELS:
        raise ValueError(f"Unknown model {name!r}. Expected one of {sorted(MODELS)}.")
    specs = []
    for size, channels, kernel, stride in MODELS[name]:
        shape = (batch, size, size, channels) if data_format == "channels_last" else (batch, channels, size, size)
        specs.append(DepthwiseSpec.from_keras(shape, kernel, stride, "same", 1, data_format, 1, False, None, dtype))
    return specs
