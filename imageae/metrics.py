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
