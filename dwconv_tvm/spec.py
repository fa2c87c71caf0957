"""`DepthwiseSpec`: one normalized depthwise-convolution workload.

Everything downstream (TE compute, schedules, the kernel cache, tuning records) is keyed by a
spec, so a spec holds only resolved, explicit values: a layout name instead of a data format,
four explicit padding amounts instead of "same"/"valid", and the name of an activation that the
kernel fuses (or None).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

from .activations import FUSED_ACTIVATIONS

LAYOUTS = ("NHWC", "NCHW")
DTYPES = ("float16", "float32", "float64")


def same_padding(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TF/Keras "same" padding along one axis: the odd pixel goes after (bottom/right).

    Args:
        size: Input extent along the axis.
        kernel: Kernel extent along the axis.
        stride: Stride along the axis.
        dilation: Dilation along the axis.

    Returns:
        `(before, after)` padding amounts.
    """
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise TypeError(f"`{name}` must be an int or a pair of ints. Received: {name}={value!r}")
    if isinstance(value, int):
        return value, value
    try:
        pair = tuple(value)
    except TypeError:
        raise TypeError(
            f"`{name}` must be an int or a pair of ints. Received: {name}={value!r}"
        ) from None
    if len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in pair):
        raise ValueError(f"`{name}` must be an int or a pair of ints. Received: {name}={value!r}")
    return pair


@dataclasses.dataclass(frozen=True)
class DepthwiseSpec:
    """A normalized depthwise convolution workload.

    Kernel layout is always Keras's `(kh, kw, channels, depth_multiplier)`, bias is
    `(channels * depth_multiplier,)` and output channel `c * depth_multiplier + m` comes from
    input channel `c` and multiplier index `m`.

    Args:
        layout: `"NHWC"` (Keras channels_last) or `"NCHW"` (channels_first).
        batch: Batch size N.
        height: Input height H.
        width: Input width W.
        channels: Input channels C.
        kernel: `(kh, kw)`.
        strides: `(sh, sw)`.
        dilation: `(dh, dw)`.
        padding: Explicit `(top, left, bottom, right)` zero padding.
        depth_multiplier: Output channels per input channel.
        bias: Whether the kernel adds a bias vector.
        activation: Name of an elementwise activation fused into the kernel, or None.
        dtype: `"float16"`, `"float32"` or `"float64"`: inputs, weights and output.

    Raises:
        ValueError: If a field is out of range or the output would be empty.
        TypeError: If a field has the wrong type.
    """

    layout: str
    batch: int
    height: int
    width: int
    channels: int
    kernel: tuple[int, int] = (3, 3)
    strides: tuple[int, int] = (1, 1)
    dilation: tuple[int, int] = (1, 1)
    padding: tuple[int, int, int, int] = (0, 0, 0, 0)
    depth_multiplier: int = 1
    bias: bool = True
    activation: str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        layout = str(self.layout).upper()
        if layout not in LAYOUTS:
            raise ValueError(f"`layout` must be one of {LAYOUTS}. Received: layout={self.layout!r}")
        object.__setattr__(self, "layout", layout)
        for name in ("batch", "height", "width", "channels", "depth_multiplier"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"`{name}` must be an int. Received: {name}={value!r}")
            if value <= 0:
                raise ValueError(f"`{name}` must be > 0. Received: {name}={value}")
        for name in ("kernel", "strides", "dilation"):
            pair = _pair(getattr(self, name), name)
            if min(pair) <= 0:
                raise ValueError(f"`{name}` must be > 0. Received: {name}={pair}")
            object.__setattr__(self, name, pair)
        padding = tuple(self.padding)
        if len(padding) != 4 or not all(
            isinstance(p, int) and not isinstance(p, bool) and p >= 0 for p in padding
        ):
            raise ValueError(
                "`padding` must be four ints >= 0 (top, left, bottom, right). "
                f"Received: padding={self.padding!r}"
            )
        object.__setattr__(self, "padding", padding)
        if self.activation is not None and self.activation not in FUSED_ACTIVATIONS:
            raise ValueError(
                "`activation` must be None or one of the fusable activations "
                f"{sorted(FUSED_ACTIVATIONS)}. Received: activation={self.activation!r}"
            )
        if self.dtype not in DTYPES:
            raise ValueError(f"`dtype` must be one of {DTYPES}. Received: dtype={self.dtype!r}")
        object.__setattr__(self, "bias", bool(self.bias))
        if self.out_height <= 0 or self.out_width <= 0:
            raise ValueError(
                "Computed output size would be zero or negative. Received: "
                f"input height/width=({self.height}, {self.width}), kernel={self.kernel}, "
                f"dilation={self.dilation}, strides={self.strides}, padding={self.padding}."
            )

    @classmethod
    def from_keras(
        cls,
        input_shape: Sequence[int],
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = 1,
        padding: str = "valid",
        depth_multiplier: int = 1,
        data_format: str = "channels_last",
        dilation_rate: int | Sequence[int] = 1,
        use_bias: bool = True,
        activation: str | None = None,
        dtype: str = "float32",
    ) -> DepthwiseSpec:
        """Builds the spec of a Keras `DepthwiseConv2D` call on an input of `input_shape`.

        Args:
            input_shape: 4D input shape in `data_format` order.
            kernel_size: Keras `kernel_size`.
            strides: Keras `strides`.
            padding: `"valid"` or `"same"` (case-insensitive).
            depth_multiplier: Keras `depth_multiplier`.
            data_format: `"channels_last"` or `"channels_first"`.
            dilation_rate: Keras `dilation_rate`.
            use_bias: Whether a bias is added.
            activation: Fusable activation name or None.
            dtype: Compute dtype.

        Returns:
            The normalized spec.

        Raises:
            ValueError: On a malformed argument or an empty output.
        """
        shape = tuple(int(d) for d in input_shape)
        if len(shape) != 4:
            raise ValueError(
                f"Input 0 of layer DepthwiseConv2D is incompatible: expected ndim=4, "
                f"found ndim={len(shape)}. Full shape received: {tuple(input_shape)}"
            )
        data_format = str(data_format).lower()
        if data_format == "channels_last":
            n, h, w, c = shape
            layout = "NHWC"
        elif data_format == "channels_first":
            n, c, h, w = shape
            layout = "NCHW"
        else:
            raise ValueError(
                "The `data_format` argument must be one of "
                "{'channels_first', 'channels_last'}. "
                f"Received: data_format={data_format}"
            )
        kh, kw = _pair(kernel_size, "kernel_size")
        sh, sw = _pair(strides, "strides")
        dh, dw = _pair(dilation_rate, "dilation_rate")
        mode = str(padding).lower()
        if mode == "same":
            top, bottom = same_padding(h, kh, sh, dh)
            left, right = same_padding(w, kw, sw, dw)
        elif mode == "valid":
            top = bottom = left = right = 0
        else:
            raise ValueError(
                "The `padding` argument must be a list/tuple or one of {'valid', 'same'}. "
                f"Received: {padding}"
            )
        return cls(
            layout=layout, batch=n, height=h, width=w, channels=c, kernel=(kh, kw),
            strides=(sh, sw), dilation=(dh, dw), padding=(top, left, bottom, right),
            depth_multiplier=depth_multiplier, bias=use_bias, activation=activation, dtype=dtype,
        )

    @property
    def out_channels(self) -> int:
        """Output channels, `channels * depth_multiplier`."""
        return self.channels * self.depth_multiplier

    @property
    def out_height(self) -> int:
        """Output height."""
        span = self.dilation[0] * (self.kernel[0] - 1) + 1
        return (self.height + self.padding[0] + self.padding[2] - span) // self.strides[0] + 1

    @property
    def out_width(self) -> int:
        """Output width."""
        span = self.dilation[1] * (self.kernel[1] - 1) + 1
        return (self.width + self.padding[1] + self.padding[3] - span) // self.strides[1] + 1

    @property
    def input_shape(self) -> tuple[int, int, int, int]:
        """Input shape in the spec's layout."""
        if self.layout == "NHWC":
            return self.batch, self.height, self.width, self.channels
        return self.batch, self.channels, self.height, self.width

    @property
    def kernel_shape(self) -> tuple[int, int, int, int]:
        """Depthwise kernel shape in Keras layout `(kh, kw, C, depth_multiplier)`."""
        return self.kernel[0], self.kernel[1], self.channels, self.depth_multiplier

    @property
    def bias_shape(self) -> tuple[int]:
        """Bias shape `(C * depth_multiplier,)`."""
        return (self.out_channels,)

    @property
    def output_shape(self) -> tuple[int, int, int, int]:
        """Output shape in the spec's layout."""
        if self.layout == "NHWC":
            return self.batch, self.out_height, self.out_width, self.out_channels
        return self.batch, self.out_channels, self.out_height, self.out_width

    @property
    def max_elements(self) -> int:
        """Element count of the largest buffer: decides 32- or 64-bit indexing."""
        return max(math.prod(self.input_shape), math.prod(self.output_shape))

    @property
    def itemsize(self) -> int:
        """Bytes per element of the input, weights and output."""
        return {"float16": 2, "float32": 4, "float64": 8}[self.dtype]

    @property
    def compulsory_bytes(self) -> int:
        """Bytes every implementation must move: input, weights and bias read, output written."""
        elements = math.prod(self.input_shape) + math.prod(self.output_shape)
        elements += math.prod(self.kernel_shape) + (self.out_channels if self.bias else 0)
        return elements * self.itemsize

    @property
    def key(self) -> str:
        """A stable, human-readable, file-name-safe identifier of the workload."""
        t, l, b, r = self.padding
        return (
            f"{self.layout.lower()}_n{self.batch}_h{self.height}_w{self.width}_c{self.channels}"
            f"_k{self.kernel[0]}x{self.kernel[1]}_s{self.strides[0]}x{self.strides[1]}"
            f"_d{self.dilation[0]}x{self.dilation[1]}_p{t}.{l}.{b}.{r}_m{self.depth_multiplier}"
            f"_{'bias' if self.bias else 'nobias'}_{self.activation or 'linear'}_{self.dtype}"
        )

    def to_dict(self) -> dict:
        """JSON-safe dict; `DepthwiseSpec(**d)` rebuilds the spec."""
        d = dataclasses.asdict(self)
        for name in ("kernel", "strides", "dilation", "padding"):
            d[name] = list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict) -> DepthwiseSpec:
        """Inverse of `to_dict`.

        Args:
            d: A dict produced by `to_dict`.

        Returns:
            The spec.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - fields
        if unknown:
            raise ValueError(f"Unknown DepthwiseSpec fields: {sorted(unknown)}")
        d = dict(d)
        for name in ("kernel", "strides", "dilation", "padding"):
            if name in d:
                d[name] = tuple(d[name])
        return cls(**d)
