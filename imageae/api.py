"""The public Python API of the denoise job (re-exported by :mod:`imageae`)."""

import time
from pathlib import Path

import numpy as np

from imageae import registry
from imageae.data.io import WRITE_FORMATS, from_float, output_format, write_image

# Float inputs are images on the 0..1 scale; noisy ones may stray outside it (the benchmark
# protocol does not clip), but values this far out mean the caller passed 0..255 data.
_FLOAT_LIMIT = 4.0


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
    """

    def __init__(self, model="auto", *, precision="auto", tile=1024, batch_size=4):
        self.model = model
        self.precision = precision
        self.tile = tile
        self.batch_size = batch_size
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


def _as_array(image):
    """(array (H, W, C), how to turn a float result back into the caller's kind)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        mode = image.mode
        if mode not in ("L", "RGB", "LA", "RGBA", "I;16", "I"):
            image = image.convert("RGBA" if "A" in mode or "transparency" in image.info else "RGB")
            mode = image.mode
        array = np.asarray(image)
        if mode in ("I;16", "I"):
            array = array.astype(np.uint16)
        x, back = _array_restorer(array)
        # Pillow picks I;16 for uint16 arrays itself and rejects an explicit mode for them.
        return x, lambda y: Image.fromarray(back(y)) if mode in ("I;16", "I") else Image.fromarray(back(y), mode=mode)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
    return _array_restorer(image)


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


def denoise(image, *, model="auto", precision="auto", tile=1024, batch_size=4):
    """Remove noise from one image.

    Parameters
    ----------
    image : numpy.ndarray or PIL.Image.Image
        (H, W) or (H, W, C) with C = 1, 3 (RGB), 2 or 4 (with alpha, passed through).
        uint8 and uint16 images are denoised at their bit depth; float images are on the
        0..1 scale and may be unclipped noisy data (values somewhat outside 0..1).
    model : str
        "auto" (grey or colour model by the image's channels), a registered name
        (``imageae models``) or a path to a .keras file.

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
    key = (model, precision, tile, batch_size)
    if key not in _default:
        _default[key] = Denoiser(model, precision=precision, tile=tile, batch_size=batch_size)
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
    from imageae.pipelines.folder import FolderReport, Writer, decoded_images, ensure_output_dir, plan_outputs
    from imageae.pipelines.folder import progress_bar

    if ext is not None:
        output_format(None, ext)  # validates the extension up front
    report = FolderReport()
    tasks = plan_outputs(inputs, output, suffix_for=_suffix_for(ext), overwrite=overwrite, report=report)
    ensure_output_dir(output)
    denoiser = Denoiser(model, precision=precision, tile=tile, batch_size=batch_size)
    writer = Writer(report)
    bar = progress_bar(len(tasks), desc="denoise", enabled=progress)
    start = time.perf_counter()
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

    try:
        for key, y in denoiser.run(items()):
            task, decoded = decoded_by_task.pop(key)
            report.pixels += decoded.pixels.shape[0] * decoded.pixels.shape[1]
            writer.submit(task, write, decoded, y)
            bar.update(1)
    except BaseException:
        writer.close(cancel=True)
        bar.close()
        raise
    writer.close()
    bar.close()
    report.seconds = time.perf_counter() - start
    return report


def _vae(model, precision="auto"):
    from imageae.runtime import with_precision

    key = ("vae", model, precision)
    if key not in _default:
        _default[key] = with_precision(registry.load_model(model, job="generate"), precision)
    return _default[key]


def generate(n, *, model="vae-digits", seed=0, temperature=1.0, sampler="gmm", precision="auto"):
    """Synthesise ``n`` new images with a VAE.

    Parameters
    ----------
    n : int
        Number of images.
    model : str
        A registered generate model (``imageae models``) or a .keras path.
    seed : int
        The same seed gives the same images.
    temperature : float
        Scales the latent standard deviation; below 1 gives cleaner, less varied images.
    sampler : str
        "gmm" (default) draws z from the Gaussian mixture fitted to the training latents and
        shipped in the model (closer to the data); "normal" from the N(0, I) prior.

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
    from imageae.generation import decode_latents, sample_latents

    if not isinstance(n, (int, np.integer)) or isinstance(n, bool):
        raise TypeError(f"n must be an integer, got {type(n).__name__}")
    vae = _vae(model, precision)
    z = sample_latents(vae, int(n), seed=seed, temperature=temperature, sampler=sampler)
    return decode_latents(vae, z)


def _vae_input(vae, image):
    """One image as the VAE's input: centre-cropped, resized, grey/colour matched; uint8."""
    from imageae.data.arrays import _fit

    x, _ = _as_array(image)
    x = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    return _fit(x[None], vae.image_size, vae.channels, None)


def reconstruct(images, *, model="vae-digits"):
    """Encode and decode images with a VAE (posterior mean); returns uint8 (n, S, S, C)."""
    from imageae.generation import decode_latents, encode_images

    vae = _vae(model)
    x = np.concatenate([_vae_input(vae, im) for im in images])
    return decode_latents(vae, encode_images(vae, x))


def interpolate(image_a, image_b, *, steps=8, model="vae-digits"):
    """Images on a latent path from ``image_a`` to ``image_b``; uint8 (steps, S, S, C)."""
    from imageae.generation import decode_latents, encode_images, interpolate_latents

    if int(steps) < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    vae = _vae(model)
    z = encode_images(vae, np.concatenate([_vae_input(vae, image_a), _vae_input(vae, image_b)]))
    return decode_latents(vae, interpolate_latents(z[0], z[1], steps))
