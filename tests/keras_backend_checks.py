"""Runs dwconv_tvm.keras on one Keras backend (`jax` or `tensorflow`, the first argument) and
prints what it saw as JSON.

Keras picks its backend once per process, and the test session runs on torch, so
`test_keras_backends.py` runs this script in a child process per backend.
"""

import json
import os
import sys

BACKEND = sys.argv[1]
os.environ["KERAS_BACKEND"] = BACKEND
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import dwconv_tvm.keras as dk  # noqa: E402
from dwconv_tvm.runtime import CompiledOp  # noqa: E402

CASES = {
    "relu6": (dict(kernel_size=3, padding="same", activation="relu6"), (2, 10, 10, 8)),
    "channels_first_softmax": (
        dict(kernel_size=3, padding="same", data_format="channels_first", activation="softmax", depth_multiplier=2),
        (1, 4, 9, 9),
    ),
    "strided_no_bias": (dict(kernel_size=(3, 5), strides=2, padding="valid", use_bias=False), (1, 11, 13, 4)),
}


def kernels_compiled(layer) -> int:
    return sum(found is not None and isinstance(found[0], CompiledOp) for found in layer._ops.values())


def gap(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64))))


def gradient_gaps(grads, expected) -> dict:
    """How far our gradients are from Keras's, and their scale (for a relative tolerance)."""
    return {
        "gaps": [gap(a, b) for a, b in zip(grads, expected, strict=True)],
        "scale": max(float(np.max(np.abs(np.asarray(g)))) for g in grads),
    }


def jax_checks(ours, theirs, x, expected, fresh) -> None:
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(x)
    got = jax.jit(lambda t: ours(t, training=False))(x)
    fresh("jit", {"gap": gap(got, expected), "kernels": kernels_compiled(ours)})

    got = jax.vmap(lambda t: ours(t[None], training=False)[0])(x)
    fresh("vmap", {"gap": gap(got, expected), "kernels": kernels_compiled(ours)})

    # Gradients of an inference call, with respect to the input and to the weights.
    def loss(layer, weights, t, **kwargs):
        y, _ = layer.stateless_call(weights, [], t, **kwargs)
        return jnp.sum(jnp.sin(y))

    ours_weights = [w.value for w in ours.trainable_weights]
    theirs_weights = [w.value for w in theirs.trainable_weights]
    grads = jax.grad(lambda w, t: loss(ours, w, t, training=False), argnums=(0, 1))(ours_weights, x)
    kernels = kernels_compiled(ours)
    wanted = jax.grad(lambda w, t: loss(theirs, w, t), argnums=(0, 1))(theirs_weights, x)
    fresh("grad", {"kernels": kernels, **gradient_gaps(jax.tree.leaves(grads), jax.tree.leaves(wanted))})

    # Only the weights traced, the input concrete (a custom training loop without jit).
    grads = jax.grad(lambda w: loss(ours, w, x, training=False))(ours_weights)
    kernels = kernels_compiled(ours)
    wanted = jax.grad(lambda w: loss(theirs, w, x))(theirs_weights)
    fresh("weight_grad", {"kernels": kernels, **gradient_gaps(grads, wanted)})


def tensorflow_checks(ours, theirs, x, expected, fresh) -> None:
    import tensorflow as tf

    x = tf.constant(x)
    # Graphs run Keras's code: a NumPy callback in a graph would not survive SavedModel export.
    got = tf.function(lambda t: ours(t, training=False))(x)
    fresh("graph", {"gap": gap(got, expected), "kernels": kernels_compiled(ours)})

    # A GradientTape over an inference call, with respect to the input and to the weights.
    def tape_gradients(layer, watch_input, **kwargs):
        with tf.GradientTape() as tape:
            if watch_input:
                tape.watch(x)
            loss = tf.reduce_sum(tf.sin(layer(x, **kwargs)))
        return tape.gradient(loss, [x, *layer.trainable_variables][0 if watch_input else 1:])

    # Input and weights; the weights alone (the input a constant to the tape).
    for name, watch_input in (("grad", True), ("weight_grad", False)):
        grads = tape_gradients(ours, watch_input, training=False)
        kernels = kernels_compiled(ours)
        fresh(name, {"kernels": kernels, **gradient_gaps(grads, tape_gradients(theirs, watch_input))})


def check(kwargs, shape, rng) -> dict:
    x = rng.standard_normal(shape).astype(np.float32)
    theirs = keras.layers.DepthwiseConv2D(**kwargs, bias_initializer="random_normal")
    theirs.build(shape)
    ours = dk.DepthwiseConv2D.from_config(theirs.get_config())
    ours.build(shape)
    ours.set_weights(theirs.get_weights())
    expected = keras.ops.convert_to_numpy(theirs(x))
    seen = {}

    def fresh(name, value):
        seen[name] = value
        ours._ops.clear()

    # Shape inference traces the layer; it must compile nothing.
    ours._ops.clear()
    inputs = keras.Input(shape[1:], batch_size=shape[0])
    model = keras.Model(inputs, ours(inputs))
    fresh("kernels_after_model_building", kernels_compiled(ours))

    tensor = keras.ops.convert_to_tensor(x)
    got = ours(tensor)
    fresh("eager", {"gap": gap(got, expected), "kernels": kernels_compiled(ours), "type": type(got).__name__})

    got = model.predict(x, verbose=0)
    fresh("predict", {"gap": gap(got, expected), "kernels": kernels_compiled(ours)})

    ours(tensor, training=True)
    fresh("training_kernels", kernels_compiled(ours))

    {"jax": jax_checks, "tensorflow": tensorflow_checks}[BACKEND](ours, theirs, x, expected, fresh)
    return seen


def main() -> None:
    rng = np.random.default_rng(7)
    print(json.dumps({name: check(kwargs, shape, rng) for name, (kwargs, shape) in CASES.items()}))
    sys.stdout.flush()


if __name__ == "__main__":
    main()
