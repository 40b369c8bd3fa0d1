"""Inference of exported LiteRT (.tflite) models: tiled image-to-image models and fixed-batch decoders.

A ``.tflite`` written by :func:`imageae.export.export_tflite` has fixed input shapes and a
sidecar ``.json`` beside it saying what the graph is:

- ``job: "denoise"``: one window of ``tile`` x ``tile`` pixels, the ``margin`` that covers the
  model's receptive field and the model's ``stride``. :class:`LiteRTRunner` is a
  :class:`~imageae.pipelines.engine.TiledRunner` whose model call is the LiteRT interpreter:
  images are padded to the stride and cut into windows of at most ``tile`` pixels as for the
  Keras model; a window smaller than ``tile`` (a small image) is mirror-padded up to it and the
  result cropped back.
- ``job: "generate"``: a VAE decoder taking ``batch`` latents of ``latent_dim``; the sidecar also
  carries the sampler (the model's latent mixture). :class:`LiteRTModel` runs any number of rows
  through it, ``batch`` at a time.

A model is reloaded when its file changes (path, size and modification time of the ``.tflite``
and its sidecar), so a re-exported file is picked up by a running process. The interpreter comes
from the optional ``ai-edge-litert`` package (``pip install imageae[litert]``); its own start-up
lines and the TFLite converter's log lines are kept off the terminal (:func:`quiet_native_logs`).
"""

import contextlib
import json
import os
import re
from pathlib import Path

import numpy as np

from imageae.pipelines.engine import TiledRunner
from imageae.runtime import capture_native_stderr

# The sidecar keys each job's runner needs.
_REQUIRED = {
    "denoise": ("tile", "margin", "stride", "channels"),
    "generate": ("latent_dim", "batch", "image_size", "channels", "mixture"),
    "anomaly": ("image_size", "channels", "code_size", "batch", "detector"),  # imageae.anomaly.litert
}

# What the TFLite converter and the LiteRT interpreter print from C++ (absl logging and plain
# printf), none of it actionable: the converter's options, the SavedModel reader's progress, op
# counts, and the interpreter's "Created TensorFlow Lite XNNPACK delegate for CPU".
_CHATTER = re.compile(
    r"fully_quantize: \d|inference_type: |Ignored output_format|Ignored drop_control_dependency|"
    r"Reading SavedModel|Reading meta graph|SavedModel debug info|MLIR V1 optimization pass|"
    r"Restoring SavedModel bundle|Running initialization op on SavedModel|SavedModel load for tags|"
    r"disabling MLIR crash reproducer|Estimated count of arithmetic ops|Skipping runtime version metadata|"
    r"Created TensorFlow Lite XNNPACK delegate|All log messages before absl::InitializeLog|"
    r"Assets written to|Writing fingerprint|Fingerprint"
)


@contextlib.contextmanager
def quiet_native_logs():
    """Keep the TFLite converter's and the LiteRT interpreter's log lines off the terminal.

    They are printed from C++ straight to file descriptor 2, so fd 2 is captured for the block
    by :func:`imageae.runtime.capture_native_stderr` (as for TensorFlow's import), and only
    lines that are not that known chatter are printed back: real errors still show. With
    ``TF_CPP_MIN_LOG_LEVEL=0`` (asking for all of TensorFlow's lines) nothing is captured.
    (Importing Keras sets it to 1 when unset, so 1 does not say that a user asked.)
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL") == "0":
        yield
        return
    with capture_native_stderr(_CHATTER):
        yield


def read_litert_metadata(path):
    """The sidecar JSON of an exported ``.tflite`` (``PATH.json`` beside ``PATH.tflite``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such .tflite model: {path}")
    sidecar = path.with_suffix(".json")
    if not sidecar.is_file():
        raise ValueError(
            f"{path}: its sidecar {sidecar.name} (what the graph takes and gives) is missing; "
            "export the model with 'imageae export MODEL --format tflite', which writes both"
        )
    try:
        meta = json.loads(sidecar.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{sidecar}: not an imageae LiteRT sidecar (not JSON: {error})") from None
    if not isinstance(meta, dict) or meta.get("format") != "imageae-litert" or "job" not in meta:
        raise ValueError(f"{sidecar}: not an imageae LiteRT sidecar (missing format or job)")
    if meta["job"] not in _REQUIRED:
        raise ValueError(f"{sidecar}: a {meta['job']!r} model, which this version of imageae cannot run "
                         f"(it runs {', '.join(_REQUIRED)}); upgrade imageae")
    missing = [k for k in _REQUIRED[meta["job"]] if k not in meta]
    if missing:
        raise ValueError(f"{sidecar}: not an imageae LiteRT sidecar (missing {', '.join(missing)})")
    return meta


def file_key(path):
    """What identifies a loaded ``.tflite``: its resolved path, and the size and modification
    time (ns) of it and of its sidecar. A re-exported file gets a new key."""
    path = Path(path)
    key = [str(path.resolve())]
    for p in (path, path.with_suffix(".json")):
        try:
            st = p.stat()
            key += [st.st_size, st.st_mtime_ns]
        except OSError:
            key += [None, None]
    return tuple(key)


def _interpreter(path, num_threads):
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:  # RuntimeError: the CLI turns it into one line and exit 2
        raise RuntimeError(
            "running a .tflite model needs the LiteRT interpreter: pip install 'imageae[litert]' "
            "(or pip install ai-edge-litert)"
        ) from None
    with quiet_native_logs():
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads)
        interpreter.allocate_tensors()
    return interpreter


def fixed_batches(x, batch):
    """``(start, rows, chunk)`` over float32 ``x`` in chunks of ``batch`` rows, the last one padded
    with zeros to ``batch`` (a .tflite file's batch is fixed); use the first ``rows`` results."""
    for i in range(0, len(x), batch):
        chunk = x[i : i + batch]
        rows = len(chunk)
        if rows < batch:
            chunk = np.concatenate([chunk, np.zeros((batch - rows, *chunk.shape[1:]), np.float32)])
        yield i, rows, np.ascontiguousarray(chunk, np.float32)

class _Reloading:
    """Loads a ``.tflite`` and its sidecar for ``jobs``, and again when :func:`file_key` changes."""

    jobs = ()

    def _open(self, path, num_threads):
        self.path = Path(path)
        self.num_threads = num_threads
        self._key = None
        self.refresh()

    def refresh(self):
        """Reload the model if its file (or sidecar) changed since it was loaded; True if it did."""
        key = file_key(self.path)
        if key == self._key:
            return False
        meta = read_litert_metadata(self.path)
        if meta["job"] not in self.jobs:
            hint = {"generate": f"; use it with 'imageae generate --model {self.path}'",
                    "denoise": f"; use it with 'imageae denoise --model {self.path}'",
                    "anomaly": f"; use it with 'imageae anomaly score --model {self.path}'"}.get(meta["job"], "")
            raise ValueError(f"{self.path} is a {meta['job']} model, not a {' or '.join(self.jobs)} model{hint}")
        interpreter = _interpreter(self.path, self.num_threads)
        self._configure(meta, interpreter)
        self.meta, self.job, self.interpreter, self._key = meta, meta["job"], interpreter, key
        return True


class LiteRTRunner(_Reloading, TiledRunner):
    """Runs an exported image-to-image ``.tflite`` on images of any size, as :class:`TiledRunner` does.

    Parameters
    ----------
    path : path
        The ``.tflite`` file; its sidecar ``.json`` must sit beside it.
    batch_size : int
        Windows gathered per :meth:`predict` (the interpreter runs them one by one).
    num_threads : int, optional
        LiteRT interpreter threads (default: LiteRT's own choice).
    """

    jobs = ("denoise",)

    def __init__(self, path, *, batch_size=4, num_threads=None):
        # TiledRunner.__init__ wants a Keras model; the attributes run() uses are set by _configure.
        self.batch_size = max(1, int(batch_size))
        self._open(path, num_threads)

    def _configure(self, meta, interpreter):
        tile, channels = int(meta["tile"]), int(meta["channels"])
        [inp] = interpreter.get_input_details()
        [out] = interpreter.get_output_details()
        expected = (1, tile, tile, channels)
        if tuple(inp["shape"]) != expected:
            raise ValueError(f"{self.path}: input shape {tuple(inp['shape'])} does not match its sidecar's {expected}")
        self.stride, self.margin, self.tile, self.channels = int(meta["stride"]), int(meta["margin"]), tile, channels
        self.residual = meta.get("output") == "noise"
        self._input, self._output = inp["index"], out["index"]

    def run(self, items, *, max_pending=None):
        """As :meth:`TiledRunner.run`; the file is reloaded first if it was re-exported."""
        self.refresh()
        yield from TiledRunner.run(self, items, max_pending=max_pending)

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


class LiteRTModel(_Reloading):
    """A fixed-batch ``.tflite`` (a VAE decoder) called on any number of rows.

    ``model(x)`` runs ``x`` (N, ...) through the interpreter ``batch`` rows at a time (the last
    call zero-padded) and returns float32 (N, ...). ``meta`` is the sidecar.

    Parameters
    ----------
    path : path
        The ``.tflite`` file; its sidecar ``.json`` must sit beside it.
    jobs : tuple of str
        The jobs whose models are accepted (default: generate).
    num_threads : int, optional
        LiteRT interpreter threads (default: LiteRT's own choice).
    """

    def __init__(self, path, *, jobs=("generate",), num_threads=None):
        self.jobs = tuple(jobs)
        self._open(path, num_threads)

    def _configure(self, meta, interpreter):
        [inp] = interpreter.get_input_details()
        [out] = interpreter.get_output_details()
        if int(inp["shape"][0]) != int(meta["batch"]):
            raise ValueError(f"{self.path}: input batch {int(inp['shape'][0])} does not match its sidecar's "
                             f"{meta['batch']}")
        self.batch = int(meta["batch"])
        self.input_shape = tuple(int(s) for s in inp["shape"][1:])
        self.output_shape = tuple(int(s) for s in out["shape"][1:])
        self._input, self._output = inp["index"], out["index"]

    def __call__(self, x):
        self.refresh()
        x = np.asarray(x, np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"{self.path} takes rows of shape {self.input_shape}, got {x.shape[1:]}")
        results = np.empty((len(x), *self.output_shape), np.float32)
        for i, rows, chunk in fixed_batches(x, self.batch):
            self.interpreter.set_tensor(self._input, chunk)
            self.interpreter.invoke()
            results[i : i + rows] = self.interpreter.get_tensor(self._output)[:rows]
        return results
