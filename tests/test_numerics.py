"""Compiled kernels against the independent NumPy reference, over the workload space."""

import itertools

import numpy as np
import pytest

import dwconv_tvm
from dwconv_tvm import DepthwiseSpec
from reference import ACTIVATIONS, TOLERANCE, depthwise

# (input spatial (h, w), channels, kernel, strides, dilation, padding, depth_multiplier)
GEOMETRIES = [
    ((9, 9), 8, (3, 3), (1, 1), (1, 1), "same", 1),
    ((9, 9), 8, (3, 3), (1, 1), (1, 1), "valid", 1),
    ((10, 11), 5, (3, 3), (2, 2), (1, 1), "same", 1),
    ((10, 11), 5, (3, 3), (2, 2), (1, 1), "valid", 2),
    ((12, 7), 3, (5, 5), (1, 1), (1, 1), "same", 1),
    ((13, 13), 16, (5, 5), (2, 2), (1, 1), "same", 1),
    ((8, 8), 4, (2, 2), (1, 1), (1, 1), "same", 1),       # even kernel: extra pad bottom/right
    ((9, 8), 6, (4, 4), (2, 2), (1, 1), "same", 1),
    ((11, 9), 7, (3, 2), (2, 1), (1, 1), "same", 3),       # non-square kernel, unequal strides
    ((11, 9), 7, (1, 4), (1, 3), (1, 1), "valid", 1),
    ((15, 14), 5, (3, 3), (1, 1), (2, 2), "same", 1),      # dilation
    ((15, 14), 5, (3, 2), (1, 1), (3, 1), "valid", 2),
    ((7, 5), 1, (7, 5), (1, 1), (1, 1), "valid", 1),       # kernel covers the whole input
    ((1, 1), 3, (3, 3), (1, 1), (1, 1), "same", 4),        # 1x1 input, all padding
    ((6, 6), 33, (3, 3), (3, 3), (1, 1), "same", 1),       # channels not a multiple of the vector
    ((5, 17), 2, (1, 1), (1, 1), (1, 1), "valid", 5),
]
LAYOUTS = ["channels_last", "channels_first"]


def _case(rng, geometry, data_format, use_bias, dtype, activation=None, batch=2):
    (h, w), c, kernel, strides, dilation, padding, dm = geometry
    spec = DepthwiseSpec.from_keras(
        (batch, h, w, c) if data_format == "channels_last" else (batch, c, h, w),
        kernel, strides, padding, dm, data_format, dilation, use_bias, activation, dtype,
    )
    x = rng.standard_normal(spec.input_shape).astype(dtype)
    k = rng.standard_normal(spec.kernel_shape).astype(dtype)
    b = rng.standard_normal(spec.bias_shape).astype(dtype) if use_bias else None
    expected = depthwise(x, k, b, strides, padding, dilation, data_format)
    return spec, x, k, b, expected


@pytest.mark.parametrize("data_format", LAYOUTS)
@pytest.mark.parametrize("geometry", GEOMETRIES, ids=lambda g: f"{g[0][0]}x{g[0][1]}c{g[1]}k{g[2]}s{g[3]}d{g[4]}{g[5]}m{g[6]}")
def test_geometry_float32(rng, geometry, data_format):
    spec, x, k, b, expected = _case(rng, geometry, data_format, True, "float32")
    y = dwconv_tvm.compile(spec)(x, k, b)
    assert y.shape == expected.shape == spec.output_shape
    np.testing.assert_allclose(y, expected, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("data_format", LAYOUTS)
@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("geometry", [GEOMETRIES[2], GEOMETRIES[8], GEOMETRIES[10]], ids=["s2", "nonsquare", "dilated"])
def test_dtypes_and_bias(rng, geometry, data_format, use_bias, dtype):
    spec, x, k, b, expected = _case(rng, geometry, data_format, use_bias, dtype)
    y = dwconv_tvm.compile(spec)(x, k, b)
    assert y.dtype == np.dtype(dtype)
    np.testing.assert_allclose(y.astype(np.float64), expected, atol=TOLERANCE[dtype] * 4, rtol=TOLERANCE[dtype])


@pytest.mark.parametrize("activation", sorted(dwconv_tvm.activations.FUSED_ACTIVATIONS))
def test_fused_activations(rng, activation):
    spec, x, k, b, expected = _case(rng, GEOMETRIES[2], "channels_last", True, "float32", activation)
    y = dwconv_tvm.compile(spec)(x, k, b)
    np.testing.assert_allclose(y, ACTIVATIONS[activation](expected), atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("activation", ["relu6", "gelu", "sigmoid"])
def test_fused_activation_float16_nchw(rng, activation):
    spec, x, k, b, expected = _case(rng, GEOMETRIES[0], "channels_first", True, "float16", activation)
    y = dwconv_tvm.compile(spec)(x, k, b)
    np.testing.assert_allclose(y.astype(np.float64), ACTIVATIONS[activation](expected), atol=3e-2, rtol=1e-2)


def _misaligned(arr: np.ndarray, offset_bytes: int) -> np.ndarray:
    raw = dwconv_tvm.aligned_empty((arr.nbytes + 64,), np.uint8)
    view = raw[offset_bytes : offset_bytes + arr.nbytes].view(arr.dtype).reshape(arr.shape)
    view[...] = arr
    return view


@pytest.mark.parametrize("offset", [4, 8, 16, 36])
def test_misaligned_buffers(rng, offset):
    # TVM assumes 64-byte alignment; with AVX that used to crash on NumPy's 16-byte arrays.
    spec, x, k, b, expected = _case(rng, GEOMETRIES[5], "channels_last", True, "float32", batch=1)
    out = _misaligned(np.zeros(spec.output_shape, np.float32), offset)
    y = dwconv_tvm.compile(spec)(_misaligned(x, offset), _misaligned(k, offset), _misaligned(b, offset), out=out)
    assert y is out
    np.testing.assert_allclose(y, expected, atol=1e-4)


@pytest.mark.parametrize("layout_change", ["fortran", "transposed_view", "strided_view", "reversed"])
def test_non_contiguous_inputs(rng, layout_change):
    spec, x, k, b, expected = _case(rng, GEOMETRIES[0], "channels_last", True, "float32")
    if layout_change == "fortran":
        x = np.asfortranarray(x)
    elif layout_change == "transposed_view":
        x = np.ascontiguousarray(x.transpose(0, 3, 1, 2)).transpose(0, 2, 3, 1)
    elif layout_change == "strided_view":
        big = np.zeros((x.shape[0], x.shape[1] * 2, x.shape[2], x.shape[3] * 3), np.float32)
        big[:, ::2, :, ::3] = x
        x = big[:, ::2, :, ::3]
    else:
        x = np.ascontiguousarray(x[:, ::-1])[:, ::-1]
    assert not x.flags.c_contiguous
    np.testing.assert_allclose(dwconv_tvm.compile(spec)(x, k, b), expected, atol=1e-4)


def test_batch_and_odd_sizes(rng):
    for n, h, w, c in itertools.islice(itertools.product([1, 3], [1, 5, 17], [2, 13], [1, 19]), 0, None, 3):
        spec = DepthwiseSpec.from_keras((n, h, w, c), 3, 1, "same")
        x = rng.standard_normal(spec.input_shape).astype("float32")
        k = rng.standard_normal(spec.kernel_shape).astype("float32")
        b = rng.standard_normal(spec.bias_shape).astype("float32")
        np.testing.assert_allclose(dwconv_tvm.compile(spec)(x, k, b), depthwise(x, k, b, (1, 1), "same"), atol=1e-4)
