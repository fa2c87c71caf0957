"""DepthwiseSpec: normalization, TF-style padding, output shapes, keys, validation."""

import json

import pytest

from dwconv_tvm import DepthwiseSpec
from dwconv_tvm.spec import same_padding


@pytest.mark.parametrize("size,k,s,d,expected", [
    (112, 3, 1, 1, (1, 1)),
    (112, 3, 2, 1, (0, 1)),   # TF: the odd pixel goes bottom/right (TOPI's SAME puts it on top)
    (7, 3, 2, 1, (1, 1)),
    (8, 2, 1, 1, (0, 1)),
    (8, 4, 2, 1, (1, 1)),
    (9, 4, 2, 1, (1, 2)),
    (5, 3, 1, 2, (2, 2)),
    (10, 1, 3, 1, (0, 0)),
    (1, 5, 1, 1, (2, 2)),
])
def test_same_padding_tf_style(size, k, s, d, expected):
    assert same_padding(size, k, s, d) == expected


def test_from_keras_nhwc_and_nchw_agree():
    a = DepthwiseSpec.from_keras((2, 17, 13, 5), (3, 2), (2, 1), "SAME", 3)
    b = DepthwiseSpec.from_keras((2, 5, 17, 13), (3, 2), (2, 1), "same", 3, "channels_first")
    assert a.padding == b.padding == (1, 0, 1, 1)
    assert a.output_shape == (2, 9, 13, 15) and b.output_shape == (2, 15, 9, 13)
    assert a.kernel_shape == b.kernel_shape == (3, 2, 5, 3) and a.bias_shape == (15,)
    assert a.layout == "NHWC" and b.layout == "NCHW" and a.key != b.key


def test_frozen_hashable_and_stable_key():
    a = DepthwiseSpec("nhwc", 1, 112, 112, 32, (3, 3), (1, 1), (1, 1), (1, 1, 1, 1), 1, True, "relu6")
    b = DepthwiseSpec.from_keras((1, 112, 112, 32), 3, 1, "same", activation="relu6")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    assert a.key == "nhwc_n1_h112_w112_c32_k3x3_s1x1_d1x1_p1.1.1.1_m1_bias_relu6_float32"
    with pytest.raises(AttributeError):
        a.batch = 2


def test_dict_round_trip_json():
    spec = DepthwiseSpec.from_keras((3, 4, 9, 10), 5, 2, "same", 2, "channels_first", 1, False, "gelu", "float16")
    assert DepthwiseSpec.from_dict(json.loads(json.dumps(spec.to_dict()))) == spec
    with pytest.raises(ValueError, match="Unknown"):
        DepthwiseSpec.from_dict({**spec.to_dict(), "groups": 2})


def test_compulsory_bytes():
    spec = DepthwiseSpec.from_keras((1, 112, 112, 32), 3, 1, "same")
    assert spec.compulsory_bytes == 4 * (2 * 112 * 112 * 32 + 9 * 32 + 32)


INVALID = [
    (dict(layout="NCWH"), ValueError, "layout"),
    (dict(batch=0), ValueError, "batch"),
    (dict(channels=2.0), TypeError, "channels"),
    (dict(kernel=(0, 3)), ValueError, "kernel"),
    (dict(strides=(1, 2, 3)), ValueError, "strides"),
    (dict(strides="2"), ValueError, "strides"),
    (dict(dilation=True), TypeError, "dilation"),
    (dict(padding=(1, 1)), ValueError, "padding"),
    (dict(padding=(1, 1, 1, -1)), ValueError, "padding"),
    (dict(activation="softmax"), ValueError, "activation"),
    (dict(dtype="int8"), ValueError, "dtype"),
    (dict(kernel=(9, 9)), ValueError, "zero or negative"),
]


@pytest.mark.parametrize("change,error,needle", INVALID, ids=[n for _, _, n in INVALID])
def test_invalid_fields(change, error, needle):
    fields = dict(layout="NHWC", batch=1, height=5, width=5, channels=2)
    fields.update(change)
    with pytest.raises(error, match=needle):
        DepthwiseSpec(**fields)


def test_from_keras_errors():
    with pytest.raises(ValueError, match="ndim=4"):
        DepthwiseSpec.from_keras((5, 5, 2), 3)
    with pytest.raises(ValueError, match="padding"):
        DepthwiseSpec.from_keras((1, 5, 5, 2), 3, padding="full")
    with pytest.raises(ValueError, match="data_format"):
        DepthwiseSpec.from_keras((1, 5, 5, 2), 3, data_format="NHWC")
