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

    @property
    def ok(self):
        return not self.failed

    def summary(self, verb="processed"):
        lines = [
            f"{verb} {len(self.written)} file(s), skipped {len(self.skipped)} existing, "
            f"failed {len(self.failed)}"
            + (f" ({self.pixels / 1e6 / self.seconds:.2f} Mpixel/s)" if self.seconds and self.pixels else "")
        ]
        lines += [f"  FAILED {path}: {reason}" for path, reason in self.failed]
        if self.skipped:
            lines.append("  (existing outputs were kept; --overwrite replaces them)")
        return "\n".join(lines)


@dataclasses.dataclass
class _Task:
    source: Path
    target: Path


def plan_outputs(inputs, output_dir, *, suffix_for, overwrite=False, report=None, extensions=IMAGE_EXTENSIONS):
    """Pair each input file with its output path; refuse collisions and input overwrites.

    ``suffix_for(path)`` gives the output extension for an input path; folders contribute
    the files whose extension is in ``extensions``.
    """
    output_dir = Path(output_dir)
    out_resolved = output_dir.resolve()
    if output_dir.exists() and not output_dir.is_dir():
        raise NotADirectoryError(f"output path {output_dir} exists and is not a folder")
    input_roots = {Path(i).resolve() for i in ([inputs] if isinstance(inputs, (str, os.PathLike)) else inputs)}
    # An earlier run's outputs inside an input folder are not inputs.
    found = [
        (p, r) for p, r in find_images(inputs, extensions=extensions)
        if not (out_resolved in p.resolve().parents and out_resolved not in input_roots)
    ]
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
    import tensorflow as tf

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


def ensure_output_dir(path):
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"output path {path} exists and is not a folder")
    os.makedirs(path, exist_ok=True)
    return path
