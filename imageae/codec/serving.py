"""Compress and decompress through a codec served by TensorFlow Serving.

The server runs the codec's transforms (the ``analysis``, ``scale_indexes``, ``synthesis``
and ``z_tables`` signatures of ``imageae export codec-v4``, see :mod:`imageae.export`); this
process does the entropy coding and writes the same ``.iae`` files as
:func:`imageae.compress`, under the name the model is served by.

    from imageae.codec.serving import ServedCodec, rest_predictor
    codec = ServedCodec(rest_predictor("http://localhost:8501", "codec-v4"), name="codec-v4")
    data = codec.compress(pixels, quality=4)      # uint8 (H, W) or (H, W, 3) -> bytes
    pixels = codec.decompress(data)               # -> uint8 (H, W, 1) or (H, W, 3)

``predict(signature_name, inputs) -> outputs`` is all this module needs from a server, so
gRPC (tensorflow-serving-api) or an in-process ``tf.saved_model.load`` works the same way.

The scale indexes come from the server both when encoding and when decoding, so files made
through one server decode through it exactly. A file decodes with the local package too when
both compute the hyperprior's float32 scales identically (the same TensorFlow build on the
same kind of CPU does); see the determinism note in :mod:`imageae.codec.session`.
"""

import json
import urllib.request

import numpy as np

from imageae.codec.coder import decode_factorized, decode_gaussian
from imageae.codec.container import IaeFormatError, IaeHeader, pack, unpack, unpack_section
from imageae.codec.session import BIT_DEPTH, pack_latents
from imageae.codec.transforms import to_uint8


def rest_predictor(url, model, *, version=None, timeout=120.0):
    """``predict`` over TF Serving's REST API (``POST /v1/models/<model>:predict``, columnar)."""
    path = f"{url.rstrip('/')}/v1/models/{model}" + (f"/versions/{int(version)}" if version else "") + ":predict"

    def predict(signature, inputs):
        body = {"signature_name": signature, "inputs": {k: np.asarray(v).tolist() for k, v in inputs.items()}}
        request = urllib.request.Request(path, data=json.dumps(body).encode(), method="POST",
                                         headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            outputs = json.loads(reply.read())["outputs"]
        return {k: np.asarray(v) for k, v in outputs.items()} if isinstance(outputs, dict) else outputs

    return predict


class ServedCodec:
    """The client half of a served codec: entropy coding and the ``.iae`` container.

    Parameters
    ----------
    predict : callable
        ``predict(signature_name, inputs_dict) -> outputs_dict`` of numpy arrays.
    name : str
        The model name written into files (use the registered name, e.g. "codec-v4", for
        files that :func:`imageae.decompress` should read).
    """

    def __init__(self, predict, name):
        self.predict, self.name = predict, name
        tables = predict("z_tables", {})
        lengths = np.asarray(tables["z_table_lengths"]).astype(int)
        self.z_tables = [np.asarray(row[:n], np.int32) for row, n in zip(np.asarray(tables["z_cdf_tables"]), lengths)]
        self.z_offsets = np.asarray(tables["z_offsets"], np.int32)

    def compress(self, image, quality):
        """uint8 (H, W), (H, W, 1) or (H, W, 3) image -> the bytes of an ``.iae`` file."""
        image = np.asarray(image)
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[-1] not in (1, 3)):
            raise ValueError(f"image must be uint8 (H, W), (H, W, 1) or (H, W, 3), got {image.dtype} {image.shape}")
        grey = image.ndim == 2 or image.shape[-1] == 1
        rgb = np.repeat(image.reshape(image.shape[0], image.shape[1], 1), 3, axis=-1) if grey else image
        header = IaeHeader(self.name, int(quality), image.shape[0], image.shape[1], "grey" if grey else "rgb", BIT_DEPTH)
        pack(header, [b""])  # the container's own checks first
        out = self.predict("analysis", {"images": rgb[None], "quality": np.int32(quality)})
        z, y, k = (np.asarray(out[key], np.int32)[0] for key in ("z_symbols", "y_symbols", "scale_indexes"))
        return pack_latents(header, z, y, k, self.z_tables, self.z_offsets)

    def decompress(self, data):
        """The bytes of an ``.iae`` file written under this codec's name -> uint8 (H, W, 1|3)."""
        header, sections = unpack(data)
        if header.model_name != self.name:
            raise IaeFormatError(f"file was written by model {header.model_name!r}, this server codes {self.name!r}")
        if len(sections) != 2:
            raise IaeFormatError(f"bad .iae file: {len(sections)} sections, the codec writes 2 (side, main)")
        (z_shape, side), (y_shape, main) = (unpack_section(s) for s in sections)
        z = decode_factorized(side, self.z_tables, self.z_offsets, tuple(z_shape))
        k = np.asarray(self.predict("scale_indexes", {"z_symbols": z[None], "quality": np.int32(header.quality)})
                       ["scale_indexes"], np.int32)[0]
        if k.shape != tuple(y_shape):
            raise IaeFormatError(f"bad .iae file: main section shape {tuple(y_shape)} does not fit its side section")
        y = decode_gaussian(main, k)
        images = self.predict("synthesis", {"y_symbols": y[None], "z_symbols": z[None],
                                            "quality": np.int32(header.quality), "height": np.int32(header.height),
                                            "width": np.int32(header.width)})["images"]
        return to_uint8(np.asarray(images, np.float32)[0], header.colour_mode)
