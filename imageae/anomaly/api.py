"""The anomaly job's public API: :class:`AnomalyDetector` and :func:`score_folder`.

A convolutional autoencoder (:class:`imageae.models.autoencoder.ConvAutoencoder`) trained on
normal images only reconstructs what it has seen and fails on what it has not. Each image gets

- a pixel error map: the squared error ("l2"), or one minus the local SSIM of image and
  reconstruction ("ssim", the AE-SSIM of Bergmann et al. 2019, VISAPP), or both;
- a latent term ("latent"): the Mahalanobis distance of the image's code from a Gaussian
  fitted to the codes of the training images;

and a score that is the sum of the chosen terms, each standardised by its mean and standard
deviation on held-out normal images, so higher is more anomalous and 0 is a typical normal
image. The decision threshold is the ``1 - false_positive_rate`` quantile of the held-out
normal images' scores. All of it (scoring, statistics, threshold, latent Gaussian) is stored
in the model's ``calibration``, so one .keras file is the whole detector.

Images of about the training images' size are resized to the model's side (each image is one
object: a cell, a part, a digit); the heat map is the pixel error map brought back to the
image's own size. Images at least 1.5 times larger than the training images are scored in
windows of the training images' size (see :meth:`AnomalyDetector.score`).

Score terms (:mod:`imageae.anomaly.scoring`): ``l2`` (mean squared error), ``ssim``, ``l2max``
and ``l2wide`` (the largest local mean of the squared error, Gaussian sigma side/32 and
side/16: defects small against the image), ``zmax`` (the squared error standardised pixel by
pixel by its mean and spread on the training images, then its largest local mean: places the
model always reconstructs badly stop dominating), ``l2dark`` (``l2wide`` of only the pixels
darker than their reconstruction), ``latent``, ``intensity`` and ``darker`` (the image's mean
intensity against the training images', either way or one-sided). The default,
``scoring="auto"``, chooses the combination from the normal images alone, on turned copies of
them or on drawn defects (:func:`imageae.anomaly.scoring.choose_scoring`).
"""

from pathlib import Path

import numpy as np

from imageae import registry
from imageae.anomaly.scoring import DEFAULT_SCORING, combine, raw_terms, to_model_input
from imageae.checks import check_int
from imageae.data.convert import _as_array


class AnomalyDetector:
    """An autoencoder anomaly detector: fit on normal images, score any images.

    Parameters
    ----------
    model : str, path or keras.Model or None
        A registered anomaly model ("anomaly-elpv"), a .keras file written by ``save`` or by
        ``imageae train anomaly``, a loaded :class:`ConvAutoencoder`, or None for a detector to
        :meth:`fit`.
    batch_size : int
        Images per model call.

    Attributes
    ----------
    threshold : float
        Scores above it are anomalous (the held-out normal images' ``1 - false_positive_rate``
        quantile).

    Examples
    --------
    >>> import numpy as np, imageae
    >>> rng = np.random.default_rng(0)
    >>> normal = [np.full((32, 32), 0.5, np.float32) + rng.normal(0, 0.02, (32, 32)).astype(np.float32)
    ...           for _ in range(64)]
    >>> detector = imageae.AnomalyDetector().fit(normal, steps=200)        # doctest: +SKIP
    >>> scores, maps = detector.score([normal[0], np.ones((32, 32), np.float32)])  # doctest: +SKIP
    >>> bool(scores[1] > scores[0])                                         # doctest: +SKIP
    True
    """

    def __init__(self, model=None, *, batch_size=64):
        check_int("batch_size", batch_size, minimum=1)
        self.batch_size = int(batch_size)
        self.model = None
        if model is not None:
            if isinstance(model, (str, Path)) and Path(model).suffix == ".tflite":  # an exported detector
                from imageae.anomaly.litert import LiteRTAutoencoder

                model = LiteRTAutoencoder(model)
            named = isinstance(model, (str, Path)) or not (hasattr(model, "encoder") or hasattr(model, "_imageae_forward"))
            self.model = registry.load_model(str(model), job="anomaly") if named else model
            if not getattr(self.model, "calibration", None):
                raise ValueError(f"{model} is an autoencoder without a calibration (threshold, score statistics): "
                                 "train it with 'imageae train anomaly' or AnomalyDetector().fit")

    # -- fitting ---------------------------------------------------------------------------
    def fit(self, images, *, size=None, channels=None, validation_fraction=0.1, false_positive_rate=0.01,
            scoring=DEFAULT_SCORING, progress=False, **options):
        """Train on normal ``images`` (arrays or PIL images) and calibrate the threshold.

        ``options`` are fields of :class:`imageae.anomaly.train.AnomalyTrainConfig` (``steps``,
        ``code_size``, ``sparsity``, ``contractive_weight``, ``max_seconds``, ``seed`` ...).
        Returns self.
        """
        import tempfile

        from imageae.anomaly.train import AnomalyTrainConfig, fit_autoencoder

        arrays = [_float_image(image, k) for k, image in enumerate(images)]
        if len(arrays) < 2:
            raise ValueError(f"fit needs at least 2 normal images (some are held out to set the threshold), "
                             f"got {len(arrays)}")
        config = AnomalyTrainConfig(data=[], output="", size=size or 0, channels=channels or 0,
                                    validation_fraction=validation_fraction, false_positive_rate=false_positive_rate,
                                    scoring=scoring, **options)
        with tempfile.TemporaryDirectory(prefix="imageae-anomaly-") as checkpoint_dir:
            self.model, _ = fit_autoencoder(arrays, config, checkpoint_dir=checkpoint_dir, progress=progress)
        return self

    # -- scoring ---------------------------------------------------------------------------
    @property
    def calibration(self):
        self._check_fitted()
        return self.model.calibration

    @property
    def threshold(self):
        return self.calibration["threshold"]

    def _check_fitted(self):
        if self.model is None:
            raise ValueError("this AnomalyDetector has no model yet: call fit(images) or give a model "
                             "(AnomalyDetector('anomaly-elpv') or a .keras path)")

    def score_arrays(self, images):
        """Scores (N,) and maps (N, S, S) at the model's side, for float (H, W, C) images on 0..1."""
        self._check_fitted()
        m = self.model
        x = np.stack([to_model_input(image, m.image_size, m.channels) for image in images]) if len(images) else \
            np.zeros((0, m.image_size, m.image_size, m.channels), np.float32)
        cal = m.calibration
        raw, maps, _ = raw_terms(m, x, batch_size=self.batch_size, terms=tuple(cal["terms"]), calibration=cal)
        scores = combine(raw, cal)
        heat = sum(maps[t] / cal["map_scale"][t] for t in cal["map_terms"])
        return np.asarray(scores, np.float64), np.asarray(heat, np.float32)

    def score(self, images, *, tile="auto"):
        """Anomaly scores and error maps.

        Parameters
        ----------
        images : sequence of numpy.ndarray or PIL.Image.Image
            (H, W) or (H, W, C) images, uint8, uint16 or float on 0..1, of any sizes (a
            single image counts as a sequence of one only when passed in a list).
        tile : {"auto", False}
            "auto": an image with a side at least 1.5 times the training images' (``source_side``
            in the calibration, recorded since the tiled scoring came in) is cut into windows
            of the training images' size side by side (:func:`tile_windows`), each scored as one image; its score
            is the highest window's and its map the highest error over the windows, so a
            defect keeps the scale the model learned instead of being shrunk with the whole
            image. Note that the threshold is per window: a large normal image has more
            chances to cross it. False: every image is resized to the model's side.

        Returns
        -------
        scores : numpy.ndarray
            float64 (N,): higher is more anomalous; above :attr:`threshold` is anomalous.
        maps : list of numpy.ndarray
            float32 (H, W) per image, at the image's own size: the pixel error, on the scale
            where 1 is the 99.9th percentile of held-out normal images' pixels.
        """
        import cv2

        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and (images.ndim == 2 or images.shape[-1] in (1, 2, 3, 4)):
            raise ValueError(f"score takes a sequence of images; got one array of shape {images.shape}: "
                             "pass [image] (or a stacked (N, H, W[, C]) array)")
        if tile not in ("auto", False):
            raise ValueError(f"tile must be 'auto' or False, got {tile!r}")
        arrays = [_float_image(image, k) for k, image in enumerate(images)]
        source = self.calibration.get("source_side") if tile == "auto" else None
        pieces, owners = [], []  # the model's inputs, and for each its (image, top, left, side) or (image,)
        for k, a in enumerate(arrays):
            if source and max(a.shape[:2]) >= 1.5 * source:
                side = int(min(source, a.shape[0], a.shape[1]))
                for top, left in tile_windows(a.shape[:2], side):
                    pieces.append(a[top : top + side, left : left + side])
                    owners.append((k, top, left, side))
            else:
                pieces.append(a)
                owners.append((k,))
        piece_scores, heat = self.score_arrays(pieces)
        high = self.calibration["map_high"]
        scores = np.full(len(arrays), -np.inf)
        maps = [None] * len(arrays)
        for owner, s, h in zip(owners, piece_scores, heat):
            k = owner[0]
            scores[k] = max(scores[k], s)
            if len(owner) == 1:
                a = arrays[k]
                maps[k] = cv2.resize(h / high, (a.shape[1], a.shape[0]), interpolation=cv2.INTER_LINEAR) \
                    if h.shape != a.shape[:2] else h / high
            else:
                _, top, left, side = owner
                if maps[k] is None:
                    maps[k] = np.zeros(arrays[k].shape[:2], np.float32)
                window = maps[k][top : top + side, left : left + side]
                np.maximum(window, cv2.resize(h / high, (side, side), interpolation=cv2.INTER_LINEAR), out=window)
        return scores, maps

    def predict(self, images):
        """True for each anomalous image (score above the threshold)."""
        return self.score(images)[0] > self.threshold

    # -- files -----------------------------------------------------------------------------
    def save(self, path):
        """Write the detector (weights and calibration) as one .keras file, atomically."""
        import os

        self._check_fitted()
        path = Path(path)
        if path.suffix != ".keras":
            raise ValueError(f"save writes a .keras file; got {str(path)!r}")
        partial = path.with_name(f".{path.stem}.partial.keras")
        self.model.save(partial)
        os.replace(partial, path)
        return path

    @classmethod
    def load(cls, path, **kwargs):
        """The detector saved at ``path`` (or a registered name)."""
        return cls(str(path), **kwargs)


def tile_windows(shape, side):
    """Top-left corners of ``side`` x ``side`` windows that cover an (H, W) image side by side
    from the top-left corner (the last row and column of windows end at the edge, overlapping
    their neighbours). Not overlapping by half, as the other jobs' tiles do: a detector of
    whole objects (cells, parts) sees normal inputs only in windows on the objects' grid, and a
    window straddling four cells scored as an anomaly in the tests."""

    def starts(length):
        if length <= side:
            return [0]
        return sorted(set(range(0, length - side, side)) | {length - side})

    return [(top, left) for top in starts(shape[0]) for left in starts(shape[1])]


def _float_image(image, index):
    try:
        x, _ = _as_array(image)
    except (ValueError, TypeError) as error:
        raise type(error)(f"image {index}: {error}") from None
    return x


_LUT = None


def overlay(image, heat, *, alpha=0.6):
    """An RGB uint8 picture: the image in grey with the heat map (0..1 = 0..full) in colour
    (matplotlib's 'inferno') over it; pixels with little error stay plain grey."""
    global _LUT
    if _LUT is None:  # 256 colours looked up by index: 5x faster than calling the colour map per pixel
        import matplotlib

        _LUT = matplotlib.colormaps["inferno"](0.25 + 0.75 * np.linspace(0, 1, 256))[:, :3].astype(np.float32)
    x = np.asarray(image, np.float32)
    if x.ndim == 3:
        x = x[..., :3].mean(axis=-1) if x.shape[-1] >= 3 else x[..., 0]
    h = np.clip(np.asarray(heat, np.float32), 0.0, 1.0)
    colour = _LUT[np.round(h * 255).astype(np.uint8)]
    a = (alpha * h)[..., None]
    out = np.clip(x, 0, 1)[..., None] * (1 - a) + colour * a
    return np.round(out * 255.0).astype(np.uint8)


def score_folder(inputs, output_dir, *, model, batch_size=64, heatmaps=True, overwrite=False, progress=None):
    """Score every image under ``inputs``: ``output_dir/scores.csv`` (path, score, anomalous,
    threshold), a heat map per image under ``output_dir/heatmaps/`` (the input tree mirrored,
    PNG) and ``output_dir/summary.json``. Returns the :class:`FolderReport` (its ``entries``
    hold each scored file's row). Unreadable files are named in ``report.failed``."""
    import csv
    import io
    import json

    from imageae.data.io import write_bytes_atomic
    from imageae.pipelines.folder import FolderReport, decoded_images, ensure_output_dir, plan_outputs, running_job

    detector = model if isinstance(model, AnomalyDetector) else AnomalyDetector(model, batch_size=batch_size)
    report = FolderReport()
    output_dir = Path(output_dir)
    tasks = plan_outputs(inputs, output_dir / "heatmaps", suffix_for=lambda p: p.suffix + ".png",
                         overwrite=True, report=report)
    for name in ("scores.csv", "summary.json"):
        if (output_dir / name).exists() and not overwrite:
            raise FileExistsError(f"{output_dir / name} exists: choose another -o folder or pass --overwrite")
    ensure_output_dir(output_dir)
    rows = []
    pending = []

    def write_heatmap(target, image, heat):  # on the writer's threads, beside the next batch's scoring
        import cv2

        # PNG at zlib level 1 through OpenCV: 19 ms for a 300x300 overlay instead of Pillow's
        # 105 ms at level 6, for files about 15 % larger (heat maps are previews, not archives).
        ok, encoded = cv2.imencode(".png", np.ascontiguousarray(overlay(image, heat)[..., ::-1]),
                                   [cv2.IMWRITE_PNG_COMPRESSION, 1])
        if not ok:
            raise OSError("OpenCV could not encode the heat map as PNG")
        write_bytes_atomic(target, encoded.tobytes())

    def flush(writer):
        scores, maps = detector.score([x for _, x in pending])
        for (task, x), s, heat in zip(pending, scores, maps):
            rows.append({"path": str(task.source), "score": float(s), "anomalous": bool(s > detector.threshold)})
            report.pixels += x.shape[0] * x.shape[1]
            if heatmaps:
                writer.submit(task, write_heatmap, x, heat)
            else:
                report.written.append(str(task.source))
        pending.clear()

    with running_job(report, len(tasks), desc="scoring", progress=progress) as (writer, bar):
        for task, decoded, error in decoded_images(tasks):
            if error is not None:
                report.failed.append((str(task.source), error))
            else:
                pending.append((task, decoded.to_float()))
                if len(pending) >= detector.batch_size:
                    flush(writer)
            bar.update(1)
        if pending:
            flush(writer)
    report.entries = rows
    buffer = io.StringIO()
    table = csv.DictWriter(buffer, fieldnames=["path", "score", "anomalous"], lineterminator="\n")
    table.writeheader()
    for row in rows:
        table.writerow({**row, "score": f"{row['score']:.6g}", "anomalous": int(row["anomalous"])})
    write_bytes_atomic(output_dir / "scores.csv", buffer.getvalue().encode())
    flagged = sum(r["anomalous"] for r in rows)
    summary = {"scored": len(rows), "anomalous": flagged, "failed": len(report.failed),
               "threshold": detector.threshold, "false_positive_rate": detector.calibration["false_positive_rate"],
               "scoring": detector.calibration["scoring"],
               "failures": [{"path": p, "reason": r} for p, r in report.failed]}
    write_bytes_atomic(output_dir / "summary.json", (json.dumps(summary, indent=2) + "\n").encode())
    report.notes.append(f"{flagged} of {len(rows)} image(s) flagged anomalous (score above {detector.threshold:.3g}); "
                        f"scores in {output_dir / 'scores.csv'}")
    return report
