"""Tiled inference of an exported LiteRT (.tflite) model, with the Keras engine's tiling.

A ``.tflite`` written by :func:`imageae.export.export_tflite` takes one fixed window of
``tile`` x ``tile`` pixels; its sidecar ``.json`` records that window, the ``margin`` that
covers the model's receptive field and the model's ``stride``. :class:`LiteRTRunner` is a
:class:`~imageae.pipelines.engine.TiledRunner` whose model call is the LiteRT interpreter:
images are padded to the stride and cut into windows of at most ``tile`` pixels as for the
Keras model; a window smaller than ``tile`` (a small image) is mirror-padded up to it and the
result cropped back. The interpreter comes from the optional ``ai-edge-litert`` package
(``pip install imageae[litert]``).
"""

import json
from pathlib import Path

import numpy as np

from imageae.pipelines.engine import TiledRunner


def read_litert_metadata(path):
    """The sidecar JSON of an exported ``.tflite`` (``PATH.json`` beside ``PATH.tflite``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .tflite model: {path}")
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise ValueError(
            f"{path}: its sidecar {sidecar.name} (tile, margin, stride) is missing; "
            "export the model with 'imageae export MODEL --format tflite', which writes both"
        )
    meta = json.loads(sidecar.read_text())
    missing = [k for k in ("tile", "margin", "stride", "channels", "job") if k not in meta]
    if missing or meta.get("format") != "imageae-litert":
        raise ValueError(f"{sidecar}: not an imageae LiteRT sidecar (missing {', '.join(missing) or 'format'})")
    return meta


class LiteRTRunner(TiledRunner):
    """Runs an exported ``.tflite`` on images of any size, as :class:`TiledRunner` does.

    Parameters
    ----------
    path : path
        The ``.tflite`` file; its sidecar ``.json`` must sit beside it.
    batch_size : int
        Windows gathered per :meth:`predict` (the interpreter runs them one by one).
    num_threads : int, optional
        LiteRT interpreter threads (default: LiteRT's own choice).
    """

    def __init__(self, path, *, batch_size=4, num_threads=None):
        # TiledRunner.__init__ wants a Keras model; the attributes run() uses are set here instead.
        meta = read_litert_metadata(path)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # RuntimeError: the CLI turns it into one line and exit 2
            raise RuntimeError(
                "running a .tflite model needs the LiteRT interpreter: pip install 'imageae[litert]' "
                "(or pip install ai-edge-litert)"
            ) from None
        self.path = Path(path)
        self.meta = meta
        self.job = meta["job"]
        self.stride = int(meta["stride"])
        self.margin = int(meta["margin"])
        self.tile = int(meta["tile"])
        self.channels = int(meta["channels"])
        self.batch_size = max(1, int(batch_size))
        self.residual = meta.get("output") == "noise"
        self.interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        self.interpreter.allocate_tensors()
        [inp] = self.interpreter.get_input_details()
        [out] = self.interpreter.get_output_details()
        expected = (1, self.tile, self.tile, self.channels)
        if tuple(inp["shape"]) != expected:
            raise ValueError(f"{path}: input shape {tuple(inp['shape'])} does not match its sidecar's {expected}")
        self._input, self._output = inp["index"], out["index"]

    def predict(self, batch):
        """Run the interpreter on each (H, W, C) window of ``batch`` (H, W at most ``tile``)."""
        batch = np.asarray(batch, np.float32)
        results = np.empty_like(batch)
        t = self.tile
        for i, x in enumerate(batch):
            h, w = x.shape[:2]
            window = x if (h, w) == (t, t) else np.pad(x, ((0, t - h), (0, t - w), (0, 0)), mode="symmetric")
            self.interpreter.set_tensor(self._input, np.ascontiguousarray(window[None]))
            self.interpreter.invoke()
            y = self.interpreter.get_tensor(self._output)[0, :h, :w]
            results[i] = x - y if self.residual else y
        return results
