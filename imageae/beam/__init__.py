"""imageae's folder jobs on Apache Beam (``pip install imageae[beam]``).

The same jobs as ``imageae denoise|compress|decompress``, as PTransforms that run unchanged on
the DirectRunner, Dataflow, Flink or Spark, reading and writing any Beam filesystem (local,
``gs://``, ``s3://``, HDFS):

``transforms``
    :class:`DenoiseImages`, :class:`CompressImages`, :class:`DecompressImages`: match the input
    files, mirror the tree into output paths, decode, run the model through ``RunInference``,
    write each output atomically and send every failure to a JSON-lines report under the
    output prefix (:data:`FAILURE_REPORT`).
``handlers``
    The ``ModelHandler`` of each job over imageae's own engine (``Denoiser`` and its
    ``TiledRunner``, the codec session), so a Beam job writes what the local job writes.
``cli``
    ``imageae beam denoise|compress|decompress``.

Apache Beam is imported only when one of these is used, so ``import imageae`` and the other
commands work without it. The names below are loaded on first use.
"""

_LAZY = {
    "DenoiseImages": "imageae.beam.transforms",
    "CompressImages": "imageae.beam.transforms",
    "DecompressImages": "imageae.beam.transforms",
    "FAILURE_REPORT": "imageae.beam.transforms",
    "DenoiseModelHandler": "imageae.beam.handlers",
    "CompressModelHandler": "imageae.beam.handlers",
    "DecompressModelHandler": "imageae.beam.handlers",
}

__all__ = [
    "FAILURE_REPORT",
    "CompressImages",
    "CompressModelHandler",
    "DecompressImages",
    "DecompressModelHandler",
    "DenoiseImages",
    "DenoiseModelHandler",
]


def __getattr__(name):
    if name not in _LAZY:
        raise AttributeError(f"module 'imageae.beam' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(_LAZY[name]), name)
