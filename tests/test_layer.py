"""The layer's Keras semantics: arguments, errors, weights, config, losses, dtypes, inputs."""

import copy
import json
import pickle
import sys

import numpy as np
import pytest

import dwconv_tvm
from dwconv_tvm import DepthwiseConv2D, keras_config
from reference import ACTIVATIONS, depthwise


def test_seed_example_positional_strides(rng):
    # DepthwiseConv2D(3, 3, ...) means strides=3, as in Keras.
    y = DepthwiseConv2D(3, 3, activation="relu")(rng.random((4, 10, 10, 12)))
    assert y.shape == (4, 3, 3, 12)


def test_seed_example_keyword_form(rng):
    layer = DepthwiseConv2D(kernel_size=3, depth_multiplier=3, activation="relu")
    x = rng.random((4, 10, 10, 12))
    y = layer(x)
    assert y.shape == (4, 8, 8, 36)
    assert y.dtype == np.float32  # float64 input, float32 layer
    expected = np.maximum(depthwise(x.astype(np.float32), layer.kernel, layer.bias), 0)
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_defaults_match_keras_signature():
    layer = DepthwiseConv2D(3)
    assert layer.strides == (1, 1) and layer.dilation_rate == (1, 1) and layer.kernel_size == (3, 3)
    assert layer.padding == "valid" and layer.depth_multiplier == 1 and layer.use_bias
    assert layer.activation == "linear" and layer.data_format == "channels_last"
    assert type(layer.depthwise_initializer).__name__ == "GlorotUniform"
    assert type(layer.bias_initializer).__name__ == "Zeros"
    assert layer.compute_dtype == layer.variable_dtype == "float32"


def test_case_insensitive_strings():
    layer = DepthwiseConv2D(3, padding="SAME", data_format="Channels_First")
    assert layer.padding == "same" and layer.data_format == "channels_first"


BAD_ARGUMENTS = [
    (dict(kernel_size=0), "kernel_size"),
    (dict(kernel_size=(3,)), "kernel_size"),
    (dict(kernel_size="3"), "kernel_size"),
    (dict(kernel_size=(3, 2.5)), "kernel_size"),
    (dict(kernel_size=3, strides=0), "strides"),
    (dict(kernel_size=3, strides=(1, -1)), "strides"),
    (dict(kernel_size=3, dilation_rate=0), "dilation_rate"),
    (dict(kernel_size=3, strides=2, dilation_rate=2), "dilation_rate > 1"),
    (dict(kernel_size=3, strides=(1, 2), dilation_rate=(2, 1)), "dilation_rate > 1"),
    (dict(kernel_size=3, padding="full"), "padding"),
    (dict(kernel_size=3, padding=1), "padding"),
    (dict(kernel_size=3, depth_multiplier=0), "depth_multiplier"),
    (dict(kernel_size=3, depth_multiplier=1.5), "depth_multiplier"),
    (dict(kernel_size=3, data_format="nchw"), "data_format"),
    (dict(kernel_size=3, activation="nope"), "activation"),
    (dict(kernel_size=3, activation="threshold"), "threshold"),
    (dict(kernel_size=3, depthwise_initializer="nope"), "initializer"),
    (dict(kernel_size=3, bias_regularizer="nope"), "regularizer"),
    (dict(kernel_size=3, depthwise_constraint="nope"), "constraint"),
    (dict(kernel_size=3, dtype="int8"), "dtype"),
    (dict(kernel_size=3, dtype="bfloat16"), "dtype"),
    (dict(kernel_size=3, name="a/b"), "name"),
    (dict(kernel_size=3, foo=1), "Unrecognized keyword arguments"),
]


@pytest.mark.parametrize("kwargs,needle", BAD_ARGUMENTS, ids=[str(a) for a, _ in BAD_ARGUMENTS])
def test_bad_arguments_raise_value_error(kwargs, needle):
    with pytest.raises(ValueError, match=None) as info:
        DepthwiseConv2D(**kwargs)
    assert needle in str(info.value)


BAD_INPUTS = [
    (np.zeros((2, 9, 9), np.float32), "expected ndim=4"),
    (np.zeros((2, 9, 9, 3, 1), np.float32), "expected ndim=4"),
    (np.zeros((2, 9, 9, 3), np.int32), "floating-point"),
    (np.zeros((2, 9, 9, 3), bool), "floating-point"),
    (np.zeros((2, 9, 9, 3), np.complex64), "floating-point"),
    (np.zeros((2, 2, 2, 3), np.float32), "zero or negative"),
    (np.zeros((0, 2, 2, 3), np.float32), "zero or negative"),  # an empty batch of too small images
]


@pytest.mark.parametrize("x,needle", BAD_INPUTS, ids=[m + str(i) for i, (_, m) in enumerate(BAD_INPUTS)])
def test_bad_inputs_raise_value_error(x, needle):
    with pytest.raises(ValueError) as info:
        DepthwiseConv2D(3)(x)
    assert needle in str(info.value)


@pytest.mark.parametrize("data_format,shape", [("channels_last", (0, 9, 9, 3)), ("channels_first", (0, 3, 9, 9))])
def test_empty_batch_gives_an_empty_output(data_format, shape):
    # As Keras: a batch of 0 (a detector that found nothing to crop) is no error.
    layer = DepthwiseConv2D(3, 2, depth_multiplier=2, data_format=data_format, activity_regularizer="l2")
    y = layer(np.zeros(shape, np.float32))
    assert y.shape == layer.compute_output_shape(shape) and y.shape[0] == 0 and y.dtype == np.float32
    assert [float(loss) for loss in layer.losses] == [0.0]  # Keras divides by the batch size with divide_no_nan
    full = (2, *shape[1:])
    assert layer(np.ones(full, np.float32)).shape == layer.compute_output_shape(full)  # then a real batch


def test_channel_mismatch_after_build():
    layer = DepthwiseConv2D(3)
    layer(np.zeros((1, 5, 5, 3), np.float32))
    with pytest.raises(ValueError, match="expected axis -1 of input shape to have value 3"):
        layer(np.zeros((1, 5, 5, 4), np.float32))


def test_non_tensor_input_raises_type_error():
    with pytest.raises(TypeError, match="inputs"):
        DepthwiseConv2D(3)(object())


def test_build_creates_keras_layout_weights():
    layer = DepthwiseConv2D((3, 2), depth_multiplier=4, data_format="channels_first")
    assert layer.weights == [] and layer.get_weights() == []
    layer.build((None, 5, None, None))
    assert layer.kernel.shape == (3, 2, 5, 4) and layer.bias.shape == (20,)
    assert layer.count_params() == 3 * 2 * 5 * 4 + 20
    assert layer.compute_output_shape((None, 5, 10, None)) == (None, 20, 8, None)


def test_weights_copies_and_errors(rng):
    layer = DepthwiseConv2D(3)
    with pytest.raises(ValueError, match="expecting 0 weights"):
        layer.set_weights([np.zeros((3, 3, 2, 1))])
    with pytest.raises(ValueError, match="isn't built"):
        layer.count_params()
    layer.build((1, 5, 5, 2))
    weights = layer.get_weights()
    weights[0][...] = 7
    assert not np.any(layer.kernel == 7)  # get_weights returns copies
    new = [rng.standard_normal((3, 3, 2, 1)), rng.standard_normal(2)]
    layer.set_weights(new)
    new[0][...] = 0
    assert np.any(layer.kernel != 0)  # set_weights copies too
    assert layer.kernel.dtype == np.float32
    with pytest.raises(ValueError, match=r"weight shape \(3, 3, 2, 1\) is not compatible"):
        layer.set_weights([np.zeros((3, 3, 2, 2)), np.zeros(2)])
    with pytest.raises(ValueError, match="expecting 2 weights"):
        layer.set_weights([np.zeros((3, 3, 2, 1))])


def test_weights_start_on_64_byte_boundaries(rng):
    # Read on every call as SIMD vectors: build, the setters and set_weights all align them.
    def aligned(layer):
        return all(w.ctypes.data % 64 == 0 and w.flags.c_contiguous for w in layer.weights)

    for _ in range(4):  # NumPy's own allocations land on 16-byte boundaries, aligned 1 in 4
        layer = DepthwiseConv2D(3, depth_multiplier=2)
        layer.build((1, 5, 5, 3))
        assert aligned(layer)
        layer.set_weights([rng.standard_normal((3, 3, 3, 2))[:, :, :, ::-1], rng.standard_normal(6)])
        assert aligned(layer)
        layer.kernel, layer.bias = np.ones((3, 3, 3, 2), np.float64), [1, 2, 3, 4, 5, 6]
        assert aligned(layer) and layer.kernel.dtype == layer.bias.dtype == np.float32
        np.testing.assert_array_equal(layer.bias, np.arange(1, 7))


@pytest.mark.parametrize("shape, dtype, alignment", [((2, 3), "float32", 64), ((1, 7, 7, 5), "float16", 128),
                                                     ((0, 4), "float64", 4096), ((), "int8", 16)])
def test_aligned_empty(shape, dtype, alignment):
    arrays = [dwconv_tvm.aligned_empty(shape, dtype, alignment) for _ in range(8)]
    for array in arrays:
        assert array.shape == shape and array.dtype == np.dtype(dtype)
        assert array.flags.c_contiguous and array.flags.writeable
        assert array.ctypes.data % alignment == 0


@pytest.mark.parametrize("alignment, error", [(48, ValueError), (0, ValueError), (-64, ValueError),
                                              (64.0, TypeError), (True, TypeError)])
def test_aligned_empty_rejects_bad_alignment(alignment, error):
    with pytest.raises(error, match="`alignment`"):
        dwconv_tvm.aligned_empty((4,), "float32", alignment)


def test_aligned_empty_rejects_negative_shape():
    with pytest.raises(ValueError, match="`shape`"):
        dwconv_tvm.aligned_empty((2, -1))


def test_initial_weights_kwarg():
    kernel = np.full((3, 3, 2, 1), 0.5, np.float32)
    layer = DepthwiseConv2D(3, use_bias=False, weights=[kernel])
    y = layer(np.ones((1, 3, 3, 2), np.float32))
    np.testing.assert_allclose(y, np.full((1, 1, 1, 2), 4.5))


def test_initializers_use_conv_fans():
    layer = DepthwiseConv2D(5, depth_multiplier=2, depthwise_initializer={"class_name": "GlorotUniform", "config": {"seed": 3}})
    layer.build((1, 9, 9, 64))
    fan_in, fan_out = 5 * 5 * 64, 5 * 5 * 2
    limit = np.sqrt(6 / (fan_in + fan_out))
    assert np.abs(layer.kernel).max() <= limit
    assert np.abs(layer.kernel).max() > 0.9 * limit
    he = DepthwiseConv2D(3, depthwise_initializer="he_normal")
    he.build((1, 9, 9, 200))
    assert np.std(he.kernel) == pytest.approx(np.sqrt(2 / (9 * 200)), rel=0.1)


def test_auto_unique_names():
    a, b = DepthwiseConv2D(3), DepthwiseConv2D(3)
    assert a.name != b.name and a.name.startswith("depthwise_conv2d") and b.name.startswith("depthwise_conv2d")
    assert DepthwiseConv2D(3, name="mine").name == "mine"


def test_config_round_trip_json():
    layer = DepthwiseConv2D(
        (3, 5), strides=(2, 1), padding="same", depth_multiplier=2, data_format="channels_first",
        activation="hard_silu", use_bias=False, depthwise_initializer="he_uniform",
        depthwise_regularizer="l2", activity_regularizer={"class_name": "L1", "config": {"l1": 0.5}},
        depthwise_constraint="max_norm", bias_constraint="non_neg", dtype="float64", name="dw",
    )
    config = json.loads(json.dumps(layer.get_config()))
    clone = DepthwiseConv2D.from_config(config)
    assert json.loads(json.dumps(clone.get_config())) == config
    assert clone.kernel_size == (3, 5) and clone.strides == (2, 1) and clone.compute_dtype == "float64"
    assert config["dtype"]["config"]["name"] == "float64"
    assert config["activity_regularizer"]["config"]["l1"] == pytest.approx(0.5)


def custom_activation(x):
    return x * 2.0


def test_callable_activation_and_config():
    layer = DepthwiseConv2D(1, use_bias=False, activation=custom_activation, depthwise_initializer="ones")
    np.testing.assert_allclose(layer(np.ones((1, 2, 2, 3), np.float32)), 2.0)
    clone = DepthwiseConv2D.from_config(json.loads(json.dumps(layer.get_config())))
    assert clone.activation is custom_activation
    with pytest.raises(ValueError, match="serialize"):
        DepthwiseConv2D(1, activation=lambda x: x).get_config()


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "sparsemax", "glu"])
@pytest.mark.parametrize("data_format", ["channels_last", "channels_first"])
def test_non_elementwise_activations_over_last_axis(rng, name, data_format):
    layer = DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation=name, data_format=data_format)
    x = rng.standard_normal((2, 4, 6, 6)).astype(np.float32)
    y = layer(x)
    expected = ACTIVATIONS[name](depthwise(x, layer.kernel, layer.bias, padding="same", data_format=data_format))
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_losses_weight_and_activity():
    layer = DepthwiseConv2D(
        1, depthwise_regularizer={"class_name": "L2", "config": {"l2": 0.5}}, bias_regularizer="l1",
        activity_regularizer={"class_name": "L1", "config": {"l1": 0.25}},
        depthwise_initializer={"class_name": "Constant", "config": {"value": 2.0}}, bias_initializer="ones",
    )
    assert layer.losses == []
    x = np.ones((4, 2, 2, 3), np.float32)
    y = layer(x)
    activity, kernel_loss, bias_loss = layer.losses
    assert float(activity) == pytest.approx(0.25 * np.abs(y).sum() / 4)
    assert float(kernel_loss) == pytest.approx(0.5 * 4.0 * 3)
    assert float(bias_loss) == pytest.approx(0.01 * 3, rel=1e-6)
    y2 = layer(x[:2] * 0)  # every output is the bias, 1.0
    assert len(layer.losses) == 3  # replaced, not added
    assert float(layer.losses[0]) == pytest.approx(0.25 * y2.size / 2)
    layer.trainable = False
    assert len(layer.losses) == 1  # Keras regularizes trainable weights only


def test_constraints_stored_not_applied_in_call():
    layer = DepthwiseConv2D(1, depthwise_constraint="non_neg", depthwise_initializer={"class_name": "Constant", "config": {"value": -1.0}})
    y = layer(np.ones((1, 2, 2, 2), np.float32))
    np.testing.assert_allclose(y, -1.0)  # not projected during the forward pass
    assert np.all(layer.kernel == -1)
    layer.apply_constraints()  # what an optimizer step would do afterwards
    assert np.all(layer.kernel == 0)


@pytest.mark.parametrize("dtype,input_dtype,expected", [
    ("float32", np.float64, np.float32),
    ("float32", np.float16, np.float32),
    ("float64", np.float32, np.float64),
    ("float16", np.float32, np.float16),
    ("mixed_float16", np.float32, np.float16),
    ({"module": "keras", "class_name": "DTypePolicy", "config": {"name": "float64"}, "registered_name": None}, np.float32, np.float64),
])
def test_dtype_rules(rng, dtype, input_dtype, expected):
    layer = DepthwiseConv2D(3, dtype=dtype)
    y = layer(rng.standard_normal((1, 5, 5, 2)).astype(input_dtype))
    assert y.dtype == expected
    if dtype == "mixed_float16":
        assert layer.kernel.dtype == np.float32 and layer.compute_dtype == "float16"


def test_keras_json_data_format_and_floatx(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "keras", raising=False)  # read the file, not a live Keras
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert DepthwiseConv2D(3).data_format == "channels_last"
    (tmp_path / "keras.json").write_text(json.dumps({"image_data_format": "channels_first", "floatx": "float64"}))
    layer = DepthwiseConv2D(3)
    assert layer.data_format == "channels_first" and layer.compute_dtype == "float64"
    assert DepthwiseConv2D(3, data_format="channels_last").data_format == "channels_last"
    (tmp_path / "keras.json").write_text("{not json")
    with pytest.warns(UserWarning, match="malformed"):
        assert DepthwiseConv2D(3).data_format == "channels_last"
    (tmp_path / "keras.json").write_text(json.dumps({"image_data_format": "sideways"}))
    with pytest.warns(UserWarning, match="invalid"):
        assert keras_config.image_data_format() == "channels_last"


def test_keras_json_home_fallback(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "keras", raising=False)
    monkeypatch.delenv("KERAS_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / ".keras").mkdir()
    (tmp_path / ".keras" / "keras.json").write_text(json.dumps({"image_data_format": "channels_first"}))
    assert DepthwiseConv2D(3).data_format == "channels_first"


def test_torch_input_zero_copy_and_torch_output(rng):
    torch = pytest.importorskip("torch")
    layer = DepthwiseConv2D(3, padding="same", activation="relu6")
    x = torch.randn(2, 7, 7, 4, requires_grad=True)
    y = layer(x)
    assert isinstance(y, torch.Tensor) and tuple(y.shape) == (2, 7, 7, 4)
    expected = ACTIVATIONS["relu6"](depthwise(x.detach().numpy(), layer.kernel, layer.bias, padding="same"))
    np.testing.assert_allclose(y.numpy(), expected, atol=1e-5)
    nchw_view = torch.randn(2, 4, 7, 7).permute(0, 2, 3, 1)  # non-contiguous channels_last view
    np.testing.assert_allclose(
        layer(nchw_view).numpy(),
        ACTIVATIONS["relu6"](depthwise(nchw_view.numpy(), layer.kernel, layer.bias, padding="same")),
        atol=1e-5,
    )


@pytest.mark.parametrize("duplicate", [copy.deepcopy, lambda layer: pickle.loads(pickle.dumps(layer))],
                         ids=["deepcopy", "pickle"])
def test_called_layer_copies_and_pickles(rng, duplicate):
    layer = DepthwiseConv2D(3, padding="same", activation="relu", depthwise_regularizer="l2")
    x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    expected = layer(x)  # compiled kernels, a plan, pooled outputs and weight views exist now
    twin = duplicate(layer)
    np.testing.assert_array_equal(twin(x), expected)
    assert twin.kernel.ctypes.data % 64 == 0 and twin.get_config() == layer.get_config()
    np.testing.assert_allclose(twin.losses, layer.losses)
    twin.kernel[...] = 0.0  # the copy has weights of its own
    np.testing.assert_array_equal(layer(x), expected)
    assert not np.array_equal(twin(x), expected)


def test_output_is_fresh_array(rng):
    layer = DepthwiseConv2D(3)
    x = rng.standard_normal((1, 5, 5, 2)).astype(np.float32)
    a, b = layer(x), layer(x)
    assert a is not b and not np.shares_memory(a, b)


def _address(array) -> int:
    return array.__array_interface__["data"][0]


def test_released_outputs_are_reused_and_aligned(rng):
    layer = DepthwiseConv2D(3, padding="same")
    x = rng.standard_normal((1, 6, 6, 16)).astype(np.float32)
    layer(x)  # the first call makes the plan
    first = layer(x)
    address = _address(first)
    assert address % 64 == 0
    del first
    assert _address(layer(x)) == address
    seen = set()
    for _ in range(6):  # the previous `y` is alive during each call: two buffers take turns
        y = layer(x)
        seen.add(_address(y))
        np.testing.assert_allclose(y, depthwise(x, layer.kernel, layer.bias, padding="same"), atol=1e-5)
    assert len(seen) == 2



def test_every_fresh_output_is_aligned(rng):
    """Outputs beyond the pool's two slots and those of `CompiledOp` calls start on 64-byte
    boundaries too (NumPy's large arrays start 16 bytes off, which slowed the kernels' stores up
    to 2.8x), hold the right values and stay separate arrays."""
    layer = DepthwiseConv2D(3, padding="same")
    x = rng.standard_normal((1, 6, 6, 16)).astype(np.float32)
    held = [layer(x * scale) for scale in (1.0, 2.0, 3.0, 4.0, 5.0)]  # three past the pool
    assert all(_address(y) % 64 == 0 for y in held)
    assert len({_address(y) for y in held}) == len(held)
    for scale, y in zip((1.0, 2.0, 3.0, 4.0, 5.0), held):
        np.testing.assert_allclose(y, depthwise(x * scale, layer.kernel, layer.bias, padding="same"), atol=1e-4)
    op = dwconv_tvm.compile(layer.spec_for(x.shape))
    results = [op(x, layer.kernel, layer.bias) for _ in range(4)]
    assert all(_address(y) % 64 == 0 and y.flags.c_contiguous and y.flags.writeable for y in results)
    assert len({_address(y) for y in results}) == len(results)
    for y in results:
        np.testing.assert_allclose(y, held[0], atol=1e-6)


@pytest.mark.parametrize("shift", [-1, 1], ids=["borrowing interpreter", "counting interpreter"])
def test_pool_measures_its_reference_counts_rather_than_assuming_them(rng, monkeypatch, shift):
    """An interpreter whose `getrefcount` sees one reference fewer (Python 3.14 borrows local
    variables) or more must neither lose reuse nor hand out an array the caller still holds."""
    from dwconv_tvm import runtime

    measured = runtime.reference_counts
    monkeypatch.setattr(runtime, "reference_counts", lambda a: tuple(c + shift for c in measured(a)))
    layer = DepthwiseConv2D(3, padding="same")
    x = rng.standard_normal((1, 6, 6, 16)).astype(np.float32)
    layer(x)  # the first call makes the plan
    first = layer(x)
    address = _address(first)
    del first
    assert _address(layer(x)) == address  # dropped: reused
    held = layer(x)
    values = held.copy()
    later = [layer(x * scale) for scale in (2.0, 3.0, 4.0)]
    assert _address(held) not in {_address(z) for z in later}
    np.testing.assert_array_equal(held, values)

_HOLDERS = {
    "name": lambda y: y,
    "slice": lambda y: y[0, 1:3],
    "reshape": lambda y: y.reshape(-1),
    "transpose": lambda y: y.T,
    "buffer": lambda y: y.base,
    "list": lambda y: [y],
    "memoryview": memoryview,
    "frombuffer": lambda y: np.frombuffer(y, np.float32),
    "dlpack": np.from_dlpack,
}


@pytest.mark.parametrize("hold", list(_HOLDERS.values()), ids=list(_HOLDERS))
def test_outputs_still_referenced_are_never_overwritten(rng, hold):
    layer = DepthwiseConv2D(3, padding="same")
    x = rng.standard_normal((1, 6, 6, 16)).astype(np.float32)
    layer(x)
    y = layer(x)
    address, values = _address(y), y.copy()
    holder = hold(y)
    del y
    later = [layer(x * scale) for scale in (2.0, 3.0, 4.0)]
    later.append(layer(x * 5.0))
    assert address not in {_address(z) for z in later}
    held = np.asarray(holder[0] if isinstance(holder, list) else holder)
    if held.size == values.size:  # the whole output, in any order
        np.testing.assert_array_equal(np.sort(held, axis=None), np.sort(values, axis=None))


def test_torch_hot_path_results_and_pooled_outputs(rng):
    torch = pytest.importorskip("torch")
    layer = DepthwiseConv2D(3, padding="same", activation="relu")
    x = rng.standard_normal((1, 6, 6, 16)).astype(np.float32)
    t = torch.from_numpy(x.copy())

    def expected(inp):
        return np.maximum(depthwise(inp, layer.kernel, layer.bias, padding="same"), 0)

    layer(t)  # the first call makes the plan
    y = layer(t)
    assert isinstance(y, torch.Tensor) and y.data_ptr() % 64 == 0
    np.testing.assert_allclose(y.numpy(), expected(x), atol=1e-5)
    kept, values = y[0, 1:], y[0, 1:].clone()  # a view keeps the buffer through torch's storage
    address = y.data_ptr()
    del y
    later = [layer(t * scale) for scale in (2.0, 3.0)]
    assert address not in {z.data_ptr() for z in later}
    assert torch.equal(kept, values)
    del kept, later
    assert layer(t).data_ptr() == address  # released: handed out again
    # Cases the hot path hands to the full one: gradients, strides, another dtype.
    grad = t.clone().requires_grad_(True)
    np.testing.assert_allclose(layer(grad).numpy(), expected(x), atol=1e-5)
    strided = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).permute(0, 2, 3, 1)
    np.testing.assert_allclose(layer(strided).numpy(), expected(x), atol=1e-5)
    np.testing.assert_allclose(layer(t.double()).numpy(), expected(x), atol=1e-5)
    layer.kernel = layer.kernel * 2.0
    np.testing.assert_allclose(layer(t).numpy(), expected(x), atol=1e-5)


def test_concurrent_calls_from_threads(rng, run_in_threads):
    layer = DepthwiseConv2D(3, padding="same", depth_multiplier=2, activation="gelu")
    inputs = [rng.standard_normal((1, 12, 12, 8)).astype(np.float32) for _ in range(6)]
    expected = [layer(x) for x in inputs]
    errors = []

    def work(i):
        for r in range(40):
            j = (i + r) % len(inputs)
            if not np.array_equal(layer(inputs[j]), expected[j]):
                errors.append(j)

    run_in_threads(work)
    assert errors == []


def test_concurrent_first_calls_build_once(rng, run_in_threads):
    layer = DepthwiseConv2D(3, padding="same")
    x = rng.standard_normal((1, 9, 9, 3)).astype(np.float32)
    results = {}
    run_in_threads(lambda i: results.__setitem__(i, layer(x)))
    assert all(np.array_equal(results[0], r) for r in results.values())
    np.testing.assert_allclose(results[0], depthwise(x, layer.kernel, layer.bias, padding="same"), atol=1e-5)


def test_target_kwarg_and_invalid_target():
    layer = DepthwiseConv2D(3, target="llvm")
    assert layer(np.ones((1, 3, 3, 1), np.float32)).shape == (1, 1, 1, 1)
    with pytest.raises(ValueError, match="target"):
        DepthwiseConv2D(3)(np.ones((1, 3, 3, 1), np.float32), target="not-a-target")
    assert layer.get_config()["target"] == "llvm"


def test_hot_path_handles_layout_dtype_and_weight_changes(rng):
    layer = DepthwiseConv2D(3, padding="same", activation="relu")
    x = rng.standard_normal((2, 6, 5, 4)).astype(np.float32)

    def expected(inp):
        return np.maximum(depthwise(inp.astype(np.float32), layer.kernel, layer.bias, padding="same"), 0)

    np.testing.assert_allclose(layer(x), expected(x), atol=1e-5)  # first call makes the plan
    fortran = np.asfortranarray(x)
    np.testing.assert_allclose(layer(fortran), expected(x), atol=1e-5)  # same shape/dtype, other strides
    np.testing.assert_allclose(layer(x.astype(np.float64)), expected(x), atol=1e-5)
    layer.kernel = np.ones_like(layer.kernel)
    layer.kernel[0, 0] = 3.0  # in-place edits are seen too
    np.testing.assert_allclose(layer(x), expected(x), atol=1e-5)


def test_calls_follow_every_weight_change(rng):
    # The layer hands the kernel TVM tensors over the weights' memory, made once per array.
    layer = DepthwiseConv2D(3, padding="same")
    x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    layer(x)

    def check():
        np.testing.assert_allclose(layer(x), depthwise(x, layer.kernel, layer.bias, padding="same"), atol=1e-5)

    layer.bias[:] = 5.0  # in place, after the views were made
    check()
    layer.set_weights([rng.standard_normal((3, 3, 4, 1)), np.arange(4.0)])
    check()
    layer.bias = -np.ones(4)
    check()
    layer.kernel.flags.writeable = False  # e.g. a frozen model's weights
    layer.kernel = layer.kernel * 2
    layer.kernel.flags.writeable = False
    check()


def test_weight_setters_validate():
    layer = DepthwiseConv2D(3, use_bias=False)
    with pytest.raises(ValueError, match="not built"):
        layer.kernel = np.zeros((3, 3, 2, 1))
    layer.build((1, 5, 5, 2))
    with pytest.raises(ValueError, match="not compatible"):
        layer.kernel = np.zeros((3, 3, 2, 2))
    with pytest.raises(ValueError, match="no bias"):
        layer.bias = np.zeros(2)
    layer.kernel = np.ones((3, 3, 2, 1), np.float64)
    assert layer.kernel.dtype == np.float32 and layer.kernel.flags.c_contiguous


def test_autocast_false_requires_compute_dtype():
    layer = DepthwiseConv2D(3, autocast=False)
    assert layer(np.ones((1, 3, 3, 1), np.float32)).dtype == np.float32
    with pytest.raises(ValueError, match="autocast=False"):
        layer(np.ones((1, 3, 3, 1), np.float64))


def test_jax_arrays_in_and_out_through_dlpack(rng):
    jnp = pytest.importorskip("jax.numpy")
    from dwconv_tvm.runtime import as_host_array

    x = jnp.asarray(rng.standard_normal((1, 6, 6, 4)).astype(np.float32))
    assert as_host_array(x, "x").ctypes.data == x.unsafe_buffer_pointer()  # no copy in
    layer = dwconv_tvm.DepthwiseConv2D(3, padding="same", activation="relu6")
    y = layer(x)
    assert type(y) is type(x)  # a JAX array back
    np.testing.assert_array_equal(np.asarray(y), layer(np.asarray(x).copy()))
    spec = dwconv_tvm.DepthwiseSpec.from_keras((1, 6, 6, 4), 3, padding="same", use_bias=False)
    op = dwconv_tvm.compile(spec)
    out = op(x, jnp.asarray(layer.get_weights()[0]))
    assert type(out) is type(x)


def test_read_only_numpy_inputs(rng):
    x = rng.standard_normal((1, 6, 6, 4)).astype(np.float32)
    frozen = x.copy()
    frozen.flags.writeable = False  # as np.asarray of a JAX array, or a read-only memmap, is
    layer = dwconv_tvm.DepthwiseConv2D(3, padding="same")
    np.testing.assert_array_equal(layer(frozen), layer(x))
    op = dwconv_tvm.compile(dwconv_tvm.DepthwiseSpec.from_keras((1, 6, 6, 4), 3, padding="same"))
    kernel, bias = layer.get_weights()
    kernel.flags.writeable = False
    np.testing.assert_array_equal(op(frozen, kernel, bias), layer(x))
