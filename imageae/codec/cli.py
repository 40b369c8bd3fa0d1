"""The compress job's subcommands: ``imageae compress``, ``imageae decompress`` and ``imageae train codec``."""

import argparse
import sys

from imageae.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    _add_folder_flags,
    _add_training_flags,
    _check_learning_rates,
    _nonnegative_int,
    _positive_int,
    _progress,
)
from imageae.codec.api import DEFAULT_CODEC

_EPILOG_COMPRESS = """\
examples:
  imageae compress photos/ -o packed/                 every image, quality 6 of 9, tree mirrored
  imageae compress photo.jpg -o packed/ --quality 9   best quality (largest files)
  imageae compress photos/ -o packed/ --target-bpp 0.5   the best quality within 0.5 bits/pixel
  imageae compress photos/ -o packed/ --refine-steps 100  slower encoding, smaller files, same decoder
  imageae decompress packed/ -o restored/             back to PNG (lossless, so nothing more is lost)

Each image becomes one .iae file (format: docs/iae-format.md) holding the model name and
quality, the image size and grey/colour mode: decompress needs nothing else. With codec-v4,
quality 1 gives the smallest files (about 0.09 bits per pixel on photos), 9 the best pictures
(about 1.55). codec-v4 is experimental: its files are about 21 % smaller than JPEG's at equal
PSNR, but 21 % larger than WebP's. --refine-steps N spends encoding time on each image
(N steps of rate-distortion descent on its latents, about N x 1.2 s per Mpixel on 2 cores);
with N = 100, codec-v4 needs about 24 % fewer bits for the same PSNR. The files are ordinary
.iae files that decode as fast as any other.
Grey and colour images up to 89.5 Mpixel (--max-pixels raises the limit) are coded, in tiles,
in at most 2.7 GB (2.2 GB for 8192 x 8192); alpha channels and 16-bit images are refused by name
(keep those as PNG); an image's ICC colour profile is stored and restored. Existing outputs are
skipped unless --overwrite. Each file written is listed with its size, bits per pixel, the quality used
(the one --target-bpp chose) and its encoding time, also in OUTPUT/compress-report.csv.
"""


_EPILOG_TRAIN_CODEC = """\
examples:
  imageae train codec --data ../shared/datasets/photos/BSDS500/train ../shared/datasets/photos/BSDS500/test \\
      -o codec.keras --checkpoint-dir ~/ckpt/codec
  imageae train codec --data my_photos/ --init codec-v4 --steps 5000 --learning-rate 2e-5 -o my-codec.keras
      (fine-tune the shipped codec on your own images; compress with --model my-codec.keras)

Random square crops (--patch-size) with random horizontal flips. One model learns every quality
in --lambdas (loss = bits per pixel + lambda * 255^2 * MSE; each crop draws a quality); the
validation crops are coded at every quality with real rounding. The learning rate warms up
and then follows a cosine to zero over --steps. By default (--quantization mixed) the
synthesis trains on the rounded latents that decoding will give it.
"""


def add_compress_options(p, *, models_on):
    """The compress job's own options, for ``imageae compress`` and ``imageae beam compress``."""
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--quality", type=_positive_int,
                      help=f"1 (smallest) .. 9 (best) for {DEFAULT_CODEC}; 'imageae models' lists each codec's "
                           f"range (default: two thirds up the range, 6 for {DEFAULT_CODEC})")
    rate.add_argument("--target-bpp", type=float, metavar="BPP",
                      help="instead of --quality: the best quality whose file stays within BPP bits per pixel")
    p.add_argument("--model", default=DEFAULT_CODEC,
                   help=f"a compress model from 'imageae models' or a .keras path readable on {models_on}")
    p.add_argument("--refine-steps", type=_nonnegative_int, default=0, metavar="N",
                   help="optimise each image's latents for N steps before coding: smaller files or better "
                        "pictures, the same decoder, N x about 1.2 s per Mpixel on 2 cores (default 0: one "
                        "pass; 100 is a good value; images up to 4 Mpixel)")
    p.add_argument("--max-pixels", type=_positive_int, metavar="N",
                   help="refuse images of more than N pixels (default 89478485, about 89.5 Mpixel: Pillow's limit)")


def add_decompress_options(p, *, models_on):
    """The decompress job's own options, for ``imageae decompress`` and ``imageae beam decompress``."""
    p.add_argument("--ext", default="png", help="output format: png (default, lossless), tif, bmp, webp, jpg")
    p.add_argument("--model", action="append", dest="models", metavar="KERAS",
                   help=f"a codec .keras file of your own, readable on {models_on}, that wrote some of the "
                        "files (repeatable)")
    p.add_argument("--max-pixels", type=_positive_int, metavar="N",
                   help="refuse files declaring an image of more than N pixels, before decoding anything "
                        "(default 89478485, about 89.5 Mpixel: Pillow's limit; a 200 KB file can declare 8192 x 8192)")


def register(commands, train):
    """Add ``compress``, ``decompress`` and ``train codec``; their handlers by command."""
    p = commands.add_parser(
        "compress", help="compress images into .iae files with the learned codec",
        description="Compress images (files or folders) into .iae files with a learned codec.",
        epilog=_EPILOG_COMPRESS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder (created; mirrors the input tree)")
    add_compress_options(p, models_on="this machine")
    p.add_argument("--psnr", action="store_true",
                   help="also decode each file and report its PSNR against the input (dB; about the encoding "
                        "time again)")
    _add_folder_flags(p)

    p = commands.add_parser(
        "decompress", help="decode .iae files back into images",
        description="Decode .iae files (files or folders) into images.",
        epilog="examples:\n  imageae decompress packed/ -o restored/\n  imageae decompress a.iae -o out/ --ext jpg",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="FILE", help=".iae files and/or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder (created; mirrors the input tree)")
    add_decompress_options(p, models_on="this machine")
    _add_folder_flags(p)

    t = train.add_parser(
        "codec", help="a learned image codec (all its qualities at once)", description="Train a learned image codec.",
        epilog=_EPILOG_TRAIN_CODEC, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--data", nargs="+", required=True, help="folders of training photos")
    t.add_argument("-o", "--output", required=True, help="where to write the trained .keras model")
    t.add_argument("--init", help="start from this codec (name or .keras path) to fine-tune it")
    t.add_argument("--lambdas",
                   help="rate-distortion trade-off of each quality, increasing (default: those of the --init "
                        "model, else codec-v4's 0.00025,0.0005,0.001,0.0018,0.0035,0.0067,0.013,0.025,0.0483); "
                        "with --init, the model's lambdas plus new ones add qualities")
    t.add_argument("--quantization", choices=("mixed", "noise"), default="mixed",
                   help="what g_s and h_s see in training: 'mixed' rounds y - means and z as decoding will "
                        "(straight-through gradients; noise only in the rate term, Minnen & Singh 2020), "
                        "'noise' adds uniform noise everywhere (Balle 2018) (default: mixed)")
    t.add_argument("--filters", type=_positive_int, default=128, help="channels N of the transforms and z (default: 128)")
    t.add_argument("--latent", type=_positive_int, default=192, help="channels M of y (default: 192)")
    t.add_argument("--steps", type=_positive_int, default=100000, help="optimiser steps (default: 100000)")
    t.add_argument("--steps-per-epoch", type=_positive_int, default=500, help="steps between validations (default: 500)")
    t.add_argument("--batch-size", type=_positive_int, default=8, help="crops per step (default: 8)")
    t.add_argument("--patch-size", type=_positive_int, default=256, help="crop side, a multiple of 64 (default: 256)")
    t.add_argument("--learning-rate", type=float, default=1e-4, help="peak Adam learning rate (default: 1e-4)")
    t.add_argument("--warmup-steps", type=int, default=500, help="linear learning-rate warm-up steps (default: 500)")
    t.add_argument("--min-learning-rate", type=float, default=1e-6,
                   help="where the cosine decay ends (default: 1e-6)")
    t.add_argument("--patience", type=_positive_int, default=12, help="early-stopping patience in epochs (default: 12)")
    t.add_argument("--workers", type=_positive_int, default=1, help="threads cutting crops (default: 1)")
    _add_training_flags(t, "checkpoints, CSV history and TensorBoard logs")
    return {"compress": _cmd_compress, "decompress": _cmd_decompress, "train codec": _cmd_train_codec}


def _cmd_compress(args):
    from imageae.codec.api import compress_folder

    if args.target_bpp is not None and not args.target_bpp > 0:
        raise ValueError(f"--target-bpp must be positive, got {args.target_bpp}")
    report = compress_folder(args.inputs, args.output, quality=args.quality, target_bpp=args.target_bpp,
                             model=args.model, overwrite=args.overwrite, progress=_progress(args),
                             refine_steps=args.refine_steps, max_pixels=_max_pixels(args), psnr=args.psnr)
    print("\n".join(_compress_lines(report, args)), file=sys.stdout)
    print(report.summary("compressed"), file=sys.stderr if report.failed else sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILED


def _max_pixels(args):
    from imageae.codec.api import MAX_CODEC_PIXELS

    return MAX_CODEC_PIXELS if args.max_pixels is None else args.max_pixels


def _compress_lines(report, args, *, most=20):
    """One line per file written (the first ``most``; the CSV has all) and a line of totals."""
    from pathlib import Path

    from imageae.codec.api import COMPRESS_REPORT

    entries = report.entries
    if not entries:
        return []
    lines = [f"  {e['input']} -> {e['output']}: {e['bytes']} bytes, {8 * e['bytes'] / (e['width'] * e['height']):.3f} "
             f"bpp, quality {e['quality']}, {e['seconds']:.1f} s" + (f", {e['psnr']:.2f} dB" if "psnr" in e else "")
             for e in entries[:most]]
    if len(entries) > most:
        lines.append(f"  ... {len(entries) - most} more")
    pixels = sum(e["width"] * e["height"] for e in entries)
    total = sum(e["bytes"] for e in entries)
    qualities = sorted({e["quality"] for e in entries})
    chosen = (f"--target-bpp {args.target_bpp:g} chose quality " if args.target_bpp is not None else "quality ")
    chosen += ", ".join(f"{q} ({sum(e['quality'] == q for e in entries)} file(s))" for q in qualities)
    lines.append(f"{total} bytes for {pixels / 1e6:.2f} Mpixel: {8 * total / pixels:.3f} bpp overall; {chosen}; "
                 f"per-file table in {Path(args.output) / COMPRESS_REPORT}")
    return lines


def _cmd_decompress(args):
    from imageae.codec.api import decompress_folder

    report = decompress_folder(args.inputs, args.output, ext=args.ext, models=args.models,
                               overwrite=args.overwrite, progress=_progress(args), max_pixels=_max_pixels(args))
    print(report.summary("decompressed"), file=sys.stderr if report.failed else sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_train_codec(args):
    from imageae.codec.train import CodecTrainConfig, train_codec

    try:
        lambdas = tuple(float(v) for v in args.lambdas.split(",")) if args.lambdas else ()
    except ValueError:
        raise ValueError(f"--lambdas must be comma-separated numbers, got {args.lambdas!r}") from None
    if args.patch_size % 64:
        raise ValueError(f"--patch-size must be a multiple of 64 (the codec's stride), got {args.patch_size}")
    _check_learning_rates(args)
    config = CodecTrainConfig(
        data=args.data, output=args.output, lambdas=lambdas, num_filters=args.filters, num_latent=args.latent,
        quantization=args.quantization, init=args.init or "", patch_size=args.patch_size,
        batch_size=args.batch_size, steps=args.steps,
        steps_per_epoch=args.steps_per_epoch, learning_rate=args.learning_rate, warmup_steps=args.warmup_steps,
        min_learning_rate=args.min_learning_rate, patience_epochs=args.patience,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, seed=args.seed,
        precision=args.precision, workers=args.workers, max_seconds=60.0 * args.max_minutes,
    )
    path = train_codec(config, progress=sys.stdout.isatty())
    print(f"wrote {path} and its model card {path.with_suffix('.json')}")
    return EXIT_OK
