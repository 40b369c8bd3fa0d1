"""Beam ``ModelHandler``s over imageae's own engine, one per job.

Beam's ``tensorflow_inference`` handlers import tensorflow_hub and cannot load Keras 3 models
(apache/beam#30616); these load imageae's models by registry name or ``.keras`` path, as the
local jobs do, and run them through the same code:

- :class:`DenoiseModelHandler`: :class:`imageae.denoise.api.Denoiser`, whose ``TiledRunner``
  pads each image to the model's stride, cuts large ones into overlapping windows and stacks
  windows of equal shape (from one image or several in the batch) into model calls.
- :class:`CompressModelHandler`: the codec session of ``imageae.codec.api`` and the same
  quality / target-bpp choice as ``compress_folder``, so the ``.iae`` bytes are the local ones.
- :class:`DecompressModelHandler`: :func:`imageae.codec.api.decompress`.

Each handler takes ``(key, example)`` pairs and gives one :class:`Outcome` per pair. A file the
model refuses (too many pixels, a damaged ``.iae``, ...) is an outcome with ``error`` set, not a
failed bundle: the rest of the batch goes on, and the transform sends that file to the
failure report.
"""

import time
import typing

from apache_beam.ml.inference.base import ModelHandler

from imageae.codec import api as codec_api
from imageae.denoise import api as denoise_api


class Outcome(typing.NamedTuple):
    """What a handler gives for one ``(key, example)``: ``result`` or ``error`` (a reason)."""

    key: object
    example: object
    result: object
    error: str | None


def _import_tensorflow():
    """TensorFlow through :func:`imageae.runtime.import_tensorflow`, which keeps its start-up
    chatter off the worker's log. A worker inherits ``TF_CPP_MIN_LOG_LEVEL=2`` from a launcher
    that imported TensorFlow that way; that value asks for the same quiet, so it is set aside
    for the import (the function sets it again)."""
    import os
    import sys

    if "tensorflow" in sys.modules:
        return
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "2":
        del os.environ["TF_CPP_MIN_LOG_LEVEL"]
    from imageae.runtime import import_tensorflow

    import_tensorflow()


def _reason(error):
    text = str(error) or type(error).__name__
    return text if isinstance(error, (ValueError, LookupError)) else f"{type(error).__name__}: {text}"


class _Handler(ModelHandler):
    """Batching bounds shared by the handlers; ``max_batch`` images per ``run_inference`` call."""

    max_batch = 8

    def batch_elements_kwargs(self):
        return {"min_batch_size": 1, "max_batch_size": self.max_batch}

    def get_num_bytes(self, batch):
        return sum(int(getattr(getattr(example, "pixels", example), "nbytes", 0) or len(example))
                   for _, example in batch)


class DenoiseModelHandler(_Handler):
    """Denoise ``(key, DecodedImage)`` pairs; each outcome's ``result`` is the float image.

    Parameters are those of :class:`imageae.denoise.api.Denoiser` (``model``: "auto", a
    registered name or a ``.keras`` path readable on the workers). A batch holds up to
    twice ``batch_size`` images, the group ``Denoiser.run`` sends to the tiled runner locally.
    """

    def __init__(self, model="auto", *, precision="auto", tile=1024, batch_size=4, self_ensemble=False,
                 strength="auto"):
        checked = denoise_api.Denoiser(model, precision=precision, tile=tile, batch_size=batch_size,
                                       strength=strength)  # checks the options
        self.strength = checked.strength
        self.model = model
        self.precision = precision
        self.tile = tile
        self.batch_size = batch_size
        self.self_ensemble = bool(self_ensemble)
        self.max_batch = 2 * batch_size

    def load_model(self):
        _import_tensorflow()
        return denoise_api.Denoiser(self.model, precision=self.precision, tile=self.tile, batch_size=self.batch_size,
                                    self_ensemble=self.self_ensemble, strength=self.strength)

    def run_inference(self, batch, model, inference_args=None):
        try:
            results = dict(model.run((i, decoded.to_float()) for i, (_, decoded) in enumerate(batch)))
            return [Outcome(key, decoded, results[i], None) for i, (key, decoded) in enumerate(batch)]
        except Exception:  # noqa: BLE001  one bad image must not fail the others: run them one by one
            if len(batch) == 1:
                return [self._one(model, *batch[0])]
            return [self._one(model, key, decoded) for key, decoded in batch]

    @staticmethod
    def _one(model, key, decoded):
        try:
            [(_, y)] = list(model.run([(0, decoded.to_float())]))
            return Outcome(key, decoded, y, None)
        except Exception as error:  # noqa: BLE001  named in the failure report with its type
            return Outcome(key, decoded, None, _reason(error))


class CompressModelHandler(_Handler):
    """Compress ``(key, DecodedImage)`` pairs (8-bit, no alpha) into ``.iae`` bytes.

    ``result`` is ``(data, quality used, seconds)``. Options as for
    :func:`imageae.codec.api.compress_folder`.
    """

    def __init__(self, model=codec_api.DEFAULT_CODEC, *, quality=None, target_bpp=None, refine_steps=0,
                 max_pixels=codec_api.MAX_CODEC_PIXELS):
        if quality is not None and target_bpp is not None:
            raise ValueError("give quality or target_bpp, not both")
        if target_bpp is not None and not target_bpp > 0:
            raise ValueError(f"target_bpp must be positive, got {target_bpp}")
        self.model = model
        self.quality = quality
        self.target_bpp = target_bpp
        self.refine_steps = refine_steps
        self.max_pixels = max_pixels

    def load_model(self):
        _import_tensorflow()
        return codec_api.codec_session(self.model)

    def run_inference(self, batch, model, inference_args=None):
        outcomes = []
        for key, decoded in batch:
            started = time.perf_counter()
            try:
                data, used = codec_api.compress_pixels(
                    model, decoded.pixels, self.quality, self.target_bpp, self.refine_steps,
                    icc_profile=getattr(decoded, "icc_profile", None), max_pixels=self.max_pixels)
            except ValueError as error:
                outcomes.append(Outcome(key, decoded, None, _reason(error)))
                continue
            outcomes.append(Outcome(key, decoded, (data, used, time.perf_counter() - started), None))
        return outcomes


class _Models:
    """The codec files given besides the registered ones (Beam shares a loaded model through a
    weak reference, which a plain list cannot have)."""

    def __init__(self, names):
        self.names = list(names)


class DecompressModelHandler(_Handler):
    """Decode ``(key, bytes of an .iae file)`` pairs; ``result`` is ``(uint8 (H, W, C), icc)``.

    ``models``: codec ``.keras`` files besides the registered codecs, as for
    :func:`imageae.codec.api.decompress`.
    """

    def __init__(self, *, models=None, max_pixels=codec_api.MAX_CODEC_PIXELS):
        self.models = list(models or ())
        self.max_pixels = max_pixels

    def load_model(self):
        _import_tensorflow()
        for model in self.models:  # loaded once per worker, as the local job does before the first file
            codec_api.codec_session(model)
        return _Models(self.models)

    def run_inference(self, batch, model, inference_args=None):
        outcomes = []
        for key, data in batch:
            try:
                pixels, icc = codec_api.decompress(data, models=model.names, max_pixels=self.max_pixels, return_icc=True)
            except (ValueError, LookupError) as error:  # IaeFormatError, ImageTooLargeError, UnknownModelError
                outcomes.append(Outcome(key, None, None, _reason(error)))
                continue
            outcomes.append(Outcome(key, None, (pixels if pixels.ndim == 3 else pixels[:, :, None], icc), None))
        return outcomes
