"""dwconv_tvm.keras: the Keras subclass, swapping it into MobileNetV2, BatchNorm folding."""

import keras
import numpy as np
import pytest
import torch

import dwconv_tvm.keras as dk
from dwconv_tvm.runtime import CompiledOp


def _used_kernel(layer) -> bool:
    return any(found is not None and isinstance(found[0], CompiledOp) for found in layer._ops.values())


@pytest.mark.parametrize("kwargs,shape", [
    (dict(kernel_size=3, padding="same", activation="relu6"), (2, 10, 10, 8)),
    (dict(kernel_size=(3, 5), strides=2, padding="valid", depth_multiplier=2), (1, 11, 13, 4)),
    (dict(kernel_size=3, dilation_rate=2, padding="same", activation="hard_silu"), (1, 9, 9, 6)),
    (dict(kernel_size=3, padding="same", data_format="channels_first", activation="softmax"), (1, 6, 7, 7)),
    (dict(kernel_size=3, padding="same", activation=keras.activations.softsign), (1, 5, 5, 3)),
    (dict(kernel_size=3, padding="same", activation=keras.layers.Lambda(lambda t: t * 2.0)), (1, 5, 5, 3)),
])
def test_subclass_matches_keras(kwargs, shape, rng):
    ours = dk.DepthwiseConv2D(**kwargs, bias_initializer="random_normal")
    theirs = keras.layers.DepthwiseConv2D(**kwargs)
    x = rng.standard_normal(shape).astype(np.float32)
    ours.build(shape)
    theirs.build(shape)
    theirs.set_weights(ours.get_weights())
    expected = keras.ops.convert_to_numpy(theirs(x))
    got = ours(torch.from_numpy(x), training=False)
    assert isinstance(got, torch.Tensor)  # DLPack back into the caller's framework
    np.testing.assert_allclose(got.detach().numpy(), expected, atol=1e-4, rtol=1e-4)
    assert _used_kernel(ours)
    assert isinstance(ours, keras.layers.DepthwiseConv2D)


def test_training_calls_keep_gradients(rng):
    layer = dk.DepthwiseConv2D(3, padding="same")
    x = torch.from_numpy(rng.standard_normal((1, 6, 6, 4)).astype(np.float32))
    layer.build(x.shape)
    loss = layer(x, training=True).sum()
    loss.backward()
    assert layer.kernel.value.grad is not None and not _used_kernel(layer)
    layer(x).sum().backward()  # training=None with autograd on: Keras's path, gradients kept
    assert not _used_kernel(layer)
    with torch.no_grad():
        layer(x)
    assert _used_kernel(layer)


def test_bad_targets_raise_instead_of_falling_back_to_keras():
    with pytest.raises(ValueError, match="Invalid `target`"):
        dk.DepthwiseConv2D(3, target="nonsense")
    with pytest.raises(TypeError, match="`target` must be"):
        dk.DepthwiseConv2D(3, target=42)
    layer = dk.DepthwiseConv2D(3, target="c")  # a valid TVM target we have no schedule for
    with pytest.raises(ValueError, match="No schedule for target kind 'c'"):
        layer(np.zeros((1, 5, 5, 4), np.float32), training=False)


def test_config_round_trip():
    layer = dk.DepthwiseConv2D(3, strides=2, padding="same", activation="relu6", target="host")
    clone = dk.DepthwiseConv2D.from_config(layer.get_config())
    assert clone.get_config() == layer.get_config() and clone.target == "host"


def test_swap_mobilenet_v2_matches_keras(rng):
    model = keras.applications.MobileNetV2(weights=None, classifier_activation=None)
    # Non-trivial normalization statistics, so the comparison covers what a trained net does.
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            channels = layer.moving_mean.shape[0]
            layer.moving_mean.assign(rng.normal(0, 0.1, channels).astype(np.float32))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, channels).astype(np.float32))
    swapped = dk.swap_depthwise(model)
    ours = [layer for layer in swapped.layers if isinstance(layer, dk.DepthwiseConv2D)]
    assert len(ours) == sum(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in model.layers) == 17
    x = rng.uniform(-1, 1, (1, 224, 224, 3)).astype(np.float32)
    expected = model.predict(x, verbose=0)
    got = swapped.predict(x, verbose=0)
    assert all(_used_kernel(layer) for layer in ours)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(TypeError, match="keras.Model"):
        dk.swap_depthwise(ours[0])


@pytest.mark.parametrize("activation,data_format", [
    (keras.layers.ReLU(6.0), "channels_last"),
    ("relu", "channels_first"),
    (None, "channels_last"),
])
def test_fold_batch_norm_matches_the_unfused_stack(activation, data_format, rng):
    shape = (2, 9, 9, 8) if data_format == "channels_last" else (2, 8, 9, 9)
    depthwise = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False, data_format=data_format,
                                             depth_multiplier=2)
    norm = keras.layers.BatchNormalization(axis=-1 if data_format == "channels_last" else 1, epsilon=1e-3)
    x = rng.standard_normal(shape).astype(np.float32)
    y = norm(depthwise(x), training=False)
    norm.gamma.assign(rng.uniform(0.5, 2, 16).astype(np.float32))
    norm.beta.assign(rng.normal(0, 1, 16).astype(np.float32))
    norm.moving_mean.assign(rng.normal(0, 1, 16).astype(np.float32))
    norm.moving_variance.assign(rng.uniform(0.5, 2, 16).astype(np.float32))
    y = norm(depthwise(x), training=False)
    if activation is not None:
        y = (activation if callable(activation) else keras.activations.get(activation))(y)
    folded = dk.fold_batch_norm(depthwise, norm, activation)
    got = folded(x, training=False)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(got), keras.ops.convert_to_numpy(y), atol=1e-4, rtol=1e-4)
    assert _used_kernel(folded) and folded.use_bias


def test_fold_batch_norm_errors():
    depthwise = keras.layers.DepthwiseConv2D(3, activation="relu")
    norm = keras.layers.BatchNormalization()
    with pytest.raises(ValueError, match="built"):
        dk.fold_batch_norm(depthwise, norm)
    x = np.zeros((1, 5, 5, 4), np.float32)
    norm(depthwise(x))
    with pytest.raises(ValueError, match="no activation"):
        dk.fold_batch_norm(depthwise, norm)
    plain = keras.layers.DepthwiseConv2D(3)
    norm2 = keras.layers.BatchNormalization(axis=1)
    norm2(plain(x))
    with pytest.raises(ValueError, match="channel axis"):
        dk.fold_batch_norm(plain, norm2)
    with pytest.raises(TypeError, match="BatchNormalization"):
        dk.fold_batch_norm(plain, plain)
