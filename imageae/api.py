"""The public Python API: denoise, compress and generate (re-exported by :mod:`imageae`)."""

from pathlib import Path

import numpy as np

from imageae import registry
from imageae.data.io import WRITE_FORMATS, from_float, output_format, write_image

# Float inputs are images on the 0..1 scale; noisy ones may stray outside it (the benchmark
# protocol does not clip), but values this far out mean the caller passed 0..255 data.
_FLOAT_LIMIT = 4.0


def check_int(name, value, *, minimum=None, maximum=None):
    """``value`` as an int, or a TypeError/ValueError naming ``name``, what was given and the range."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be a whole number, got {value!r} ({type(value).__name__})")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        allowed = (f"{minimum}..{maximum}" if maximum is not None else f"at least {minimum}") if minimum is not None \
            else f"at most {maximum}"
        raise ValueError(f"{name} must be {allowed}, got {value}")
    return value


def _pick_model(model, channels):
    if model in (None, "auto"):
        return "denoise-grey" if channels == 1 else "denoise-colour"
    return model


class Denoiser:
    """Loaded denoising models plus the tiled runner, reused across calls.

    Parameters
    ----------
    model : str
        "auto" (the shipped grey model for grey images, the colour one for colour images),
        a registered model name, or the path of a .keras file.
    precision : str
        "auto" (bfloat16 on CPUs that have it, float16 on GPUs, float32 otherwise), or a
        Keras dtype policy name.
    tile, batch_size : int
        Window size for large images and windows per model call.
    self_ensemble : bool
        Denoise each image in its 8 flips and rotations and average the results, turned back:
        about 8 times the work for a little more PSNR (see the README's table).
    """

    def __init__(self, model="auto", *, precision="auto", tile=1024, batch_size=4, self_ensemble=False):
        check_int("tile", tile, minimum=1)
        check_int("batch_size", batch_size, minimum=1)
        self.model = model
        self.precision = precision
        self.tile = tile
        self.batch_size = batch_size
        self.self_ensemble = bool(self_ensemble)
        self._runners = {}

    def runner(self, channels):
        from imageae.pipelines.engine import TiledRunner
        from imageae.runtime import with_precision

        name = _pick_model(self.model, channels)
        if name not in self._runners:
            loaded = registry.load_model(name, job="denoise")
            self._runners[name] = TiledRunner(
                with_precision(loaded, self.precision), tile=self.tile, batch_size=self.batch_size
            )
        return self._runners[name]

    def run(self, items):
        """Denoise ``(key, float (H, W, C) image)`` pairs; yields ``(key, result)``.

        Consecutive images that use the same model are batched together.
        """
        if not self.self_ensemble:
            yield from self._run(items)
            return

        def transformed():
            for key, x in items:
                for k in range(8):
                    yield (key, k), np.ascontiguousarray(_dihedral(x, k))

        sums, counts = {}, {}
        for (key, k), y in self._run(transformed()):
            y = _undo_dihedral(y, k)
            sums[key] = y if key not in sums else sums[key] + y
            counts[key] = counts.get(key, 0) + 1
            if counts[key] == 8:
                del counts[key]
                yield key, sums.pop(key) / np.float32(8.0)

    def _run(self, items):
        group, group_runner = [], None
        for key, x in items:
            runner = self.runner(x.shape[-1])
            if group_runner is not None and runner is not group_runner:
                yield from group_runner.run(group)
                group = []
            group_runner = runner
            group.append((key, x))
            if len(group) >= 2 * self.batch_size:
                yield from runner.run(group)
                group = []
        if group:
            yield from group_runner.run(group)


def _dihedral(x, k):
    """The k-th of the 8 flips and rotations of an (H, W, C) image (k = 0: unchanged)."""
    x = np.rot90(x, k % 4, axes=(0, 1))
    return x[:, ::-1] if k >= 4 else x


def _undo_dihedral(y, k):
    y = y[:, ::-1] if k >= 4 else y
    return np.rot90(y, -(k % 4), axes=(0, 1))


def _as_array(image):
    """(array (H, W, C), how to turn a float result back into the caller's kind)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return _pil_as_array(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
    return _array_restorer(image)


# How imageae.denoise treats each Pillow mode (the docstring of denoise lists the same).
_CONVERT_THROUGH_RGB = ("YCbCr", "HSV", "LAB", "RGBX")  # exact conversions Pillow can invert
_PREMULTIPLIED = {"RGBa": "RGBA", "La": "LA"}


def _pil_as_array(image):
    """:func:`_as_array` for a PIL image: the pixels as a float array, and the same mode back.

    Every mode either comes back in the same mode, or is refused with a ValueError saying
    what to convert it to; nothing comes back silently in another mode or scale.
    """
    from PIL import Image

    mode, size = image.mode, image.size
    info = {key: image.info[key] for key in ("icc_profile", "exif") if image.info.get(key)}

    def pil(make):
        def restore(y):
            out = make(y)
            out.info.update(info)  # same mode, same colour space: the profile still applies
            return out

        return restore

    if mode in ("L", "RGB", "LA", "RGBA"):
        x, back = _array_restorer(np.asarray(image))
        return x, pil(lambda y: Image.fromarray(back(y)))
    if mode in _PREMULTIPLIED:
        x, back = _array_restorer(np.asarray(image.convert(_PREMULTIPLIED[mode])))
        return x, pil(lambda y: Image.fromarray(back(y)).convert(mode))
    if mode in _CONVERT_THROUGH_RGB:
        x, back = _array_restorer(np.asarray(image.convert("RGB")))
        return x, pil(lambda y: Image.fromarray(back(y)).convert(mode))
    if mode.startswith("I;16"):
        array = np.asarray(image)  # byte order as stored: '<u2' or '>u2'
        x, back = _array_restorer(array.astype(np.uint16))
        return x, pil(lambda y: Image.frombytes(mode, size, back(y).astype(array.dtype).tobytes()))
    if mode == "I":
        array = np.asarray(image)
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        raise ValueError(f"mode 'I' (32-bit integer) images have no fixed scale: 0..255 after image.convert('I'), "
                         f"0..65535 from 16-bit files (this one holds {low}..{high}). Say which: "
                         "pass np.asarray(image).astype(np.uint16) for 16-bit data or .astype(np.uint8) for 8-bit data "
                         "(the result comes back as that array)")
    if mode == "F":
        x, back = _array_restorer(np.asarray(image, dtype=np.float32))
        return x, pil(lambda y: Image.fromarray(back(y)))
    if mode in ("P", "PA"):
        raise ValueError(f"mode {mode!r} (palette) images are not denoised: putting the result back on a "
                         "256-colour palette would undo the denoising. Convert it first, "
                         "image.convert('RGBA' if it has transparency else 'RGB'); the result comes back in that mode")
    if mode == "1":
        raise ValueError("mode '1' (bilevel) images are not denoised: the result has grey levels that one bit "
                         "cannot hold, and thresholding them would invent edges. Convert it first, image.convert('L'); "
                         "the result comes back grey (threshold it yourself if you need one bit)")
    if mode == "CMYK":
        raise ValueError("mode 'CMYK' images are not denoised: the models work in RGB, and converting the result "
                         "back to CMYK would move the black ink (K) into C, M and Y. Convert it to RGB first: "
                         "image.convert('RGB'), or colour-managed with PIL.ImageCms.profileToProfile")
    raise ValueError(f"PIL mode {mode!r} is not supported; convert the image to 'RGB', 'RGBA', 'L' or 'LA' first")


def _array_restorer(array):
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4)):
        raise ValueError(
            f"expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"image is empty: shape {array.shape}")
    squeeze = array.ndim == 2
    x = array[:, :, None] if squeeze else array
    alpha = None
    if x.shape[-1] in (2, 4):
        x, alpha = x[..., :-1], x[..., -1:]
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        scale = 255.0 if array.dtype == np.uint8 else 65535.0
        x = x.astype(np.float32) / scale

        def back(y):
            y = np.clip(np.round(y * scale), 0, scale).astype(array.dtype)
            return y
    elif array.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise ValueError("float image contains NaN or infinite values")
        low, high = float(x.min()), float(x.max())
        if high > _FLOAT_LIMIT or low < -_FLOAT_LIMIT + 1:
            raise ValueError(
                f"float images must be on the 0..1 scale (noisy values slightly outside are fine); "
                f"got values from {low:.3g} to {high:.3g}. Divide 0..255 data by 255, or pass uint8."
            )
        x = x.astype(np.float32)

        def back(y):
            return np.clip(y, 0.0, 1.0).astype(np.float32)
    else:
        raise TypeError(f"expected a uint8, uint16 or float image, got dtype {array.dtype}")

    def restore(y):
        y = back(y)
        if alpha is not None:
            y = np.concatenate([y, alpha.astype(y.dtype)], axis=-1)
        return y[:, :, 0] if squeeze else y

    return x, restore


_default = {}


def denoise(image, *, model="auto", precision="auto", tile=1024, batch_size=4, self_ensemble=False):
    """Remove noise from one image.

    Parameters
    ----------
    image : numpy.ndarray or PIL.Image.Image
        (H, W) or (H, W, C) with C = 1, 3 (RGB), 2 or 4 (with alpha, passed through).
        uint8 and uint16 images are denoised at their bit depth; float images are on the
        0..1 scale and may be unclipped noisy data (values somewhat outside 0..1).
        A PIL image comes back in its own mode, or is refused (ValueError saying what to
        convert it to), by mode:

        ===================================  =============================================
        "L", "RGB", "LA", "RGBA"             8-bit, alpha passed through unchanged
        "RGBa", "La" (premultiplied alpha)   un-premultiplied, denoised, premultiplied back
        "YCbCr", "HSV", "LAB", "RGBX"        through RGB with Pillow's conversions and back
                                             ("LAB": colours outside sRGB are clipped)
        "I;16", "I;16L", "I;16B", "I;16N"    16-bit grey, byte order kept
        "I" (32-bit integers)                refused: its scale is unknown; pass a uint16
                                             or uint8 array
        "F" (32-bit floats)                  the 0..1 scale, as float arrays; result 0..1
        "P", "PA" (palette)                  refused: a palette would undo the denoising;
                                             convert to "RGB"/"RGBA" first
        "1" (bilevel)                        refused: convert to "L" first
        "CMYK"                               refused: convert to "RGB" first
        ===================================  =============================================

        The ICC profile and EXIF in ``image.info`` are kept in the result's ``info``.
    model : str
        "auto" (grey or colour model by the image's channels), a registered name
        (``imageae models``) or a path to a .keras file.
    self_ensemble : bool
        Average the results over the image's 8 flips and rotations (8x the time, a little
        more PSNR).

    Returns
    -------
    The same kind as ``image``: an array of the same shape and dtype (float results are
    clipped to 0..1 and float32), or a PIL image of the same mode.

    Examples
    --------
    >>> import numpy as np, imageae
    >>> rng = np.random.default_rng(0)
    >>> clean = np.full((64, 64), 0.5, np.float32)
    >>> noisy = clean + rng.normal(0, 25 / 255, clean.shape).astype(np.float32)
    >>> out = imageae.denoise(noisy)
    >>> float(np.abs(out - clean).mean()) < float(np.abs(noisy - clean).mean())
    True
    """
    x, restore = _as_array(image)
    key = (model, precision, tile, batch_size, self_ensemble)
    if key not in _default:
        _default[key] = Denoiser(model, precision=precision, tile=tile, batch_size=batch_size,
                                 self_ensemble=self_ensemble)
    [(_, y)] = list(_default[key].run([(0, x)]))
    return restore(y)


def _suffix_for(ext):
    def suffix(path):
        if ext:
            return ext if ext.startswith(".") else "." + ext
        return path.suffix if path.suffix.lower() in WRITE_FORMATS else ".png"

    return suffix


def denoise_folder(
    inputs,
    output,
    *,
    model="auto",
    ext=None,
    quality=95,
    overwrite=False,
    precision="auto",
    tile=1024,
    batch_size=4,
    progress=None,
    self_ensemble=False,
):
    """Denoise every image in ``inputs`` (files and folders) into the folder ``output``.

    The output tree mirrors the input tree; each result keeps its input's size, grey or
    colour mode, alpha and bit depth, in the input's format unless ``ext`` names another.
    Existing outputs are kept unless ``overwrite``. A file that cannot be read or written
    is recorded in the report with the reason and the run goes on.

    Returns
    -------
    FolderReport
    """
    from imageae.pipelines.folder import FolderReport, decoded_images, ensure_output_dir, plan_outputs, running_job

    if ext is not None:
        output_format(None, ext)  # validates the extension up front
    check_int("quality", quality, minimum=1, maximum=100)
    denoiser = Denoiser(model, precision=precision, tile=tile, batch_size=batch_size, self_ensemble=self_ensemble)
    report = FolderReport()
    tasks = plan_outputs(inputs, output, suffix_for=_suffix_for(ext), overwrite=overwrite, report=report)
    ensure_output_dir(output)
    decoded_by_task = {}

    def items():
        for task, decoded, error in decoded_images(tasks):
            if error:
                report.failed.append((str(task.source), error))
                bar.update(1)
                continue
            decoded_by_task[id(task)] = (task, decoded)
            yield id(task), decoded.to_float()

    def write(target, decoded, y):
        write_image(target, from_float(y, decoded), fmt=WRITE_FORMATS[Path(target).suffix.lower()], quality=quality)

    with running_job(report, len(tasks), desc="denoise", progress=progress) as (writer, bar):
        for key, y in denoiser.run(items()):
            task, decoded = decoded_by_task.pop(key)
            report.pixels += decoded.pixels.shape[0] * decoded.pixels.shape[1]
            writer.submit(task, write, decoded, y)
            bar.update(1)
    return report


def _vae(model, precision="auto"):
    from imageae.runtime import with_precision

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
    from imageae.generation import SAMPLERS, check_seed, check_temperature

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
        A registered generate model (``imageae models``) or a .keras path.
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
    from imageae.generation import iter_samples

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
    from imageae.generation import iter_samples

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
    """One :class:`~imageae.generation.InputFitWarning` naming the inputs ``vae`` does not fit."""
    import warnings

    from imageae.generation import InputFitWarning, input_fit_problem

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
    an :class:`~imageae.generation.InputFitWarning` says so (use ``model="vae-faces64"`` for
    photos of faces).
    """
    from imageae.generation import decode_latents, encode_images

    images = list(images)
    vae = _vae(model)
    if not images:
        return np.zeros((0, vae.image_size, vae.image_size, vae.channels), np.uint8)
    _warn_misfits(vae, model, images)
    x = np.concatenate([_vae_input(vae, im) for im in images])
    return decode_latents(vae, encode_images(vae, x))


def interpolate(image_a, image_b, *, steps=8, model="vae-digits"):
    """Images on a latent path from ``image_a`` to ``image_b``; uint8 (steps, S, S, C).

    Inputs are fitted to the model as in :func:`reconstruct` (with the same warning when they
    do not fit it)."""
    from imageae.generation import decode_latents, encode_images, interpolate_latents

    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)):
        raise TypeError(f"steps must be an integer, got {steps!r} ({type(steps).__name__})")
    if int(steps) < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    vae = _vae(model)
    _warn_misfits(vae, model, [image_a, image_b])
    z = encode_images(vae, np.concatenate([_vae_input(vae, image_a), _vae_input(vae, image_b)]))
    return decode_latents(vae, interpolate_latents(z[0], z[1], steps))


# ---------------------------------------------------------------------------------- compress

DEFAULT_CODEC = "codec-v4"
IAE_EXTENSION = ".iae"
# The largest image compress and decompress take by default (Pillow's MAX_IMAGE_PIXELS, about
# 89.5 Mpixel); max_pixels= / --max-pixels raise it. imageae.codec.container.DEFAULT_MAX_PIXELS.
MAX_CODEC_PIXELS = 1024 * 1024 * 1024 // 4 // 3
COMPRESS_REPORT = "compress-report.csv"
_sessions = {}


def codec_session(model=DEFAULT_CODEC):
    """The :class:`~imageae.codec.CodecSession` of a registered codec or a .keras file (made once).

    A registered model writes its registry name into its files; a .keras file its file name
    without the extension (so decoding needs the same file: pass it to :func:`decompress`).
    """
    from imageae.codec import CodecSession

    path = registry.resolve(model, job="compress").resolve()
    name = model if model in registry.MODELS else path.stem
    key = (name, str(path), path.stat().st_mtime_ns)
    if key not in _sessions:
        _sessions[key] = CodecSession(registry.load_model(str(path), job="compress"), name)
    return _sessions[key]


def _codec_pixels(image):
    """uint8 (H, W, 1|3) pixels of a numpy array or PIL image; ValueError saying what is wrong."""
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            image = _pil_codec_pixels(image)
    except ImportError:  # pragma: no cover - Pillow is a core dependency
        pass
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array or a PIL image, got {type(image).__name__}")
    return image[:, :, None] if image.ndim == 2 else image


def _pil_codec_pixels(image):
    """The 8-bit grey or RGB pixels the codec stores for a PIL image (the policy compress lists)."""
    from imageae.data.io import _cmyk_to_rgb, _is_grey

    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        raise ValueError(f"image has an alpha channel (mode {mode!r}): the codec does not store alpha; "
                         "drop it (image.convert('RGB')) or keep the image as PNG")
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode == "P":
        rgb = image.convert("RGB")
        return np.asarray(rgb.convert("L") if _is_grey(rgb) else rgb)
    if mode in ("YCbCr", "HSV", "LAB", "RGBX"):
        return np.asarray(image.convert("RGB"))
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(image, image.info.get("icc_profile"))[0])
    if mode.startswith("I"):
        bits = 16 if mode.startswith("I;16") else 32
        how = ("Image.fromarray((np.asarray(image) / 257).round().astype(np.uint8)), or keep it as a 16-bit PNG"
               if bits == 16 else "scale it to 0..255 and pass it as a uint8 array")
        raise ValueError(f"mode {mode!r} is a {bits}-bit grey image; the codec stores 8-bit images only. Reduce it "
                         f"to 8 bits first: {how}")
    if mode == "F":
        raise ValueError("mode 'F' is a floating-point image; the codec stores 8-bit images only. Convert it to "
                         "8 bits first: for 0..1 data pass np.round(np.clip(np.asarray(image), 0, 1) * 255).astype(np.uint8)")
    raise ValueError(f"PIL mode {mode!r} is not supported; convert the image to 'RGB' or 'L' first")


def _codec_icc_profile(image):
    """The ICC profile that describes the pixels :func:`_codec_pixels` gives for ``image``, or None.

    A PIL image's own profile, except where those pixels were converted into another colour
    space: CMYK (converted through its profile: the sRGB profile; by the plain formula: none),
    "LAB" and "HSV" (none: their profile, if any, described the unconverted values). An array
    has none.
    """
    info = getattr(image, "info", None)
    if isinstance(image, np.ndarray) or not isinstance(info, dict):
        return None
    icc = info.get("icc_profile") or None
    mode = getattr(image, "mode", None)
    if mode == "CMYK":
        from imageae.data.io import _cmyk_to_rgb

        return _cmyk_to_rgb(image, icc)[1]
    return None if mode in ("LAB", "HSV") else icc


def compress(image, *, quality=None, target_bpp=None, model=DEFAULT_CODEC, refine_steps=0, icc_profile=None,
             max_pixels=MAX_CODEC_PIXELS):
    """Compress an 8-bit image into the bytes of an ``.iae`` file.

    Parameters
    ----------
    image : numpy.ndarray (uint8, (H, W), (H, W, 1) or (H, W, 3)) or PIL image
        Grey or RGB, any size. Alpha and 16-bit images are refused (ValueError), not reduced.
        PIL images by mode: "L" and "RGB" as they are; "1" as grey 0/255; "P" as RGB (grey
        when the palette is grey); "YCbCr", "HSV", "LAB", "RGBX" converted to RGB by Pillow;
        "CMYK" converted to sRGB through its ICC profile when it has one, else by Pillow's
        plain formula. Refused with a ValueError saying how to convert them: alpha ("RGBA",
        "LA", "PA", "RGBa", "La", "P" with transparency), 16-bit ("I;16", "I;16L", "I;16B",
        "I;16N"), 32-bit integer ("I") and float ("F") images.
    quality : int
        1 (smallest files) to the model's number of qualities (``imageae models`` lists
        them); default two thirds up the range (6 of 9 for codec-v4) when ``target_bpp`` is not
        given either.
    target_bpp : float
        Instead of ``quality``: the highest quality whose file stays within this many bits
        per pixel (quality 1 when even that is larger), found by encoding. With
        ``refine_steps``, the search is in one pass, then the next quality up is refined and
        kept if it fits (refined files are smaller), else the chosen one is refined: up to two
        refinements.
    model : str
        A registered codec (default "codec-v4") or the path of a .keras codec.
    refine_steps : int
        0 (default): encode in one pass. N > 0: first N steps of encoder-side rate-distortion
        descent on the latents (:mod:`imageae.codec.refine`): smaller files at the same
        quality (or better pictures at the same size) that any decoder reads as usual; encoding
        takes about N x 1.2 s per Mpixel on 2 CPU cores (100 is a good value). Images up to
        4 Mpixel.
    icc_profile : bytes, optional
        The ICC colour profile to store in the file (format version 2), given back by
        ``decompress(..., return_icc=True)`` and written into ``decompress_folder``'s images.
        Default: a PIL image's own (``image.info["icc_profile"]``; for "CMYK" converted through
        its profile, the sRGB profile; none for "LAB" and "HSV"), none for an array; ``b""``
        stores none. Not counted against ``target_bpp``.
    max_pixels : int or None
        Larger images are refused (``ValueError``) before any work: default about 89.5 Mpixel
        (Pillow's ``MAX_IMAGE_PIXELS``); None: up to the format's 65536 x 65536. Encoding runs
        in tiles; measured peak memory of the whole process (codec-v4, flat image): 2.2 GB for
        8192 x 8192, 2.7 GB at the default limit, about 23 bytes per pixel more beyond.

    Returns
    -------
    bytes

    Examples
    --------
    >>> import numpy as np, imageae                                 # doctest: +SKIP
    >>> data = imageae.compress(np.asarray(Image.open("photo.jpg")), quality=3)
    >>> pixels = imageae.decompress(data)                        # uint8 (H, W, 3)
    """
    if quality is not None and target_bpp is not None:
        raise ValueError("give quality or target_bpp, not both")
    if icc_profile is None:  # a PIL image's own (where it still describes the pixels coded)
        icc_profile = _codec_icc_profile(image)
    data, _ = _compress_pixels(codec_session(model), _codec_pixels(image), quality, target_bpp, refine_steps,
                               icc_profile=icc_profile, max_pixels=max_pixels)
    return data


def default_quality(session):
    """The quality used when none is asked for: two thirds up the model's range (codec-v4:
    6 of 9, about 0.7 bits per pixel on photos; a single-rate model: its only one)."""
    return max(1, round(session.num_qualities * 2 / 3))


def _compress_pixels(session, pixels, quality, target_bpp, refine_steps=0, *, icc_profile=None,
                     max_pixels=MAX_CODEC_PIXELS, progress=None):
    """:func:`compress` once the session and the pixel array are in hand: (bytes, the quality
    used). ``progress(done, steps)`` is called after each refinement step."""
    import functools

    from imageae.codec import compress_array
    from imageae.codec.container import check_pixels
    from imageae.codec.refine import check_refine_steps

    refine_steps = check_refine_steps(refine_steps)  # before any encoding of the target_bpp search
    check_pixels(pixels.shape[0], pixels.shape[1], max_pixels, what="the image")
    icc_profile = bytes(icc_profile) if icc_profile else None
    encode = functools.partial(compress_array, session, pixels, icc_profile=icc_profile, max_pixels=max_pixels)
    if target_bpp is None:
        quality = session.check_quality(default_quality(session) if quality is None else quality)
        return encode(quality, refine_steps=refine_steps, progress=progress), quality
    if not target_bpp > 0:
        raise ValueError(f"target_bpp must be positive, got {target_bpp}")
    budget = float(target_bpp) * pixels.shape[0] * pixels.shape[1]
    profile_bits = 8 * len(icc_profile or b"")  # the profile is the image's, not the codec's: not counted
    files = {}

    def bits(data):
        return 8 * len(data) - profile_bits

    def fits(q):
        files[q] = encode(q)
        return bits(files[q]) <= budget

    # Higher quality never gives a smaller file in practice; bisect for the last that fits.
    # The search runs without refinement (each try would cost one). Refined files are smaller
    # (codec-v4, 100 steps: 9-27 %), so the next quality up, refined, may fit where its plain file did not:
    # it is tried first; else the chosen quality's refined file replaces its plain one if it fits.
    low, high = 1, session.num_qualities
    if fits(low):
        while low < high:
            middle = (low + high + 1) // 2
            if fits(middle):
                low = middle
            else:
                high = middle - 1
        if refine_steps and low < session.num_qualities:
            higher = encode(low + 1, refine_steps=refine_steps, progress=progress)
            if bits(higher) <= budget:
                return higher, low + 1
    if not refine_steps:
        return files[low], low
    refined = encode(low, refine_steps=refine_steps, progress=progress)
    return (refined if bits(refined) <= max(budget, bits(files[low])) else files[low]), low


def _session_lookup(models):
    """model name -> CodecSession: the registered codecs, plus ``models`` (names or .keras paths)."""
    from imageae.codec import UnknownModelError

    # Sessions by the name their files carry, resolved once per lookup (not once per file).
    found = {session.name: session for session in (codec_session(m) for m in models or ())}
    extra = list(found)

    def lookup(name):
        if name not in found and name in registry.MODELS and registry.MODELS[name].job == "compress":
            found[name] = codec_session(name)
        if name in found:
            return found[name]
        installed = ", ".join([m.name for m in registry.list_models("compress")] + extra) or "none"
        raise UnknownModelError(f"file was written by model {name!r}, which is not installed "
                                f"(installed codec models: {installed}; a codec of your own: pass its .keras file)")

    return lookup


def decompress(data, *, models=None, max_pixels=MAX_CODEC_PIXELS, return_icc=False):
    """Decode the bytes of an ``.iae`` file: uint8 (H, W, 3) for colour, (H, W) for grey.

    ``models``: codec .keras files (or names) besides the registered ones, for files written
    by a codec of your own. ``max_pixels``: a file whose header declares a larger image is
    refused (:class:`~imageae.codec.ImageTooLargeError`, a ``ValueError``) before anything is
    allocated; default about 89.5 Mpixel (Pillow's ``MAX_IMAGE_PIXELS``), None: up to the
    format's 65536 x 65536. Decoding runs in tiles; measured peak memory of the whole process
    (codec-v4): 1.9 GB for 8192 x 8192, 2.1 GB at the default limit. ``return_icc=True`` returns ``(pixels, icc_profile)``, the
    profile the file carries as bytes (None when it has none), e.g. for
    ``PIL.Image.fromarray(pixels).save(path, icc_profile=icc_profile)``.

    Raises :class:`~imageae.codec.IaeFormatError` for anything wrong with the bytes and
    :class:`~imageae.codec.UnknownModelError` for a model not installed.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes (the contents of an .iae file), got {type(data).__name__}")
    header, pixels = _decode_iae(_session_lookup(models), bytes(data), max_pixels)
    pixels = pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels
    return (pixels, header.icc_profile) if return_icc else pixels


def _decode_iae(lookup, data, max_pixels):
    """(IaeHeader, uint8 (H, W, 1|3) pixels) of an .iae file."""
    from imageae.codec import read_latents, synthesize_image

    header, session, latents = read_latents(lookup, data, max_pixels=max_pixels)
    return header, synthesize_image(session, latents, header.height, header.width, header.colour_mode)


def _read_for_codec(path):
    """uint8 pixels of an image file for the codec; ImageReadError naming what it cannot store."""
    from imageae.data.io import ImageReadError, read_image

    decoded = read_image(path)
    if decoded.alpha is not None:
        raise ImageReadError("has an alpha channel, which the codec does not store (keep it as PNG)")
    if decoded.bit_depth != 8:
        raise ImageReadError(f"is {decoded.bit_depth}-bit; the codec stores 8-bit images only "
                             "(reduce it to 8 bits first, or keep it as PNG)")
    return decoded


def compress_folder(inputs, output, *, quality=None, target_bpp=None, model=DEFAULT_CODEC, overwrite=False,
                    progress=None, refine_steps=0, max_pixels=MAX_CODEC_PIXELS):
    """Compress every image in ``inputs`` (files and folders) into ``.iae`` files under ``output``.

    The output tree mirrors the input tree (``photos/a/b.jpg`` -> ``OUT/a/b.iae``). Existing
    outputs are kept unless ``overwrite``; a file that cannot be read (or has alpha, or 16
    bits, or more than ``max_pixels`` pixels) is recorded in the report with the reason and the
    run goes on. Each image's ICC colour profile is stored in its file.

    ``refine_steps``, ``max_pixels``: as for :func:`compress`. The progress bar counts images,
    in fractions of one during each image's refinement steps.

    Returns
    -------
    FolderReport
        ``pixels`` and ``seconds`` give the speed; ``entries`` one dict per file written, in
        input order: ``input``, ``output``, ``bytes``, ``bpp`` (file bits per pixel),
        ``quality`` (the one used: with ``target_bpp``, the one the search chose), ``seconds``
        (encoding), ``width``, ``height``. The same table is written as
        ``OUTPUT/compress-report.csv`` (replaced by each run that writes a file).
    """
    from imageae.data.io import write_bytes_atomic
    from imageae.pipelines.folder import FolderReport, decoded_images, ensure_output_dir, plan_outputs, running_job

    if quality is not None and target_bpp is not None:
        raise ValueError("give quality or target_bpp, not both")
    from imageae.codec.refine import check_refine_steps

    refine_steps = check_refine_steps(refine_steps)  # before any file is read
    import time

    from imageae.codec.container import check_pixels

    check_pixels(1, 1, max_pixels)  # the argument itself, before any file is read
    session = codec_session(model)  # loads (and checks) the model before any file is touched
    if quality is not None:
        session.check_quality(quality)
    report = FolderReport()
    tasks = plan_outputs(inputs, output, suffix_for=lambda path: IAE_EXTENSION, overwrite=overwrite, report=report)
    ensure_output_dir(output)
    entries = []
    # Refinements per image (target_bpp may run two): the bar advances by its share per step.
    passes = (2 if target_bpp is not None else 1) * refine_steps
    with running_job(report, len(tasks), desc="compress", progress=progress) as (writer, bar):
        for task, decoded, error in decoded_images(tasks, decode=_read_for_codec):
            moved = [0.0]

            def step(done, steps, moved=moved):
                share = min(0.95 - moved[0], 0.95 / passes)  # the rest when the image is done
                if share > 0:
                    moved[0] += share
                    bar.update(share)

            started = time.perf_counter()
            try:
                if error:
                    raise ValueError(error)
                height, width = decoded.pixels.shape[:2]
                data, used = _compress_pixels(session, decoded.pixels, quality, target_bpp, refine_steps,
                                              icc_profile=getattr(decoded, "icc_profile", None),
                                              max_pixels=max_pixels, progress=step if passes else None)
            except ValueError as error:
                report.failed.append((str(task.source), str(error)))
                continue
            finally:
                bar.update(1 - moved[0])
            report.pixels += height * width
            entries.append({"input": str(task.source), "output": str(task.target), "bytes": len(data),
                            "bpp": round(8 * len(data) / (height * width), 4), "quality": used,
                            "seconds": round(time.perf_counter() - started, 3), "width": width, "height": height})
            writer.submit(task, write_bytes_atomic, data)
    written = set(report.written)
    report.entries = [entry for entry in entries if entry["output"] in written]
    if report.entries:
        _write_compress_report(Path(output) / COMPRESS_REPORT, report.entries)
    return report


def _write_compress_report(path, entries):
    """The per-file table of :func:`compress_folder` as CSV (atomic; a failure is not the run's)."""
    import csv
    import io

    from imageae.data.io import write_bytes_atomic

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(entries[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(entries)
    try:
        write_bytes_atomic(path, text.getvalue().encode("utf-8"))
    except OSError:
        pass


def _write_decoded(target, pixels, fmt, icc_profile=None):
    from imageae.data.io import DecodedImage

    write_image(target, DecodedImage(pixels, None, 8, fmt, icc_profile=icc_profile), fmt=fmt)


def decompress_folder(inputs, output, *, ext=".png", models=None, overwrite=False, progress=None,
                      max_pixels=MAX_CODEC_PIXELS):
    """Decode every ``.iae`` file in ``inputs`` (files and folders) into images under ``output``.

    The output tree mirrors the input tree (``OUT/a/b.iae`` -> ``DIR/a/b.png``); ``ext``
    picks the format (.png by default: lossless, so the decoded pixels are kept exactly).
    The ICC colour profile a file carries is written into its image. A damaged or foreign
    file, or one declaring more than ``max_pixels`` pixels (as for :func:`decompress`), is
    recorded in the report with the reason and the run goes on.
    """
    from imageae.codec import IaeFormatError, ImageTooLargeError, UnknownModelError
    from imageae.codec.container import check_pixels
    from imageae.data.io import ImageReadError
    from imageae.pipelines.folder import FolderReport, decoded_images, ensure_output_dir, plan_outputs, running_job

    ext = ext if ext.startswith(".") else "." + ext
    fmt = output_format(None, ext)
    check_pixels(1, 1, max_pixels)  # the argument itself, before any file is read
    lookup = _session_lookup(models)
    report = FolderReport()
    tasks = plan_outputs(inputs, output, suffix_for=lambda path: ext, overwrite=overwrite, report=report,
                         extensions=(IAE_EXTENSION,))
    ensure_output_dir(output)

    def read_bytes(path):
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise ImageReadError(f"cannot read file: {error.strerror or error}") from None

    with running_job(report, len(tasks), desc="decompress", progress=progress) as (writer, bar):
        for task, data, error in decoded_images(tasks, decode=read_bytes):
            bar.update(1)
            if error:
                report.failed.append((str(task.source), error))
                continue
            try:
                header, pixels = _decode_iae(lookup, data, max_pixels)
            except (IaeFormatError, UnknownModelError, ImageTooLargeError) as error:
                report.failed.append((str(task.source), str(error)))
                continue
            report.pixels += pixels.shape[0] * pixels.shape[1]
            writer.submit(task, _write_decoded, pixels, fmt, header.icc_profile)
    return report
