"""The denoise job's public API: :func:`denoise`, :func:`denoise_folder` and :class:`Denoiser`."""

from pathlib import Path

import numpy as np

from imageae import registry
from imageae.checks import check_int
from imageae.data.convert import _as_array
from imageae.data.io import WRITE_FORMATS, from_float, output_format, write_image


def _pick_model(model, channels, strength="auto"):
    """The model "auto" means for an image of ``channels``: the grey model for grey images,
    unless a strength is set, which only the colour model takes (grey then runs through it)."""
    if model in (None, "auto"):
        return "denoise-grey" if channels == 1 and strength == "auto" else "denoise-colour"
    return model


def check_strength(strength):
    """``strength`` as the denoiser takes it: "auto" or a noise level on the 0..255 scale."""
    if isinstance(strength, str) and strength.strip().lower() == "auto":
        return "auto"
    try:
        value = float(strength)
    except (TypeError, ValueError):
        raise ValueError(f"strength must be 'auto' or a noise level on the 0..255 scale (e.g. 5 for faint "
                         f"camera noise, 25 for heavy noise), got {strength!r}") from None
    if not 0.0 <= value <= 255.0 or value != value:
        raise ValueError(f"strength must be between 0 and 255 (a noise level on the 0..255 scale), got {strength!r}")
    return value


#: Side of the crops the level is estimated on, and at most how many of them, for "auto".
_ESTIMATE_CROP, _ESTIMATE_CROPS = 256, 16
#: Images smaller than this a side are mirror-padded to it first: on a 16x16 patch with noise of
#: sigma 12 the estimator read 42 unpadded (its convolutions' zero borders), 13.5 padded.
_ESTIMATE_MIN = 64


def estimate_noise_level(model, x):
    """The noise level (0..1 scale) ``model``'s estimator finds in the (H, W, C) image ``x``:
    the median over up to 16 crops of 256 px on a regular grid (the whole image when smaller),
    so a large image costs the same as a small one; images under 64 px a side are mirror-padded
    to 64 first; kept within [0.5, 255] / 255."""
    h, w = x.shape[:2]
    side = _ESTIMATE_CROP
    if h < _ESTIMATE_MIN or w < _ESTIMATE_MIN:  # mirrored, so the estimator's zero borders do not dominate
        x = np.pad(x, ((0, max(0, _ESTIMATE_MIN - h)), (0, max(0, _ESTIMATE_MIN - w)), (0, 0)), mode="symmetric")
        h, w = x.shape[:2]
    if h <= side or w <= side:
        crops = x[None]
    else:
        per_side = int(np.ceil(np.sqrt(_ESTIMATE_CROPS)))
        tops = np.unique(np.linspace(0, h - side, per_side).astype(int))
        lefts = np.unique(np.linspace(0, w - side, per_side).astype(int))
        crops = np.stack([x[t : t + side, l : l + side] for t in tops for l in lefts])
    if not hasattr(model, "_imageae_estimate"):
        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            model._imageae_estimate = tf.function(lambda z: model.estimate_log_level(z), reduce_retracing=True)
        else:  # the training recipes' calibration on JAX (the GPU machines have no TensorFlow)
            model._imageae_estimate = model.estimate_log_level
    logs = np.asarray(model._imageae_estimate(np.ascontiguousarray(crops, np.float32)))
    return float(np.clip(np.exp(np.median(logs)), model.MIN_LEVEL, 1.0))


class Denoiser:
    """Loaded denoising models plus the tiled runner, reused across calls.

    Parameters
    ----------
    model : str
        "auto" (the shipped grey model for grey images, the colour one for colour images),
        a registered model name, the path of a .keras file, or the path of a .tflite file
        written by ``imageae export MODEL --format tflite`` (run by the LiteRT interpreter,
        ``pip install imageae[litert]``, with the same tiling; ``precision`` is then the file's).
    precision : str
        "auto" (bfloat16 on CPUs that have it, float16 on GPUs, float32 otherwise), or a
        Keras dtype policy name.
    tile, batch_size : int
        Window size for large images and windows per model call.
    self_ensemble : bool
        Denoise each image in its 8 flips and rotations and average the results, turned back:
        about 8 times the work for a little more PSNR (see the README's table).
    strength : "auto" or float
        For a model that takes a noise level (``denoise-colour``, the default for colour
        images): the level to remove, as a standard deviation on the 0..255 scale (higher
        removes more, and more detail with it), or "auto" to estimate it per image (at least the
        model's ``auto_level_floor``: 8 for ``denoise-colour``, see ``imageae train auto-strength``). A blind
        model (``denoise-grey``) estimates nothing and takes only "auto"; with a number and
        ``model="auto"``, grey images run through ``denoise-colour`` too.
    """

    def __init__(self, model="auto", *, precision="auto", tile=1024, batch_size=4, self_ensemble=False,
                 strength="auto"):
        check_int("tile", tile, minimum=1)
        check_int("batch_size", batch_size, minimum=1)
        self.strength = check_strength(strength)
        self.model = model
        self.precision = precision
        self.tile = tile
        self.batch_size = batch_size
        self.self_ensemble = bool(self_ensemble)
        self._runners = {}

    def runner(self, channels):
        from imageae.pipelines.engine import TiledRunner
        from imageae.runtime import with_precision

        name = _pick_model(self.model, channels, self.strength)
        if name not in self._runners and str(name).lower().endswith(".tflite"):
            from imageae.pipelines.litert import LiteRTRunner

            if self.strength != "auto":
                raise ValueError(f"{name} is a LiteRT file: it takes no strength (it estimates the level itself "
                                 f"if its model takes one). Use strength 'auto' or the .keras model")
            runner = LiteRTRunner(name, batch_size=self.batch_size)  # precision: the file's own
            if runner.job != "denoise":
                raise ValueError(f"{name} is a {runner.job} model, not a denoise model")
            self._runners[name] = runner
        if name not in self._runners:
            loaded = registry.load_model(name, job="denoise")
            if self.strength != "auto" and not getattr(loaded, "noise_level", False):
                raise ValueError(f"{name} is a blind denoiser: it takes no strength. Use --strength auto, or a "
                                 f"model that takes a noise level (denoise-colour for colour images)")
            self._runners[name] = TiledRunner(
                with_precision(loaded, self.precision), tile=self.tile, batch_size=self.batch_size
            )
        return self._runners[name]

    def _with_level(self, runner, x):
        """The noise level (0..1 scale) to give ``runner``'s model for image ``x``, or None for a
        model that takes none."""
        if not getattr(getattr(runner, "model", None), "noise_level", False):
            return None
        if self.strength != "auto":
            if x.shape[-1] == 1 and runner.channels == 3:  # grey noise copied into R, G and B
                return self.strength / 255.0 * getattr(runner.model, "grey_level_gain", 1.0)
            return self.strength / 255.0
        planes = x if x.shape[-1] == runner.channels else np.repeat(x[..., :1], runner.channels, axis=-1)
        if runner.channels == 1 and x.shape[-1] != 1:
            planes = x.mean(axis=-1, keepdims=True)
        floor = getattr(runner.model, "auto_level_floor", 0.0)  # see imageae train auto-strength
        return max(estimate_noise_level(runner.model, planes), floor)

    def run(self, items):
        """Denoise ``(key, float (H, W, C) image)`` pairs; yields ``(key, result)``.

        Consecutive images that use the same model are batched together.
        """
        if not self.self_ensemble:
            yield from self._run(items)
            return

        def transformed():
            for key, x in items:
                level = self._with_level(self.runner(x.shape[-1]), x)  # one level for all 8
                for k in range(8):
                    yield (key, k), np.ascontiguousarray(_dihedral(x, k)), level

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
        for key, x, *level in items:
            runner = self.runner(x.shape[-1])
            if group_runner is not None and runner is not group_runner:
                yield from group_runner.run(group)
                group = []
            group_runner = runner
            level = level[0] if level else self._with_level(runner, x)
            group.append((key, x) if level is None else (key, x, level))
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


_default = {}


def denoise(image, *, model="auto", strength="auto", precision="auto", tile=1024, batch_size=4, self_ensemble=False):
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
        (``imageae models``), a path to a .keras file or to an exported .tflite file.
    strength : "auto" or float
        How much noise to remove, for a model that takes a noise level (``denoise-colour``,
        the colour default): "auto" estimates it per image (at least the model's floor, 8 for
        ``denoise-colour``: faint camera noise is invisible to the estimator); a number is the noise's standard
        deviation on the 0..255 scale (about 2-8 for camera photos, 15-50 for heavy noise).
        Raise it to smooth more, lower it to keep more texture. Blind models take only "auto".
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
    strength = check_strength(strength)
    key = (model, strength, precision, tile, batch_size, self_ensemble)
    if key not in _default:
        _default[key] = Denoiser(model, precision=precision, tile=tile, batch_size=batch_size,
                                 self_ensemble=self_ensemble, strength=strength)
    [(_, y)] = list(_default[key].run([(0, x)]))
    return restore(y)


def suffix_for(ext):
    """Denoised outputs' ``path -> suffix`` rule: ``ext``, else the input's if writable, else ``.png``."""

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
    strength="auto",
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
    denoiser = Denoiser(model, precision=precision, tile=tile, batch_size=batch_size, self_ensemble=self_ensemble,
                        strength=strength)
    report = FolderReport()
    tasks = plan_outputs(inputs, output, suffix_for=suffix_for(ext), overwrite=overwrite, report=report)
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
