"""The generate job's public API: :func:`generate`, :func:`generate_batches`, :func:`reconstruct`
and :func:`interpolate` with a VAE."""

import os

import numpy as np

from imageae import registry
from imageae.data.convert import _as_array

# Loaded VAEs, by (model, precision).
_default = {}


class _LiteRTDecoder:
    """An exported VAE decoder (``imageae export MODEL --format tflite``) in the VAE's place.

    Has what :mod:`~imageae.generate.sampling` uses of a :class:`~imageae.models.vae.ConvVAE`
    to sample: ``latent_dim``, ``image_size``, ``channels``, the mixture (from the sidecar) and
    ``decode`` (the LiteRT interpreter). The file is reloaded if it is re-exported. It has no
    encoder.
    """

    def __init__(self, path):
        from imageae.pipelines.litert import LiteRTModel

        self.path = str(path)
        self.model = LiteRTModel(path, jobs=("generate",))

    def _meta(self):
        self.model.refresh()
        return self.model.meta

    latent_dim = property(lambda self: int(self._meta()["latent_dim"]))
    image_size = property(lambda self: int(self._meta()["image_size"]))
    channels = property(lambda self: int(self._meta()["channels"]))
    mixture_log_weights = property(lambda self: np.asarray(self._meta()["mixture"]["log_weights"], np.float32))
    mixture_means = property(lambda self: np.asarray(self._meta()["mixture"]["means"], np.float32))
    mixture_log_vars = property(lambda self: np.asarray(self._meta()["mixture"]["log_vars"], np.float32))

    def decode(self, z):
        """Images (N, S, S, C) float32 on 0..1 from latents (N, latent_dim)."""
        return self.model(z)


def _is_tflite(model):
    return isinstance(model, (str, os.PathLike)) and str(model).lower().endswith(".tflite")


def _vae(model, precision="auto", *, encoder=False):
    from imageae.runtime import with_precision

    if _is_tflite(model):
        # A .tflite decoder runs at its own precision; cached by path, size and modification time
        # (imageae.pipelines.litert.file_key), so a re-exported file is loaded again.
        from imageae.pipelines.litert import file_key

        if encoder:
            raise ValueError(f"{model} holds only the VAE's decoder, so it can generate but not encode "
                             "(reconstruct, interpolate): give the .keras model or its name for those")
        key = ("vae-litert", *file_key(model))
        if key not in _default:
            for stale in [k for k in _default if k[:2] == key[:2]]:  # an earlier version of this file
                del _default[stale]
            _default[key] = _LiteRTDecoder(model)
        return _default[key]
    # "auto" is float32 for a VAE: decoding is cheap, and float32 gives the same images as the
    # exported SavedModel and as machines without bfloat16 (bfloat16 moved pixels by up to 6
    # grey levels). A lower precision is used only when asked for by name.
    precision = "float32" if precision == "auto" else precision
    key = ("vae", model, precision)
    if key not in _default:
        _default[key] = with_precision(registry.load_model(model, job="generate"), precision)
    return _default[key]


# generate() returns one array; past this many bytes it refuses and points to the iterator.
GENERATE_MAX_BYTES = 2**30


def _check_generate_args(n, seed, temperature, sampler):
    from imageae.generate.sampling import SAMPLERS, check_seed, check_temperature

    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise TypeError(f"n must be an integer, got {n!r} ({type(n).__name__})")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    return int(n), check_seed(seed), check_temperature(temperature)


def generate(n, *, model="vae-digits", seed=0, temperature=1.0, sampler="gmm", precision="auto"):
    """Synthesise ``n`` new images with a VAE.

    Parameters
    ----------
    n : int
        Number of images. The result must fit in memory (at most 1 GiB, about 1.3 million
        28x28 digits or 87,000 64x64 faces); for more, iterate :func:`generate_batches`.
    model : str
        A registered generate model (``imageae models``), a .keras path, or a VAE decoder exported
        with ``imageae export MODEL --format tflite`` (a .tflite path with its .json beside it):
        latents are drawn as for the Keras model (same seed, same latents) and decoded by the
        LiteRT interpreter (``pip install imageae[litert]``) at the file's own precision.
    seed : int
        0 .. 2**63-1. The same seed gives the same images, and image i depends only on the
        seed and i: the first k of n images are ``generate(k)``'s.
    temperature : float
        Scales the latent standard deviation, in (0, 100]; below 1 gives cleaner, less varied
        images.
    sampler : str
        "gmm" (default) draws z from the Gaussian mixture fitted to the training latents and
        shipped in the model (closer to the data); "normal" from the N(0, I) prior.
    precision : str
        "auto" (default) and "float32" compute in float32: the images are then those of the
        exported SavedModel (``imageae export``) for the same seed, bit for bit. "mixed_bfloat16"
        or "mixed_float16" are faster on hardware that has them (vae-faces64 about 2.5x on a
        bfloat16 CPU) but move pixels by a few grey levels.

    Returns
    -------
    numpy.ndarray
        uint8 images, (n, size, size, channels).

    Examples
    --------
    >>> import imageae
    >>> imageae.generate(4, model="vae-digits", seed=1).shape
    (4, 28, 28, 1)
    """
    from imageae.generate.sampling import iter_samples

    n, seed, temperature = _check_generate_args(n, seed, temperature, sampler)
    vae = _vae(model, precision)
    shape = (vae.image_size, vae.image_size, vae.channels)
    needed = n * int(np.prod(shape))
    if needed > GENERATE_MAX_BYTES:
        raise ValueError(
            f"generate({n}) would return {needed:,} bytes ({n:,} images of {shape[0]}x{shape[1]}x{shape[2]} "
            f"bytes), more than one array may take ({GENERATE_MAX_BYTES:,} bytes); stream them instead with "
            f"imageae.generate_batches({n}, batch_size=1000, ...), which yields the same images a batch at a "
            f"time, or write them with 'imageae generate -n {n} -o FOLDER'"
        )
    images = np.empty((n, *shape), np.uint8)
    start = 0
    for batch in iter_samples(vae, n, seed=seed, temperature=temperature, sampler=sampler, batch_size=1024):
        images[start : start + len(batch)] = batch
        start += len(batch)
    return images


def generate_batches(n, *, batch_size=256, model="vae-digits", seed=0, temperature=1.0, sampler="gmm",
                     precision="auto"):
    """The images of :func:`generate`, streamed: an iterator of uint8 batches.

    Holds one batch (and one block of 1024 latents) at a time, so ``n`` may be any size.
    Image i depends only on the seed and i, so the concatenated batches equal
    ``generate(n, ...)`` for every ``batch_size``. Arguments are checked (and the model is
    loaded) when this is called, before the first batch.

    Parameters
    ----------
    n : int
        Number of images in all.
    batch_size : int
        Images per batch (the last batch may be smaller).
    model, seed, temperature, sampler, precision
        As for :func:`generate`.

    Yields
    ------
    numpy.ndarray
        uint8 (batch, size, size, channels).

    Examples
    --------
    >>> import imageae
    >>> sum(len(b) for b in imageae.generate_batches(10, batch_size=4, seed=1))  # doctest: +SKIP
    10
    """
    from imageae.generate.sampling import iter_samples

    n, seed, temperature = _check_generate_args(n, seed, temperature, sampler)
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    vae = _vae(model, precision)
    return iter_samples(vae, n, seed=seed, temperature=temperature, sampler=sampler, batch_size=int(batch_size))


def _vae_convertible(image):
    """A PIL image in a mode the VAE functions read: palette, bilevel, CMYK and the other colour
    spaces are converted (a VAE resizes and re-quantises anyway, so nothing is given back in the
    input's mode, unlike :func:`denoise`); arrays and 16-bit/float modes pass unchanged."""
    from PIL import Image

    if isinstance(image, Image.Image) and image.mode in ("1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "RGBX",
                                                          "RGBa", "La"):
        alpha = "A" in image.mode or "a" in image.mode or "transparency" in image.info
        grey = image.mode in ("1", "La")
        return image.convert(("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB"))
    return image


def _vae_input(vae, image):
    """One image as the VAE's input: centre-cropped, resized, grey/colour matched (an alpha
    channel dropped); uint8 (1, S, S, C)."""
    from imageae.data.arrays import _fit

    x, _ = _as_array(_vae_convertible(image))
    if x.ndim == 3 and x.shape[-1] in (2, 4):
        x = x[..., :-1]
    x = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    return _fit(x[None], vae.image_size, vae.channels, None)


def _warn_misfits(vae, model, images):
    """One :class:`~imageae.generate.sampling.InputFitWarning` naming the inputs ``vae`` does not fit."""
    import warnings

    from imageae.generate.sampling import InputFitWarning, input_fit_problem

    problems = []
    for i, image in enumerate(images):
        x, _ = _as_array(_vae_convertible(image))
        problem = input_fit_problem(x, vae, model)
        if problem:
            problems.append(f"image {i}: {problem}")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        warnings.warn("; ".join(problems[:3]) + more, InputFitWarning, stacklevel=3)


def reconstruct(images, *, model="vae-digits"):
    """Encode and decode images with a VAE (posterior mean); returns uint8 (n, S, S, C).

    Each image is centre-cropped to a square and resized to the model's size. The default
    model, vae-digits, knows 28x28 grey digits only; an image it does not fit (a colour
    photo, a size far from the model's) comes back as the nearest thing the model knows, and
    an :class:`~imageae.generate.sampling.InputFitWarning` says so (use ``model="vae-faces64"`` for
    photos of faces).
    """
    from imageae.generate.sampling import decode_latents, encode_images

    images = list(images)
    vae = _vae(model, encoder=True)
    if not images:
        return np.zeros((0, vae.image_size, vae.image_size, vae.channels), np.uint8)
    _warn_misfits(vae, model, images)
    x = np.concatenate([_vae_input(vae, im) for im in images])
    return decode_latents(vae, encode_images(vae, x))


def interpolate(image_a, image_b, *, steps=8, model="vae-digits"):
    """Images on a latent path from ``image_a`` to ``image_b``; uint8 (steps, S, S, C).

    Inputs are fitted to the model as in :func:`reconstruct` (with the same warning when they
    do not fit it)."""
    from imageae.generate.sampling import decode_latents, encode_images, interpolate_latents

    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"steps must be an integer, got {steps!r} ({type(steps).__name__})")
    if int(steps) < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    vae = _vae(model, encoder=True)
    _warn_misfits(vae, model, [image_a, image_b])
    z = encode_images(vae, np.concatenate([_vae_input(vae, image_a), _vae_input(vae, image_b)]))
    return decode_latents(vae, interpolate_latents(z[0], z[1], steps))
