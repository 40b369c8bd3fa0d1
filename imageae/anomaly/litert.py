"""The anomaly detector as a LiteRT (.tflite) model: conversion and the interpreter-backed model.

``imageae export anomaly-elpv --format tflite [--quantize int8|float16|none]`` writes
``anomaly-elpv-<quantize>.tflite``: the autoencoder on a fixed batch of ``batch`` images at the
model's side, float32 images on 0..1 in, the ``code`` and the ``reconstruction`` out (int8
inside for ``quantize="int8"``). Beside it, ``anomaly-elpv-<quantize>.json`` carries what the
graph takes and the detector's calibration (``detector``: scoring terms, their statistics, the
threshold, the latent Gaussian, the heat-map scale), so the pair is the whole detector.

:class:`LiteRTAutoencoder` runs that file with the LiteRT interpreter and offers what
:class:`imageae.AnomalyDetector` uses of a Keras autoencoder (``image_size``, ``channels``,
``code_size``, ``calibration`` and the forward pass), so ``AnomalyDetector("x.tflite")`` and
``imageae anomaly score --model x.tflite`` score with the same code as the Keras model: the
error maps, the terms, their standardisation and the threshold are computed in numpy by
:mod:`imageae.anomaly.scoring` from the interpreter's code and reconstruction.

int8 needs calibration images from the model's training distribution: ``--calibration DIR``
(normal images, used as they are, resized to the model's side), or, for the shipped
anomaly-elpv (recognised by its stored calibration), the functional ELPV cells of its
training split from the ``elpv-dataset`` package.
"""

from pathlib import Path

import numpy as np

from imageae.pipelines.litert import _Reloading, fixed_batches

# Images per interpreter call, fixed in the graph: left open (None) it converts, but XNNPACK then
# leaves the graph to LiteRT's reference kernels (12 ms an image in int8 here). Measured for
# anomaly-elpv (64x64, 2 threads, shared CPU): int8 at batch 1 costs 2.6 ms an image, at batch 8
# 0.51 ms an image in a folder (the Keras model 0.54 at 64) and 5.7 ms for one image alone
# (padded to 8); int8 calls carry a large fixed cost, so folder scoring, the job's main use, wins.
BATCH = 8
# Calibration images for int8 (the ELPV training split has 1131 functional cells; 256 spread
# over it cover the cells' brightness range and take a few seconds to run).
CALIBRATION_COUNT = 256
_ELPV_MODEL = "anomaly-elpv"


def _elpv_training_cells(count):
    """``count`` float32 (300, 300) functional ELPV cells from anomaly-elpv's training split.

    The split is benchmarks/anomaly.py's ``load_elpv``: the cells of defect probability 0 in
    labels.csv order, permuted with numpy seed 0, the first 75 % for training. Only the chosen
    files are read (spread evenly over the split), not the whole data set."""
    try:
        import elpv_dataset
    except ImportError:
        return None
    from imageae.data.io import read_image

    labels = Path(elpv_dataset.__file__).parent / "data" / "labels.csv"
    data = np.genfromtxt(labels, dtype=["|S19", "<f8", "|S4"], names=["path", "probability", "type"])
    functional = np.random.default_rng(0).permutation(np.flatnonzero(data["probability"] == 0))
    train = functional[: round(0.75 * len(functional))]
    picks = train[np.linspace(0, len(train) - 1, min(count, len(train))).round().astype(int)]
    return [read_image(labels.parent / data["path"][i].decode()).to_float() for i in picks]


def _is_shipped_elpv(model):
    """True if ``model`` carries the shipped anomaly-elpv's calibration (the file or a copy).

    The converter gets the loaded model, not its name; the calibration (threshold, statistics)
    stored in the .keras is the model's fingerprint, and the card keeps the same dict."""
    from imageae import registry

    entry = registry.MODELS.get(_ELPV_MODEL)
    card = entry.card() if entry else {}
    shipped = card.get("architecture", {}).get("calibration")
    return bool(shipped) and shipped == getattr(model, "calibration", None)


def calibration_images(model, calibration=None, *, count=CALIBRATION_COUNT):
    """float32 (N, S, S, C) model inputs for int8 calibration, and a line saying what they are.

    From ``calibration`` (a folder of normal images) or, for the shipped anomaly-elpv, the
    ELPV training cells of the ``elpv-dataset`` package; ValueError saying what to give when
    neither is there."""
    from imageae.anomaly.scoring import to_model_input

    size, channels = int(model.image_size), int(model.channels)
    if calibration is not None:
        from imageae.data.io import find_images, read_image

        paths = [p for p, _ in find_images([calibration])]
        if not paths:
            raise ValueError(f"--calibration {calibration}: no images found; give a folder of normal images like "
                             "the ones the detector was trained on")
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, min(count, len(paths))).round().astype(int)]
        images = []
        for path in dict.fromkeys(paths):
            try:
                images.append(read_image(path).to_float())
            except (OSError, ValueError) as error:  # a calibration set must be whole: say which file
                raise ValueError(f"--calibration: cannot read {path}: {error}") from None
        source = f"{len(images)} images from {calibration}"
    else:
        images = _elpv_training_cells(count) if _is_shipped_elpv(model) else None
        if images is None:
            shipped = _is_shipped_elpv(model)
            raise ValueError(
                "int8 calibration needs normal images like the ones the detector was trained on: "
                + ("install the ELPV cells anomaly-elpv was trained on (pip install elpv-dataset) or give "
                   "--calibration DIR" if shipped else "give --calibration DIR (a folder of them)")
                + "; --quantize float16 or none need no calibration"
            )
        source = (f"{len(images)} functional ELPV cells of anomaly-elpv's training split (elpv-dataset; "
                  "benchmarks/anomaly.py load_elpv, numpy seed 0, 75 %)")
    x = np.stack([to_model_input(image, size, channels) for image in images]).astype(np.float32)
    return x, source


def autoencoder_tflite(model, *, quantize="int8", calibration=None, tile=None, calibration_count=CALIBRATION_COUNT):
    """Convert a calibrated ConvAutoencoder (an anomaly detector) to a .tflite.

    The graph takes float32 (``BATCH``, S, S, C) images on 0..1 and gives ``code`` (``BATCH``,
    code_size) and ``reconstruction`` (``BATCH``, S, S, C); the sidecar carries the detector's
    calibration. ``calibration`` is a folder of normal images for int8 (see
    :func:`calibration_images`).

    Returns ``(tflite bytes, metadata dict)``.
    """
    import keras
    import tensorflow as tf

    from imageae.export import convert_to_tflite

    if tile is not None:
        raise ValueError(f"--tile applies to the denoisers; an anomaly detector scores whole images resized to its "
                         f"side ({model.image_size} pixels), so leave it out")
    if not getattr(model, "calibration", None):
        raise ValueError("this autoencoder has no calibration (threshold, score statistics), so it is not a "
                         "detector yet: train it with 'imageae train anomaly' or AnomalyDetector().fit")
    if calibration is not None and quantize != "int8":
        raise ValueError(f"--calibration applies to --quantize int8 only (got --quantize {quantize})")
    size, channels, code_size = int(model.image_size), int(model.channels), int(model.code_size)
    representative, source = None, None
    if quantize == "int8":  # read first: a missing calibration set fails before the slow conversion
        x, source = calibration_images(model, calibration, count=calibration_count)
        representative = [x[i : i + BATCH] for i in range(0, len(x) - BATCH + 1, BATCH)]

    def run(images):
        code = model.encode(images)
        return {"code": tf.cast(code, tf.float32), "reconstruction": tf.cast(model.decode(code), tf.float32)}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", run,
                         input_signature=[tf.TensorSpec([BATCH, size, size, channels], tf.float32, name="images")])
    data = convert_to_tflite(archive, quantize=quantize, representative_inputs=lambda: representative)
    meta = {
        "format": "imageae-litert",
        "job": "anomaly",
        "class": type(model).__name__,
        "graph": "images float32 (batch, size, size, channels) on 0..1 -> code float32 (batch, code_size), "
                 "reconstruction float32 (batch, size, size, channels) on 0..1 (signature serving_default)",
        "image_size": size,
        "channels": channels,
        "code_size": code_size,
        "batch": BATCH,
        "quantize": quantize,
        "input_dtype": "float32",
        "output_dtype": "float32",
        "calibration": source,
        # Everything the scores are made of beyond the graph (imageae.anomaly.scoring): terms,
        # their mean and std on held-out normal images, threshold, latent Gaussian, heat-map scale.
        "detector": model.calibration,
    }
    return data, meta


class LiteRTAutoencoder(_Reloading):
    """An exported anomaly detector (``.tflite`` and its sidecar) standing in for the Keras model.

    Has what :class:`imageae.AnomalyDetector` and :func:`imageae.anomaly.scoring.raw_terms`
    use: ``image_size``, ``channels``, ``code_size``, ``calibration`` (the sidecar's
    ``detector``) and the forward pass (``_imageae_forward``, the hook scoring's ``_forward``
    calls: codes and reconstructions as numpy). The file is reloaded when it changes.

    Parameters
    ----------
    path : path
        The ``.tflite`` file; its sidecar ``.json`` must sit beside it.
    num_threads : int, optional
        LiteRT interpreter threads (default: LiteRT's own choice).

    Examples
    --------
    >>> import imageae
    >>> detector = imageae.AnomalyDetector("edge/anomaly-elpv-int8.tflite")  # doctest: +SKIP
    >>> scores, maps = detector.score(cells)                                 # doctest: +SKIP
    """

    jobs = ("anomaly",)

    def __init__(self, path, *, num_threads=None):
        self._open(path, num_threads)

    def _configure(self, meta, interpreter):
        runner = interpreter.get_signature_runner("serving_default")
        shape = tuple(int(s) for s in runner.get_input_details()["images"]["shape"])
        expected = (int(meta["batch"]), int(meta["image_size"]), int(meta["image_size"]), int(meta["channels"]))
        if shape != expected:
            raise ValueError(f"{self.path}: input shape {shape} does not match its sidecar's {expected}")
        self._runner = runner
        self.batch = int(meta["batch"])
        self.image_size, self.channels = int(meta["image_size"]), int(meta["channels"])
        self.code_size = int(meta["code_size"])
        self.calibration = meta["detector"]

    def _imageae_forward(self, x):
        """Codes float32 (N, code_size) and reconstructions float32 (N, S, S, C) of a batch."""
        self.refresh()
        x = np.asarray(x, np.float32)
        codes = np.empty((len(x), self.code_size), np.float32)
        recon = np.empty(x.shape, np.float32)
        for i, rows, chunk in fixed_batches(x, self.batch):
            out = self._runner(images=chunk)
            codes[i : i + rows] = out["code"][:rows]
            recon[i : i + rows] = out["reconstruction"][:rows]
        return codes, recon

    def save(self, path):
        """Refused: the .tflite and its .json already are the whole detector (AnomalyDetector.save
        writes a .keras file, which needs the Keras model)."""
        raise ValueError(f"{self.path} is a LiteRT export: it cannot be saved as a .keras file; copy the .tflite "
                         "with its .json, or save the .keras detector it was exported from")

    def __repr__(self):
        return f"LiteRTAutoencoder({str(self.path)!r}, quantize={self.meta.get('quantize')!r})"
