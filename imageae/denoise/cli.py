"""The denoise job's subcommands: ``imageae denoise``, ``imageae train denoiser`` and
``imageae train auto-strength``."""

import argparse
import sys

from imageae.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    _add_device_flag,
    _add_folder_flags,
    _add_precision_flag,
    _add_training_flags,
    _check_learning_rates,
    _configure_device,
    _positive_int,
    _progress,
)

_EPILOG_DENOISE = """\
examples:
  imageae denoise data/samples -o out/          every image below data/samples, tree mirrored
  imageae denoise scan.tif photo.jpg -o clean/  single files
  imageae denoise photos/ -o clean/ --ext png   write PNG whatever the input format
  imageae denoise photos/ -o clean/ --model denoise-grey   force a model (grey runs per channel)
  imageae denoise photos/ -o clean/ --strength 8   remove more than the estimate (auto) would
  imageae denoise film/ -o clean/ --strength 3     remove less: keep film grain and fine texture

Colour images go to denoise-colour, trained on real camera noise (sensor noise through a
camera pipeline, JPEG) and Gaussian noise; it estimates the noise level of each image
(--strength auto, at least 8: faint camera noise is invisible to the estimator; see
'imageae train auto-strength --help') or takes yours: a standard deviation on the 0..255 scale,
about 2-8 for camera photos, 15-50 for heavy noise, 1-2 for clean images. Grey images go to the
blind denoise-grey, or through denoise-colour when --strength is a number.

Outputs keep each input's size, grey/colour mode, alpha channel and bit depth (16-bit PNG and
TIFF stay 16-bit), in the input's format unless --ext says otherwise. Existing outputs are
skipped unless --overwrite. Unreadable files are reported by name and the run goes on; the
exit code is then 1.
"""


_EPILOG_TRAIN = """\
examples:
  imageae train denoiser --data ../shared/datasets/denoise/Train400 --channels 1 \\
      -o saved_models/denoise-grey.keras --checkpoint-dir ~/ckpt/grey
  imageae train denoiser --data my_photos/ --channels 3 --init denoise-colour --steps 2000 \\
      -o my-denoiser.keras        (fine-tune the shipped colour model on your own images)
  imageae train denoiser --data ../shared/datasets/photos/BSDS500/train ../shared/datasets/photos/BSDS500/test \\
      --channels 3 --noise camera --init denoise-colour -o my-photo-denoiser.keras
                                  (real camera noise, a model that takes --strength)

Patches are cut at random from the training images with random flips and rotations; white
Gaussian noise with sigma drawn uniformly from [--sigma-min, --sigma-max] (0..255 scale) is
added. A fixed validation set (centre crops of held-out images at sigma 15/25/50) decides the
best checkpoint and early stopping. Checkpoints, a CSV history and TensorBoard logs go to
--checkpoint-dir (resume with --resume); the model card (.json) and a training-curve PNG go
next to the output model.
"""

_EPILOG_AUTO_STRENGTH = """\
examples:
  imageae train auto-strength denoise-colour --pairs my_camera_pairs/ -o my-camera.keras
  imageae denoise photos/ -o clean/ --model my-camera.keras
  imageae train auto-strength denoise-colour --grey-data ../shared/datasets/denoise/Train400 -o c.keras

--strength auto estimates each image's noise level, but below a few grey levels the estimator
cannot tell faint camera noise from fine texture, and camera noise (correlated by demosaicing
and JPEG) needs more smoothing than its standard deviation suggests. So auto uses at least a
floor, chosen here as the one with the best mean PSNR over your pairs (candidates 0-15 on the
0..255 scale). The shipped denoise-colour's floor was calibrated this way on PolyU's Nikon D800
pairs (see its model card). A few pairs of 512x512 crops are enough; more pairs give a steadier
choice.

--pairs also chooses, together with the floor, the model's noise highpass (candidates 0, 4, 8,
16, 32 pixels): the Gaussian average of the noise the model finds is given back to the image, so
the model cannot shift brightness or colour over large areas. Real cameras' noise averages out
over such areas, but a model trained on synthetic noise learns shifts near black and clipped
channels that real pipelines do not make (strong colour casts show it most).

--grey-data calibrates the other half of a strength's meaning: a grey image given a strength
runs through the colour model with its grey copied into R, G and B, and noise that is the same in
all three channels reads to the model as weaker than it is; the strength is multiplied by the
gain (candidates 1-2) that denoises the clean grey images best at Gaussian sigma 15, 25 and 50.
"""


def _quality(text):
    value = _positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"quality must be 1..100, got {value}")
    return value


def add_denoise_options(p, *, models_on):
    """The denoise job's own options, for ``imageae denoise`` and ``imageae beam denoise``
    (``models_on``: where a .keras path given to --model must be readable)."""
    p.add_argument("--model", default="auto",
                   help="auto (grey model for grey images, colour model for colour), a name from "
                        f"'imageae models', or a .keras or exported .tflite path readable on {models_on} (default: auto)")
    p.add_argument("--strength", default="auto",
                   help="noise level to remove, 0..255 scale (about 2-8 for camera photos, 15-50 for heavy noise), "
                        "or auto: estimated per image, at least the model's floor (8 for denoise-colour). Only for "
                        "models that take a level, such as the colour default denoise-colour (default: auto)")
    p.add_argument("--ext", help="output format by extension: png, jpg, webp, tif, bmp (default: keep the input's)")
    p.add_argument("--quality", type=_quality, default=95, help="JPEG/WebP quality when writing those (default: 95)")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="tiles per model call (default: 4)")
    p.add_argument("--tile", type=_positive_int, default=1024,
                   help="tile size in pixels; larger images run as overlapping tiles, seamlessly (default: 1024)")
    p.add_argument("--self-ensemble", action="store_true",
                   help="average over the 8 flips and rotations of each image: 8x slower, about +0.1-0.2 dB")
    _add_precision_flag(p)


def register(commands, train):
    """Add ``denoise`` and ``train denoiser``; their handlers by command."""
    p = commands.add_parser(
        "denoise", help="remove noise from images (files or folders)", description="Remove noise from images.",
        epilog=_EPILOG_DENOISE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder (created; mirrors the input tree)")
    add_denoise_options(p, models_on="this machine")
    _add_folder_flags(p)
    _add_device_flag(p)

    t = train.add_parser(
        "denoiser", help="a denoiser (Gaussian or camera noise)", description="Train or fine-tune a denoiser.",
        epilog=_EPILOG_TRAIN, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--data", nargs="+", required=True, help="folders of clean training images")
    t.add_argument("-o", "--output", required=True, help="where to write the trained .keras model")
    t.add_argument("--channels", type=int, choices=[1, 3], default=1, help="1 grey, 3 colour (default: 1)")
    t.add_argument("--init", help="start from this model (name or .keras path) to fine-tune it")
    t.add_argument("--filters", default="64,128,256", help="channels per U-Net level (default: 64,128,256)")
    t.add_argument("--blocks-per-level", type=_positive_int, default=1, help="residual blocks per level (default: 1)")
    t.add_argument("--steps", type=_positive_int, default=14000, help="optimiser steps (default: 14000)")
    t.add_argument("--steps-per-epoch", type=_positive_int, default=500, help="steps between validations (default: 500)")
    t.add_argument("--batch-size", type=_positive_int, default=16, help="patches per step (default: 16)")
    t.add_argument("--patch-size", type=_positive_int, default=96,
                   help="patch side in pixels, a multiple of the U-Net's stride (8 for 3 levels); smaller images "
                        "are left out and named (default: 96)")
    t.add_argument("--learning-rate", type=float, default=4e-4,
                   help="peak Adam learning rate, cosine decay (default: 4e-4; 1e-3 diverged)")
    t.add_argument("--sigma-min", type=float, default=0.0, help="smallest training noise sigma, 0..255 scale (default: 0)")
    t.add_argument("--sigma-max", type=float, default=55.0, help="largest training noise sigma (default: 55)")
    t.add_argument("--noise", choices=["gaussian", "camera"], default="gaussian",
                   help="gaussian: a blind model on white Gaussian noise; camera: a model that takes a noise "
                        "level (denoise --strength), trained on camera noise (Poisson-Gaussian on a Bayer mosaic, "
                        "demosaicing, correlated noise, JPEG) mixed with Gaussian noise; colour only (default: gaussian)")
    t.add_argument("--gaussian-probability", type=float, default=0.35,
                   help="with --noise camera, the share of patches given white Gaussian noise instead (default: 0.35)")
    t.add_argument("--warmup-steps", type=int, default=200, help="linear learning-rate warm-up steps (default: 200)")
    t.add_argument("--min-learning-rate", type=float, default=1e-6,
                   help="where the cosine decay ends (default: 1e-6)")
    t.add_argument("--patience", type=_positive_int, default=10, help="early-stopping patience in epochs (default: 10)")
    t.add_argument("--workers", type=_positive_int, default=1, help="threads cutting patches (default: 1)")
    _add_training_flags(t, "checkpoints, CSV history and TensorBoard logs")

    a = train.add_parser(
        "auto-strength", help="calibrate --strength auto on noisy/clean pairs from your camera",
        description="Calibrate the least strength that --strength auto uses, and the noise highpass, on real "
                    "noisy/clean pairs.",
        epilog=_EPILOG_AUTO_STRENGTH, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a.add_argument("model", help="a denoiser that takes a noise level: denoise-colour or a .keras path")
    a.add_argument("--pairs",
                   help="folder of <name>_real.<ext> (one noisy shot) and <name>_mean.<ext> (clean: the mean of "
                        "many shots of the same static scene, or a low-ISO shot) pairs: calibrates the auto floor")
    a.add_argument("--grey-data",
                   help="folder of clean images (read as grey; the first 40): calibrates how a set strength "
                        "carries over to grey images, which run through a colour model copied into R, G and B")
    a.add_argument("-o", "--output", required=True, help="where to write the calibrated .keras model (and its card)")
    return {"denoise": _cmd_denoise, "train denoiser": _cmd_train_denoiser,
            "train auto-strength": _cmd_train_auto_strength}


def _cmd_train_auto_strength(args):
    from imageae.denoise.train import calibrate_auto_strength

    pairs = [0]

    def progress(name):
        pairs[0] += 1
        print(f"  {pairs[0]}: {name}", flush=True)

    path = calibrate_auto_strength(args.model, args.output, pairs_dir=args.pairs, grey_dir=args.grey_data,
                                   progress=progress)
    import json

    card = json.loads(path.with_suffix(".json").read_text())
    if args.pairs:
        section = card["auto_strength"]
        table = "  ".join(f"{f}: {v:.2f}" for f, v in section["mean_psnr_db_by_floor"].items())
        print(f"mean PSNR (dB) by floor (at the chosen noise highpass) over {section['pair_count']} pairs: {table}")
        table = "  ".join(f"{h}: {v:.2f}" for h, v in section["mean_psnr_db_by_highpass"].items())
        print(f"mean PSNR (dB) by noise highpass (pixels) at that floor: {table}")
        print(f"chosen floor {section['floor']:g}, noise highpass {section['noise_highpass']:g} pixels")
    if args.grey_data:
        section = card["grey_strength"]
        table = "  ".join(f"{g}: {v:.2f}" for g, v in section["mean_psnr_db_by_gain"].items())
        print(f"mean PSNR (dB) by grey gain: {table}")
        print(f"chosen grey gain {section['gain']:g}")
    print(f"wrote {path} and its model card {path.with_suffix('.json')}")
    return EXIT_OK


def _cmd_denoise(args):
    from imageae.denoise.api import denoise_folder

    _configure_device(args.device)
    progress = _progress(args)
    report = denoise_folder(
        args.inputs, args.output, model=args.model, ext=args.ext, quality=args.quality,
        overwrite=args.overwrite, precision=args.precision, strength=args.strength,
        tile=args.tile, batch_size=args.batch_size, progress=progress, self_ensemble=args.self_ensemble,
    )
    print(report.summary("denoised"), file=sys.stderr if report.failed else sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_train_denoiser(args):
    from imageae.denoise.train import DenoiserTrainConfig, train_denoiser

    try:
        filters = tuple(int(f) for f in args.filters.split(","))
    except ValueError:
        raise ValueError(f"--filters must be comma-separated integers, got {args.filters!r}") from None
    _check_learning_rates(args)
    config = DenoiserTrainConfig(
        data=args.data, output=args.output, channels=args.channels, init=args.init or "", filters=filters,
        blocks_per_level=args.blocks_per_level, steps=args.steps, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size, patch_size=args.patch_size, learning_rate=args.learning_rate,
        sigma_min=args.sigma_min, sigma_max=args.sigma_max, noise=args.noise,
        gaussian_probability=args.gaussian_probability, patience_epochs=args.patience,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, seed=args.seed, precision=args.precision,
        warmup_steps=args.warmup_steps, min_learning_rate=args.min_learning_rate, workers=args.workers,
        max_seconds=60.0 * args.max_minutes,
    )
    path = train_denoiser(config, progress=sys.stdout.isatty())
    print(f"wrote {path} and its model card {path.with_suffix('.json')}")
    return EXIT_OK
