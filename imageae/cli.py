"""The ``imageae`` command line: argparse only; flags become API calls and configs here.

Exit codes: 0 every file succeeded, 1 some files failed (each named with its reason),
2 usage error, 130 interrupted.
"""

import argparse
import json
import os
import sys

from imageae.api import DEFAULT_CODEC  # cheap: the package imports the API anyway

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_EPILOG_DENOISE = """\
examples:
  imageae denoise data/samples -o out/          every image below data/samples, tree mirrored
  imageae denoise scan.tif photo.jpg -o clean/  single files
  imageae denoise photos/ -o clean/ --ext png   write PNG whatever the input format
  imageae denoise photos/ -o clean/ --model denoise-grey   force a model (grey runs per channel)

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

Patches are cut at random from the training images with random flips and rotations; white
Gaussian noise with sigma drawn uniformly from [--sigma-min, --sigma-max] (0..255 scale) is
added. A fixed validation set (centre crops of held-out images at sigma 15/25/50) decides the
best checkpoint and early stopping. Checkpoints, a CSV history and TensorBoard logs go to
--checkpoint-dir (resume with --resume); the model card (.json) and a training-curve PNG go
next to the output model.
"""


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

_EPILOG_GENERATE = """\
examples:
  imageae generate -n 64 -o digits/ --grid                  64 digits (the default model, vae-digits)
                                                            and a contact sheet
  imageae generate -n 16 -o faces/ --model vae-faces64 --seed 7 --temperature 0.8
  imageae generate -n 1000 -o out/ --sampler normal         sample the plain N(0, I) prior
  imageae generate -n 100 -o digits/ --grid --no-files      only the contact sheet

Samples are written as they are made (any -n runs in bounded memory) as
sample_00000.png, sample_00001.png, ...; existing files are kept unless --overwrite. The
grid holds at most the first 1024 samples. Sampling and decoding run in float32 unless
--precision says otherwise, so the same --seed gives the same images on every machine
where float32 arithmetic rounds alike, and the same as a model exported with
'imageae export' (sample i depends only on the seed and i: -n 10 gives the first 10 of -n 100).
"""

_EPILOG_INTERPOLATE = """\
examples:
  imageae interpolate a.png b.png -o strip.png               8 steps with vae-digits (the default)
  imageae interpolate face1.jpg face2.jpg -o morph.png --model vae-faces64 --steps 10

Each image is centre-cropped to a square and resized to the model's size. The default model,
vae-digits, knows 28x28 grey handwritten digits only: a photo comes out as a digit-like blob
(a warning says so); use --model vae-faces64 for photos of faces. An existing -o file is kept
unless --overwrite.
"""

_EPILOG_RECONSTRUCT = """\
examples:
  imageae reconstruct digits/ -o recon/                      with vae-digits (the default)
  imageae reconstruct faces/ -o recon/ --model vae-faces64

Each image is centre-cropped to a square, resized to the model's size, encoded and decoded,
and written as PNG at that size, mirroring the input tree. The default model, vae-digits, knows
28x28 grey handwritten digits only: photos come out as digit-like blobs (a warning names each
image that does not fit the model); use --model vae-faces64 for photos of faces. Existing
outputs are kept unless --overwrite; unreadable files are named and the rest goes on (exit 1).
"""

# generate --grid: a contact sheet of at most this many samples (a sheet of 10 million would
# take gigabytes); the samples themselves are all written.
GRID_LIMIT = 1024


def _add_vae_runtime_flags(parser):
    """--device and --precision for the VAE commands, whose 'auto' precision is float32."""
    parser.add_argument(
        "--device", choices=["auto", "cpu", "gpu"], default="auto",
        help="where to compute: a GPU when TensorFlow sees one (auto), or force one (default: auto)",
    )
    parser.add_argument(
        "--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"], default="auto",
        help="compute precision: auto = float32 (the same images as on machines without bfloat16 and as an "
             "exported model); mixed_bfloat16 is faster on CPUs that have it (vae-faces64: about 2.5x) but moves "
             "pixels by a few grey levels (default: auto)",
    )


def _seed(text):
    """An argparse type: a seed in 0..2**63-1 (TensorFlow's stateless seeds are int64)."""
    from imageae.generation import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number in 0..2**63-1, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a whole number in 0..2**63-1 ({MAX_SEED}), got {value}")
    return value


def _temperature(text):
    """An argparse type: a temperature in (0, 100]; inf, nan and <= 0 would give black images."""
    from imageae.generation import MAX_TEMPERATURE

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not 0.0 < value <= MAX_TEMPERATURE:
        raise argparse.ArgumentTypeError(f"--temperature must be positive and at most {MAX_TEMPERATURE:g} "
                                         f"(1 samples the model's own spread), got {text!r}")
    return value

_EPILOG_TRAIN_VAE = """\
examples:
  imageae train vae --data ../shared/datasets/digits/mnist/x_train.npz --size 28 --channels 1 \\
      --latent-dim 16 --filters 32,64 --likelihood bernoulli --epochs 40 -o vae-digits.keras
  imageae train vae --data my_faces/ --size 64 --crop 148 --flip -o my-faces.keras
  imageae train vae --data my_faces/ --init vae-faces64 --crop 148 --flip --epochs 20 \\
      --learning-rate 1e-4 -o my-faces.keras

With --init, the options marked (*) default to the model's own values (its shape must match)
and the finished KL warm-up is not run again.

Each image is centre-cropped to a square (--crop pixels, or the largest centred square) and
resized with Lanczos to --size. The KL term is warmed up linearly over --kl-warmup-steps; a
held-out 5 % gives the validation ELBO that picks the best checkpoint and stops early; a grid of
samples is written to --checkpoint-dir after every epoch. After training, a Gaussian mixture is
fitted to the training latents and stored in the model (the 'gmm' sampler); its size is the
one under which the held-out images' latents are most likely (--mixture-components auto, the
default) unless you give one.

--adversarial-weight W (with --init) sharpens a trained VAE's decoder instead: the encoder and
the mixture stay fixed, and the decoder learns from L1 reconstruction plus a GAN loss, on its
reconstructions and on mixture samples, from a critic trained alongside (VQGAN-style adaptive
weight, DiffAugment, an exponential moving average of the decoder kept). An epoch is one pass
over the (flipped) images in batches of 32; checkpoints hold the averaged model and the critic.
  imageae train vae --data my_faces/ --init vae-faces64 --crop 148 --flip \\
      --adversarial-weight 0.5 --epochs 30 -o my-sharp-faces.keras
"""


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


def _mixture_components(text):
    return "auto" if text == "auto" else _positive_int(text)


def _quality(text):
    value = _positive_int(text)
    if value > 100:
        raise argparse.ArgumentTypeError(f"quality must be 1..100, got {value}")
    return value


def _add_runtime_flags(parser):
    parser.add_argument(
        "--device", choices=["auto", "cpu", "gpu"], default="auto",
        help="where to compute: a GPU when TensorFlow sees one (auto), or force one (default: auto)",
    )
    parser.add_argument(
        "--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"], default="auto",
        help="compute precision: auto = bfloat16 on CPUs that have it, float16 on GPUs, else float32",
    )


def _add_folder_flags(parser):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--skip-existing", dest="overwrite", action="store_false", default=False,
                       help="keep outputs that already exist (default)")
    group.add_argument("--overwrite", dest="overwrite", action="store_true", help="replace existing outputs")
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
    parser.add_argument("--precision", choices=["auto", "float32", "mixed_bfloat16", "mixed_float16"],
                        default="auto", help="training precision (default: auto)")


def build_parser():
    parser = argparse.ArgumentParser(
        prog="imageae",
        description="Convolutional autoencoders for images: denoise photos and scans, compress images into "
                    "small .iae files, generate new images.",
        epilog="Run 'imageae COMMAND --help' for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"imageae {_version()}")
    # Not required here: main() says "a COMMAND is required" only after naming any unknown flag.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = commands.add_parser(
        "denoise", help="remove noise from images (files or folders)", description="Remove noise from images.",
        epilog=_EPILOG_DENOISE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder (created; mirrors the input tree)")
    p.add_argument("--model", default="auto",
                   help="auto (grey model for grey images, colour model for colour), a name from "
                        "'imageae models', or a .keras path (default: auto)")
    p.add_argument("--ext", help="output format by extension: png, jpg, webp, tif, bmp (default: keep the input's)")
    p.add_argument("--quality", type=_quality, default=95, help="JPEG/WebP quality when writing those (default: 95)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--skip-existing", dest="overwrite", action="store_false", default=False,
                       help="keep outputs that already exist (default)")
    group.add_argument("--overwrite", dest="overwrite", action="store_true", help="replace existing outputs")
    p.add_argument("--batch-size", type=_positive_int, default=4, help="tiles per model call (default: 4)")
    p.add_argument("--tile", type=_positive_int, default=1024,
                   help="tile size in pixels; larger images run as overlapping tiles, seamlessly (default: 1024)")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar with images/s (auto: only on a terminal)")
    p.add_argument("--self-ensemble", action="store_true",
                   help="average over the 8 flips and rotations of each image: 8x slower, about +0.1-0.2 dB")
    _add_runtime_flags(p)

    p = commands.add_parser(
        "compress", help="compress images into .iae files with the learned codec",
        description="Compress images (files or folders) into .iae files with a learned codec.",
        epilog=_EPILOG_COMPRESS, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder (created; mirrors the input tree)")
    rate = p.add_mutually_exclusive_group()
    rate.add_argument("--quality", type=_positive_int,
                      help=f"1 (smallest) .. 9 (best) for {DEFAULT_CODEC}; 'imageae models' lists each codec's "
                           f"range (default: two thirds up the range, 6 for {DEFAULT_CODEC})")
    rate.add_argument("--target-bpp", type=float, metavar="BPP",
                      help="instead of --quality: the best quality whose file stays within BPP bits per pixel")
    p.add_argument("--model", default=DEFAULT_CODEC, help="a compress model from 'imageae models' or a .keras path")
    p.add_argument("--refine-steps", type=_nonnegative_int, default=0, metavar="N",
                   help="optimise each image's latents for N steps before coding: smaller files or better "
                        "pictures, the same decoder, N x about 1.2 s per Mpixel on 2 cores (default 0: one "
                        "pass; 100 is a good value; images up to 4 Mpixel)")
    p.add_argument("--max-pixels", type=_positive_int, metavar="N",
                   help="refuse images of more than N pixels (default 89478485, about 89.5 Mpixel: Pillow's limit)")
    _add_folder_flags(p)

    p = commands.add_parser(
        "decompress", help="decode .iae files back into images",
        description="Decode .iae files (files or folders) into images.",
        epilog="examples:\n  imageae decompress packed/ -o restored/\n  imageae decompress a.iae -o out/ --ext jpg",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="FILE", help=".iae files and/or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder (created; mirrors the input tree)")
    p.add_argument("--ext", default="png", help="output format: png (default, lossless), tif, bmp, webp, jpg")
    p.add_argument("--model", action="append", dest="models", metavar="KERAS",
                   help="a codec .keras file of your own that wrote some of the files (repeatable)")
    p.add_argument("--max-pixels", type=_positive_int, metavar="N",
                   help="refuse files declaring an image of more than N pixels, before decoding anything "
                        "(default 89478485, about 89.5 Mpixel: Pillow's limit; a 200 KB file can declare 8192 x 8192)")
    _add_folder_flags(p)

    p = commands.add_parser(
        "generate", help="synthesise new images with a VAE", description="Synthesise new images with a VAE.",
        epilog=_EPILOG_GENERATE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-n", "--count", type=_positive_int, default=16, help="number of images (default: 16)")
    p.add_argument("-o", "--output", required=True, help="output folder for sample_NNNNN.png files (created)")
    p.add_argument("--model", default="vae-digits",
                   help="a generate model from 'imageae models' or a .keras path (default: vae-digits, 28x28 "
                        "grey digits; vae-faces64 for 64x64 faces)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="0..2**63-1; the same seed gives the same images (default: 0)")
    p.add_argument("--temperature", type=_temperature, default=1.0,
                   help="latent standard deviation scale, in (0, 100]; < 1 cleaner and less varied (default: 1.0)")
    p.add_argument("--sampler", choices=["normal", "gmm"], default="gmm",
                   help="gmm: the mixture fitted to the training latents (default); normal: the N(0, I) prior")
    p.add_argument("--grid", action="store_true",
                   help=f"also write grid.png, a contact sheet of the samples (the first {GRID_LIMIT} at most)")
    p.add_argument("--no-files", dest="files", action="store_false",
                   help="with --grid: write only grid.png, no sample files")
    _add_folder_flags(p)
    _add_vae_runtime_flags(p)

    p = commands.add_parser("interpolate", help="morph between two images through a VAE's latent space",
                            description="Decode points on a latent path between two images into one strip image.",
                            epilog=_EPILOG_INTERPOLATE, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image_a", metavar="A", help="the image the strip starts from")
    p.add_argument("image_b", metavar="B", help="the image it ends at")
    p.add_argument("-o", "--output", required=True,
                   help="output image file, a horizontal strip (PNG; .jpg, .webp, .tif, .bmp by extension)")
    p.add_argument("--steps", type=_int_at_least(2, "a whole number >= 2"), default=8,
                   help="images in the strip, ends included (default: 8)")
    p.add_argument("--model", default="vae-digits",
                   help="a generate model or a .keras path (default: vae-digits, 28x28 grey digits; "
                        "vae-faces64 for faces)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--skip-existing", dest="overwrite", action="store_false", default=False,
                       help="keep the output if it already exists (default)")
    group.add_argument("--overwrite", dest="overwrite", action="store_true", help="replace an existing output")
    _add_vae_runtime_flags(p)

    p = commands.add_parser("reconstruct", help="encode and decode images with a VAE",
                            description="Write each image as the VAE reconstructs it (centre-cropped, resized).",
                            epilog=_EPILOG_RECONSTRUCT, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, help="output folder (created; mirrors the input tree, PNG)")
    p.add_argument("--model", default="vae-digits",
                   help="a generate model or a .keras path (default: vae-digits, 28x28 grey digits; "
                        "vae-faces64 for faces)")
    _add_folder_flags(p)
    _add_vae_runtime_flags(p)

    p = commands.add_parser(
        "export", help="export a model as a SavedModel for TensorFlow Serving",
        description="Write MODEL as a SavedModel in TF Serving's layout DIR/<model>/<version>/.",
        epilog="example:\n  imageae export denoise-colour -o serving/ --version 1\n"
               "  saved_model_cli show --all --dir serving/denoise-colour/1\n\n"
               "See README.md, 'Serving with TensorFlow Serving', for the signatures and REST/gRPC requests.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="a name from 'imageae models' or a .keras path")
    p.add_argument("-o", "--output", required=True, help="model base folder (TF Serving's --model_base_path parent)")
    p.add_argument("--version", type=_positive_int, default=1, help="version number folder (default: 1)")

    p = commands.add_parser("models", help="list the shipped models", description="List the shipped models.")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = commands.add_parser("train", help="train or fine-tune a model on your own images",
                            description="Train or fine-tune a model.")
    train = p.add_subparsers(dest="family", metavar="MODEL")  # required: checked in main()
    t = train.add_parser(
        "denoiser", help="a blind Gaussian denoiser", description="Train a blind Gaussian denoiser.",
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
    t.add_argument("--warmup-steps", type=int, default=200, help="linear learning-rate warm-up steps (default: 200)")
    t.add_argument("--min-learning-rate", type=float, default=1e-6,
                   help="where the cosine decay ends (default: 1e-6)")
    t.add_argument("--patience", type=_positive_int, default=10, help="early-stopping patience in epochs (default: 10)")
    t.add_argument("--workers", type=_positive_int, default=1, help="threads cutting patches (default: 1)")
    _add_training_flags(t, "checkpoints, CSV history and TensorBoard logs")
    t = train.add_parser(
        "vae", help="a convolutional VAE on any folder of images", description="Train a convolutional VAE.",
        epilog=_EPILOG_TRAIN_VAE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    t.add_argument("--data", nargs="+", required=True, help="folders of images, .npz arrays or MNIST IDX files")
    t.add_argument("-o", "--output", required=True, help="where to write the trained .keras model")
    t.add_argument("--init", help="start from this VAE (name or .keras path) to fine-tune it; the options marked "
                                  "(*) then default to the model's own, and its shape options must match it")
    t.add_argument("--size", type=_positive_int, help="(*) image side after crop and resize (default: 64)")
    t.add_argument("--channels", type=int, choices=[1, 3], help="(*) 1 grey, 3 colour (default: 3)")
    t.add_argument("--crop", type=int, default=0, help="centre-crop side in pixels before resizing (default: largest square)")
    t.add_argument("--latent-dim", type=_positive_int, help="(*) latent size (default: 128)")
    t.add_argument("--filters", help="(*) encoder channels per stride-2 level (default: 32,64,128,256)")
    t.add_argument("--likelihood", choices=["bernoulli", "gaussian"],
                   help="(*) bernoulli for near-binary images such as digits, gaussian for photos (default)")
    t.add_argument("--gaussian-sigma", type=float,
                   help="(*) gaussian likelihood's std on 0..1; smaller gives sharper images (default: 0.1)")
    t.add_argument("--beta", type=float, help="(*) KL weight after warm-up (default: 1.0)")
    t.add_argument("--kl-warmup-steps", type=int, default=2000, help="steps of linear KL warm-up (default: 2000)")
    t.add_argument("--mixture-components", type=_mixture_components,
                   help="(*) GMM sampler components, or 'auto': each of 5, 10, 20, 40, 80, 160 is fitted and the "
                        "one under which the validation images' latents are most likely is kept (default: auto)")
    t.add_argument("--flip", action="store_true", help="random horizontal flips (faces yes, digits no)")
    t.add_argument("--epochs", type=_positive_int, default=30, help="epochs (default: 30)")
    t.add_argument("--batch-size", type=_positive_int,
                   help="images per step, at most the training images (default: 128; 32 with --adversarial-weight)")
    t.add_argument("--learning-rate", type=float,
                   help="Adam learning rate (default: 1e-3; 1e-4 for the decoder with --adversarial-weight, "
                        "twice that for its critic)")
    t.add_argument("--patience", type=_positive_int, default=8, help="early-stopping patience in epochs (default: 8)")
    t.add_argument("--adversarial-weight", type=float, default=0.0, metavar="W",
                   help="sharpen the decoder of the --init VAE: L1 reconstruction plus a GAN loss (a critic trained "
                        "alongside) weighted W times their gradient-norm ratio; the encoder and the latent mixture "
                        "stay fixed; TensorFlow backend (default: 0, off; 0.5 made vae-faces64)")
    _add_training_flags(t, "checkpoints, CSV history and per-epoch sample grids")
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
    t = train.add_parser(
        "digit-classifier", help="the digit classifier whose features score generated digits (FID/KID)",
        description="Train the small MNIST classifier used as the feature space of digit FID/KID.",
    )
    t.add_argument("--images", required=True, help="MNIST images (IDX .gz or .npz)")
    t.add_argument("--labels", required=True, help="their labels (IDX .gz or .npz)")
    t.add_argument("-o", "--output", required=True, help="where to write the .keras model")
    t.add_argument("--epochs", type=_positive_int, default=8, help="epochs (default: 8)")
    t.add_argument("--validation", type=_positive_int, default=2000, help="last N images held out (default: 2000)")
    return parser


def _check_learning_rates(args):
    """The cosine schedule runs from --learning-rate down to --min-learning-rate."""
    if not args.learning_rate > 0:
        raise ValueError(f"--learning-rate must be positive, got {args.learning_rate:g}")
    if not 0 <= args.min_learning_rate <= args.learning_rate:
        raise ValueError(f"--min-learning-rate must be between 0 and --learning-rate ({args.learning_rate:g}), "
                         f"got {args.min_learning_rate:g}")


def _version():
    from imageae import __version__

    return __version__


def _configure_device(device):
    """Hide GPUs for --device cpu (precision is then chosen for the CPU); refuse --device gpu
    when there is none."""
    import tensorflow as tf

    if device == "cpu":
        tf.config.set_visible_devices([], "GPU")
    elif device == "gpu" and not tf.config.list_physical_devices("GPU"):
        raise RuntimeError("--device gpu: TensorFlow sees no GPU on this machine")


def _cmd_denoise(args):
    from imageae.api import denoise_folder

    _configure_device(args.device)
    progress = _progress(args)
    report = denoise_folder(
        args.inputs, args.output, model=args.model, ext=args.ext, quality=args.quality,
        overwrite=args.overwrite, precision=args.precision,
        tile=args.tile, batch_size=args.batch_size, progress=progress, self_ensemble=args.self_ensemble,
    )
    print(report.summary("denoised"), file=sys.stderr if report.failed else sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILED


def _write_png(path, array):
    from imageae.data.io import DecodedImage, write_image

    write_image(path, DecodedImage(array, None, 8, "PNG"), fmt="PNG")


def _cmd_compress(args):
    from imageae.api import compress_folder

    if args.target_bpp is not None and not args.target_bpp > 0:
        raise ValueError(f"--target-bpp must be positive, got {args.target_bpp}")
    report = compress_folder(args.inputs, args.output, quality=args.quality, target_bpp=args.target_bpp,
                             model=args.model, overwrite=args.overwrite, progress=_progress(args),
                             refine_steps=args.refine_steps, max_pixels=_max_pixels(args))
    print("\n".join(_compress_lines(report, args)), file=sys.stdout)
    print(report.summary("compressed"), file=sys.stderr if report.failed else sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILED


def _max_pixels(args):
    from imageae.api import MAX_CODEC_PIXELS

    return MAX_CODEC_PIXELS if args.max_pixels is None else args.max_pixels


def _compress_lines(report, args, *, most=20):
    """One line per file written (the first ``most``; the CSV has all) and a line of totals."""
    from pathlib import Path

    from imageae.api import COMPRESS_REPORT

    entries = report.entries
    if not entries:
        return []
    lines = [f"  {e['input']} -> {e['output']}: {e['bytes']} bytes, {8 * e['bytes'] / (e['width'] * e['height']):.3f} "
             f"bpp, quality {e['quality']}, {e['seconds']:.1f} s" for e in entries[:most]]
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
    from imageae.api import decompress_folder

    report = decompress_folder(args.inputs, args.output, ext=args.ext, models=args.models,
                               overwrite=args.overwrite, progress=_progress(args), max_pixels=_max_pixels(args))
    print(report.summary("decompressed"), file=sys.stderr if report.failed else sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILED


def _progress(args):
    return {"auto": None, "on": True, "off": False}[args.progress]


def _cmd_generate(args):
    import numpy as np

    from imageae.api import generate_batches
    from imageae.generation import contact_sheet
    from imageae.pipelines.folder import ensure_output_dir, progress_bar

    _configure_device(args.device)
    if not args.files and not args.grid:
        raise ValueError("--no-files writes only the contact sheet, so it needs --grid (as given, nothing would "
                         "be written)")
    # Checks every argument and loads the model before anything is created on disk.
    batches = generate_batches(args.count, batch_size=256, model=args.model, seed=args.seed,
                               temperature=args.temperature, sampler=args.sampler, precision=args.precision)
    out = ensure_output_dir(args.output)
    width = max(5, len(str(args.count - 1)))
    grid_count = min(args.count, GRID_LIMIT) if args.grid else 0
    grid, in_grid, written, kept, index = [], 0, 0, 0, 0
    # With --no-files only the grid's samples are needed: stop sampling once it is full.
    total = args.count if args.files else grid_count
    with progress_bar(total, desc="generate", enabled=_progress(args)) as bar:
        for batch in batches:
            if in_grid < grid_count:
                grid.append(batch[: grid_count - in_grid])
                in_grid += len(grid[-1])
            if not args.files:
                bar.update(len(batch))
                if in_grid >= grid_count:
                    break
                continue
            for image in batch:
                path = out / f"sample_{index:0{width}d}.png"
                if not args.overwrite and path.exists():
                    kept += 1
                else:
                    try:
                        _write_png(path, image)
                    except OSError as error:  # a full disk, say: every later sample would fail too
                        bar.close()
                        print(f"imageae generate: error: cannot write {path}: {error.strerror or error}; stopped "
                              f"after writing {written} sample(s) to {out} (each complete; rerun to go on: "
                              "existing samples are kept)", file=sys.stderr)
                        return EXIT_FAILED
                    written += 1
                index += 1
            bar.update(len(batch))
    lines = []
    if args.files:
        lines.append(f"wrote {written} sample(s) to {out}")
        if kept:
            lines.append(f"  kept {kept} existing sample file(s) of the same name (--overwrite replaces them)")
    if args.grid:
        grid_path = out / "grid.png"
        what = f"a contact sheet of the first {grid_count} of {args.count} samples" if grid_count < args.count \
            else f"a contact sheet of {grid_count} samples"
        if not args.overwrite and grid_path.exists():
            lines.append(f"kept the existing {grid_path} (--overwrite replaces it)")
        else:
            _write_png(grid_path, contact_sheet(np.concatenate(grid)))
            lines.append(f"wrote {grid_path}: {what}" if args.files else
                         f"wrote only {grid_path}: {what}; no sample files (--no-files)")
    print("\n".join(lines))
    return EXIT_OK


def _warn_misfit(command, path, pixels, model):
    """Say on stderr when an input does not fit the VAE (a photo given to the digit model)."""
    from imageae.api import _vae
    from imageae.generation import input_fit_problem

    problem = input_fit_problem(pixels, _vae(model), model)
    if problem:
        print(f"imageae {command}: warning: {path}: {problem}", file=sys.stderr)


def _cmd_interpolate(args):
    import warnings
    from pathlib import Path

    from imageae.api import interpolate
    from imageae.data.io import DecodedImage, output_format, read_image, write_image
    from imageae.generation import InputFitWarning, contact_sheet

    _configure_device(args.device)
    target = Path(args.output)
    if target.is_dir():
        raise ValueError(f"-o {target} is a folder; give the strip's file name, such as {target / 'strip.png'}")
    fmt = output_format("PNG", target.suffix or None)  # refuses an extension it cannot write, before any work
    if target.exists() and not args.overwrite:
        print(f"kept the existing {target} (--overwrite replaces it)")
        return EXIT_OK
    a, b = (read_image(p).pixels for p in (args.image_a, args.image_b))
    for path, pixels in ((args.image_a, a), (args.image_b, b)):
        _warn_misfit("interpolate", path, pixels, args.model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", InputFitWarning)  # said above, with the file names
        strip = contact_sheet(interpolate(a, b, steps=args.steps, model=args.model), columns=args.steps)
    write_image(target, DecodedImage(strip, None, 8, "PNG"), fmt=fmt)
    print(f"wrote {target}")
    return EXIT_OK


def _cmd_reconstruct(args):
    import warnings

    from imageae.api import _vae, reconstruct
    from imageae.data.io import read_image
    from imageae.generation import InputFitWarning
    from imageae.pipelines.folder import FolderReport, ensure_output_dir, plan_outputs, progress_bar

    _configure_device(args.device)
    _vae(args.model)  # an unknown or broken model is a usage error before anything is written
    report = FolderReport()
    tasks = plan_outputs(args.inputs, args.output, suffix_for=lambda path: ".png", overwrite=args.overwrite,
                         report=report)
    out = ensure_output_dir(args.output)
    with progress_bar(len(tasks), desc="reconstruct", enabled=_progress(args)) as bar:
        for task in tasks:
            try:
                pixels = read_image(task.source).pixels
                _warn_misfit("reconstruct", task.source, pixels, args.model)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", InputFitWarning)
                    [image] = reconstruct([pixels], model=args.model)
                _write_png(task.target, image)
                report.written.append(str(task.target))
            except (ValueError, OSError) as error:  # this file's failure, not the run's
                report.failed.append((str(task.source), str(error)))
            bar.update(1)
    print(report.summary("reconstructed") + (f"\n  written to {out}" if report.written else ""),
          file=sys.stderr if report.failed else sys.stdout)
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_export(args):
    from imageae.export import export_saved_model

    path = export_saved_model(args.model, args.output, version=args.version)
    print(f"wrote {path}")
    return EXIT_OK


def _cmd_models(args):
    from imageae.registry import list_models

    rows = [m.as_dict() for m in list_models()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        flag = "" if r["available"] else "  [weights missing]"
        qualities = f" (--quality 1..{r['qualities']})" if r.get("qualities") else ""
        print(f"{r['name']:<{width}}  {r['job']:<9} {r['colour_mode']:<7} {r['description']}{qualities}{flag}")
        print(f"{'':<{width}}  {os.path.relpath(r['file'])}")
    return EXIT_OK


def _cmd_train(args):
    if args.family == "vae":
        return _cmd_train_vae(args)
    if args.family == "codec":
        return _cmd_train_codec(args)
    if args.family == "digit-classifier":
        from imageae.train import train_digit_classifier

        path, accuracy = train_digit_classifier(args.images, args.labels, args.output, epochs=args.epochs,
                                                validation=args.validation)
        print(f"wrote {path} (validation accuracy {accuracy:.4f})")
        return EXIT_OK
    from imageae.train import DenoiserTrainConfig, train_denoiser

    try:
        filters = tuple(int(f) for f in args.filters.split(","))
    except ValueError:
        raise ValueError(f"--filters must be comma-separated integers, got {args.filters!r}") from None
    _check_learning_rates(args)
    config = DenoiserTrainConfig(
        data=args.data, output=args.output, channels=args.channels, init=args.init or "", filters=filters,
        blocks_per_level=args.blocks_per_level, steps=args.steps, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size, patch_size=args.patch_size, learning_rate=args.learning_rate,
        sigma_min=args.sigma_min, sigma_max=args.sigma_max, patience_epochs=args.patience,
        checkpoint_dir=args.checkpoint_dir, resume=args.resume, seed=args.seed, precision=args.precision,
        warmup_steps=args.warmup_steps, min_learning_rate=args.min_learning_rate, workers=args.workers,
        max_seconds=60.0 * args.max_minutes,
    )
    path = train_denoiser(config, progress=sys.stdout.isatty())
    print(f"wrote {path} and its model card {path.with_suffix('.json')}")
    return EXIT_OK


# `imageae train vae` options that default to the --init model's own values, else to these.
_VAE_MODEL_DEFAULTS = {"size": 64, "channels": 3, "latent_dim": 128, "filters": "32,64,128,256",
                       "likelihood": "gaussian", "gaussian_sigma": 0.1, "beta": 1.0, "mixture_components": "auto"}


def _cmd_train_vae(args):
    from imageae.train import VAETrainConfig, train_vae

    if not args.adversarial_weight >= 0:
        raise ValueError(f"--adversarial-weight must be 0 (off) or positive, got {args.adversarial_weight}")
    defaults = dict(_VAE_MODEL_DEFAULTS)
    if args.init:
        from imageae.registry import load_model

        source = load_model(args.init, job="generate")
        defaults.update({key: getattr(source, key) for key in defaults if key not in ("size", "filters")},
                        size=source.image_size, filters=",".join(str(f) for f in source.filters))
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        filters = tuple(int(f) for f in args.filters.split(","))
    except ValueError:
        raise ValueError(f"--filters must be comma-separated integers, got {args.filters!r}") from None
    config = VAETrainConfig(
        data=args.data, output=args.output, size=args.size, channels=args.channels, crop=args.crop,
        latent_dim=args.latent_dim, filters=filters, likelihood=args.likelihood, gaussian_sigma=args.gaussian_sigma,
        beta=args.beta, kl_warmup_steps=args.kl_warmup_steps, mixture_components=args.mixture_components,
        flip=args.flip, epochs=args.epochs, adversarial_weight=args.adversarial_weight,
        batch_size=args.batch_size or (32 if args.adversarial_weight > 0 else 128),
        learning_rate=args.learning_rate or (1e-4 if args.adversarial_weight > 0 else 1e-3),
        patience_epochs=args.patience, checkpoint_dir=args.checkpoint_dir, resume=args.resume,
        init=args.init or "", seed=args.seed,
        precision=args.precision, max_seconds=60.0 * args.max_minutes,
    )
    path = train_vae(config, progress=sys.stdout.isatty())
    print(f"wrote {path} and its model card {path.with_suffix('.json')}")
    return EXIT_OK


def _cmd_train_codec(args):
    from imageae.train import CodecTrainConfig, train_codec

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


def _subcommand_parser(parser, args):
    """The (sub)parser of the deepest command given (imageae, imageae denoise, imageae train vae, ...)."""
    for dest in ("command", "family"):
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or getattr(args, dest, None) is None:
            break
        parser = actions[0].choices[getattr(args, dest)]
    return parser


def _parse(parser, argv):
    """Parse like ``parse_args``, but an unknown flag is named by the command it was given to
    (not hidden behind "COMMAND required"), and a missing command is named with the choices."""
    args, extras = parser.parse_known_args(argv)
    deepest = _subcommand_parser(parser, args)
    if extras:
        deepest.error(f"unrecognized arguments: {' '.join(extras)} (see '{deepest.prog} --help')")
    actions = [a for a in deepest._actions if isinstance(a, argparse._SubParsersAction)]
    if actions:
        deepest.error(f"a {actions[0].metavar} is required, one of: {', '.join(actions[0].choices)} "
                      f"(see '{deepest.prog} --help')")
    return args


def main(argv=None):
    """Run the imageae command line; returns the exit code."""
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    from imageae.runtime import import_tensorflow

    import_tensorflow()
    handlers = {
        "denoise": _cmd_denoise, "generate": _cmd_generate, "interpolate": _cmd_interpolate,
        "reconstruct": _cmd_reconstruct, "export": _cmd_export, "models": _cmd_models, "train": _cmd_train,
        "compress": _cmd_compress, "decompress": _cmd_decompress,
    }
    try:
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("interrupted; outputs written so far are complete, no partial files were left", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (ValueError, OSError, RuntimeError, TypeError, LookupError) as error:
        # Whole-run problems (bad options, missing inputs, an output folder that cannot be made,
        # a model that is not installed): one line naming the command, no traceback.
        message = str(error) if not isinstance(error, OSError) or not error.filename else \
            f"{error.strerror or error}: {error.filename}"
        print(f"imageae {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def main_exit():
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
