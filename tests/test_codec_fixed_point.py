"""The fixed-point hyper-synthesis: exact integer arithmetic (checked against a NumPy int64
re-implementation of the same arithmetic), identical in eager and graph mode, close to the
float h_s it replaces, and what the session and the coder use."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from imageae.codec import CodecSession, analyze_image
from imageae.codec.coder import SCALE_TABLE, scale_indexes
from imageae.codec.fixed_point import (
    ACTIVATION_BITS,
    ACTIVATION_RANGE_BITS,
    LEAKY_SLOPE,
    Z_RANGE,
    FixedPointHyperSynthesis,
)
from imageae.models.codec import build_codec


def trained_like_codec(mean_scale=True, lambdas=(0.004, 0.04)):
    """A tiny codec (N=8, M=12) with h_s weights at a trained model's magnitude and non-trivial gains."""
    keras.utils.set_random_seed(5)
    model = build_codec(num_filters=8, num_latent=12, mean_scale=mean_scale, lambdas=lambdas)
    for layer in model.h_s:
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * 3.0, bias + 0.3])
    if model.num_qualities > 1:
        rng = np.random.default_rng(0)
        model.log_hyper_inverse_gains.assign(rng.normal(0, 0.3, model.log_hyper_inverse_gains.shape).astype("float32"))
    return model


def _conv_same_int(x, kernel):
    """Stride-1 'same' convolution, int64: out[o] = sum_a x[o + a - k//2] W[a]; kernel (k, k, in, out)."""
    k = kernel.shape[0]
    n, h, w, _ = x.shape
    pad = np.pad(x, ((0, 0), (k // 2, k // 2), (k // 2, k // 2), (0, 0)))
    out = np.zeros((n, h, w, kernel.shape[-1]), np.int64)
    for a in range(k):
        for b in range(k):
            out += np.einsum("nhwi,io->nhwo", pad[:, a : a + h, b : b + w], kernel[a, b])
    return out


def _conv_transpose_same_int(x, kernel, stride):
    """'same' transposed convolution, int64, kernel (k, k, out, in): out[s i + a - 1] += x[i] W[a]
    (TensorFlow's padding for k=5, s=2: the forward convolution pads 1 before, 2 after)."""
    k = kernel.shape[0]
    n, h, w, _ = x.shape
    before = (k - stride) // 2
    big = np.zeros((n, h * stride + k, w * stride + k, kernel.shape[2]), np.int64)
    for a in range(k):
        for b in range(k):
            tap = np.einsum("nhwi,oi->nhwo", x, kernel[a, b])
            big[:, a : a + h * stride : stride, b : b + w * stride : stride] += tap
    return big[:, before : before + h * stride, before : before + w * stride]


def reference(fixed, z_symbols, quality):
    """The same arithmetic in int64 NumPy, with shifts instead of float scaling."""
    h = np.clip(z_symbols.astype(np.int64), -Z_RANGE, Z_RANGE)
    if fixed.gains is not None:
        h = h * fixed.gains[quality - 1].astype(np.int64)
    limit = 2 ** (ACTIVATION_BITS + ACTIVATION_RANGE_BITS)
    slope, slope_bits = LEAKY_SLOPE
    for layer in fixed.layers:
        kernel = layer["kernel"].astype(np.int64)
        h = (_conv_transpose_same_int(h, kernel, layer["stride"]) if layer["transpose"] else _conv_same_int(h, kernel))
        h = h + layer["bias"].astype(np.int64)
        assert np.abs(h).max() < 2**52
        if layer["last"]:
            out = h.astype(np.float64) * 2.0 ** -layer["bits"]
            if layer["activation"] == "relu":
                out = np.maximum(out, 0.0)
            break
        shift = layer["bits"] - ACTIVATION_BITS
        h = (h + (1 << (shift - 1))) >> shift  # floor(h / 2**shift + 1/2)
        h = np.clip(h, -limit, limit)
        if layer["activation"] == "relu":
            h = np.maximum(h, 0)
        elif layer["activation"] == "leaky_relu":
            h = np.where(h < 0, (h * slope + (1 << (slope_bits - 1))) >> slope_bits, h)
    if fixed.mean_scale:
        scales, means = np.split(out, 2, axis=-1)
    else:
        scales, means = out, np.zeros_like(out)
    return np.maximum(scales, fixed.scale_bound), means.astype(np.float32)


@pytest.mark.parametrize("mean_scale", [True, False], ids=["mean_scale", "scale_only"])
def test_fixed_point_is_exact_integer_arithmetic_even_at_the_input_limits(mean_scale):
    model = trained_like_codec(mean_scale)
    fixed = FixedPointHyperSynthesis(model)
    rng = np.random.default_rng(1)
    cases = [
        rng.integers(-6, 7, (1, 3, 4, 8)),
        np.where(rng.random((1, 3, 4, 8)) < 0.5, -1, 1) * Z_RANGE * 4,  # clamped to +-Z_RANGE
        rng.integers(-(2**31), 2**31 - 1, (2, 2, 3, 8)),
    ]
    for z in cases:
        z = z.astype(np.int32)
        for quality in (1, 2):
            scales, means = fixed(z, quality)
            want_scales, want_means = reference(fixed, z, quality)
            np.testing.assert_array_equal(np.asarray(scales), want_scales)
            np.testing.assert_array_equal(np.asarray(means), want_means)


def test_graph_and_eager_give_identical_scales_and_means():
    model = trained_like_codec()
    fixed = FixedPointHyperSynthesis(model)
    z = np.random.default_rng(2).integers(-8, 9, (1, 5, 3, 8)).astype(np.int32)
    graph = tf.function(lambda z, q: fixed(z, q), input_signature=[
        tf.TensorSpec([1, None, None, 8], tf.int32), tf.TensorSpec([], tf.int32)])
    for quality in (1, 2):
        eager = fixed(z, quality)
        traced = graph(tf.constant(z), tf.constant(quality))
        for a, b in zip(eager, traced):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_fixed_point_stays_within_a_fraction_of_a_percent_of_the_float_hyper_synthesis():
    model = trained_like_codec()
    fixed = FixedPointHyperSynthesis(model)
    z = np.random.default_rng(3).integers(-8, 9, (1, 4, 4, 8)).astype(np.int32)
    for quality in (1, 2):
        scales, means = (np.asarray(t, np.float64) for t in fixed(z, quality))
        float_scales, float_means = (
            np.asarray(t, np.float64) for t in model.y_scales_means(z.astype(np.float32), quality))
        assert np.abs(means).max() > 0.5 and np.abs(float_scales).max() > 0.5  # not a trivial comparison
        # Rounding the gains (14 bits), weights (22+) and activations (15) costs ~1e-4 relative.
        np.testing.assert_allclose(scales, float_scales, rtol=2e-3, atol=1e-3)
        np.testing.assert_allclose(means, float_means, rtol=2e-3, atol=1e-3)
        # Scales on the lower bound (the float32 bound, table 0's scale) get table 0.
        at_bound = scales == fixed.scale_bound
        assert at_bound.any() and fixed.scale_bound == SCALE_TABLE[0]
        assert np.all(scale_indexes(scales)[at_bound] == 0)


def test_the_session_codes_with_the_fixed_point_indexes():
    model = trained_like_codec()
    session = CodecSession(model, "fixed-point-test")
    image = np.random.default_rng(4).integers(0, 256, (70, 90, 3)).astype(np.uint8)
    latents = analyze_image(session, image, 2)
    scales, means = FixedPointHyperSynthesis(model)(latents.z_symbols[None], 2)
    np.testing.assert_array_equal(latents.scale_indexes, scale_indexes(np.asarray(scales)[0]))
    np.testing.assert_array_equal(latents.means, np.asarray(means)[0])
