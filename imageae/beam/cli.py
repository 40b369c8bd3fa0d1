"""``imageae beam denoise|compress|decompress``: the folder jobs on Apache Beam.

Options that are not imageae's are Beam pipeline options (``--runner``, ``--project``,
``--direct_num_workers``, ...); they are checked against Beam's own list before anything runs.
Apache Beam is imported only when one of these commands runs (``pip install imageae[beam]``).
"""

import argparse
import sys
import time

from imageae.cli.common import EXIT_FAILED, EXIT_OK, EXIT_USAGE, _add_overwrite_flags
from imageae.codec.cli import add_compress_options, add_decompress_options
from imageae.denoise.cli import add_denoise_options

_EPILOG = """\
examples:
  imageae beam denoise photos/ -o clean/                     DirectRunner, in this process
  imageae beam compress photos/ -o packed/ --direct_num_workers 2 --direct_running_mode multi_processing
  imageae beam decompress packed/ -o restored/
  imageae beam denoise gs://BUCKET/photos -o gs://BUCKET/clean --runner DataflowRunner \\
      --project PROJECT --region us-central1 --temp_location gs://BUCKET/tmp \\
      --sdk_container_image REGION-docker.pkg.dev/PROJECT/imageae/beam:latest \\
      --dataflow_service_options "worker_accelerator=type:nvidia-tesla-t4;count:1;install-nvidia-driver"

Each job writes what its local command writes (same tiling, same .iae bytes), mirrors the input
tree below OUTPUT (a folder or a gs://, s3://, hdfs:// prefix), keeps existing outputs unless
--overwrite and writes each file atomically. Every file that fails (unreadable, a damaged .iae,
refused by the model, not writable) is a line {"path", "stage", "reason"} in
OUTPUT/beam-failures.jsonl, which each run replaces; the exit code is then 1.

Options not listed below are Beam pipeline options, given after INPUT and -o (or as
--name=value anywhere): --runner DirectRunner|DataflowRunner|FlinkRunner|SparkRunner, and that
runner's options. The PrismRunner downloads a binary when it starts, so offline it cannot run.
"""

_JOBS = {"denoise": "denoised", "compress": "compressed", "decompress": "decompressed"}


class _BeamJobParser(argparse.ArgumentParser):
    """Keeps the arguments it does not know in ``pipeline_args`` (Beam's options) instead of
    refusing them; ``_cmd_beam`` checks them against Beam's own list."""

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        namespace.pipeline_args = list(getattr(namespace, "pipeline_args", None) or []) + list(extras)
        return namespace, []


def _common(p, inputs_help):
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=inputs_help)
    p.add_argument("-o", "--output", required=True,
                   help="output folder or prefix (local, gs://, s3://, ...; mirrors the input tree)")
    p.add_argument("--runner", default="DirectRunner",
                   help="Beam runner: DirectRunner (default), DataflowRunner, FlinkRunner, SparkRunner, ...")
    _add_overwrite_flags(p)


def register(commands, train):
    """Add ``beam denoise|compress|decompress``; the handler of ``beam``."""
    p = commands.add_parser(
        "beam", help="run denoise / compress / decompress on Apache Beam (DirectRunner, Dataflow, Flink, Spark)",
        description="Run a folder job on Apache Beam: the same files as the local command, on one machine or a "
                    "cluster (pip install imageae[beam]).",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    jobs = p.add_subparsers(dest="family", metavar="JOB", parser_class=_BeamJobParser)
    kw = {"epilog": _EPILOG, "formatter_class": argparse.RawDescriptionHelpFormatter}

    d = jobs.add_parser("denoise", help="imageae denoise on Beam", description="Denoise images on Beam.", **kw)
    _common(d, "image files and/or folders (searched recursively)")
    add_denoise_options(d, models_on="the workers")

    c = jobs.add_parser("compress", help="imageae compress on Beam", description="Compress images on Beam.", **kw)
    _common(c, "image files and/or folders (searched recursively)")
    add_compress_options(c, models_on="the workers")

    x = jobs.add_parser("decompress", help="imageae decompress on Beam", description="Decode .iae files on Beam.", **kw)
    _common(x, ".iae files and/or folders (searched recursively)")
    add_decompress_options(x, models_on="the workers")
    return {"beam": _cmd_beam}


# Warnings Beam logs on every run that say nothing about the job: optional Google clients not
# installed, and RunInference's memory probe on platforms without the resource module.
_CHATTER = ("apitools not found", "Resource module is not available")


class _Quiet:
    """While in effect, the root logger drops Beam's :data:`_CHATTER`."""

    def filter(self, record):
        return not any(text in record.getMessage() for text in _CHATTER)

    def __enter__(self):
        import logging

        logging.getLogger().addFilter(self)
        return self

    def __exit__(self, *exc):
        import logging

        logging.getLogger().removeFilter(self)


def _import_beam():
    """``imageae.beam.transforms`` (Apache Beam with it); a RuntimeError naming the extra when
    Beam is not installed."""
    with _Quiet():
        try:
            import apache_beam  # noqa: F401

            from imageae.beam import transforms
        except ImportError as error:
            raise RuntimeError(f"'imageae beam' needs Apache Beam: pip install 'imageae[beam]' ({error})") from None
    return transforms


def pipeline_options(runner, pipeline_args):
    """Beam's ``PipelineOptions`` for ``--runner`` and the other arguments; a ValueError naming
    any argument that is neither imageae's nor a Beam option (Beam itself would drop it with a
    warning)."""
    import logging

    from apache_beam.options.pipeline_options import PipelineOptions

    argv = ["--runner", runner] + list(pipeline_args)
    if not any(a.split("=")[0] == "--default_sdk_harness_log_level" for a in argv):
        argv.append("--default_sdk_harness_log_level=ERROR")  # worker processes: errors only, unless asked
    logger = logging.getLogger("apache_beam.options.pipeline_options")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the unknown ones are named below, once
    try:
        options = PipelineOptions(argv)
        known = options.get_all_options(retain_unknown_options=False)
        every = options.get_all_options(retain_unknown_options=True)
    finally:
        logger.setLevel(level)
    unknown = sorted(set(every) - set(known))
    if unknown:
        raise ValueError(f"unrecognized arguments: {' '.join('--' + u for u in unknown)} (neither an imageae flag nor "
                         "a Beam pipeline option; see 'imageae beam JOB --help')")
    return options


def _transform(transforms, args):
    from imageae.codec import api as codec_api

    max_pixels = codec_api.MAX_CODEC_PIXELS if getattr(args, "max_pixels", None) is None else args.max_pixels
    if args.family == "denoise":
        return transforms.DenoiseImages(
            args.inputs, args.output, model=args.model, ext=args.ext, quality=args.quality,
            overwrite=args.overwrite, precision=args.precision, tile=args.tile, batch_size=args.batch_size,
            self_ensemble=args.self_ensemble, strength=args.strength)
    if args.family == "compress":
        if args.target_bpp is not None and not args.target_bpp > 0:
            raise ValueError(f"--target-bpp must be positive, got {args.target_bpp}")
        session = codec_api.codec_session(args.model)  # the model and quality checked before any work
        if args.quality is not None:
            session.check_quality(args.quality)
        return transforms.CompressImages(
            args.inputs, args.output, quality=args.quality, target_bpp=args.target_bpp, model=args.model,
            overwrite=args.overwrite, refine_steps=args.refine_steps, max_pixels=max_pixels)
    return transforms.DecompressImages(args.inputs, args.output, ext=args.ext, models=args.models,
                                       overwrite=args.overwrite, max_pixels=max_pixels)


def _counters(result):
    """The job's counters (written, skipped, pixels, ...) summed over steps (none counted: {});
    None where the runner does not report metrics."""
    try:
        from apache_beam.metrics.metric import MetricsFilter

        found = result.metrics().query(MetricsFilter().with_namespace("imageae"))["counters"]
    except Exception:  # noqa: BLE001  a runner without metrics: the summary says less, the files are the same
        return None
    totals = {}
    for counter in found:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + int(value or 0)
    return totals


def _read_report(path):
    import json

    from apache_beam.io.filesystems import FileSystems

    with FileSystems.open(path) as stream:
        return [json.loads(line) for line in stream.read().decode("utf-8").splitlines() if line.strip()]


def run_job(transform, options):
    """Run ``transform`` in a pipeline with ``options`` until it finishes; ``(counters, failures,
    report path, seconds)``."""
    import apache_beam as beam

    started = time.perf_counter()
    with _Quiet():
        pipeline = beam.Pipeline(options=options)
        _ = pipeline | "imageae" >> transform
        result = pipeline.run()
        state = result.wait_until_finish()
    if str(state).rsplit(".", 1)[-1] not in ("DONE", "None"):
        raise RuntimeError(f"the Beam pipeline ended in state {state}; see the runner's log")
    from imageae.beam.transforms import FAILURE_REPORT, _join

    report = _join(transform.output, FAILURE_REPORT)
    return _counters(result), _read_report(report), report, time.perf_counter() - started


def summary(verb, counters, failures, report, seconds, runner, *, most=20):
    """The lines the command prints: counts, the failed files (the first ``most``) and the report."""
    known = counters is not None
    counters = counters or {}
    written, skipped, pixels = (counters.get(k, 0) for k in ("written", "skipped", "pixels"))
    speed = f" ({pixels / 1e6 / seconds:.3g} Mpixel/s end to end, pipeline start included)" if pixels else ""
    counts = (f"{verb} {written} file(s), skipped {skipped} existing, " if known else f"{verb}: ")
    lines = [f"{counts}failed {len(failures)} in {seconds:.1f} s on {runner}{speed}"]
    lines += [f"  FAILED {f['path']} ({f['stage']}): {f['reason']}" for f in failures[:most]]
    if len(failures) > most:
        lines.append(f"  ... {len(failures) - most} more")
    lines.append(f"  failure report: {report} ({len(failures)} line(s) of JSON: path, stage, reason)")
    if counters.get("ignored"):
        lines.append(f"  note: {counters['ignored']} file(s) below the output folder were not taken as inputs")
    if skipped:
        lines.append("  (existing outputs were kept; --overwrite replaces them)")
    return lines


def _cmd_beam(args):
    transforms = _import_beam()
    options = pipeline_options(args.runner, args.pipeline_args)
    from imageae.pipelines.folder import ensure_output_dir

    if transforms._is_local(args.output):
        ensure_output_dir(args.output)
    transform = _transform(transforms, args)
    counters, failures, report, seconds = run_job(transform, options)
    if counters is not None and not counters.get("planned") and not failures:
        ignored = counters.get("ignored")
        print(f"imageae beam {args.family}: error: found no files to work on in {', '.join(args.inputs)} "
              "(files are matched by extension, in any case"
              + (f"; {ignored} below the output folder were left out" if ignored else "") + ")", file=sys.stderr)
        return EXIT_USAGE
    lines = summary(_JOBS[args.family], counters, failures, report, seconds, args.runner)
    print("\n".join(lines), file=sys.stderr if failures else sys.stdout)
    return EXIT_FAILED if failures else EXIT_OK
