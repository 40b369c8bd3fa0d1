"""Image-quality metrics as pure functions on arrays (no file IO).

PSNR and SSIM come from TensorFlow's own ``tf.image`` implementations (SSIM with the usual
11x11 Gaussian window, sigma 1.5, K1 = 0.01, K2 = 0.03 of Wang et al. 2004), so the project
does not maintain a second copy of either formula.
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
