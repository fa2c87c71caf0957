"""Parity with real Keras 3 (torch backend): outputs, configs, activations, regularizers, constraints."""

import json
import random

import numpy as np
import pytest

import dwconv_tvm
from dwconv_tvm import DepthwiseConv2D

keras = pytest.importorskip("keras")


def _random_config(seed: int) -> tuple[dict, tuple]:
    r = random.Random(seed)
    data_format = ["channels_last", "channels_first"][seed % 2]
    kernel = (r.randint(1, 5), r.randint(1, 5))
    dilated = r.random() < 0.3
    strides = (1, 1) if dilated else (r.randint(1, 3), r.randint(1, 3))
    dilation = (r.randint(1, 3), r.randint(1, 2)) if dilated else (1, 1)
    padding = r.choice(["same", "valid", "SAME"])
    dm = r.choice([1, 1, 2, 3])
    activation = r.choice([None, "relu", "relu6", "gelu", "silu", "hard_sigmoid", "elu", "tanh", "softmax", "leaky_relu", "mish"])
    config = dict(kernel_size=kernel, strides=strides, padding=padding, depth_multiplier=dm,
                  data_format=data_format, dilation_rate=dilation, activation=activation,
                  use_bias=r.random() < 0.7)
    n, c = r.randint(1, 3), r.randint(1, 9)
    h = r.randint((kernel[0] - 1) * dilation[0] + 1, 16)
    w = r.randint((kernel[1] - 1) * dilation[1] + 1, 16)
    shape = (n, h, w, c) if data_format == "channels_last" else (n, c, h, w)
    return config, shape


@pytest.mark.parametrize("seed", range(24))
def test_random_configs_match_keras(seed):
    config, shape = _random_config(seed)
    rng = np.random.default_rng(seed)
    theirs = keras.layers.DepthwiseConv2D(**config)
    ours = DepthwiseConv2D(**config)
    x = rng.standard_normal(shape).astype(np.float32)
    theirs.build(shape)
    ours.build(shape)
    weights = [rng.standard_normal(w.shape).astype(np.float32) for w in theirs.get_weights()]
    theirs.set_weights(weights)
    ours.set_weights(weights)
    expected = keras.ops.convert_to_numpy(theirs(x))
    got = ours(x)
    assert got.shape == expected.shape == tuple(ours.compute_output_shape(shape))
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("data_format,shape", [("channels_last", (0, 9, 9, 3)), ("channels_first", (0, 3, 9, 9))])
def test_empty_batch_like_keras(data_format, shape):
    config = dict(kernel_size=3, strides=2, depth_multiplier=2, data_format=data_format, activity_regularizer="l2")
    theirs, ours = keras.layers.DepthwiseConv2D(**config), DepthwiseConv2D(**config)
    expected, got = keras.ops.convert_to_numpy(theirs(np.zeros(shape, np.float32))), ours(np.zeros(shape, np.float32))
    assert got.shape == expected.shape and got.dtype == expected.dtype
    assert [float(keras.ops.convert_to_numpy(v)) for v in theirs.losses] == [float(v) for v in ours.losses]


def test_seed_example_like_keras():
    x = np.random.rand(4, 10, 10, 12)
    assert tuple(keras.layers.DepthwiseConv2D(3, 3, activation="relu")(x).shape) == (4, 3, 3, 12)
    assert DepthwiseConv2D(3, 3, activation="relu")(x).shape == (4, 3, 3, 12)


FULL = dict(
    kernel_size=(3, 2), strides=(2, 1), padding="same", depth_multiplier=2, data_format="channels_first",
    activation="swish", use_bias=True, depthwise_initializer="he_normal", bias_initializer="ones",
    depthwise_regularizer="l1", bias_regularizer="l2", activity_regularizer="l2",
    depthwise_constraint="unit_norm", bias_constraint="max_norm", dtype="float64", name="dw_full",
)


def test_keras_config_loads_here():
    config = json.loads(json.dumps(keras.layers.DepthwiseConv2D(**FULL).get_config()))
    ours = DepthwiseConv2D.from_config(config)
    assert json.loads(json.dumps(ours.get_config())) == config


def test_our_config_loads_in_keras():
    config = json.loads(json.dumps(DepthwiseConv2D(**FULL).get_config()))
    theirs = keras.layers.DepthwiseConv2D.from_config(config)
    assert json.loads(json.dumps(theirs.get_config())) == config


FUSED = sorted(dwconv_tvm.activations.FUSED_ACTIVATIONS)


@pytest.mark.parametrize("name", FUSED + ["softmax", "log_softmax", "glu", "sparsemax"])
def test_activation_matches_keras(name):
    rng = np.random.default_rng(7)
    config = dict(kernel_size=3, padding="same", activation=name, depth_multiplier=2)
    theirs, ours = keras.layers.DepthwiseConv2D(**config), DepthwiseConv2D(**config)
    x = rng.standard_normal((2, 6, 6, 4)).astype(np.float32) * 2
    theirs.build(x.shape)
    ours.build(x.shape)
    ours.set_weights(theirs.get_weights())
    expected = keras.ops.convert_to_numpy(theirs(x))
    np.testing.assert_allclose(ours(x), expected, atol=1e-4, rtol=1e-4)


def test_keras_activation_callable_is_fused():
    layer = DepthwiseConv2D(3, activation=keras.activations.relu6)
    assert layer.activation == "relu6" and layer.spec_for((1, 5, 5, 2)).activation == "relu6"


@pytest.mark.parametrize("identifier", ["l1", "l2", "l1l2", {"class_name": "L1L2", "config": {"l1": 0.3, "l2": 0.2}}])
def test_regularizers_match_keras(identifier):
    w = np.random.default_rng(3).standard_normal((3, 3, 4, 2)).astype(np.float32)
    theirs = keras.regularizers.get(identifier)
    ours = dwconv_tvm.regularizers.get(identifier)
    assert float(ours(w)) == pytest.approx(float(keras.ops.convert_to_numpy(theirs(w))), rel=1e-5)
    assert ours.get_config() == pytest.approx(theirs.get_config())


@pytest.mark.parametrize("identifier", ["max_norm", "min_max_norm", "non_neg", "unit_norm",
                                        {"class_name": "MaxNorm", "config": {"max_value": 0.5, "axis": [0, 1]}}])
def test_constraints_match_keras(identifier):
    w = np.random.default_rng(5).standard_normal((3, 3, 4, 2)).astype(np.float32)
    expected = keras.ops.convert_to_numpy(keras.constraints.get(identifier)(w))
    np.testing.assert_allclose(dwconv_tvm.constraints.get(identifier)(w), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["glorot_uniform", "glorot_normal", "he_normal", "he_uniform", "lecun_normal",
                                  "lecun_uniform", "zeros", "ones", "random_normal", "random_uniform",
                                  "truncated_normal", "variance_scaling", "orthogonal", "normal", "uniform"])
def test_initializer_configs_and_statistics_match_keras(name):
    theirs, ours = keras.initializers.get(name), dwconv_tvm.initializers.get(name)
    assert dwconv_tvm.initializers.serialize(ours) == keras.initializers.serialize(theirs)
    shape = (5, 5, 64, 4)
    a = keras.ops.convert_to_numpy(theirs(shape))
    b = ours(shape)
    assert b.shape == a.shape and b.dtype == np.float32
    assert float(b.std()) == pytest.approx(float(a.std()), rel=0.05, abs=1e-6)
    assert float(b.mean()) == pytest.approx(float(a.mean()), abs=0.1 * max(float(a.std()), 1e-3) + 1e-6)  # ~5 sigma for 6400 samples
