"""SavedModels for TensorFlow Serving: every shipped model, usable without imageae.

``export_saved_model(model, directory, version=N)`` writes TF Serving's layout
``directory/<model name>/<N>/`` with Keras 3's :class:`keras.export.ExportArchive`. The folder
is built under a temporary name beside the target and renamed into place, so a server that
watches ``directory/<model name>`` never sees a half-written version.

Each job defines its own signatures (``imageae/<job>/export.py``); this module finds them by
the model's class in :data:`imageae.registry.SERVING_SIGNATURES` and imports no job.

Signatures (inputs and outputs are named; outputs whose name ends in ``_bytes`` are
base64-encoded by TF Serving's REST API):

denoiser
    ``serving_default``: ``images_bytes`` (string [N], encoded PNG/JPEG/BMP/GIF, any sizes and
    formats mixed) -> ``denoised_bytes`` (string [N], 8-bit PNG). Decoding is TensorFlow's:
    8-bit, no EXIF orientation, no alpha; use the Python package for 16-bit or alpha.
    ``denoise``: ``images`` (float32 [N, H, W, C] on 0..1) -> ``denoised`` (float32).
codec (the transforms; the entropy coding stays with the client, see :mod:`imageae.codec.serving`)
    ``analysis``: ``images`` (uint8 [1, H, W, 3], one image of any size; grey replicated to
    RGB by the client), ``quality`` (int32 scalar, 1..Q) -> ``z_symbols``, ``y_symbols`` and
    ``scale_indexes`` (int32 [1, h, w, C]): the integers an ``.iae`` file stores, and the
    Gaussian table of each y symbol;
    ``scale_indexes``: ``z_symbols``, ``quality`` -> ``scale_indexes`` (what a decoder needs
    before it can read the y symbols);
    ``synthesis``: ``y_symbols``, ``z_symbols``, ``quality``, ``height``, ``width`` (int32) ->
    ``images`` (float32 [1, height, width, 3] on 0..1; x 255 and round for uint8, average the
    channels first for a grey file, as :func:`imageae.codec.synthesize_image` does);
    ``z_tables``: no input -> ``z_cdf_tables`` (int32 [num_filters, L], each row a 16-bit
    frequency table, zero-padded), ``z_table_lengths``, ``z_offsets`` (int32 [num_filters]).
VAE
    ``generate``: ``seed`` (int64), ``count`` (int32), ``temperature`` (float32) ->
    ``images_bytes`` (string [count], PNG), sampled from the model's latent mixture exactly as
    ``imageae.generate(..., sampler="gmm")`` does; ``generate_prior`` the same from N(0, I);
    ``encode``: ``images`` (float32 [N, S, S, C]) -> ``z_mean``, ``z_log_var``;
    ``decode``: ``z`` (float32 [N, latent_dim]) -> ``images`` (float32 on 0..1).
    Everything runs in float32 and in model calls of the same fixed size as the Python API's
    (whose VAE precision is float32 unless asked otherwise), so for a seed the served images
    are ``imageae.generate``'s byte for byte, and ``encode``/``decode`` give
    ``imageae.reconstruct``'s numbers, on the same machine and TensorFlow build. (Another CPU
    or a GPU may round a float32 sum differently: then a pixel can differ by one grey level.)
digit classifier (the feature space of the digit FID/KID benchmark)
    ``serving_default``: ``images`` (float32 [N, 28, 28, 1] on 0..1, white digit on black as
    in MNIST) -> ``logits``, ``probabilities`` (float32 [N, 10]), ``labels`` (int32 [N]) and
    ``features`` (float32 [N, 128], the FID/KID features).
"""

import importlib
import os
import shutil
import tempfile
from pathlib import Path


def export_saved_model(model, directory, *, version=1, name=None):
    """Export a shipped model (name) or a .keras file for TensorFlow Serving.

    Parameters
    ----------
    model : str
        A registered model name (``imageae models``) or a .keras path.
    directory : path
        The model base path; the export goes to ``directory/<name>/<version>/``.
    version : int
        TF Serving version number; an existing version is never overwritten.
    name : str, optional
        Folder name under ``directory`` (default: the model's name or the file's stem).

    Returns
    -------
    pathlib.Path
        The written version folder.

    Examples
    --------
    >>> import imageae
    >>> imageae.export_saved_model("denoise-grey", "/tmp/serving", version=1)  # doctest: +SKIP
    PosixPath('/tmp/serving/denoise-grey/1')
    """
    from imageae import registry
    from imageae.runtime import with_precision

    if int(version) < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    entry = registry.MODELS.get(model)
    path = registry.resolve(model, job=entry.job) if entry else registry.resolve(model, job=None)
    loaded = with_precision(registry.load_model(str(path), job=entry.job if entry else None), "float32")
    signatures = registry.SERVING_SIGNATURES.get(type(loaded).__name__)
    if signatures is None:
        raise ValueError(f"{path}: cannot export a {type(loaded).__name__} (no serving signatures defined)")
    # The signatures live with their job; found by name, so this core module imports no job.
    module, function = signatures.split(":")
    archive = getattr(importlib.import_module(module), function)(loaded)
    target = Path(directory) / (name or (entry.name if entry else Path(path).stem)) / str(int(version))
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another --version")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        archive.write_out(str(staging), verbose=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from a server user
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


TFLITE_QUANTIZE = ("int8", "float16", "none")


def export_tflite(model, directory, *, quantize="int8", calibration=None, tile=None, name=None):
    """Export a model as a LiteRT (TensorFlow Lite) flatbuffer for edge devices.

    Writes ``directory/<name>.tflite`` and ``directory/<name>.json``, which says what the fixed
    graph takes: for a denoiser its window ``tile``, the ``margin`` and the model's ``stride``
    (what the tiled runner needs); for a VAE the decoder's batch, latent size, output shape and
    latent mixture (what :func:`imageae.generate` needs to sample); for an anomaly detector its
    batch, side and whole calibration (what :class:`imageae.AnomalyDetector` needs to score).
    Supported: the denoisers, the VAE decoders and the anomaly detectors
    (:data:`imageae.registry.TFLITE_EXPORTERS`).

    Parameters
    ----------
    model : str
        A registered model name or a .keras path.
    directory : path
        Output folder (created).
    quantize : {"int8", "float16", "none"}
        "int8": full-integer post-training quantisation (float32 inputs and outputs, int8
        inside), calibrated on noisy windows (denoisers) or on latents from the model's own
        samplers (VAEs); "float16": float16 weights; "none": float32.
    calibration : path, optional
        Denoisers: folder of (noisy) images for int8 calibration; default the checkout's ``data/``.
    tile : int, optional
        Denoisers: the fixed input window (default 512, rounded up to the model's stride).
    name : str, optional
        File stem (default ``<model>-<quantize>``).

    Returns
    -------
    pathlib.Path
        The written .tflite file.
    """
    from imageae import registry
    from imageae.runtime import with_precision

    if quantize not in TFLITE_QUANTIZE:
        raise ValueError(f"quantize must be one of {', '.join(TFLITE_QUANTIZE)}, got {quantize!r}")
    if calibration is not None and not Path(calibration).is_dir():
        raise ValueError(f"--calibration {calibration}: not a folder of images")
    entry = registry.MODELS.get(model)
    path = registry.resolve(model, job=entry.job if entry else None)
    loaded = with_precision(registry.load_model(str(path), job=entry.job if entry else None), "float32")
    converter = registry.TFLITE_EXPORTERS.get(type(loaded).__name__)
    if converter is None:
        supported = ", ".join(m.name for m in registry.MODELS.values()
                              if registry._JOB_CLASSES.get(m.job) in registry.TFLITE_EXPORTERS)
        classes = " or ".join(registry.TFLITE_EXPORTERS)
        raise ValueError(
            f"{model}: cannot export a {type(loaded).__name__} as tflite yet; --format tflite supports "
            f"{supported} (or a .keras {classes}). Use --format savedmodel for this model."
        )
    module, function = converter.split(":")
    options = {k: v for k, v in (("calibration", calibration), ("tile", tile)) if v is not None}
    from imageae.pipelines.litert import quiet_native_logs

    with quiet_native_logs():  # the converter's C++ log lines
        data, meta = getattr(importlib.import_module(module), function)(loaded, quantize=quantize, **options)
    stem = name or f"{entry.name if entry else Path(path).stem}-{quantize}"
    meta["model"] = entry.name if entry else str(path)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{stem}.tflite"
    from imageae.data.io import write_bytes_atomic

    write_bytes_atomic(target, data)
    write_bytes_atomic(target.with_suffix(".json"), (_sidecar_json(meta) + "\n").encode())
    return target


def convert_to_tflite(archive, *, quantize, representative_inputs=None):
    """The ``.tflite`` bytes of a Keras ``ExportArchive``'s ``serving_default``, quantised as ``quantize`` says.

    The job exporters (:data:`imageae.registry.TFLITE_EXPORTERS`) build the archive on a fixed
    input shape; this writes it out as a SavedModel in a temporary folder (removed after) and
    runs the TFLite converter with one set of settings for every job: ``"int8"`` full-integer
    post-training quantisation (float32 inputs and outputs, int8 inside), calibrated on the
    arrays ``representative_inputs()`` returns, one model input each (called only for int8,
    after the SavedModel is written); ``"float16"`` float16 weights; ``"none"`` float32.
    :func:`export_tflite` runs the exporters under :func:`~imageae.pipelines.litert.quiet_native_logs`,
    which keeps the converter's C++ log lines off the terminal.
    """
    import shutil

    import tensorflow as tf

    folder = tempfile.mkdtemp(prefix="imageae-tflite-")
    try:
        archive.write_out(folder, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(folder)
        if quantize == "int8":
            inputs = representative_inputs()
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.representative_dataset = lambda: ([x] for x in inputs)
            converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        elif quantize == "float16":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
            converter.target_spec.supported_types = [tf.float16]
        return converter.convert()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _sidecar_json(value, indent=""):
    """``json.dumps(value, indent=2)``, but a list of numbers on one line (a VAE's mixture has
    160 x 128 of them: one per line would make the sidecar most of the export's size)."""
    import json

    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(str(k))}: {_sidecar_json(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and value and not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
        return "[\n" + ",\n".join(inner + _sidecar_json(v, inner) for v in value) + f"\n{indent}]"
    return json.dumps(value)
