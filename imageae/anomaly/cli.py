"""The anomaly job's subcommands: ``imageae anomaly score`` and ``imageae train anomaly``
(also reachable as ``imageae anomaly train``)."""

import argparse
import sys

from imageae.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    _add_device_flag,
    _add_folder_flags,
    _add_training_flags,
    _configure_device,
    _positive_int,
    _progress,
)

_EPILOG_SCORE = """\
examples:
  imageae anomaly score cells/ --model anomaly-elpv -o report/
  imageae anomaly score part1.png part2.png --model my-detector.keras -o report/ --no-heatmaps

Writes report/scores.csv (path,score,anomalous: higher scores are more anomalous, 0 is a
typical normal image, anomalous=1 above the threshold the model was calibrated with),
report/summary.json (counts, threshold, failures) and report/heatmaps/<input tree>/<name>.png:
each image in grey with its reconstruction error in colour over it. Every image is resized to
the model's side for scoring and the heat map is brought back to the image's size; images at
least 1.5x the training images' side are scored in windows of that side, side by side
(score: the highest window's; the threshold is per window). Flagged
images are results, not errors: the exit code is 0 unless files could not be read (then 1,
each named with the reason).
"""

_EPILOG_TRAIN = """\
examples:
  imageae train anomaly --data good_parts/ -o parts.keras
  imageae train anomaly --data /work/data/elpv/train -o saved_models/anomaly-elpv.keras --max-minutes 20
  imageae train anomaly --data digits/7 -o seven.keras --sparsity l1 --sparsity-weight 1e-3
  imageae train anomaly --data digits/7 -o seven.keras --contractive 0.01

Train on normal images only (anomalies are what the model has not seen). Each image is
resized to --size (default: the images' median side rounded up to the model's stride, at
most 64). A seeded --validation-fraction of the images is held out: it picks the best
checkpoint and sets the threshold so that --false-positive-rate of normal images are flagged.
Checkpoints and a CSV history go to --checkpoint-dir (resume with --resume); the model card
(.json) and a training-curve PNG go next to the output model.
"""


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (0.01 is 1 %), got {text}")
    return value


def _nonnegative_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _add_train_arguments(t):
    t.add_argument("--data", nargs="+", required=True, help="folders (or files) of normal images")
    t.add_argument("-o", "--output", required=True, help="where to write the trained .keras detector")
    t.add_argument("--size", type=_positive_int, default=0,
                   help="side the images are resized to, a multiple of the model's stride (default: auto)")
    t.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1 grey, 3 colour (default: 1)")
    t.add_argument("--code-size", type=_positive_int, default=32, help="length of the autoencoder's code (default: 32)")
    t.add_argument("--filters", default="", help="channels per stride-2 level, e.g. 32,64,128 (default: by --size)")
    t.add_argument("--steps", type=_positive_int, default=6000, help="optimiser steps (default: 6000)")
    t.add_argument("--steps-per-epoch", type=_positive_int, default=100,
                   help="steps between validations and checkpoints (default: 100)")
    t.add_argument("--batch-size", type=_positive_int, default=64, help="images per step (default: 64)")
    t.add_argument("--learning-rate", type=float, default=1e-3, help="peak Adam learning rate, cosine decay (default: 1e-3)")
    t.add_argument("--validation-fraction", type=_fraction, default=0.1,
                   help="share of the images held out for checkpoint choice and the threshold (default: 0.1)")
    t.add_argument("--false-positive-rate", type=_fraction, default=0.01,
                   help="share of normal images the threshold may flag (default: 0.01, 1 %%)")
    t.add_argument("--scoring", default=None,
                   help="auto (default): the combination of up to three terms that best separates the held-out "
                        "normal images from copies of them turned or mirrored (when the images have an orientation: "
                        "digits, parts) or with a drawn line or blot (when they look alike turned: textures, solar "
                        "cells); the calibration keeps the choice and why (see the README). Or terms joined by '+': "
                        "l2 (squared error), ssim (1 - local SSIM), l2max / l2wide (largest local mean of the squared "
                        "error, fine / coarse), zmax (the same on the error standardised per pixel), l2dark (l2wide of "
                        "only the pixels darker than their reconstruction), latent (Mahalanobis distance of the code), "
                        "intensity (the image's mean intensity against the training images', either way), darker (the "
                        "same, one-sided: darker than them); e.g. l2dark+darker for images whose defects are dark, "
                        "such as solar-cell electroluminescence, when a few known defective images can confirm it")
    t.add_argument("--sparsity", choices=["none", "l1", "kl"], default="none",
                   help="sparse autoencoder: L1 on the code, or KL divergence of the mean sigmoid(code) from "
                        "--sparsity-target (default: none)")
    t.add_argument("--sparsity-weight", type=_nonnegative_float, default=1e-3, help="weight of the sparsity loss (default: 1e-3)")
    t.add_argument("--sparsity-target", type=_fraction, default=0.05, help="target mean activation for kl (default: 0.05)")
    t.add_argument("--contractive", type=_nonnegative_float, default=0.0, metavar="WEIGHT",
                   help="contractive autoencoder: weight of the encoder Jacobian's squared Frobenius norm, "
                        "estimated by random finite differences (default: 0, off)")
    t.add_argument("--patience", type=_positive_int, default=15, help="early-stopping patience in epochs (default: 15)")
    t.add_argument("--tune", type=_positive_int, default=0, metavar="TRIALS",
                   help="first search code size, filters, learning rate and regulariser weights with KerasTuner "
                        "(TRIALS short runs sharing half of --steps/--max-minutes, scored on the validation split), "
                        "then train with the chosen values; needs the 'tune' extra (default: off)")
    _add_training_flags(t, "checkpoints and the CSV history")


def register(commands, train):
    """Add ``anomaly score`` (and ``anomaly train``) and ``train anomaly``; their handlers by command."""
    p = commands.add_parser(
        "anomaly", help="score images for anomalies with an autoencoder trained on normal ones",
        description="Anomaly detection by reconstruction: 'score' images with a trained detector; 'train' one "
                    "(the same as 'imageae train anomaly').",
        epilog=_EPILOG_SCORE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # dest "family": the CLI walks command -> family to find the deepest parser (imageae.cli._parse).
    actions = p.add_subparsers(dest="family", metavar="ACTION")
    s = actions.add_parser("score", help="score images: scores.csv, heat maps, summary",
                           description="Score images for anomalies.", epilog=_EPILOG_SCORE,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    s.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    s.add_argument("--model", required=True, help="a name from 'imageae models' (anomaly-elpv), a .keras detector, or a .tflite "
                        "written by 'imageae export MODEL --format tflite'")
    s.add_argument("-o", "--output", required=True, help="output folder for scores.csv, summary.json and heatmaps/")
    s.add_argument("--no-heatmaps", dest="heatmaps", action="store_false", help="write only the scores and summary")
    s.add_argument("--batch-size", type=_positive_int, default=64, help="images per model call (default: 64)")
    _add_device_flag(s)
    _add_folder_flags(s)
    a = actions.add_parser("train", help="the same as 'imageae train anomaly'", epilog=_EPILOG_TRAIN,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_arguments(a)
    t = train.add_parser("anomaly", help="an autoencoder anomaly detector from normal images",
                         description="Train an anomaly detector on normal images.", epilog=_EPILOG_TRAIN,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_train_arguments(t)
    return {"anomaly": _cmd_anomaly, "train anomaly": _cmd_train_anomaly}


def _cmd_anomaly(args):
    if args.family == "train":
        return _cmd_train_anomaly(args)
    from imageae.anomaly.api import score_folder

    _configure_device(args.device)
    report = score_folder(args.inputs, args.output, model=args.model, batch_size=args.batch_size,
                          heatmaps=args.heatmaps, overwrite=args.overwrite, progress=_progress(args))
    print(report.summary("scored"), file=sys.stderr if report.failed else sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_train_anomaly(args):
    from imageae.anomaly.scoring import DEFAULT_SCORING
    from imageae.anomaly.train import AnomalyTrainConfig, train_anomaly

    try:
        filters = tuple(int(f) for f in args.filters.split(",")) if args.filters else ()
    except ValueError:
        raise ValueError(f"--filters must be comma-separated integers, got {args.filters!r}") from None
    if not args.learning_rate > 0:
        raise ValueError(f"--learning-rate must be positive, got {args.learning_rate:g}")
    config = AnomalyTrainConfig(
        data=args.data, output=args.output, size=args.size, channels=args.channels, code_size=args.code_size,
        filters=filters, steps=args.steps, steps_per_epoch=args.steps_per_epoch, batch_size=args.batch_size,
        learning_rate=args.learning_rate, validation_fraction=args.validation_fraction,
        false_positive_rate=args.false_positive_rate, scoring=args.scoring or DEFAULT_SCORING,
        sparsity=args.sparsity, sparsity_weight=args.sparsity_weight if args.sparsity != "none" else 0.0,
        sparsity_target=args.sparsity_target, contractive_weight=args.contractive, patience_epochs=args.patience,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, seed=args.seed, precision=args.precision,
        max_seconds=60.0 * args.max_minutes, tune_trials=args.tune,
    )
    path = train_anomaly(config, progress=sys.stdout.isatty())
    print(f"wrote {path} and its model card {path.with_suffix('.json')}")
    return EXIT_OK
