"""ConvVAE: config round trip, .keras save/load, the loss it trains on, KL warm-up, errors.

All models are tiny (8x8 grey images, filters (4, 8), a 2-d latent, see conftest.TINY_VAE).
"""

import math

import keras
import numpy as np
import pytest

from conftest import build_tiny_vae, pattern_image, two_pattern_images
from imageae.models.vae import ConvVAE
from imageae.runtime import with_precision

PIXELS = 8 * 8


def latents(n, dim=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, dim)).astype(np.float32)


def unit_images(n, seed=0):
    """Float32 (n, 8, 8, 1) images on the 0..1 scale."""
    return np.random.default_rng(seed).random((n, 8, 8, 1), dtype=np.float32)


def set_dense(layer, bias):
    """Make a Dense layer output the constant ``bias`` whatever its input."""
    kernel, _ = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.asarray(bias, np.float32)])


# ------------------------------------------------------------------------------ config, saving


def test_config_round_trip_keeps_every_constructor_argument():
    model = build_tiny_vae(
        likelihood="gaussian", gaussian_sigma=0.2, beta=0.5, kl_warmup_steps=7, seed=3, mixture_components=4
    )
    config = model.get_config()
    expected = dict(
        image_size=8, channels=1, latent_dim=2, filters=[4, 8], likelihood="gaussian", gaussian_sigma=0.2,
        beta=0.5, kl_warmup_steps=7, seed=3, mixture_components=4,
    )
    assert {k: config[k] for k in expected} == expected
    rebuilt = ConvVAE.from_config(config)
    assert rebuilt.get_config() == config
    rebuilt.build()
    rebuilt.set_weights(model.get_weights())
    z = latents(3)
    np.testing.assert_array_equal(np.asarray(rebuilt.decode(z)), np.asarray(model.decode(z)))


def test_keras_save_load_gives_identical_decodes_mixture_and_step(tmp_path):
    model = build_tiny_vae(seed=1, mixture_components=3)
    rng = np.random.default_rng(1)
    mixture = (
        np.log(np.array([0.2, 0.3, 0.5], np.float32)),
        rng.normal(size=(3, 2)).astype(np.float32),
        rng.normal(size=(3, 2)).astype(np.float32),
    )
    model.mixture_log_weights.assign(mixture[0])
    model.mixture_means.assign(mixture[1])
    model.mixture_log_vars.assign(mixture[2])
    model.step.assign(42.0)  # a resumed run must continue its KL warm-up where it stopped
    model.save(tmp_path / "vae.keras")
    loaded = keras.saving.load_model(tmp_path / "vae.keras", compile=False)
    assert isinstance(loaded, ConvVAE)
    assert loaded.get_config() == model.get_config()
    z = latents(5, seed=2)
    np.testing.assert_array_equal(np.asarray(loaded.decode(z)), np.asarray(model.decode(z)))
    x = unit_images(2)
    for a, b in zip(loaded.encode(x), model.encode(x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    for got, want in zip(
        (loaded.mixture_log_weights, loaded.mixture_means, loaded.mixture_log_vars), mixture
    ):
        np.testing.assert_array_equal(got.numpy(), want)
    assert float(loaded.step.numpy()) == 42.0


def test_bfloat16_copy_keeps_the_mixture_and_decodes_close_to_float32():
    # imageae.generate runs a with_precision copy (bfloat16 on CPUs that have it)
    model = build_tiny_vae(seed=2, mixture_components=3)
    model.mixture_means.assign(latents(3, seed=3))
    copy = with_precision(model, "mixed_bfloat16")
    np.testing.assert_array_equal(copy.mixture_means.numpy(), model.mixture_means.numpy())
    z = latents(4, seed=4)
    decoded = np.asarray(copy.decode(z))
    assert decoded.dtype == np.float32
    np.testing.assert_allclose(decoded, np.asarray(model.decode(z)), atol=0.02)


# ------------------------------------------------------------------------------------- the loss


def test_untrained_bernoulli_decoder_costs_ln2_per_pixel():
    # zero logits say p = 1/2 for every pixel, whatever the image: -log(1/2) nats each
    model = build_tiny_vae()
    x = unit_images(3)
    nll = np.asarray(model.reconstruction_nll(x, np.zeros_like(x)))
    np.testing.assert_allclose(nll, PIXELS * math.log(2), rtol=1e-5)


def test_gaussian_nll_is_the_normalising_constant_for_a_perfect_mean_and_grows_with_error():
    sigma = 0.1
    model = build_tiny_vae(likelihood="gaussian", gaussian_sigma=sigma)
    x = unit_images(2, seed=1)
    constant = PIXELS * (math.log(sigma) + 0.5 * math.log(2 * math.pi))
    np.testing.assert_allclose(np.asarray(model.reconstruction_nll(x, x)), constant, rtol=1e-5)
    # every pixel off by one sigma adds 1/2 nat per pixel
    np.testing.assert_allclose(np.asarray(model.reconstruction_nll(x, x + sigma)), constant + PIXELS / 2, rtol=1e-5)


def test_kl_divergence_is_zero_at_the_prior_and_half_the_squared_mean_for_unit_variance():
    zero = np.zeros((1, 3), np.float32)
    assert float(ConvVAE.kl_divergence(zero, zero)[0]) == 0.0
    mean = np.array([[1.0, -2.0, 0.0]], np.float32)
    np.testing.assert_allclose(np.asarray(ConvVAE.kl_divergence(mean, zero)), [2.5], rtol=1e-6)


def test_training_lowers_the_loss_below_the_untrained_ln2_per_pixel(trained_tiny_vae):
    _, history = trained_tiny_vae
    losses = history["loss"]
    assert losses[0] == pytest.approx(PIXELS * math.log(2), rel=0.05)  # starts as a coin flip per pixel
    assert losses[-1] < 0.5 * losses[0]
    # the mean prediction (top-left always white, two quadrants half the time) costs 32 ln 2 nats:
    # going well below it means the latent tells the two patterns apart
    assert min(losses) < 32 * math.log(2) / 2


def test_trained_vae_reconstructs_each_pattern_and_separates_them_in_latent_space(trained_tiny_vae):
    model, _ = trained_tiny_vae
    x = np.stack([pattern_image(0), pattern_image(1)]).astype(np.float32) / 255.0
    reconstructed = np.asarray(model(x, training=False))
    error = np.abs(reconstructed - x).mean(axis=(1, 2, 3))
    assert error.max() < 0.1
    mean, _ = model.encode(x)
    assert np.linalg.norm(np.asarray(mean[0]) - np.asarray(mean[1])) > 1.0


def test_fit_lowers_the_gaussian_loss_too():
    model = build_tiny_vae(seed=4, likelihood="gaussian", gaussian_sigma=0.2, kl_warmup_steps=1000)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    x = two_pattern_images(64, seed=2)[0].astype(np.float32) / 255.0
    before = model.evaluate(x, batch_size=64, verbose=0, return_dict=True)["loss"]
    model.fit(x, epochs=4, batch_size=16, verbose=0)
    after = model.evaluate(x, batch_size=64, verbose=0, return_dict=True)["loss"]
    assert after < before - 0.1 * abs(before)
    decoded = np.asarray(model.decode(latents(16, seed=5) * 3))
    assert decoded.min() >= 0.0 and decoded.max() <= 1.0  # the Gaussian mean is clipped to the image range


def test_kl_weight_rises_linearly_from_zero_to_beta_and_enters_the_loss():
    model = build_tiny_vae(seed=5, beta=0.5, kl_warmup_steps=4)
    # a posterior far from the prior (mean 3 in both dimensions, unit variance): KL = 9 nats
    set_dense(model.z_mean, [3.0, 3.0])
    set_dense(model.z_logvar, [0.0, 0.0])
    model.compile(optimizer=keras.optimizers.SGD(1e-6))  # weights barely move
    x = unit_images(8, seed=6)
    assert float(model.kl_weight()) == 0.0
    model.evaluate(x, verbose=0)
    assert float(model.step.numpy()) == 0.0  # evaluation is not a training step
    weights = []
    for _ in range(6):
        model.reset_metrics()
        logs = model.train_on_batch(x, return_dict=True)
        weights.append(float(model.kl_weight()))
        assert logs["kl"] == pytest.approx(9.0, rel=1e-3)
        # loss = nll + w * kl, with the weight of the step just taken
        assert (logs["loss"] - logs["nll"]) / logs["kl"] == pytest.approx(weights[-1], abs=1e-3)
    np.testing.assert_allclose(weights, [0.125, 0.25, 0.375, 0.5, 0.5, 0.5], rtol=1e-6)
    # evaluation scores the full beta-weighted loss, whatever the warm-up
    logs = model.evaluate(x, verbose=0, return_dict=True)
    assert (logs["loss"] - logs["nll"]) / logs["kl"] == pytest.approx(0.5, abs=1e-3)


def test_no_warm_up_means_the_full_beta_from_the_first_step():
    model = build_tiny_vae(beta=2.0, kl_warmup_steps=0)
    assert float(model.kl_weight()) == 2.0


# ----------------------------------------------------------------------------------- bad input


def test_unknown_likelihood_is_refused_with_the_choices():
    with pytest.raises(ValueError, match="bernoulli.*gaussian.*'poisson'"):
        ConvVAE(likelihood="poisson")


@pytest.mark.parametrize("image_size, filters", [(10, (4, 8)), (12, (4, 8, 16)), (7, (4,))])
def test_image_size_not_divisible_by_the_downsampling_factor_is_refused(image_size, filters):
    with pytest.raises(ValueError, match=f"image_size {image_size} must be a multiple of {2 ** len(filters)}"):
        ConvVAE(image_size=image_size, filters=filters)
