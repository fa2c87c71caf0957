"""`DepthwiseConv2D`: Keras 3's layer, argument for argument, running a TVM-compiled kernel.

The layer owns Keras semantics (argument normalization and errors, weights, dtype policy,
activations, regularization losses, config); every forward pass is one call of the compiled
kernel of its `DepthwiseSpec` on its target, with bias and elementwise activations fused in.
Keras itself is not needed at run time.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import activations as act_lib
from . import constraints as constraint_lib
from . import initializers as init_lib
from . import keras_config
from . import regularizers as reg_lib
from .build import compile as compile_spec
from .runtime import CompiledOp, OutputPool, aligned_copy, as_host_array, device_view, kernel_input, like_input
from .serialization import deserialize_function, serialize_function
from .spec import DepthwiseSpec

_IGNORED_KERAS_KWARGS = {"input_dim", "input_shape", "batch_input_shape", "batch_size", "implementation"}
_name_counters: dict[str, itertools.count] = {}
_name_lock = threading.Lock()


def _unique_name(base: str) -> str:
    with _name_lock:
        n = next(_name_counters.setdefault(base, itertools.count()))
    return base if n == 0 else f"{base}_{n}"


def standardize_tuple(value: Any, name: str) -> tuple[int, int]:
    """Keras's `standardize_tuple(value, 2, name)`: an int or 2 ints, all > 0.

    Raises:
        ValueError: With Keras's wording, naming the argument.
    """
    message = f"The `{name}` argument must be a tuple of 2 integers. Received {name}={value}"
    if isinstance(value, int) and not isinstance(value, bool):
        pair = (value, value)
    else:
        try:
            pair = tuple(value)
        except TypeError:
            raise ValueError(message) from None
        if isinstance(value, str) or len(pair) != 2:
            raise ValueError(message)
        for v in pair:
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"{message}including element {v} of type {type(v)}")
        pair = tuple(int(v) for v in pair)
    bad = {v for v in pair if v <= 0}
    if bad:
        raise ValueError(f"{message}, including values {bad} that do not satisfy `value > 0`")
    return pair


def _resolve_dtype(dtype: Any) -> tuple[str, str, str]:
    """Keras dtype policy -> (policy name, compute dtype, variable dtype)."""
    if dtype is None:
        name = keras_config.floatx()
    elif isinstance(dtype, dict):
        name = (dtype.get("config") or {}).get("name")
    elif isinstance(dtype, str):
        name = dtype
    elif hasattr(dtype, "name") and isinstance(dtype.name, str):  # a Keras DTypePolicy
        name = dtype.name
    else:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            name = repr(dtype)
    if name in ("float16", "float32", "float64"):
        return name, name, name
    if name == "mixed_float16":
        return name, "float16", "float32"
    raise ValueError(
        "`dtype` must be one of 'float16', 'float32', 'float64', 'mixed_float16' "
        f"(or a Keras DTypePolicy of one of these). Received: dtype={dtype!r}"
    )


class _Activation:
    """A layer's activation: fused into the kernel by name, or applied to its output."""

    def __init__(self, identifier: Any):
        self.fused: str | None = None
        self.post: Callable[[np.ndarray], Any] | None = None
        self.name: str | None = None
        self.function: Callable | None = None
        if isinstance(identifier, dict):
            name = identifier.get("config")
            if isinstance(name, str) and name in act_lib.ALL_ACTIVATIONS and identifier.get("module", "").startswith(("keras", "builtins")):
                identifier = name
            else:
                identifier = deserialize_function(identifier)
        if callable(identifier) and not isinstance(identifier, str):
            keras_name = getattr(identifier, "__name__", "")
            if getattr(identifier, "__module__", "").startswith("keras") and keras_name in act_lib.ALL_ACTIVATIONS:
                identifier = keras_name
            else:
                self.function = identifier
                self.post = identifier
                return
        if identifier is None:
            identifier = "linear"
        if not isinstance(identifier, str):
            raise ValueError(f"Could not interpret activation function identifier: {identifier}")
        self.name = act_lib.check_name(identifier)
        if self.name in act_lib.FUSED_ACTIVATIONS:
            self.fused = self.name
        elif self.name in act_lib.POST_ACTIVATIONS:
            name = self.name
            self.post = lambda y: act_lib.apply_post(name, y)

    def serialize(self) -> Any:
        return self.name if self.function is None else serialize_function(self.function)

    def __call__(self, y: np.ndarray) -> np.ndarray:
        if self.post is None:
            return y
        result = self.post(y)
        if not isinstance(result, np.ndarray):
            result = as_host_array(result, "activation output")
        return np.asarray(result, dtype=y.dtype)


def _weight_view(weight: np.ndarray | None) -> Any:
    """`device_view` of a weight (None stays None). `kernel_input` returns the weight itself
    unless it was made read-only; its alias then does not keep the weight alive, so the layer
    holds the weight beside the view."""
    return None if weight is None else device_view(kernel_input(weight))


class _Plan:
    """The hot path of one input type, shape and dtype on the layer's target: its op, whether
    a call may go straight to the kernel (CPU, no cast of input or weights, activation fused),
    the pool its outputs come from, and how an output is returned (None: as the NumPy array;
    `torch.from_numpy` for torch input, whose storage then holds the array, so the pool sees
    every tensor over it)."""

    __slots__ = ("op", "direct", "outputs", "wrap")

    def __init__(self, op: CompiledOp, direct: bool, wrap: Callable | None = None):
        self.op, self.direct, self.wrap = op, direct, wrap
        self.outputs = OutputPool(op.spec.output_shape, np.dtype(op.spec.dtype))


# Input types that have hot-path plans: NumPy arrays, and torch's CPU tensors once torch is seen.
_PLANNED_TYPES: set[type] = {np.ndarray}


def _is_torch_tensor(value: Any) -> bool:
    """Whether `value` is exactly a `torch.Tensor` (not a subclass such as `nn.Parameter`)."""
    kind = type(value)
    return kind.__module__ == "torch" and kind.__name__ == "Tensor"


class DepthwiseConv2D:
    """2D depthwise convolution layer (Keras 3 `keras.layers.DepthwiseConv2D`) on a TVM kernel.

    Each input channel is convolved with its own `depth_multiplier` filters; the output has
    `channels * depth_multiplier` channels, output channel `c * depth_multiplier + m`.
    Returns `activation(depthwise_conv2d(inputs, kernel) + bias)`.

    Args:
        kernel_size: int or pair of ints, the window size.
        strides: int or pair of ints. `strides > 1` is incompatible with `dilation_rate > 1`.
        padding: `"valid"` or `"same"` (case-insensitive); "same" pads as TensorFlow/Keras do.
        depth_multiplier: Output channels per input channel.
        data_format: `"channels_last"` (N, H, W, C) or `"channels_first"` (N, C, H, W);
            None means `image_data_format` from keras.json, else "channels_last".
        dilation_rate: int or pair of ints.
        activation: A Keras activation name, a callable, or None.
        use_bias: Whether to add a bias vector.
        depthwise_initializer: Kernel initializer (name, config or instance).
        bias_initializer: Bias initializer.
        depthwise_regularizer: Kernel regularizer, or None.
        bias_regularizer: Bias regularizer, or None.
        activity_regularizer: Output regularizer, or None.
        depthwise_constraint: Kernel constraint, or None (applied by `apply_constraints`).
        bias_constraint: Bias constraint, or None.
        **kwargs: Keras base-layer arguments (`name`, `dtype`, `trainable`, `autocast`,
            `weights`, ...) and `target`, the TVM target kernels are compiled for
            (default `"host"`).

    Raises:
        ValueError: On any invalid argument, with Keras's wording.
    """

    def __init__(
        self,
        kernel_size: int | Sequence[int],
        strides: int | Sequence[int] = (1, 1),
        padding: str = "valid",
        depth_multiplier: int = 1,
        data_format: str | None = None,
        dilation_rate: int | Sequence[int] = (1, 1),
        activation: str | Callable | None = None,
        use_bias: bool = True,
        depthwise_initializer: Any = "glorot_uniform",
        bias_initializer: Any = "zeros",
        depthwise_regularizer: Any = None,
        bias_regularizer: Any = None,
        activity_regularizer: Any = None,
        depthwise_constraint: Any = None,
        bias_constraint: Any = None,
        **kwargs: Any,
    ):
        name = kwargs.pop("name", None)
        dtype = kwargs.pop("dtype", None)
        self.trainable = bool(kwargs.pop("trainable", True))
        self.autocast = bool(kwargs.pop("autocast", True))
        self.target = kwargs.pop("target", "host")
        self._initial_weights = kwargs.pop("weights", None)
        for key in _IGNORED_KERAS_KWARGS & set(kwargs):
            kwargs.pop(key)
        if kwargs:
            raise ValueError(f"Unrecognized keyword arguments passed to DepthwiseConv2D: {kwargs}")
        if name is not None and (not isinstance(name, str) or "/" in name):
            raise ValueError(
                "Argument `name` must be a string and cannot contain character `/`. "
                f"Received: name={name} (of type {type(name)})"
            )
        self.name = name or _unique_name("depthwise_conv2d")
        self.dtype_policy, self.compute_dtype, self.variable_dtype = _resolve_dtype(dtype)

        self.kernel_size = standardize_tuple(kernel_size, "kernel_size")
        self.strides = standardize_tuple(strides, "strides")
        self.dilation_rate = standardize_tuple(dilation_rate, "dilation_rate")
        if isinstance(padding, (list, tuple)) or not isinstance(padding, str) or padding.lower() not in ("valid", "same"):
            raise ValueError(
                "The `padding` argument must be a list/tuple or one of {'valid', 'same'}. "
                f"Received: {padding}"
            )
        self.padding = padding.lower()
        if data_format is None:
            data_format = keras_config.image_data_format()
        self.data_format = str(data_format).lower()
        if self.data_format not in ("channels_first", "channels_last"):
            raise ValueError(
                "The `data_format` argument must be one of {'channels_first', 'channels_last'}. "
                f"Received: data_format={data_format}"
            )
        self._activation = _Activation(activation)
        self.use_bias = bool(use_bias)
        self.depthwise_initializer = init_lib.get(depthwise_initializer)
        self.bias_initializer = init_lib.get(bias_initializer)
        self.depthwise_regularizer = reg_lib.get(depthwise_regularizer)
        self.bias_regularizer = reg_lib.get(bias_regularizer)
        self.activity_regularizer = reg_lib.get(activity_regularizer)
        self.depthwise_constraint = constraint_lib.get(depthwise_constraint)
        self.bias_constraint = constraint_lib.get(bias_constraint)
        if isinstance(depth_multiplier, bool) or not isinstance(depth_multiplier, (int, np.integer)):
            raise ValueError(
                "Invalid value for argument `depth_multiplier`. Expected a strictly positive "
                f"integer. Received depth_multiplier={depth_multiplier}."
            )
        if depth_multiplier <= 0:
            raise ValueError(
                "Invalid value for argument `depth_multiplier`. Expected a strictly positive "
                f"value. Received depth_multiplier={depth_multiplier}."
            )
        self.depth_multiplier = int(depth_multiplier)
        if max(self.strides) > 1 and max(self.dilation_rate) > 1:
            raise ValueError(
                "`strides > 1` not supported in conjunction with `dilation_rate > 1`. "
                f"Received: strides={self.strides} and dilation_rate={self.dilation_rate}"
            )

        self.built = False
        self._kernel: np.ndarray | None = None
        self._bias: np.ndarray | None = None
        self._channels: int | None = None
        self._activity_losses: list[np.floating] = []
        self._ops: dict[tuple, CompiledOp] = {}
        # (input type, shape, dtype) -> the hot path's plan on the layer's own target.
        self._plans: dict[tuple, _Plan] = {}
        # The weights and TVM tensors over their memory (see `_weight_views`).
        self._views: tuple | None = None
        self._build_lock = threading.Lock()

    # ----------------------------------------------------------------- Keras surface
    @property
    def activation(self) -> Callable | str:
        """The activation: its Keras name, or the user's callable."""
        return self._activation.function or self._activation.name

    @property
    def kernel(self) -> np.ndarray | None:
        """Depthwise kernel `(kh, kw, C, depth_multiplier)` (None before build)."""
        return self._kernel

    @kernel.setter
    def kernel(self, value: Any) -> None:
        self._kernel = self._validated_weight(value, self._kernel, "kernel")

    @property
    def bias(self) -> np.ndarray | None:
        """Bias `(C * depth_multiplier,)` (None before build or without bias)."""
        return self._bias

    @bias.setter
    def bias(self, value: Any) -> None:
        if not self.use_bias:
            raise ValueError(f"Layer {self.name} has no bias (use_bias=False).")
        self._bias = self._validated_weight(value, self._bias, "bias")

    def _validated_weight(self, value: Any, current: np.ndarray | None, name: str) -> np.ndarray:
        if current is None:
            raise ValueError(f"Layer {self.name} is not built yet: call it or `build(input_shape)` before setting `{name}`.")
        array = np.asarray(as_host_array(value, name), dtype=self.variable_dtype)
        if array.shape != current.shape:
            raise ValueError(
                f"Layer {self.name} weight shape {current.shape} is not compatible with provided "
                f"weight shape {array.shape}."
            )
        return aligned_copy(array, self.variable_dtype)

    @property
    def dtype(self) -> str:
        """The variable dtype (as Keras's `layer.dtype`)."""
        return self.variable_dtype

    def __repr__(self) -> str:
        return f"<DepthwiseConv2D name={self.name}, built={self.built}>"

    # Compiled kernels, plans, output buffers and weight views are per-process caches (TVM
    # modules cannot be pickled): copies and unpickled layers rebuild them on their next call.
    _CACHES = ("_ops", "_plans", "_views", "_build_lock")

    def __getstate__(self) -> dict:
        """State for `pickle` and `copy.deepcopy`: arguments, weights and losses, no caches."""
        return {k: v for k, v in self.__dict__.items() if k not in self._CACHES}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._ops, self._plans, self._views, self._build_lock = {}, {}, None, threading.Lock()
        for name in ("_kernel", "_bias"):  # unpickled arrays start wherever NumPy puts them
            value = state.get(name)
            if value is not None:
                setattr(self, name, aligned_copy(value, value.dtype))

    def _channel_axis(self) -> int:
        return -1 if self.data_format == "channels_last" else 1

    def _incompatible(self, detail: str) -> ValueError:
        return ValueError(f"Input 0 of layer '{self.name}' is incompatible with the layer: {detail}")

    def build(self, input_shape: Sequence[int | None]) -> None:
        """Creates `kernel` (kh, kw, C, depth_multiplier) and `bias` (C * depth_multiplier,).

        Args:
            input_shape: 4D input shape; only the channel dimension must be known.

        Raises:
            ValueError: On a wrong rank or an unknown channel dimension.
        """
        with self._build_lock:
            if self.built:
                return
            shape = tuple(input_shape)
            if len(shape) != 4:
                raise self._incompatible(f"expected ndim=4, found ndim={len(shape)}. Full shape received: {shape}")
            channels = shape[self._channel_axis()]
            if channels is None:
                raise ValueError(f"The channel dimension of the inputs should be defined. Received input_shape={shape}")
            self._channels = int(channels)
            self.compute_output_shape(shape)
            kernel_shape = (*self.kernel_size, self._channels, self.depth_multiplier)
            self._kernel = aligned_copy(self.depthwise_initializer(kernel_shape, self.variable_dtype), self.variable_dtype)
            if self.use_bias:
                bias_shape = (self._channels * self.depth_multiplier,)
                self._bias = aligned_copy(self.bias_initializer(bias_shape, self.variable_dtype), self.variable_dtype)
            self.built = True
            if self._initial_weights is not None:
                weights, self._initial_weights = self._initial_weights, None
                self.set_weights(weights)

    def compute_output_shape(self, input_shape: Sequence[int | None]) -> tuple[int | None, ...]:
        """Output shape for `input_shape` (None dimensions stay None).

        Raises:
            ValueError: If the output would be empty.
        """
        shape = tuple(input_shape)
        if len(shape) != 4:
            raise self._incompatible(f"expected ndim=4, found ndim={len(shape)}. Full shape received: {shape}")
        last = self.data_format == "channels_last"
        spatial = shape[1:3] if last else shape[2:4]
        channels = shape[3] if last else shape[1]
        out = []
        for size, k, s, d in zip(spatial, self.kernel_size, self.strides, self.dilation_rate):
            if size is None:
                out.append(None)
            elif self.padding == "same":
                out.append((size - 1) // s + 1)
            else:
                out.append((size - d * (k - 1) - 1) // s + 1)
        if any(o is not None and o <= 0 for o in out):
            raise ValueError(
                "Computed output size would be zero or negative. Received "
                f"`inputs shape={shape}`, `kernel shape={(*self.kernel_size, channels, self.depth_multiplier)}`, "
                f"`dilation_rate={list(self.dilation_rate)}`, `strides={self.strides}`, `padding={self.padding}`."
            )
        out_channels = None if channels is None else channels * self.depth_multiplier
        return (shape[0], *out, out_channels) if last else (shape[0], out_channels, *out)

    # ----------------------------------------------------------------- forward
    def spec_for(self, input_shape: Sequence[int]) -> DepthwiseSpec:
        """The kernel workload of one call on an input of `input_shape`."""
        return DepthwiseSpec.from_keras(
            input_shape, self.kernel_size, self.strides, self.padding, self.depth_multiplier,
            self.data_format, self.dilation_rate, self.use_bias, self._activation.fused, self.compute_dtype,
        )

    def _op(self, shape: tuple[int, ...], target: Any) -> CompiledOp:
        key = (shape, target if isinstance(target, (str, type(None))) else repr(target))
        op = self._ops.get(key)
        if op is None:
            if min(shape) == 0:
                raise ValueError(f"Input 0 of layer '{self.name}' is empty: received input with shape {shape}.")
            op = compile_spec(self.spec_for(shape), self.target if target is None else target)
            self._ops[key] = op
        return op

    def __call__(self, inputs: Any, target: Any = None) -> Any:
        """Runs the layer.

        Args:
            inputs: 4D NumPy array or `__dlpack__` CPU tensor (torch, jax, ...).
            target: Overrides the layer's TVM target for this call.

        Returns:
            The output: a NumPy array for NumPy input, else a tensor of the input's
            framework. For NumPy and torch CPU input its memory comes from the layer's
            output pool (`runtime.OutputPool`), reused only once nothing refers to it.

        Raises:
            ValueError: On a non-float input, wrong rank, channel mismatch, or an image too
                small for the kernel (a batch of 0 gives an empty output, as in Keras).
            TypeError: If `inputs` is not a tensor.
        """
        kind = type(inputs)
        if target is None and kind in _PLANNED_TYPES:
            plan = self._plans.get((kind, inputs.shape, inputs.dtype))
            # Shape, dtype and channels were validated when the plan was made; any other case
            # (strides, read-only, grad, device, changed weights) takes the full path below.
            if plan is not None and plan.direct:
                views = self._views
                if plan.wrap is None:
                    flags = inputs.flags
                    ready = flags.c_contiguous and flags.writeable
                else:
                    ready = inputs.is_cpu and not inputs.requires_grad and inputs.is_contiguous()
                if (ready and views is not None and views[0] is self._kernel and views[1] is self._bias
                        and self.activity_regularizer is None):
                    out, out_arg = plan.outputs.take()
                    if views[3] is None:
                        plan.op._fn(inputs, views[2], out_arg)
                    else:
                        plan.op._fn(inputs, views[2], views[3], out_arg)
                    return out if plan.wrap is None else plan.wrap(out)
        x = as_host_array(inputs, "inputs")
        if x.dtype.kind != "f" or x.dtype.name not in ("float16", "float32", "float64"):
            raise ValueError(
                f"Layer '{self.name}' expects floating-point inputs (float16, float32 or float64). "
                f"Received input with dtype {x.dtype}."
            )
        if x.ndim != 4:
            raise self._incompatible(f"expected ndim=4, found ndim={x.ndim}. Full shape received: {x.shape}")
        if not self.built:
            self.build(x.shape)
        if x.shape[self._channel_axis()] != self._channels:
            raise self._incompatible(
                f"expected axis {self._channel_axis()} of input shape to have value {self._channels}, "
                f"but received input with shape {x.shape}"
            )
        if not self.autocast and x.dtype != self.compute_dtype:
            raise ValueError(
                f"Layer '{self.name}' has autocast=False and computes in {self.compute_dtype}; "
                f"received input with dtype {x.dtype}."
            )
        if x.shape[0] == 0:  # as Keras: an empty batch (a detector with no crops) gives one back
            return like_input(self._empty_batch(x.shape), inputs)
        op = self._op(x.shape, target)
        if target is None:
            self._make_plan(inputs, x, op)
        return like_input(self._forward(x, op), inputs)

    def _empty_batch(self, shape: tuple[int, ...]) -> np.ndarray:
        """The output of a batch of 0, without a kernel (too small an image still raises)."""
        y = np.empty(self.compute_output_shape(shape), self.compute_dtype)
        if self.activity_regularizer is not None:
            # Keras divides the activity loss by the batch size with divide_no_nan: 0 here.
            self._activity_losses = [np.zeros_like(np.asarray(self.activity_regularizer(y)))]
        return y

    def _make_plan(self, inputs: Any, x: np.ndarray, op: CompiledOp) -> None:
        """Records the hot path for NumPy input and for torch CPU tensors (`x` is the NumPy
        array the full path made of `inputs`)."""
        kind, wrap = type(inputs), None
        if kind is not np.ndarray or x is not inputs:
            if not _is_torch_tensor(inputs) or not inputs.is_cpu:
                return
            wrap = sys.modules["torch"].from_numpy
            _PLANNED_TYPES.add(kind)
        key = (kind, inputs.shape, inputs.dtype)
        if key not in self._plans:  # a call that left the hot path keeps the plan and its pool
            direct = not op.on_gpu and x.dtype == op._dtype == self._kernel.dtype and self._activation.post is None
            self._plans[key] = _Plan(op, direct, wrap)

    def _forward(self, x: np.ndarray, op: CompiledOp) -> np.ndarray:
        compute = op._dtype
        if x.dtype != compute:
            x = x.astype(compute)
        else:
            x = kernel_input(x)  # contiguous (one copy otherwise) and passable through DLPack
        kernel, bias = self._kernel, self._bias
        if kernel.dtype != compute:  # mixed precision: float32 variables, float16 compute
            kernel = kernel.astype(compute)
            bias = None if bias is None else bias.astype(compute)
        elif not op.on_gpu:
            kernel, bias = self._weight_views(kernel, bias)
        y = op.run_checked(x, kernel, bias)
        if self._activation.post is not None:
            y = self._activation(y)
        if self.activity_regularizer is not None:
            self._activity_losses = [np.asarray(self.activity_regularizer(y)) / y.shape[0]]
        return y

    def _weight_views(self, kernel: np.ndarray, bias: np.ndarray | None) -> tuple[Any, Any]:
        """TVM tensors sharing the weights' memory, made once per weight array: in-place edits
        show through, and assigning new arrays (`set_weights`, `layer.kernel = ...`) makes new
        views on the next call."""
        views = self._views
        if views is None or views[0] is not kernel or views[1] is not bias:
            views = (kernel, bias, _weight_view(kernel), _weight_view(bias))
            self._views = views  # one assignment: a concurrent caller sees old or new views whole
        return views[2], views[3]

    def call(self, inputs: Any, target: Any = None) -> Any:
        """Keras's `call`: the forward pass (same as calling the layer)."""
        return self(inputs, target)

    # ----------------------------------------------------------------- weights
    @property
    def weights(self) -> list[np.ndarray]:
        """`[kernel, bias]` (or `[kernel]`), the arrays themselves; empty before build."""
        if not self.built:
            return []
        return [self.kernel, self.bias] if self.use_bias else [self.kernel]

    @property
    def trainable_weights(self) -> list[np.ndarray]:
        """`weights` when the layer is trainable, else empty."""
        return self.weights if self.trainable else []

    @property
    def non_trainable_weights(self) -> list[np.ndarray]:
        """`weights` when the layer is frozen, else empty."""
        return [] if self.trainable else self.weights

    def get_weights(self) -> list[np.ndarray]:
        """Copies of the weights, Keras layout."""
        return [w.copy() for w in self.weights]

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replaces the weights with copies of `weights` (Keras layout and order).

        Raises:
            ValueError: On a wrong count or shape, with Keras's wording.
        """
        current = self.weights
        weights = list(weights)
        if len(weights) != len(current):
            raise ValueError(
                f"You called `set_weights(weights)` on layer '{self.name}' with a weight list of "
                f"length {len(weights)}, but the layer was expecting {len(current)} weights."
            )
        arrays = [self._validated_weight(new, old, "weights") for new, old in zip(weights, current)]
        self._kernel = arrays[0]
        if self.use_bias:
            self._bias = arrays[1]

    def count_params(self) -> int:
        """Number of weight elements.

        Raises:
            ValueError: Before the layer is built.
        """
        if not self.built:
            raise ValueError(
                f"You tried to call `count_params` on layer '{self.name}', but the layer isn't "
                "built. You can build it manually via: `layer.build(input_shape)`."
            )
        return int(sum(w.size for w in self.weights))

    def apply_constraints(self) -> None:
        """Projects the weights with their constraints, as Keras does after an optimizer step."""
        if self.built and self.depthwise_constraint is not None:
            self.kernel = self.depthwise_constraint(self._kernel)
        if self.built and self.use_bias and self.bias_constraint is not None:
            self.bias = self.bias_constraint(self._bias)

    @property
    def losses(self) -> list[np.floating]:
        """Activity loss of the last call (reg(y) / batch), then the weight penalties."""
        out = list(self._activity_losses)
        if self.built and self.trainable:
            if self.depthwise_regularizer is not None:
                out.append(np.asarray(self.depthwise_regularizer(self.kernel)))
            if self.use_bias and self.bias_regularizer is not None:
                out.append(np.asarray(self.bias_regularizer(self.bias)))
        return out

    # ----------------------------------------------------------------- config
    def get_config(self) -> dict:
        """Keras-format config (JSON-safe); Keras's `DepthwiseConv2D.from_config` accepts it."""
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": {
                "module": "keras",
                "class_name": "DTypePolicy",
                "config": {"name": self.dtype_policy},
                "registered_name": None,
            },
            "depth_multiplier": self.depth_multiplier,
            "kernel_size": self.kernel_size,
            "strides": self.strides,
            "padding": self.padding,
            "data_format": self.data_format,
            "dilation_rate": self.dilation_rate,
            "activation": self._activation.serialize(),
            "use_bias": self.use_bias,
            "depthwise_initializer": init_lib.serialize(self.depthwise_initializer),
            "bias_initializer": init_lib.serialize(self.bias_initializer),
            "depthwise_regularizer": reg_lib.serialize(self.depthwise_regularizer),
            "bias_regularizer": reg_lib.serialize(self.bias_regularizer),
            "activity_regularizer": reg_lib.serialize(self.activity_regularizer),
            "depthwise_constraint": constraint_lib.serialize(self.depthwise_constraint),
            "bias_constraint": constraint_lib.serialize(self.bias_constraint),
        }
        if self.target != "host":
            config["target"] = self.target if isinstance(self.target, (str, dict)) else str(self.target)
        return config

    @classmethod
    def from_config(cls, config: dict) -> DepthwiseConv2D:
        """Builds a layer from `get_config()` output or from a Keras `DepthwiseConv2D` config."""
        return cls(**config)
