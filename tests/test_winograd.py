"""Winograd F(2, 3) along the rows: where it applies, and every point of its CPU template
against the NumPy reference (borders, odd widths, predicated row tiles, epilogues, batches)."""

import pytest

import dwconv_tvm
from dwconv_tvm import DepthwiseSpec
from dwconv_tvm.compute import algorithms, depthwise_primfunc, winograd_applies
from dwconv_tvm.schedules import cpu as cpu_schedule
from reference import ACTIVATIONS, depthwise

HOST = dwconv_tvm.resolve_target("host")


@pytest.mark.parametrize("kwargs,applies", [
    (dict(input_shape=(1, 8, 8, 16), kernel_size=3, padding="same"), True),
    (dict(input_shape=(1, 8, 9, 16), kernel_size=3, padding="valid", use_bias=False), True),
    (dict(input_shape=(1, 8, 8, 16), kernel_size=3, strides=2, padding="same"), False),
    (dict(input_shape=(1, 8, 8, 16), kernel_size=5, padding="same"), False),
    (dict(input_shape=(1, 8, 8, 16), kernel_size=3, dilation_rate=2, padding="same"), False),
    (dict(input_shape=(1, 8, 8, 16), kernel_size=3, depth_multiplier=2, padding="same"), False),
    (dict(input_shape=(1, 8, 8, 16), kernel_size=3, padding="same", dtype="float16"), False),
    (dict(input_shape=(1, 16, 8, 8), kernel_size=3, padding="same", data_format="channels_first"), False),
    (dict(input_shape=(1, 8, 3, 16), kernel_size=3, padding="valid"), False),  # one output column
])
def test_winograd_applies_only_where_it_computes(kwargs, applies):
    spec = DepthwiseSpec.from_keras(**kwargs)
    assert winograd_applies(spec) is applies
    assert algorithms(spec, HOST) == (("direct", "winograd") if applies else ("direct",))
    cuda = dwconv_tvm.resolve_target({"kind": "cuda", "arch": "sm_90"})
    assert algorithms(spec, cuda) == ("direct",)  # the GPU template is direct only
    if not applies:
        with pytest.raises(ValueError, match="Winograd F\\(2, 3\\) does not compute"):
            depthwise_primfunc(spec, "winograd")


def test_unknown_algorithm_is_a_value_error():
    with pytest.raises(ValueError, match="`algorithm` must be one of"):
        depthwise_primfunc(DepthwiseSpec.from_keras((1, 8, 8, 16), 3), "fft")


def test_winograd_rows_per_tile():
    for height, default in [(112, 7), (56, 7), (28, 7), (14, 7), (7, 7), (12, 6), (8, 4), (11, 4), (3, 3), (2, 2)]:
        candidates, chosen = cpu_schedule.winograd_rows(height)
        assert chosen == default and chosen in candidates and all(r <= max(height, 1) for r in candidates)


@pytest.mark.parametrize("shape,padding,bias,activation", [
    ((1, 10, 12, 32), "same", True, "relu6"),
    ((2, 9, 7, 8), "valid", True, None),  # odd output width (5): the last pair's second column is cut
    ((1, 7, 7, 48), "same", False, None),  # odd width, 7 rows, no bias
    ((1, 13, 11, 24), "valid", True, "relu"),  # 11 rows: 4-row tiles with a predicated tail; 8-wide vectors
    ((1, 5, 6, 3), "same", True, "sigmoid"),  # 3 channels: scalar
])
def test_every_winograd_knob_combination_is_exact(shape, padding, bias, activation, rng):
    from knob_checks import assert_every_knob_combination_matches

    spec = DepthwiseSpec.from_keras(shape, 3, 1, padding, use_bias=bias, activation=activation)
    x = rng.standard_normal(spec.input_shape).astype("float32")
    k = rng.standard_normal(spec.kernel_shape).astype("float32")
    b = rng.standard_normal(spec.bias_shape).astype("float32")
    want = depthwise(x, k, b if bias else None, (1, 1), padding)
    if activation:
        want = ACTIVATIONS[activation](want)
    assert_every_knob_combination_matches(spec, "winograd", HOST, (x, k, *([b] if bias else [])), want)
