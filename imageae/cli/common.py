"""What every job's subcommands share: exit codes, argparse types, the runtime/folder/training flags,
--device and --progress."""

import argparse

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _int_at_least(minimum, expected):
    """An argparse type: an int of at least ``minimum``, else "expected <expected>, got ..."."""

    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
        return value

    return parse


_positive_int = _int_at_least(1, "a positive integer")
_nonnegative_int = _int_at_least(0, "a whole number >= 0")


_PRECISION_HELP = "compute precision: auto = bfloat16 on CPUs that have it, float16 on GPUs, else float32"


def _add_runtime_flags(parser, *, precision_help=_PRECISION_HELP):
    """--device and --precision; a job whose 'auto' means something else says so in ``precision_help``."""
    _add_device_flag(parser)
    _add_precision_flag(parser, help_text=precision_help)


def _add_device_flag(parser):
    """--device, for jobs that compute here (a Beam job computes on its workers: no --device)."""
    parser.add_argument(
        "--device", choices=["auto", "cpu", "gpu"], default="auto",
        help="where to compute: a GPU when TensorFlow sees one (auto), or force one (default: auto)",
    )


def _add_precision_flag(parser, *, help_text=_PRECISION_HELP):
    """--precision: the Keras dtype policy, or auto (:func:`imageae.runtime.choose_precision`)."""
    parser.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                        default="auto", help=help_text)


def _add_overwrite_flags(parser):
    """--skip-existing (the default) or --overwrite, into ``args.overwrite``."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--skip-existing", dest="overwrite", action="store_false", default=False,
                       help="keep outputs that already exist (default)")
    group.add_argument("--overwrite", dest="overwrite", action="store_true", help="replace existing outputs")


def _add_folder_flags(parser):
    """What a local folder job takes: --skip-existing/--overwrite and --progress."""
    _add_overwrite_flags(parser)
    parser.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                        help="progress bar with images/s (auto: only on a terminal)")


def _add_training_flags(parser, what):
    parser.add_argument("--max-minutes", type=float, default=0.0,
                        help="stop after this much training time in this run, keeping the best epoch; --resume "
                             "then trains the steps left (default: no limit)")
    parser.add_argument("--checkpoint-dir", default="",
                        help=f"{what} (default: next to --output; keep it outside the repo)")
    parser.add_argument("--resume", action="store_true",
                        help="continue from the last checkpoint in --checkpoint-dir up to the steps (or epochs) asked "
                             "for, after a time cut or Ctrl-C")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    _add_precision_flag(parser, help_text="training precision (default: auto)")


def _check_learning_rates(args):
    """The cosine schedule runs from --learning-rate down to --min-learning-rate."""
    if not args.learning_rate > 0:
        raise ValueError(f"--learning-rate must be positive, got {args.learning_rate:g}")
    if not 0 <= args.min_learning_rate <= args.learning_rate:
        raise ValueError(f"--min-learning-rate must be between 0 and --learning-rate ({args.learning_rate:g}), "
                         f"got {args.min_learning_rate:g}")


def _configure_device(device):
    """Hide GPUs for --device cpu (precision is then chosen for the CPU); refuse --device gpu
    when there is none."""
    import tensorflow as tf

    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    elif device == "gpu" and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError("--device gpu: TensorFlow sees no GPU on this machine")


def _progress(args):
    return {"auto": None, "on": True, "off": False}[args.progress]
