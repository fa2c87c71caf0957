"""Keras 3 interop: a `keras.layers.DepthwiseConv2D` whose inference runs our kernel, a helper
that swaps it into a model, and BatchNorm folding.

    >>> import keras, dwconv_tvm.keras
    >>> model = dwconv_tvm.keras.swap_depthwise(keras.applications.MobileNetV2(weights=None))

Only inference goes through the TVM kernel: calls with `training=True`, calls that record
gradients (PyTorch autograd), symbolic calls (model building) and TensorFlow graphs run
Keras's own implementation, so training and saving behave exactly as in Keras. On the JAX
backend, traced inference (`jax.jit`, Keras's jitted `predict`) runs the kernel as a host
callback; there and under a TensorFlow GradientTape, the kernel's gradient is Keras's.
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from .activations import ALIASES, FUSED_ACTIVATIONS, POST_ACTIVATIONS
from .build import compile as compile_spec
from .spec import DepthwiseSpec
from .targets import TargetLike, resolve_target


def _fusable(activation) -> str | None:
    """The name of a Keras activation the kernel can apply, or None (applied after it)."""
    try:
        name = keras.activations.serialize(activation)
    except (TypeError, ValueError):
        return None
    if not isinstance(name, str):
        return None
    name = ALIASES.get(name, name)
    return name if name in FUSED_ACTIVATIONS or name in POST_ACTIVATIONS or name == "linear" else None


def _records_gradients(inputs, layer) -> bool:
    """Whether this eager call is being differentiated, where the backend can tell."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return torch.is_grad_enabled() and (
            inputs.requires_grad or any(w.value.requires_grad for w in layer.trainable_weights)
        )
    return False  # JAX traces and TensorFlow tapes get Keras's gradient through a custom one


def _concrete(inputs) -> bool:
    """Whether `inputs` holds data in host memory (not a symbolic, traced or device tensor)."""
    backend = keras.backend.backend()
    if backend == "torch":
        import torch

        return isinstance(inputs, torch.Tensor) and inputs.device.type == "cpu"
    if backend == "jax":
        import jax

        return isinstance(inputs, jax.Array) and not isinstance(inputs, jax.core.Tracer)
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.executing_eagerly() and hasattr(inputs, "numpy")
    return isinstance(inputs, np.ndarray)


def _jax_traced(inputs, layer) -> bool:
    """Whether a JAX trace (`jax.jit`, `jax.grad`, ...) sees the inputs or the weights, with
    the inputs of a static shape (Keras's shape inference traces symbolic dimensions)."""
    if keras.backend.backend() != "jax":
        return False
    import jax

    traced = [inputs, *(w.value for w in layer.weights)]
    return any(isinstance(t, jax.core.Tracer) for t in traced) and all(isinstance(d, int) for d in inputs.shape)


def _jax_host_call(run, reference, output, *args):
    """`run(*args)` as a host callback inside a JAX trace, differentiated through `reference`.

    XLA's CPU convolution is slow at depthwise (several ms where our kernel takes tens of µs),
    so traced inference (Keras's jitted `predict`) calls the compiled kernel through
    `jax.pure_callback`. A callback has no derivative of its own: gradients, should anyone
    differentiate an inference call, are those of `reference` (Keras's computation).

    Args:
        run: Computes the result from host (NumPy) arrays.
        reference: The same function in JAX operations.
        output: `jax.ShapeDtypeStruct` of the result.
        *args: The traced arguments.
    """
    import jax

    def on_host(*arrays):
        return run(*(np.asarray(a) for a in arrays))

    @jax.custom_vjp
    def kernel(*arrays):
        # Under vmap, one call per example: the kernel is compiled for one example's shape.
        return jax.pure_callback(on_host, output, *arrays, vmap_method="sequential")

    def forward(*arrays):
        return kernel(*arrays), arrays

    def backward(arrays, cotangent):
        return jax.vjp(reference, *arrays)[1](cotangent)

    kernel.defvjp(forward, backward)
    return kernel(*args)


def _tf_tape_active() -> bool:
    """Whether a TensorFlow GradientTape may be recording (True where TF cannot tell us)."""
    try:
        from tensorflow.python.eager import record  # TF's own check; no public API has it
    except ImportError:
        return True
    return record.could_possibly_record()


def _tf_eager_call(run, reference, *args):
    """`run(*args)` on eager TensorFlow tensors, differentiated through `reference`.

    The kernel's NumPy result carries no gradient: a tape over an inference call would get
    None. Under a tape, the call goes through `tf.custom_gradient`, and the tape gets Keras's
    gradient (`reference`, recomputed in TensorFlow for the backward pass). Without one, the
    kernel runs directly: the wrapper costs hundreds of µs per call in eager mode.
    """
    import tensorflow as tf

    if not _tf_tape_active():
        return run(*args)

    @tf.custom_gradient
    def kernel(*tensors):
        def backward(upstream):
            with tf.GradientTape() as tape:
                tape.watch(tensors)
                expected = reference(*tensors)
            return tape.gradient(expected, tensors, output_gradients=upstream)

        return tf.convert_to_tensor(run(*tensors)), backward

    return kernel(*args)


@keras.saving.register_keras_serializable(package="dwconv_tvm")
class DepthwiseConv2D(keras.layers.DepthwiseConv2D):
    """`keras.layers.DepthwiseConv2D` whose inference call runs the TVM kernel.

    Same arguments, weights, config and saving as Keras's layer, plus `target`. A call runs the
    kernel when it is inference on concrete host tensors: `training=False` (as `predict`
    passes), or `training=None` where the backend shows no gradient is recorded (PyTorch
    outside autograd, JAX, TensorFlow and NumPy eagerly). On JAX, inference inside a trace
    (`jax.jit`, `jax.vmap`, `jax.grad`) also runs it, as a host callback. JAX traces and
    TensorFlow tapes differentiate such calls through Keras's computation. Otherwise, and for
    shapes or dtypes the kernel does not support (e.g. bfloat16), Keras's implementation runs.

    Args:
        *args: `keras.layers.DepthwiseConv2D`'s arguments.
        target: Where the kernel runs (default `"host"`); see `dwconv_tvm.resolve_target`.
        **kwargs: `keras.layers.DepthwiseConv2D`'s keyword arguments.

    Raises:
        ValueError: If TVM does not accept `target`; on the first call, if no schedule exists
            for its kind.
        TypeError: If `target` is of an unsupported type.
    """

    def __init__(self, *args: Any, target: TargetLike = "host", **kwargs: Any):
        super().__init__(*args, **kwargs)
        resolve_target(target)  # a bad target fails here, not as a silent fallback to Keras
        self.target = target
        self._ops: dict[tuple, Any] = {}  # (input shape, dtype) -> CompiledOp, or None if unsupported

    def get_config(self) -> dict:
        config = super().get_config()
        if isinstance(self.target, (str, dict)):
            config["target"] = self.target
        return config

    def _plan(self, shape: tuple[int, ...], dtype: str) -> tuple[DepthwiseSpec, bool] | None:
        """`(spec, activation done by the kernel)` for an input shape and dtype, or None where
        the kernel does not support the configuration. A linear activation counts as done."""
        name = _fusable(self.activation)
        fused = name if name in FUSED_ACTIVATIONS else None
        try:
            spec = DepthwiseSpec.from_keras(
                shape, self.kernel_size, self.strides, self.padding, self.depth_multiplier, self.data_format,
                self.dilation_rate, self.use_bias, fused, dtype,
            )
        except ValueError:
            return None
        return spec, fused is not None or name == "linear"

    def _op(self, shape: tuple[int, ...], dtype: str):
        """`(CompiledOp, activation done by the kernel)` for an input shape and dtype, or None
        where the kernel does not support the configuration (Keras computes those calls)."""
        key = (shape, dtype)
        if key not in self._ops:
            plan = self._plan(shape, dtype)
            # Compile errors are the target's (no schedule for its kind): raised, not hidden.
            self._ops[key] = None if plan is None else (compile_spec(plan[0], self.target), plan[1])
        return self._ops[key]

    def _weights_as(self, dtype):
        kernel = keras.ops.cast(self.kernel.value, dtype)
        return (kernel, keras.ops.cast(self.bias.value, dtype)) if self.use_bias else (kernel,)

    def call(self, inputs, training=None):
        if not training and _jax_traced(inputs, self):
            return self._traced_call(inputs)
        if training or not _concrete(inputs) or (training is None and _records_gradients(inputs, self)):
            return super().call(inputs)
        found = self._op(tuple(int(d) for d in inputs.shape), str(keras.backend.standardize_dtype(inputs.dtype)))
        if found is None:
            return super().call(inputs)
        op, activation_done = found
        args = (inputs, *self._weights_as(inputs.dtype))
        if keras.backend.backend() == "tensorflow":
            outputs = _tf_eager_call(op, self._reference(activation_done), *args)
        else:
            outputs = op(*args)  # DLPack in and out: no copies for CPU torch/jax
        if not keras.ops.is_tensor(outputs):
            outputs = keras.ops.convert_to_tensor(outputs)
        # softmax & co. normalize across channels, outside the kernel's per-element epilogue.
        return outputs if activation_done else self.activation(outputs)

    def _traced_call(self, inputs):
        """Inference inside a JAX trace: the kernel runs as a host callback when the trace
        runs, compiled on its first run (so shape inference alone compiles nothing)."""
        import jax

        shape, dtype = tuple(inputs.shape), str(keras.backend.standardize_dtype(inputs.dtype))
        plan = self._plan(shape, dtype)
        if plan is None:
            return super().call(inputs)
        spec, activation_done = plan

        def run(*arrays):
            return self._op(shape, dtype)[0](*arrays)

        output = jax.ShapeDtypeStruct(spec.output_shape, dtype)
        outputs = _jax_host_call(run, self._reference(activation_done), output, inputs, *self._weights_as(inputs.dtype))
        return outputs if activation_done else self.activation(outputs)

    def _reference(self, activation_done: bool):
        """Keras's computation of what the kernel returns (the activation included where the
        kernel applies it), for gradients in backward passes."""

        def reference(x, kernel, bias=None):
            outputs = keras.ops.depthwise_conv(
                x, kernel, strides=self.strides, padding=self.padding, data_format=self.data_format,
                dilation_rate=self.dilation_rate,
            )
            if bias is not None:
                outputs = outputs + (bias if self.data_format == "channels_last" else keras.ops.reshape(bias, (-1, 1, 1)))
            return self.activation(outputs) if activation_done else outputs

        return reference


def swap_depthwise(model: keras.Model, target: TargetLike = "host") -> keras.Model:
    """A copy of `model` with every `keras.layers.DepthwiseConv2D` replaced by ours.

    Args:
        model: A functional or Sequential Keras model.
        target: Where the kernels run.

    Returns:
        A new model with the same weights; the original is not changed.

    Raises:
        TypeError: If `model` is not a Keras model.
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model. Received: {type(model).__name__}")

    def clone(layer):
        if isinstance(layer, keras.layers.DepthwiseConv2D):
            return DepthwiseConv2D.from_config({**layer.get_config(), "target": target})
        return layer.__class__.from_config(layer.get_config())

    swapped = keras.models.clone_model(model, clone_function=clone)
    swapped.set_weights(model.get_weights())
    return swapped


def _activation_name(activation) -> str | None:
    """A fusable activation name from a string, a Keras activation, or a ReLU/Activation layer."""
    if activation is None:
        return None
    if isinstance(activation, keras.layers.ReLU):
        config = activation.get_config()
        if config.get("negative_slope", 0) == 0 and config.get("threshold", 0) == 0:
            if config.get("max_value") is None:
                return "relu"
            if float(config["max_value"]) == 6.0:
                return "relu6"
    elif isinstance(activation, keras.layers.Activation):
        return _fusable(activation.activation)
    elif isinstance(activation, str) or callable(activation):
        return _fusable(keras.activations.get(activation))
    return None


def fold_batch_norm(
    depthwise: keras.layers.DepthwiseConv2D,
    batch_norm: keras.layers.BatchNormalization,
    activation: Any = None,
    target: TargetLike = "host",
) -> DepthwiseConv2D:
    """One inference layer for depthwise -> BatchNormalization -> activation (one kernel).

    The normalization is folded into the kernel and bias with the moving statistics:
    `scale = gamma / sqrt(moving_variance + epsilon)`, `kernel' = kernel * scale`,
    `bias' = (bias - moving_mean) * scale + beta`; the activation is fused.

    Args:
        depthwise: A built `keras.layers.DepthwiseConv2D` (or ours) without an activation.
        batch_norm: The built `BatchNormalization` after it, normalizing the channel axis.
        activation: What follows: None, an activation name or function, or a `ReLU` /
            `Activation` layer (e.g. `ReLU(6.0)` becomes relu6).

    Returns:
        A built `dwconv_tvm.keras.DepthwiseConv2D` with bias and fused activation.

    Raises:
        TypeError: If the layers are not of those types.
        ValueError: If a layer is not built, the depthwise layer has an activation, the
            normalization is over another axis, or the activation cannot be fused.
    """
    if not isinstance(depthwise, keras.layers.DepthwiseConv2D):
        raise TypeError(f"`depthwise` must be a keras.layers.DepthwiseConv2D. Received: {type(depthwise).__name__}")
    if not isinstance(batch_norm, keras.layers.BatchNormalization):
        raise TypeError(
            f"`batch_norm` must be a keras.layers.BatchNormalization. Received: {type(batch_norm).__name__}"
        )
    if not depthwise.built or not batch_norm.built:
        raise ValueError("Both layers must be built (called once, or part of a built model).")
    if _fusable(depthwise.activation) != "linear":
        raise ValueError("`depthwise` must have no activation: the activation has to follow the normalization.")
    channel_axis = -1 if depthwise.data_format == "channels_last" else 1
    if batch_norm.axis not in (channel_axis, channel_axis % 4, [channel_axis % 4]):
        raise ValueError(f"`batch_norm` must normalize the channel axis {channel_axis}. Received axis={batch_norm.axis}")
    name = _activation_name(activation)
    if activation is not None and name is None:
        raise ValueError(f"`activation` cannot be fused: {activation!r}. Use a Keras activation name or ReLU layer.")

    def numpy(variable):
        return keras.ops.convert_to_numpy(variable).astype(np.float64)

    kernel = numpy(depthwise.kernel)  # (kh, kw, C, M); output channel c*M + m
    out_channels = kernel.shape[2] * kernel.shape[3]
    gamma = numpy(batch_norm.gamma) if batch_norm.scale else np.ones(out_channels)
    beta = numpy(batch_norm.beta) if batch_norm.center else np.zeros(out_channels)
    scale = gamma / np.sqrt(numpy(batch_norm.moving_variance) + batch_norm.epsilon)
    bias = numpy(depthwise.bias) if depthwise.use_bias else np.zeros(out_channels)
    config = {**depthwise.get_config(), "use_bias": True, "activation": name or "linear", "target": target}
    config["name"] = f"{depthwise.name}_folded"
    for key in ("bias_initializer", "bias_regularizer", "bias_constraint"):
        config.pop(key, None)
    folded = DepthwiseConv2D.from_config(config)
    folded.build_from_config(depthwise.get_build_config())
    dtype = keras.backend.standardize_dtype(depthwise.kernel.dtype)
    folded.kernel.assign((kernel * scale.reshape(kernel.shape[2], kernel.shape[3])).astype(dtype))
    folded.bias.assign(((bias - numpy(batch_norm.moving_mean)) * scale + beta).astype(dtype))
    return folded
