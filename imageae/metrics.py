"""Image-quality metrics as pure functions on arrays (no file IO).

PSNR and SSIM come from TensorFlow's own ``tf.image`` implementations (SSIM with the usual
11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03 of Wang et al. 2004), so the project
does not maintain a second copy of either formula; so does MS-SSIM (``tf.image.ssim_multiscale``,
Wang, Simoncelli and Bovik 2003). :func:`bd_rate` compares two rate-distortion curves
(Bjontegaard 2001).
"""

import math

import keras
import numpy as np


def _as_batch(x):
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 2:
        x = x[:, :, None]
    if x.ndim != 3:
        raise ValueError(f"expected an (H, W) or (H, W, C) image, got shape {x.shape}")
    return x[None]


def psnr(reference, estimate, *, data_range=255.0):
    """Peak signal-to-noise ratio in dB between two images of the same shape.

    Colour images are scored over all channels at once (PSNR over RGB), as the published
    denoising and compression numbers are.
    """
    reference, estimate = _as_batch(reference), _as_batch(estimate)
    if reference.shape != estimate.shape:
        raise ValueError(f"shapes differ: {reference.shape[1:]} vs {estimate.shape[1:]}")
    mse = float(np.mean((reference - estimate) ** 2))
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def ssim(reference, estimate, *, data_range=255.0):
    """Structural similarity (mean over the image and channels), via ``tf.image.ssim``."""
    import tensorflow as tf

    reference, estimate = _as_batch(reference), _as_batch(estimate)
    if reference.shape != estimate.shape:
        raise ValueError(f"shapes differ: {reference.shape[1:]} vs {estimate.shape[1:]}")
    value = tf.image.ssim(
        tf.constant(reference, tf.float32), tf.constant(estimate, tf.float32), max_val=float(data_range)
    )
    return float(value.numpy()[0])


MS_SSIM_MIN_SIDE = 11 * 2**4
"""Smallest height and width :func:`ms_ssim` accepts: the 11x11 window at the fifth scale (1/16)."""


def ms_ssim(reference, estimate, *, data_range=255.0):
    """Multi-scale structural similarity, via ``tf.image.ssim_multiscale``.

    Five scales with the weights of Wang et al. 2003 (0.0448, 0.2856, 0.3001, 0.2363, 0.1333),
    the SSIM window of :func:`ssim`, 2x2 average pooling between scales; colour images are
    scored per channel and averaged (as CompressAI's ``pytorch_msssim`` does). Both sides must be
    at least :data:`MS_SSIM_MIN_SIDE` (176) pixels. In dB: ``-10 * log10(1 - ms_ssim)``.
    """
    import tensorflow as tf

    reference, estimate = _as_batch(reference), _as_batch(estimate)
    if reference.shape != estimate.shape:
        raise ValueError(f"shapes differ: {reference.shape[1:]} vs {estimate.shape[1:]}")
    if min(reference.shape[1:3]) < MS_SSIM_MIN_SIDE:
        raise ValueError(f"MS-SSIM needs images of at least {MS_SSIM_MIN_SIDE}x{MS_SSIM_MIN_SIDE} pixels "
                         f"(an 11x11 window at 1/16 scale), got {reference.shape[1]}x{reference.shape[2]}")
    value = tf.image.ssim_multiscale(
        tf.constant(reference, tf.float32), tf.constant(estimate, tf.float32), max_val=float(data_range)
    )
    return float(value.numpy()[0])


def bd_rate(rates_anchor, quality_anchor, rates_test, quality_test):
    """Bjontegaard delta rate (VCEG-M33, Bjontegaard 2001): the average rate difference of the test
    curve against the anchor curve at equal quality, in percent (negative: the test needs fewer bits).

    Each curve is fitted with a cubic polynomial giving log(rate) as a function of quality
    (PSNR in dB, say), by least squares over all its points (with fewer than four points, of
    degree points - 1); both fits are integrated over the interval of quality the two curves
    share, and the mean difference of log-rate is turned into a ratio::

        BD-rate = (exp((int log R_test - int log R_anchor) / (q_max - q_min)) - 1) * 100

    This is the original cubic-fit method (``method="cubic"`` of the common ``bjontegaard``
    Python package); its later piecewise-cubic variants (pchip, Akima) usually agree closely on
    smooth, monotone curves.

    Parameters
    ----------
    rates_anchor, quality_anchor : sequences of float
        The anchor's points: rate (bpp or bytes, any positive unit, the same for both curves)
        and quality. At least two points each, in any order.
    rates_test, quality_test : sequences of float
        The tested codec's points.

    Returns
    -------
    float
        Percent rate change of test vs anchor over the shared quality interval.

    Raises
    ------
    ValueError
        Fewer than two points, non-positive or non-finite values, or quality ranges that do not
        overlap.

    Examples
    --------
    >>> round(bd_rate([0.2, 0.5, 1.0, 2.0], [26, 30, 34, 38], [0.16, 0.4, 0.8, 1.6], [26, 30, 34, 38]), 6)
    -20.0
    """
    curves = []
    for name, rates, quality in (("anchor", rates_anchor, quality_anchor), ("test", rates_test, quality_test)):
        rates, quality = np.asarray(rates, np.float64).ravel(), np.asarray(quality, np.float64).ravel()
        if rates.shape != quality.shape:
            raise ValueError(f"{name} curve: {rates.size} rates but {quality.size} quality values")
        if rates.size < 2:
            raise ValueError(f"{name} curve: BD-rate needs at least 2 points, got {rates.size}")
        if not (np.all(np.isfinite(rates)) and np.all(np.isfinite(quality)) and np.all(rates > 0)):
            raise ValueError(f"{name} curve: rates must be positive and all values finite")
        if np.ptp(quality) == 0.0:
            raise ValueError(f"{name} curve: all its points have the same quality")
        curves.append((np.log(rates), quality))
    low = max(q.min() for _, q in curves)
    high = min(q.max() for _, q in curves)
    if not low < high:
        raise ValueError(f"the curves' quality ranges do not overlap (shared interval [{low:.3f}, {high:.3f}])")
    integrals = []
    for log_rates, quality in curves:
        fit = np.polyfit(quality, log_rates, min(3, quality.size - 1))
        antiderivative = np.polyint(fit)
        integrals.append(np.polyval(antiderivative, high) - np.polyval(antiderivative, low))
    return float((math.exp((integrals[1] - integrals[0]) / (high - low)) - 1.0) * 100.0)


@keras.saving.register_keras_serializable(package="imageae")
def psnr_metric(y_true, y_pred):
    """Training metric: PSNR in dB on the 0..1 scale, prediction clipped as the benchmark does."""
    mse = keras.ops.mean(keras.ops.square(keras.ops.clip(y_pred, 0.0, 1.0) - y_true), axis=(1, 2, 3))
    return keras.ops.mean(-10.0 * keras.ops.log(keras.ops.maximum(mse, 1e-10)) / math.log(10.0))


def frechet_distance(features_a, features_b):
    """Fréchet distance between Gaussians fitted to two feature sets (FID, Heusel et al. 2017).

    The matrix square root goes through symmetric eigendecompositions, which stay real and
    exact for the positive semi-definite covariances involved:
    tr((C_a C_b)^(1/2)) = sum of sqrt(eig(C_a^(1/2) C_b C_a^(1/2))).
    """
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    mu_a, mu_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross)


def kernel_distance(features_a, features_b, *, subsets=100, subset_size=1000, seed=0):
    """KID (Binkowski et al. 2018): unbiased MMD^2 with the kernel (x.y / d + 1)^3,
    averaged over random subsets. Returns (mean, standard deviation)."""
    a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
    d = a.shape[1]
    m = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
        values.append(
            (kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean()
        )
    return float(np.mean(values)), float(np.std(values))
