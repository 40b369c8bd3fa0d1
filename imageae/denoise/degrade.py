"""The degradation model the real-noise denoiser is trained on: what a camera does to a clean photo.

:func:`degrade` turns a clean sRGB patch into a noisy one and returns the noise level the model
is told (the standard deviation of what was added, 0..1 scale). With probability
``gaussian_probability`` the noise is plain additive white Gaussian noise (sigma uniform in
``[0, sigma_max]``, unclipped, the synthetic benchmarks' protocol, whose level is sigma itself);
otherwise it is camera noise, each step after a published model:

1. **Unprocessing** to linear sensor values: the sRGB curve undone and white-balance gains
   divided out, red in [1.9, 2.4] and blue in [1.5, 1.9] (Brooks et al., "Unprocessing images
   for learned raw denoising", CVPR 2019).
2. **Poisson-Gaussian noise** on the Bayer mosaic: variance ``shot * x + read`` with ``log shot``
   uniform in [log 1e-4, log 1.2e-2] and ``log read = 2.18 log shot + 1.2 + N(0, 0.26)``,
   the joint distribution Brooks et al. fit to real sensors; the model itself is Foi et al.,
   "Practical Poissonian-Gaussian noise modeling and fitting for single-image raw-data",
   IEEE TIP 2008. Each pixel of a random RGGB phase gets the noise of its one colour.
3. **Demosaicing** the noise bilinearly, which correlates it across neighbouring pixels and
   channels (the in-camera pipeline of CBDNet, Guo et al., "Toward convolutional blind
   denoising of real photographs", CVPR 2019). Bilinear demosaicing is linear, so only the
   noise goes through it and the clean target stays the photo itself.
4. **Further spatial correlation** with probability 0.9: the noise blurred by a Gaussian of
   width 0.5-2.5 px, as in-camera noise reduction and resampling leave it. Measured on PolyU
   (real shot minus the mean of many): neighbouring pixels' noise correlates at 0.73 and a
   2x2 box average keeps 86 % of its standard deviation (white noise: 0 and 50 %); bilinear
   demosaicing alone gives about 0.4. The blurred noise is scaled back to its power before the
   blur (the sensor's noise level stays what step 2 drew; only its spectrum changes) (the correlated-noise
   term of the SCUNet / BSRGAN practical degradation model, Zhang et al. 2021, 2023).
5. **Processing back**: white-balance gains, the sRGB curve, clipping to 0..1 and 8-bit rounding.
6. **JPEG** with probability 0.7 at a quality uniform in [60, 95] (BSRGAN's JPEG step;
   cameras and phones save JPEG).

Everything is NumPy and OpenCV on the CPU, so the recipe feeds the TensorFlow or the JAX backend.
"""

import cv2
import numpy as np

_GREEN = np.array([[0, 1, 0], [1, 4, 1], [0, 1, 0]], np.float32) / 4.0  # bilinear demosaicing kernels
_RED_BLUE = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], np.float32) / 4.0


def srgb_to_linear(x):
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.04045, x / 12.92, ((x + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(x):
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1 / 2.4) - 0.055).astype(np.float32)


def _bayer_masks(height, width, phase):
    """Boolean (H, W, 3) masks of an RGGB mosaic shifted by ``phase`` (0..3)."""
    dy, dx = divmod(phase, 2)
    yy, xx = np.mgrid[:height, :width]
    yy, xx = (yy + dy) % 2, (xx + dx) % 2
    red = (yy == 0) & (xx == 0)
    blue = (yy == 1) & (xx == 1)
    return np.stack([red, ~(red | blue), blue], axis=-1)


def camera_noise(clean, rng):
    """Camera noise (steps 1-5 of the module docstring) on a clean (H, W, 3) sRGB patch; returns
    the noisy patch before JPEG, clipped to 0..1 and rounded to 8 bits."""
    h, w, _ = clean.shape
    gains = np.array([rng.uniform(1.9, 2.4), 1.0, rng.uniform(1.5, 1.9)], np.float32)
    raw = srgb_to_linear(clean) / gains
    log_shot = rng.uniform(np.log(1e-4), np.log(1.2e-2))
    shot = np.exp(log_shot)
    read = np.exp(2.18 * log_shot + 1.2 + rng.normal(0.0, 0.26))
    masks = _bayer_masks(h, w, int(rng.integers(4)))
    std = np.sqrt(np.maximum(shot * raw + read, 0.0)).astype(np.float32)
    sparse = np.where(masks, std * rng.standard_normal((h, w, 1), dtype=np.float32), 0.0).astype(np.float32)
    noise = np.stack([
        cv2.filter2D(sparse[..., c], -1, _GREEN if c == 1 else _RED_BLUE, borderType=cv2.BORDER_REFLECT)
        for c in range(3)
    ], axis=-1)
    if rng.random() < 0.9:
        before = noise.std(axis=(0, 1)) + 1e-12
        noise = cv2.GaussianBlur(noise, (0, 0), float(rng.uniform(0.5, 2.5)), borderType=cv2.BORDER_REFLECT)
        noise *= before / (noise.std(axis=(0, 1)) + 1e-12)
    noisy = linear_to_srgb((raw + noise) * gains)
    return np.round(noisy * 255.0).astype(np.float32) / 255.0


def jpeg(x, quality):
    """``x`` (H, W, 3) on 0..1 through an 8-bit JPEG at ``quality``."""
    bgr = np.round(np.clip(x, 0.0, 1.0)[..., ::-1] * 255.0).astype(np.uint8)
    ok, data = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1].astype(np.float32) / 255.0


def degrade(clean, rng, *, gaussian_probability=0.35, sigma_max=55.0, jpeg_probability=0.7):
    """One training input from a clean (H, W, 3) float patch on 0..1.

    Returns
    -------
    noisy : numpy.ndarray
        float32, the same shape.
    level : float
        The noise level the model is given, 0..1 scale: sigma for Gaussian noise, the standard
        deviation of ``noisy - clean`` for camera noise.
    """
    clean = np.asarray(clean, np.float32)
    if clean.shape[-1] != 3:
        raise ValueError(f"camera noise needs RGB patches, got {clean.shape[-1]} channel(s)")
    if rng.random() < gaussian_probability:
        sigma = float(rng.uniform(0.0, sigma_max)) / 255.0
        return clean + sigma * rng.standard_normal(clean.shape, dtype=np.float32), sigma
    noisy = camera_noise(clean, rng)
    if rng.random() < jpeg_probability:
        noisy = jpeg(noisy, rng.integers(60, 96))
    return noisy, float(np.std(noisy - clean))
