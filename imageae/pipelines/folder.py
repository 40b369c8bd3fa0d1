"""Folder jobs: discover images, decode them in a tf.data pipeline, process, write atomically.

Every folder job (``imageae.denoise_folder``, ``compress_folder``, ``decompress_folder``) is
built from these parts:

    :func:`plan_outputs` (discovery, mirrored output paths, collisions, skip/overwrite) ->
    :func:`decoded_images` (tf.data: parallel decode, prefetch; the path travels with each
    element, so a bad file is named) -> the job's processing -> :class:`Writer` (a thread pool
    that encodes and writes each result atomically while the next one computes) -> a
    :class:`FolderReport`.

Inputs are never overwritten: an output path that is also an input is refused, and the
output tree mirrors the input tree below the output folder.
"""

import concurrent.futures
import contextlib
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from imageae.data.io import IMAGE_EXTENSIONS, ImageReadError, find_images, read_image


@dataclasses.dataclass
class FolderReport:
    """What a folder job did: files written, skipped (output existed) and failed, with reasons."""

    written: list = dataclasses.field(default_factory=list)
    skipped: list = dataclasses.field(default_factory=list)
    failed: list = dataclasses.field(default_factory=list)  # (path, reason)
    pixels: int = 0
    seconds: float = 0.0
    notes: list = dataclasses.field(default_factory=list)  # things the user should know, one line each
    entries: list = dataclasses.field(default_factory=list)  # per written file, a dict (compress: bytes, bpp, ...)

    @property
    def ok(self):
        return not self.failed

    def summary(self, verb="processed"):
        lines = [
            f"{verb} {len(self.written)} file(s), skipped {len(self.skipped)} existing, "
            f"failed {len(self.failed)}"
            + (f" in {self.seconds:.1f} s ({self.pixels / 1e6 / self.seconds:.2f} Mpixel/s end to end, "
               "model loading and file decoding/writing included)" if self.seconds and self.pixels else "")
        ]
        lines += [f"  FAILED {path}: {reason}" for path, reason in self.failed]
        lines += [f"  note: {note}" for note in self.notes]
        if self.skipped:
            lines.append("  (existing outputs were kept; --overwrite replaces them)")
        return "\n".join(lines)


@dataclasses.dataclass
class _Task:
    source: Path
    target: Path


class NoInputsError(ValueError):
    """A folder job found nothing to work on; the message says where it looked and for what."""


def plan_outputs(inputs, output_dir, *, suffix_for, overwrite=False, report=None, extensions=IMAGE_EXTENSIONS):
    """Pair each input file with its output path; refuse collisions and input overwrites.

    ``suffix_for(path)`` gives the output extension for an input path; folders contribute
    the files whose extension is in ``extensions``. Named inputs that do not exist, broken
    links and link loops go to ``report.failed`` with the reason.

    Raises
    ------
    ValueError
        For an empty output path.
    FileNotFoundError
        When no named input exists at all.
    NoInputsError
        When the inputs hold no file to work on (an empty folder, or only other kinds of files).
    """
    if not os.fspath(output_dir).strip():
        raise ValueError("the output folder is empty ('-o \"\"'); name a folder (use '.' for the working folder)")
    output_dir = Path(output_dir)
    out_resolved = output_dir.resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output path {output_dir} exists and is not a folder")
    named = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    problems = []
    listed = find_images(named, extensions=extensions, problems=problems)
    if not any(Path(i).exists() for i in named):  # nothing named exists: a usage error, not a file failure
        raise FileNotFoundError("; ".join(f"{reason}: {path}" for path, reason in problems))
    report.failed.extend(problems)
    # An earlier run's outputs inside an input folder are not inputs: files found by walking a
    # folder that holds the output folder, and lying below the output folder, are left out.
    holders = [Path(i).resolve() for i in named if Path(i).is_dir()]
    holders = [h for h in holders if h in out_resolved.parents]
    named_files = {Path(i).resolve() for i in named if Path(i).is_file()}
    found, ignored = [], 0
    for p, r in listed:
        resolved = p.resolve()
        if holders and out_resolved in resolved.parents and resolved not in named_files:
            ignored += 1
            continue
        found.append((p, r))
    if ignored:
        report.notes.append(f"{ignored} file(s) below the output folder {output_dir} were not taken as inputs")
    if not found and not report.failed:
        kinds = "/".join(extensions)
        where = ", ".join(map(str, named))
        raise NoInputsError(f"found no {kinds} files in {where}, so there is nothing to do"
                            + " (files are matched by extension, in any case"
                            + (f"; {ignored} below the output folder were left out" if ignored else "") + ")")
    sources = {p.resolve() for p, _ in found}
    tasks, targets = [], {}
    for path, relative in found:
        target = output_dir / relative.with_suffix(suffix_for(path))
        resolved = target.resolve()
        if resolved in sources:
            report.failed.append((str(path), f"output {target} would overwrite an input; choose another -o folder"))
            continue
        if resolved in targets:
            report.failed.append((str(path), f"output {target} is also the output of {targets[resolved]}"))
            continue
        targets[resolved] = path
        if target.exists() and not overwrite:
            report.skipped.append(str(path))
            continue
        tasks.append(_Task(path, target))
    return tasks


def decoded_images(tasks, decode=read_image, *, parallel=2):
    """Yield ``(task, decoded or None, error or None)`` in order, decoding in a tf.data pipeline.

    The decoded images stay in Python (they carry alpha, bit depth and format); tf.data runs
    the decoders on its thread pool and prefetches one element ahead, which bounds memory
    for very large images.
    """
    from imageae.runtime import import_tensorflow

    tf = import_tensorflow()

    results = {}

    def load(index):
        index = int(index)
        try:
            results[index] = (decode(tasks[index].source), None)
        except ImageReadError as error:
            results[index] = (None, str(error))
        except MemoryError:
            results[index] = (None, "not enough memory to decode this image")
        return np.int64(index)

    dataset = (
        tf.data.Dataset.range(len(tasks))
        .map(lambda i: tf.numpy_function(load, [i], tf.int64, stateful=True),
             num_parallel_calls=parallel, deterministic=True)
        .prefetch(1)
    )
    for index in dataset.as_numpy_iterator():
        decoded, error = results.pop(int(index))
        yield tasks[int(index)], decoded, error


def progress_bar(total, *, desc, enabled=None):
    """A tqdm bar on a TTY (images/s shown), nothing otherwise; tqdm is the de-facto standard."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="img", disable=not enabled, dynamic_ncols=True)


class Writer:
    """Encodes and writes results on worker threads while the next batch computes."""

    def __init__(self, report, workers=2):
        self.report = report
        self.pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
        self.futures = []

    def submit(self, task, write, *args):
        self.futures.append((task, self.pool.submit(write, task.target, *args)))
        self._collect(block=False)

    def _collect(self, block):
        remaining = []
        for task, future in self.futures:
            if block or future.done():
                try:
                    future.result()
                    self.report.written.append(str(task.target))
                except Exception as error:  # a write failure is this file's failure, not the run's
                    self.report.failed.append((str(task.source), f"cannot write {task.target}: {error}"))
            else:
                remaining.append((task, future))
        self.futures = remaining

    def close(self, cancel=False):
        if cancel:
            self.pool.shutdown(wait=True, cancel_futures=True)
        self._collect(block=True)
        self.pool.shutdown(wait=True)


@contextlib.contextmanager
def running_job(report, total, *, desc, progress=None):
    """``(writer, bar)`` for a folder job's loop: on leaving, the writes are finished (or, on an
    error or Ctrl-C, the queued ones cancelled and the running ones completed), the bar closed
    and ``report.seconds`` set."""
    writer = Writer(report)
    bar = progress_bar(total, desc=desc, enabled=progress)
    start = time.perf_counter()
    try:
        yield writer, bar
    except BaseException:
        writer.close(cancel=True)
        bar.close()
        raise
    writer.close()
    bar.close()
    report.seconds = time.perf_counter() - start


class OutputFolderError(OSError):
    """The output folder cannot be made; the message names it and says why."""


def ensure_output_dir(path):
    """Create the output folder ``path`` (and its parents); a clear error if that cannot be done."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output path {path} exists and is not a folder")
    try:
        os.makedirs(path, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=path, prefix=".imageae-probe.", delete=True)  # writable?
        probe.close()
    except OSError as error:
        raise OutputFolderError(f"cannot write to the output folder {path}: {error.strerror or error}") from None
    return path
