"""imageae.metrics: PSNR, SSIM and MS-SSIM against known values, BD-rate on known curves, FID and KID
on Gaussians with known distances."""

import math

import numpy as np
import pytest

from conftest import smooth_image
from imageae.metrics import bd_rate, frechet_distance, kernel_distance, ms_ssim, psnr, ssim


def gaussian(n, mean, std=1.0, seed=0):
    mean = np.asarray(mean, np.float64)
    return np.random.default_rng(seed).normal(mean, std, (n, len(mean)))


# ---------------------------------------------------------------------------------------- PSNR


@pytest.mark.parametrize("shape", [(16, 20), (16, 20, 1), (16, 20, 3)])
def test_psnr_of_a_constant_offset_is_20_log10_of_range_over_offset(shape):
    reference = smooth_image(*shape[:2], channels=shape[2] if len(shape) == 3 else 1).reshape(shape)
    estimate = reference.astype(np.float64) + 10.0
    assert psnr(reference, estimate) == pytest.approx(20 * math.log10(255 / 10), abs=1e-9)
    # on the 0..1 scale with data_range=1 the same image scores the same
    assert psnr(reference / 255.0, estimate / 255.0, data_range=1.0) == pytest.approx(28.1308, abs=1e-4)


def test_psnr_follows_the_mean_squared_error():
    reference = np.zeros((4, 4))
    estimate = reference.copy()
    estimate[0, :2] = 255.0  # MSE = 2 * 255^2 / 16 = 255^2 / 8
    assert psnr(reference, estimate) == pytest.approx(10 * math.log10(8), abs=1e-9)


def test_psnr_of_identical_images_is_infinite():
    image = smooth_image(12, 12)
    assert psnr(image, image.copy()) == math.inf


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_images_of_different_shapes_are_refused(metric):
    with pytest.raises(ValueError, match="shapes differ"):
        metric(np.zeros((16, 16)), np.zeros((16, 17)))


@pytest.mark.parametrize("metric", [psnr, ssim])
def test_a_batch_is_not_an_image(metric):
    with pytest.raises(ValueError, match=r"expected an \(H, W\) or \(H, W, C\) image"):
        metric(np.zeros((2, 16, 16, 1)), np.zeros((2, 16, 16, 1)))


# ---------------------------------------------------------------------------------------- SSIM


def test_ssim_is_one_for_identical_images_and_falls_as_noise_grows():
    clean = smooth_image(32, 32, channels=1).astype(np.float64)
    assert ssim(clean, clean) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(0)
    scores = [ssim(clean, np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255)) for sigma in (5, 20, 60)]
    assert 1.0 > scores[0] > scores[1] > scores[2]


def test_ssim_is_scale_free_given_the_data_range():
    clean = smooth_image(24, 24, channels=3).astype(np.float64)
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 15, clean.shape), 0, 255)
    assert ssim(clean / 255.0, noisy / 255.0, data_range=1.0) == pytest.approx(ssim(clean, noisy), abs=1e-4)


# ----------------------------------------------------------------------------------------- FID


def test_frechet_distance_of_a_set_with_itself_is_zero():
    a = gaussian(500, [0.0] * 5, seed=1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_of_shifted_gaussians_is_the_squared_shift():
    shift = np.array([1.0, 2.0, 0.0, -1.0])
    a = gaussian(20000, [0.0] * 4, seed=2)
    b = gaussian(20000, shift, seed=3)
    assert frechet_distance(a, b) == pytest.approx(float(shift @ shift), abs=0.1)
    assert frechet_distance(b, a) == pytest.approx(frechet_distance(a, b), rel=1e-6)


def test_frechet_distance_sees_a_change_of_spread():
    # N(0, I) vs N(0, 4 I) in d dimensions: d * (1 + 4 - 2 * sqrt(1 * 4)) = d
    a = gaussian(20000, [0.0] * 3, std=1.0, seed=4)
    b = gaussian(20000, [0.0] * 3, std=2.0, seed=5)
    assert frechet_distance(a, b) == pytest.approx(3.0, abs=0.1)


# ----------------------------------------------------------------------------------------- KID


def test_kernel_distance_is_near_zero_for_two_samples_of_one_distribution():
    a = gaussian(2000, [0.0] * 4, seed=6)
    b = gaussian(2000, [0.0] * 4, seed=7)
    mean, std = kernel_distance(a, b, subsets=20, subset_size=200)
    assert abs(mean) < 0.05 and abs(mean) < 3 * std + 1e-3


def test_kernel_distance_is_clearly_positive_for_shifted_distributions():
    a = gaussian(2000, [0.0] * 4, seed=8)
    near = kernel_distance(a, gaussian(2000, [0.0] * 4, seed=9), subsets=20, subset_size=200)[0]
    shifted, std = kernel_distance(a, gaussian(2000, [1.0, 0.0, 0.0, 0.0], seed=10), subsets=20, subset_size=200)
    assert shifted > 4 * std and shifted > 0.5
    far = kernel_distance(a, gaussian(2000, [2.0, 0.0, 0.0, 0.0], seed=11), subsets=20, subset_size=200)[0]
    assert abs(near) < shifted < far


def test_kernel_distance_is_seeded():
    a, b = gaussian(300, [0.0, 0.0], seed=12), gaussian(300, [0.5, 0.0], seed=13)
    assert kernel_distance(a, b, subsets=5, subset_size=50, seed=3) == kernel_distance(
        a, b, subsets=5, subset_size=50, seed=3
    )


# ------------------------------------------------------------------------------------- MS-SSIM


def test_ms_ssim_is_one_for_identical_images_and_falls_with_noise():
    clean = smooth_image(192, 200, channels=3).astype(np.float64)
    assert ms_ssim(clean, clean) == pytest.approx(1.0, abs=1e-6)
    rng = np.random.default_rng(0)
    scores = [ms_ssim(clean, np.clip(clean + rng.normal(0, sigma, clean.shape), 0, 255)) for sigma in (5, 30)]
    assert 1.0 > scores[0] > scores[1]


def test_ms_ssim_refuses_images_too_small_for_five_scales():
    with pytest.raises(ValueError, match="at least 176x176"):
        ms_ssim(np.zeros((100, 200, 3)), np.zeros((100, 200, 3)))


# ------------------------------------------------------------------------------------- BD-rate

RATES = [0.12, 0.25, 0.5, 0.8, 1.2]
PSNRS = [25.0, 27.6, 30.4, 32.5, 34.3]


def test_bd_rate_of_a_curve_against_itself_is_zero():
    assert bd_rate(RATES, PSNRS, RATES, PSNRS) == pytest.approx(0.0, abs=1e-9)


def test_bd_rate_of_a_curve_at_80_percent_of_the_rate_is_minus_20_percent():
    cheaper = [0.8 * r for r in RATES]
    assert bd_rate(RATES, PSNRS, cheaper, PSNRS) == pytest.approx(-20.0, abs=1e-6)
    assert bd_rate(cheaper, PSNRS, RATES, PSNRS) == pytest.approx(25.0, abs=1e-6)


def test_bd_rate_uses_only_the_shared_quality_interval():
    # the test curve covers the upper part only, with other points; its rates are 0.8x there
    log_fit = np.polyfit(PSNRS, np.log(RATES), 3)
    quality = [29.0, 31.0, 33.0, 35.0]
    rates = [0.8 * float(np.exp(np.polyval(log_fit, q))) for q in quality]
    assert bd_rate(RATES, PSNRS, rates, quality) == pytest.approx(-20.0, abs=0.5)


def test_bd_rate_refuses_curves_that_do_not_overlap_or_are_too_short():
    with pytest.raises(ValueError, match="do not overlap"):
        bd_rate(RATES, PSNRS, RATES, [p + 20 for p in PSNRS])
    with pytest.raises(ValueError, match="at least 2 points"):
        bd_rate(RATES, PSNRS, [0.5], [30.0])
