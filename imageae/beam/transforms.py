"""PTransforms that run imageae's folder jobs on Apache Beam: :class:`DenoiseImages`,
:class:`CompressImages`, :class:`DecompressImages`.

Each one is the local folder job spread over Beam workers, from file to file::

    Create(patterns) -> fileio.MatchAll -> plan (mirrored output path; other kinds of files,
    files below the output folder left out) -> GroupByKey(output path) (two inputs for one
    output: the first keeps it, the others fail; existing outputs kept unless overwrite) ->
    read + decode (imageae.data.io.read_image) -> RunInference(imageae.beam.handlers) ->
    encode + atomic write (temporary name, then rename) -> counters

Every failure (an input that is missing or unreadable, a damaged ``.iae``, an image the model
refuses, an output that cannot be written) becomes a record ``{"path", "stage", "reason"}``;
they are written, sorted by path, as JSON lines to ``OUTPUT/beam-failures.jsonl``
(:data:`FAILURE_REPORT`), which every run replaces (empty when nothing failed). Applied to a
pipeline, a transform returns that PCollection of failure records.

Paths are Beam filesystem paths: local folders, ``gs://bucket/photos``, ``s3://...``,
``hdfs://...``. Models are registry names or ``.keras`` files the workers can read.
"""

import json
import os
import posixpath
import tempfile
import uuid
from pathlib import PurePosixPath

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import RunInference

from imageae.beam.handlers import CompressModelHandler, DecompressModelHandler, DenoiseModelHandler
from imageae.codec import api as codec_api
from imageae.data.io import (
    IMAGE_EXTENSIONS,
    WRITE_FORMATS,
    DecodedImage,
    ImageReadError,
    encode_image,
    from_float,
    output_format,
    read_image,
    write_bytes_atomic,
)
from imageae.denoise import api as denoise_api

FAILURE_REPORT = "beam-failures.jsonl"
METRICS_NAMESPACE = "imageae"


# ------------------------------------------------------------------------------- paths


def _is_local(path):
    return FileSystems.get_scheme(str(path)) is None


def _join(base, relative):
    if _is_local(base):
        return os.path.join(base, *relative.split("/"))
    return FileSystems.join(base.rstrip("/"), relative)


def _normal(path):
    """A path compared as a string: local ones absolute, remote ones without a trailing slash."""
    path = str(path)
    return os.path.abspath(path) if _is_local(path) else path.rstrip("/")


def _is_dir(path):
    if _is_local(path):
        return os.path.isdir(path)
    # An object store has no folders: a name that is not an object but prefixes some is one.
    return not FileSystems.exists(path)


def plan_inputs(inputs):
    """``(patterns, missing)`` for the named inputs, as the launcher sees them.

    Each pattern is ``(glob, root)``: a folder matches everything below it (``root/**``) and
    its files keep their paths relative to it; a file matches itself and keeps its name.
    ``missing`` lists ``(input, reason)`` for names that match nothing.

    Raises
    ------
    FileNotFoundError
        When no named input exists at all (a usage error, as for the local jobs).
    """
    named = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    if not named:
        raise ValueError("no INPUT given: name image files or folders (local paths or gs://, s3://, ... prefixes)")
    patterns, missing = [], []
    for given in map(str, named):
        if _is_dir(given):
            root = _normal(given)
            glob = _join(root, "**")
            # one object is enough to know the prefix exists (a bucket may hold millions)
            if _is_local(given) or FileSystems.match([glob], limits=[1])[0].metadata_list:
                patterns.append((glob, root))
                continue
        elif FileSystems.exists(given):
            path = _normal(given)
            patterns.append((path, posixpath.dirname(path) if not _is_local(path) else os.path.dirname(path)))
            continue
        missing.append((given, "no such file or folder"))
    if not patterns:
        raise FileNotFoundError("; ".join(f"{reason}: {path}" for path, reason in missing))
    return patterns, missing


def _sep(path):
    return os.sep if _is_local(path) else "/"


def _relative(path, root):
    sep = _sep(path)
    rest = path[len(root):].lstrip(sep) if path.startswith(root) else posixpath.basename(path)
    return rest.replace(os.sep, "/")


def write_atomic(path, data):
    """Write ``data`` to the Beam filesystem path ``path`` so that no reader sees a partial file:
    locally through :func:`imageae.data.io.write_bytes_atomic`; elsewhere a temporary name in
    the same folder, then a rename (an object store's rename is a copy, whole or not at all)."""
    if _is_local(path):
        write_bytes_atomic(path, data)
        return
    folder, name = posixpath.split(path)
    temporary = FileSystems.join(folder, f".{name}.{uuid.uuid4().hex}.part")
    try:
        with FileSystems.create(temporary) as stream:
            stream.write(data)
        FileSystems.rename([temporary], [path])
    except BaseException:
        try:
            FileSystems.delete([temporary])
        except Exception:  # noqa: BLE001, S110  the temporary may not exist; the write's error is the one to raise
            pass
        raise


def _read_file(path, decode):
    """``decode(local path)`` of a Beam filesystem path: local files directly, others through a
    temporary copy with the same name (the decoders name the file in their messages)."""
    if _is_local(path):
        return decode(path)
    try:
        with FileSystems.open(path) as stream:
            data = stream.read()
    except Exception as error:  # noqa: BLE001  any filesystem's error is this file's failure
        raise ImageReadError(f"cannot read file: {error}") from None
    with tempfile.TemporaryDirectory(prefix="imageae-beam-") as folder:
        local = os.path.join(folder, posixpath.basename(path) or "input")
        with open(local, "wb") as f:
            f.write(data)
        return decode(local)


def _read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as error:
        raise ImageReadError(f"cannot read file: {error.strerror or error}") from None


def _failure(path, stage, reason):
    Metrics.counter(METRICS_NAMESPACE, "failed").inc()
    return {"path": str(path), "stage": stage, "reason": str(reason)}


# ------------------------------------------------------------------------------- the steps


class _Plan(beam.DoFn):
    """A matched file -> ``(output path, input path)``, or nothing (another kind of file, or an
    earlier run's output below the output folder)."""

    def __init__(self, roots, output, extensions, suffix_for):
        self.roots = sorted(roots, key=len, reverse=True)
        self.output = output
        self.extensions = tuple(e.lower() for e in extensions)
        self.suffix_for = suffix_for

    def process(self, metadata):
        path = metadata.path if hasattr(metadata, "path") else str(metadata)
        if not path.lower().endswith(self.extensions):
            return
        if _normal(path).startswith(self.output.rstrip("/" + os.sep) + _sep(path)):
            Metrics.counter(METRICS_NAMESPACE, "ignored").inc()
            return
        root = next((r for r in self.roots if path.startswith(r.rstrip("/" + os.sep) + _sep(path))),
                    posixpath.dirname(path))
        relative = _relative(path, root)
        stem, _ = posixpath.splitext(relative)
        Metrics.counter(METRICS_NAMESPACE, "planned").inc()
        yield _join(self.output, stem + self.suffix_for(path)), path


class _Resolve(beam.DoFn):
    """``(output, [inputs])`` -> the input that writes it; collisions and overwrites fail."""

    def __init__(self, overwrite):
        self.overwrite = overwrite

    def process(self, element):
        target, sources = element
        first, *others = sorted(set(sources))
        for other in others:
            yield beam.pvalue.TaggedOutput("failed", _failure(other, "plan", f"output {target} is also the output "
                                                                              f"of {first}"))
        if _normal(target) == _normal(first):
            yield beam.pvalue.TaggedOutput("failed", _failure(first, "plan", f"output {target} would overwrite an "
                                                                              "input; choose another -o folder"))
            return
        if not self.overwrite and FileSystems.exists(target):
            Metrics.counter(METRICS_NAMESPACE, "skipped").inc()
            return
        yield first, target


class _Decode(beam.DoFn):
    """``(input, output)`` -> ``((input, output), decoded)``; unreadable files fail."""

    def __init__(self, decode):
        self.decode = decode

    def process(self, element):
        source, target = element
        try:
            yield (source, target), _read_file(source, self.decode)
        except ImageReadError as error:
            yield beam.pvalue.TaggedOutput("failed", _failure(source, "read", error))
        except MemoryError:
            yield beam.pvalue.TaggedOutput("failed", _failure(source, "read", "not enough memory to decode this image"))


class _Write(beam.DoFn):
    """An :class:`~imageae.beam.handlers.Outcome` -> the output file, written atomically.

    ``encode(outcome)`` gives ``(bytes, pixels, entry or None)``; an entry (compress: the
    per-file table row) goes to the "entries" output.
    """

    def __init__(self, stage, encode):
        self.stage = stage
        self.encode = encode

    def process(self, outcome):
        source, target = outcome.key
        if outcome.error is not None:
            yield beam.pvalue.TaggedOutput("failed", _failure(source, self.stage, outcome.error))
            return
        try:
            data, pixels, entry = self.encode(outcome)
            write_atomic(target, data)
        except (ValueError, OSError) as error:  # ImageWriteError, a full disk, a bucket refusing the write
            yield beam.pvalue.TaggedOutput("failed", _failure(source, "write", f"cannot write {target}: {error}"))
            return
        Metrics.counter(METRICS_NAMESPACE, "written").inc()
        Metrics.counter(METRICS_NAMESPACE, "pixels").inc(pixels)
        if entry is not None:
            yield beam.pvalue.TaggedOutput("entries", entry)


def _write_failure_report(records, output):
    lines = sorted(records, key=lambda r: (r["path"], r["stage"]))
    write_atomic(_join(output, FAILURE_REPORT), "".join(json.dumps(r) + "\n" for r in lines).encode("utf-8"))


def _write_compress_report(entries, output):
    if not entries:
        return
    import csv
    import io

    entries = sorted(entries, key=lambda e: e["input"])
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(entries[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(entries)
    try:
        write_atomic(_join(output, codec_api.COMPRESS_REPORT), text.getvalue().encode("utf-8"))
    except OSError:  # as the local job: the table is a by-product, its failure is not the run's
        pass


# ------------------------------------------------------------------------------- the jobs


class _DenoiseJob:
    """What the denoise job brings to the shared steps (small and picklable: it travels to the
    workers inside the DoFns)."""

    stage = "denoise"
    extensions = IMAGE_EXTENSIONS

    def __init__(self, ext, quality):
        self.ext, self.quality = ext, quality

    def suffix_for(self, path):
        return denoise_api.suffix_for(self.ext)(PurePosixPath(path))

    def decode(self, path):
        return read_image(path)

    def encode(self, outcome):
        _, target = outcome.key
        decoded = outcome.example
        fmt = WRITE_FORMATS[posixpath.splitext(target)[1].lower()]
        data = encode_image(from_float(outcome.result, decoded), fmt, quality=self.quality)
        return data, decoded.pixels.shape[0] * decoded.pixels.shape[1], None


class _CompressJob:
    stage = "compress"
    extensions = IMAGE_EXTENSIONS

    def suffix_for(self, path):
        return codec_api.IAE_EXTENSION

    def decode(self, path):
        return codec_api.read_for_codec(path)  # the local job's reader: 8-bit, no alpha, else a reason

    def encode(self, outcome):
        source, target = outcome.key
        data, used, seconds = outcome.result
        height, width = outcome.example.pixels.shape[:2]
        entry = {"input": source, "output": target, "bytes": len(data),
                 "bpp": round(8 * len(data) / (height * width), 4), "quality": used,
                 "seconds": round(seconds, 3), "width": width, "height": height}
        return data, height * width, entry


class _DecompressJob:
    stage = "decompress"
    extensions = (codec_api.IAE_EXTENSION,)

    def __init__(self, ext):
        self.ext = ext
        self.fmt = output_format(None, ext)

    def suffix_for(self, path):
        return self.ext

    def decode(self, path):
        return _read_bytes(path)

    def encode(self, outcome):
        pixels, icc = outcome.result
        data = encode_image(DecodedImage(pixels, None, 8, self.fmt, icc_profile=icc), self.fmt)
        return data, pixels.shape[0] * pixels.shape[1], None


class _FolderJob(beam.PTransform):
    """The steps every job shares, given the job (``_DenoiseJob``, ...) and its model handler.
    Applied to a pipeline (``pipeline | DenoiseImages(...)``); returns the failure records. The
    compress job's per-file rows are in ``.entries`` once applied."""

    def __init__(self, inputs, output, job, handler, *, overwrite=False):
        super().__init__()
        if not str(output).strip():
            raise ValueError("the output folder is empty ('-o \"\"'); name a folder (use '.' for the working folder)")
        self.job = job
        self.handler = handler
        self.output = _normal(output)
        self.overwrite = bool(overwrite)
        self.patterns, self.missing = plan_inputs(inputs)
        self.entries = None

    def expand(self, pipeline):
        job, output = self.job, self.output
        planned = (
            pipeline
            | "Patterns" >> beam.Create([glob for glob, _ in self.patterns])
            | "Match" >> fileio.MatchAll()
            | "Plan" >> beam.ParDo(_Plan([root for _, root in self.patterns], output, job.extensions,
                                         job.suffix_for))
            | "ByOutput" >> beam.GroupByKey()  # also spreads the files over the workers
            | "Resolve" >> beam.ParDo(_Resolve(self.overwrite)).with_outputs("failed", main="tasks")
        )
        decoded = planned.tasks | "Decode" >> beam.ParDo(_Decode(job.decode)).with_outputs("failed", main="images")
        outcomes = decoded.images | "RunInference" >> RunInference(self.handler)
        written = outcomes | "Write" >> beam.ParDo(_Write(job.stage, job.encode)).with_outputs(
            "failed", "entries", main="done")
        missing = pipeline | "Missing" >> beam.Create([{"path": p, "stage": "match", "reason": r}
                                                       for p, r in self.missing])
        failed = (missing, planned.failed, decoded.failed, written.failed) | "Failures" >> beam.Flatten()
        (failed
         | "CollectFailures" >> beam.combiners.ToList()
         | "WriteFailureReport" >> beam.Map(_write_failure_report, output))
        self.entries = written.entries
        return failed


class DenoiseImages(_FolderJob):
    """Denoise every image below ``inputs`` into ``output`` on Beam: :func:`imageae.denoise_folder`'s job.

    Parameters
    ----------
    inputs : str or list of str
        Image files and folders (searched recursively), local or on any Beam filesystem.
    output : str
        The output folder or prefix; the output tree mirrors the input tree.
    model, precision, tile, batch_size, self_ensemble, strength
        As for :class:`imageae.denoise.api.Denoiser`.
    ext, quality, overwrite
        As for :func:`imageae.denoise_folder`.

    Examples
    --------
    >>> import apache_beam as beam                                   # doctest: +SKIP
    >>> from imageae.beam import DenoiseImages
    >>> with beam.Pipeline() as p:
    ...     failures = p | DenoiseImages("photos/", "clean/")
    """

    def __init__(self, inputs, output, *, model="auto", ext=None, quality=95, overwrite=False, precision="auto",
                 tile=1024, batch_size=4, self_ensemble=False, strength="auto"):
        from imageae.checks import check_int

        if ext is not None:
            output_format(None, ext)  # validates the extension up front
        check_int("quality", quality, minimum=1, maximum=100)
        handler = DenoiseModelHandler(model, precision=precision, tile=tile, batch_size=batch_size,
                                      self_ensemble=self_ensemble, strength=strength)
        super().__init__(inputs, output, _DenoiseJob(ext, quality), handler, overwrite=overwrite)


class CompressImages(_FolderJob):
    """Compress every image below ``inputs`` into ``.iae`` files under ``output`` on Beam:
    :func:`imageae.compress_folder`'s job, byte for byte. Options as for that function; the
    per-file table goes to ``OUTPUT/compress-report.csv``, sorted by input."""

    def __init__(self, inputs, output, *, quality=None, target_bpp=None, model=codec_api.DEFAULT_CODEC,
                 overwrite=False, refine_steps=0, max_pixels=codec_api.MAX_CODEC_PIXELS):
        handler = CompressModelHandler(model, quality=quality, target_bpp=target_bpp, refine_steps=refine_steps,
                                       max_pixels=max_pixels)
        super().__init__(inputs, output, _CompressJob(), handler, overwrite=overwrite)

    def expand(self, pipeline):
        failed = super().expand(pipeline)
        (self.entries
         | "CollectEntries" >> beam.combiners.ToList()
         | "WriteCompressReport" >> beam.Map(_write_compress_report, self.output))
        return failed


class DecompressImages(_FolderJob):
    """Decode every ``.iae`` file below ``inputs`` into images under ``output`` on Beam:
    :func:`imageae.decompress_folder`'s job. Options as for that function."""

    def __init__(self, inputs, output, *, ext=".png", models=None, overwrite=False,
                 max_pixels=codec_api.MAX_CODEC_PIXELS):
        ext = ext if ext.startswith(".") else "." + ext
        job = _DecompressJob(ext)
        super().__init__(inputs, output, job, DecompressModelHandler(models=models, max_pixels=max_pixels),
                         overwrite=overwrite)
