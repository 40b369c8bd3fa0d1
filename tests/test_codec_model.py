"""GDN and the hyperprior codec model: configs, saving, the probability model the entropy
coder relies on, training behaviour, mixed precision.

Models are tiny (N=8, M=12) on 64x64 images; nothing here codes bytes (see imageae.codec).
"""

import math
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import smooth_image

from imageae.layers.gdn import GDN, lower_bound
from imageae.models.codec import (
    QUALITY_LAMBDAS,
    SCALE_BOUND,
    HyperpriorCodec,
    build_codec,
    gaussian_likelihood,
    gaussian_pmf_tables,
    lambda_for_quality,
)
from imageae.runtime import rebuilt, with_precision

TINY = {"num_filters": 8, "num_latent": 12}


def images(n=2, size=64, seed=0):
    """Smooth colour test images, float32 (n, size, size, 3) on the 0..1 scale."""
    return np.stack([smooth_image(size, size, seed=seed + i) for i in range(n)]).astype(np.float32) / 255.0


def tiny_codec(mean_scale=True, init_seed=0, **kwargs):
    keras.utils.set_random_seed(init_seed)
    return build_codec(mean_scale=mean_scale, **TINY, **kwargs)


def widen_latents(model, gain):
    """Scale g_a's last kernel: an untrained model then spends bits (its y is not all zeros)."""
    layer = model.g_a[-1]
    kernel, bias = layer.get_weights()
    layer.set_weights([kernel * gain, bias])


@pytest.fixture(scope="module", params=[True, False], ids=["mean_scale", "scale_only"])
def codec(request):
    model = tiny_codec(mean_scale=request.param, init_seed=3)
    widen_latents(model, 10.0)
    return model


# ------------------------------------------------------------------------------------- GDN


def test_gdn_config_round_trip():
    layer = GDN(inverse=True, beta_min=1e-5, gamma_init=0.2, name="igdn")
    config = layer.get_config()
    expected = {"inverse": True, "beta_min": 1e-5, "gamma_init": 0.2}
    assert {k: config[k] for k in expected} == expected
    assert GDN.from_config(config).get_config() == config


def test_gdn_with_unit_beta_and_zero_gamma_is_the_identity_and_igdn_undoes_it():
    x = np.random.default_rng(0).normal(size=(2, 5, 5, 6)).astype(np.float32) * 3
    gdn, igdn = GDN(gamma_init=0.0), GDN(inverse=True, gamma_init=0.0)
    y = np.asarray(gdn(x))
    np.testing.assert_allclose(y, x, rtol=1e-6)
    np.testing.assert_allclose(np.asarray(igdn(y)), x, rtol=1e-6)


def test_gdn_computes_the_divisive_normalization():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3, 4, 4, 5)).astype(np.float32)
    beta = rng.uniform(0.5, 2.0, 5).astype(np.float32)
    gamma = rng.uniform(0.0, 0.3, (5, 5)).astype(np.float32)
    for inverse in (False, True):
        layer = GDN(inverse=inverse)
        layer.build(x.shape)
        layer.set_parameters(beta, gamma)
        norm = np.sqrt(beta + np.einsum("...j,ij->...i", x.astype(np.float64) ** 2, gamma))
        expected = x * norm if inverse else x / norm
        np.testing.assert_allclose(np.asarray(layer(x)), expected, rtol=1e-5)


def test_gdn_parameters_stay_above_their_minimum():
    layer = GDN(beta_min=1e-4)
    layer.build((None, 3))
    layer.beta.assign(-np.ones(3, np.float32))
    layer.gamma.assign(-np.ones((3, 3), np.float32))
    beta, gamma = (np.asarray(p) for p in layer.parameters())
    assert np.all(beta >= 1e-4 * (1 - 1e-6)) and np.all(gamma >= 0.0)
    assert np.all(np.isfinite(np.asarray(layer(np.ones((2, 3), np.float32)))))


def test_lower_bound_passes_the_gradient_only_back_towards_the_allowed_range():
    import tensorflow as tf

    x = tf.Variable([-1.0, 0.5])
    with tf.GradientTape(persistent=True) as tape:
        up = tf.reduce_sum(-lower_bound(x, 0.11))  # descent raises x: passes everywhere
        down = tf.reduce_sum(lower_bound(x, 0.11))  # descent lowers x: blocked below the bound
    np.testing.assert_array_equal(tape.gradient(up, x).numpy(), [-1.0, -1.0])
    np.testing.assert_array_equal(tape.gradient(down, x).numpy(), [0.0, 1.0])
    np.testing.assert_allclose(np.asarray(lower_bound(np.array([-1.0, 0.5], np.float32), 0.11)), [0.11, 0.5])


# --------------------------------------------------------------------------- config, saving


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="distortion must be one of"):
        HyperpriorCodec(distortion="ssim")
    with pytest.raises(ValueError, match="lambdas must be positive"):
        HyperpriorCodec(lambdas=(0.0,))
    with pytest.raises(ValueError, match="lambdas must increase"):
        HyperpriorCodec(lambdas=(0.01, 0.005))
    with pytest.raises(ValueError, match="quantization must be one of"):
        HyperpriorCodec(quantization="round")
    with pytest.raises(ValueError, match="quality must be 1..8"):
        lambda_for_quality(9)
    assert lambda_for_quality(1) == QUALITY_LAMBDAS[0] == 0.0018 and lambda_for_quality(8) == 0.18


def test_config_round_trip_keeps_every_constructor_argument():
    model = tiny_codec(mean_scale=False, lambdas=(0.0067, 0.0483), seed=7, quantization="mixed")
    config = model.get_config()
    expected = {"num_filters": 8, "num_latent": 12, "mean_scale": False, "lambdas": [0.0067, 0.0483], "distortion": "mse",
                "channels": 3, "seed": 7, "quantization": "mixed"}
    assert {k: config[k] for k in expected} == expected
    rebuilt = HyperpriorCodec.from_config(config)
    assert rebuilt.get_config() == config
    rebuilt.build((None, None, None, 3))
    rebuilt.set_weights(model.get_weights())
    x = images()
    for key, value in model(x, quality=2).items():
        np.testing.assert_array_equal(np.asarray(rebuilt(x, quality=2)[key]), np.asarray(value))


def test_keras_save_load_gives_identical_outputs_and_tables(codec, tmp_path):
    codec.save(tmp_path / "codec.keras")
    loaded = keras.saving.load_model(tmp_path / "codec.keras", compile=False)
    assert isinstance(loaded, HyperpriorCodec) and loaded.get_config() == codec.get_config()
    x = images(seed=5)
    for key, value in codec(x).items():
        np.testing.assert_array_equal(np.asarray(loaded(x)[key]), np.asarray(value))
    for got, want in zip(loaded.z_pmf_tables(64), codec.z_pmf_tables(64)):
        np.testing.assert_array_equal(got, want)


# ---------------------------------------------------------------------- shapes, validation


@pytest.mark.parametrize("height, width", [(64, 64), (128, 192)])
def test_output_has_the_input_shape_for_multiples_of_the_stride(codec, height, width):
    assert codec.stride == 64
    x = images(1, size=max(height, width))[:, :height, :width]
    out = codec(x)
    assert tuple(out["x_hat"].shape) == x.shape
    assert tuple(out["y_likelihoods"].shape) == (1, height // 16, width // 16, 12)
    assert tuple(out["z_likelihoods"].shape) == (1, height // 64, width // 64, 8)
    assert tuple(codec.synthesize(codec.analyze(x)).shape) == x.shape


def test_sizes_that_are_not_multiples_of_the_stride_are_refused_with_advice(codec):
    with pytest.raises(ValueError, match="multiples of 64 .*pad"):
        codec(np.zeros((1, 64, 80, 3), np.float32))
    with pytest.raises(ValueError, match=r"\(batch, height, width, 3\)"):
        codec.analyze(np.zeros((64, 64, 3), np.float32))


# ------------------------------------------------------------ the probability model the coder uses


def test_likelihoods_are_probabilities(codec):
    x = images(seed=2)
    for training in (False, True):
        out = codec(x, training=training)
        for key in ("y_likelihoods", "z_likelihoods"):
            p = np.asarray(out[key])
            assert keras.backend.standardize_dtype(out[key].dtype) == "float32" and np.all(p > 0.0) and np.all(p <= 1.0), (key, training)


def test_gaussian_likelihood_is_accurate_in_the_tails():
    values = np.array([0.0, 1.0, 3.0, 10.0, 40.0], np.float32)
    scales = np.array([1.0, 0.5, 2.0, 1.5, 5.0], np.float32)
    got = np.asarray(gaussian_likelihood(values, scales))

    def cdf(t):
        return 0.5 * math.erfc(-t / math.sqrt(2))

    want = np.array([cdf((v + 0.5) / s) - cdf((v - 0.5) / s) for v, s in zip(values, scales)])
    want = np.maximum(want, 1e-9)
    np.testing.assert_allclose(got, want, rtol=2e-4)
    # a scale below the bound is raised to it
    np.testing.assert_allclose(np.asarray(gaussian_likelihood(np.zeros(1), np.zeros(1))),
                               np.asarray(gaussian_likelihood(np.zeros(1), np.full(1, SCALE_BOUND))))


def test_z_pmf_tables_sum_to_one_and_match_the_likelihoods(codec):
    tables = codec.z_pmf_tables(max_support=512)
    pmf, offsets, lengths = tables
    assert pmf.shape == (8, lengths.max()) and offsets.dtype == np.int32 and lengths.dtype == np.int32
    np.testing.assert_allclose(pmf.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(pmf >= 0)
    # the table entry of integer k equals the model's likelihood of z_hat = k
    k = offsets[None, None, None, :] + np.arange(lengths.min())[:, None, None, None]
    likelihoods = np.asarray(codec.entropy_bottleneck(k.astype(np.float32)))
    np.testing.assert_allclose(likelihoods[:, 0, 0, :].T, pmf[:, : lengths.min()], rtol=1e-4, atol=1e-7)
    # narrower supports still cover all but the tail, centred on the median
    narrow = codec.z_pmf_tables(max_support=8)
    assert np.all(narrow.lengths <= 8) and np.all(narrow.pmf.sum(axis=1) > 0.15)


def test_estimate_bpp_is_what_a_coder_using_the_tables_spends(codec):
    """The bits of the symbols under the coder's tables (z: the float z pmf; y: the Gaussian
    of each symbol's scale) add up to estimate_bpp."""
    x = images(2, size=128, seed=4)
    y = codec.analyze(x)
    z_symbols = np.asarray(codec.quantize_latents(codec.hyper(y)))
    scales, means = codec.y_scales_means(codec.dequantize_latents(z_symbols))
    y_symbols = np.asarray(codec.quantize_latents(y, means))
    assert z_symbols.dtype == np.int32 and y_symbols.dtype == np.int32
    np.testing.assert_array_less(np.abs(np.asarray(codec.dequantize_latents(y_symbols, means)) - np.asarray(y)), 0.5 + 1e-5)

    pmf, offsets, lengths = codec.z_pmf_tables(max_support=1024)
    index = z_symbols - offsets  # broadcast over the channel axis
    assert np.all((index >= 0) & (index < lengths))
    channel = np.broadcast_to(np.arange(8), z_symbols.shape)
    z_bits = -np.log2(np.maximum(pmf[channel, index], 1e-9)).sum(axis=(1, 2, 3))
    y_bits = -np.log2(np.asarray(gaussian_likelihood(y_symbols, scales), np.float64)).sum(axis=(1, 2, 3))
    np.testing.assert_allclose(np.asarray(codec.estimate_bpp(x)), (z_bits + y_bits) / (128 * 128), rtol=1e-4)
    np.testing.assert_allclose(np.asarray(codec.estimate_bpp(x, num_pixels=100 * 120)),
                               (z_bits + y_bits) / (100 * 120), rtol=1e-4)
    assert np.all(np.asarray(codec.estimate_bpp(x)) > 0.05)  # the widened model does spend bits


def test_gaussian_pmf_tables_match_the_likelihood():
    scales = np.array([0.11, 1.0, 7.5])
    pmf, offsets, lengths = gaussian_pmf_tables(scales)
    np.testing.assert_allclose(pmf.sum(axis=1), 1.0, atol=1e-8)
    for row, (scale, offset, length) in enumerate(zip(scales, offsets, lengths)):
        k = np.arange(offset, offset + length, dtype=np.float32)
        np.testing.assert_allclose(pmf[row, :length], np.asarray(gaussian_likelihood(k, np.full_like(k, scale))),
                                   rtol=1e-4, atol=1e-9)


# -------------------------------------------------------------------------------- training


def test_training_lowers_the_rate_and_raises_psnr():
    model = tiny_codec(init_seed=0, lambdas=(0.05,))
    widen_latents(model, 10.0)  # start at a high rate, so that the rate term has work to do
    x = images(8)

    def evaluate():
        x_hat = np.clip(np.asarray(model(x)["x_hat"]), 0, 1)
        return float(np.mean(model.estimate_bpp(x))), 10 * math.log10(1 / float(np.mean((x_hat - x) ** 2)))

    bpp_before, psnr_before = evaluate()
    model.compile(optimizer=keras.optimizers.Adam(3e-3))
    history = model.fit(x, batch_size=4, epochs=15, verbose=0)  # 30 steps
    bpp_after, psnr_after = evaluate()
    assert set(history.history) == {"loss", "bpp", "mse", "psnr"}
    assert bpp_after < 0.5 * bpp_before, (bpp_before, bpp_after)
    assert psnr_after > psnr_before + 3.0, (psnr_before, psnr_after)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]


@pytest.mark.parametrize("mean_scale", [True, False], ids=["mean_scale", "scale_only"])
def test_mixed_quantization_trains_the_synthesis_on_what_decoding_gives_it(mean_scale):
    # "mixed": in training, g_s and h_s see the rounded latents (the reconstruction is exactly
    # the inference one), the likelihoods see noisy ones; "noise": noisy everywhere.
    x = images(2, seed=2)
    mixed = tiny_codec(mean_scale=mean_scale, init_seed=1, lambdas=(0.0035, 0.013), quantization="mixed")
    widen_latents(mixed, 10.0)
    noise = rebuilt(mixed, "float32", quantization="noise")
    inference = np.asarray(mixed(x, quality=2)["x_hat"])
    trained_mixed = mixed(x, training=True, quality=2)
    np.testing.assert_allclose(np.asarray(trained_mixed["x_hat"]), inference, atol=1e-6)
    assert np.max(np.abs(np.asarray(noise(x, training=True, quality=2)["x_hat"]) - inference)) > 1e-3
    # the rate term still sees noise: training likelihoods differ from the rounded ones
    assert not np.allclose(np.asarray(trained_mixed["y_likelihoods"]), np.asarray(mixed(x, quality=2)["y_likelihoods"]))

    # Straight-through: the distortion's gradient reaches the analysis transform.
    import tensorflow as tf

    with tf.GradientTape() as tape:
        distortion = tf.reduce_mean(tf.square(mixed(x, training=True, quality=2)["x_hat"] - x))
    gradient = tape.gradient(distortion, mixed.g_a[0].kernel)
    assert gradient is not None and float(tf.reduce_max(tf.abs(gradient))) > 0.0


def test_mixed_bfloat16_keeps_latents_likelihoods_and_loss_in_float32():
    model = tiny_codec(init_seed=1)
    widen_latents(model, 10.0)
    mixed = with_precision(model, "mixed_bfloat16")
    assert mixed.g_a[0].compute_dtype == "bfloat16" and mixed.entropy_bottleneck.compute_dtype == "float32"
    x = images(2, seed=6)
    out = mixed(x)
    dtype = keras.backend.standardize_dtype
    assert dtype(out.pop("quality").dtype) == "int32"
    assert {dtype(v.dtype) for v in out.values()} == {"float32"}
    y = mixed.analyze(x)
    z_hat = mixed.dequantize_latents(mixed.quantize_latents(mixed.hyper(y)))
    assert [dtype(t.dtype) for t in (y, mixed.hyper(y), *mixed.y_scales_means(z_hat))] == ["float32"] * 4
    # bfloat16 transforms change the estimate only a little
    np.testing.assert_allclose(np.asarray(mixed.estimate_bpp(x)), np.asarray(model.estimate_bpp(x)), rtol=0.1)
    mixed.compile(optimizer=keras.optimizers.Adam(1e-3))
    history = mixed.fit(x, batch_size=2, epochs=2, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    assert keras.config.dtype_policy().name == "float32"


@pytest.mark.slow
def test_trains_saves_and_reloads_on_the_jax_backend(tmp_path):
    script = f"""
import numpy as np, keras
from imageae.models.codec import build_codec
keras.utils.set_random_seed(0)
model = build_codec(num_filters=8, num_latent=12)
x = np.random.default_rng(0).random((4, 64, 64, 3), dtype=np.float32)
model.compile(optimizer=keras.optimizers.Adam(1e-3))
history = model.fit(x, batch_size=2, epochs=2, verbose=0)
assert np.all(np.isfinite(history.history["loss"])), history.history
model.save({str(tmp_path / "jax.keras")!r})
loaded = keras.saving.load_model({str(tmp_path / "jax.keras")!r}, compile=False)
np.testing.assert_array_equal(np.asarray(loaded.estimate_bpp(x)), np.asarray(model.estimate_bpp(x)))
print("ok", keras.backend.backend())
"""
    env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "ok jax" in result.stdout


def test_with_lambdas_adds_qualities_keeping_the_old_ones_and_refuses_to_drop_any():
    from imageae.models.codec import gains_for_lambdas, with_lambdas

    keras.utils.set_random_seed(2)
    model = build_codec(**TINY, lambdas=(0.004, 0.04))
    model.log_gains.assign(np.random.default_rng(0).normal(size=(2, 12)).astype("float32"))
    wider = with_lambdas(model, (0.001, 0.004, 0.01, 0.04), "float32")
    assert wider.lambdas == (0.001, 0.004, 0.01, 0.04) and wider.log_gains.shape == (4, 12)
    x = images(1, size=64, seed=1)
    for old, new in ((1, 2), (2, 4)):  # the old qualities code exactly as before
        np.testing.assert_array_equal(np.asarray(model(x, quality=old)["x_hat"]), np.asarray(wider(x, quality=new)["x_hat"]))
    old = model.log_gains.numpy()
    # lambda 0.01 lies 0.398 of the way from 0.004 to 0.04 in log; 0.001 extrapolates below
    t = math.log(0.01 / 0.004) / math.log(10.0)
    np.testing.assert_allclose(wider.log_gains.numpy()[2], old[0] + t * (old[1] - old[0]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(wider.log_gains.numpy()[0], old[0] - math.log(4.0) / math.log(10.0) * (old[1] - old[0]),
                               rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"drop \[0.004\]"):
        with_lambdas(model, (0.001, 0.04))
    with pytest.raises(ValueError, match="single-rate"):
        with_lambdas(build_codec(**TINY), (0.004, 0.013))
    with pytest.raises(ValueError, match="single-rate"):
        gains_for_lambdas(np.zeros((1, 3)), (0.01,), (0.01, 0.02))


def test_frozen_coding_tables_are_what_the_coder_uses_and_survive_saving(tmp_path):
    from imageae.codec import CodecSession
    from imageae.codec.session import freeze_coding_tables, z_coding_tables
    from imageae.runtime import rebuilt, save_float16

    keras.utils.set_random_seed(3)
    model = build_codec(**TINY, lambdas=(0.004, 0.04))
    assert not model.coding_tables_frozen  # a fresh model derives them from its density
    before, offsets = z_coding_tables(model)
    freeze_coding_tables(model)
    assert model.coding_tables_frozen
    # Changing the density afterwards does not change the tables the coder uses (they are frozen).
    for variable in model.entropy_bottleneck.weights:
        variable.assign(np.asarray(variable) + 0.5)
    session = CodecSession(model, "frozen")
    assert all(np.array_equal(a, b) for a, b in zip(session.z_tables, before))
    np.testing.assert_array_equal(session.z_offsets, offsets)
    refrozen = freeze_coding_tables(rebuilt(model, "float32"))  # the changed density's own tables differ
    assert not all(np.array_equal(a, b) for a, b in zip(z_coding_tables(refrozen)[0], before))
    # ... and they travel with the weights: float32 and float16-stored files, policy copies.
    model.save(tmp_path / "m.keras")
    save_float16(model, tmp_path / "m16.keras")
    for copy in (keras.saving.load_model(tmp_path / "m.keras"), keras.saving.load_model(tmp_path / "m16.keras"),
                 rebuilt(model, "mixed_bfloat16")):
        tables, copy_offsets = z_coding_tables(copy)
        assert all(np.array_equal(a, b) for a, b in zip(tables, before)) and np.array_equal(copy_offsets, offsets)


def test_a_codec_saved_before_the_tables_were_stored_loads_with_them_unfrozen():
    keras.utils.set_random_seed(4)
    model = build_codec(**TINY, lambdas=(0.004, 0.04))
    gains = [np.full(v.shape, 0.1 * (i + 1), np.float32) for i, v in enumerate(model._trainable_variables)]
    model.load_own_variables({str(i): g for i, g in enumerate(gains)})  # an old file's own variables: the gains
    np.testing.assert_array_equal(model.log_gains.numpy(), gains[0])
    assert not model.coding_tables_frozen
