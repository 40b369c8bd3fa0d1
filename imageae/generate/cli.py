"""The generate job's subcommands: ``imageae generate``, ``interpolate``, ``reconstruct``,
``train vae`` and ``train digit-classifier``."""

import argparse
import sys

from imageae.cli.common import (
    EXIT_FAILED,
    EXIT_OK,
    _add_folder_flags,
    _add_runtime_flags,
    _add_training_flags,
    _configure_device,
    _int_at_least,
    _positive_int,
    _progress,
)

_EPILOG_GENERATE = """\
examples:
  imageae generate -n 64 -o digits/ --grid                  64 digits (the default model, vae-digits)
                                                            and a contact sheet
  imageae generate -n 16 -o faces/ --model vae-faces64 --seed 7 --temperature 0.8
  imageae generate -n 1000 -o out/ --sampler normal         sample the plain N(0, I) prior
  imageae generate -n 100 -o digits/ --grid --no-files      only the contact sheet
  imageae generate -n 64 -o digits/ --model edge/vae-digits-int8.tflite
                                                            the decoder exported by 'imageae export
                                                            vae-digits --format tflite', run by LiteRT

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
    _add_runtime_flags(parser, precision_help=(
        "compute precision: auto = float32 (the same images as on machines without bfloat16 and as an "
        "exported model); mixed_bfloat16 is faster on CPUs that have it (vae-faces64: about 2x) but moves "
        "pixels by a few grey levels (default: auto)"))


def _seed(text):
    """An argparse type: a seed in 0..2**63-1 (TensorFlow's stateless seeds are int64)."""
    from imageae.generate.sampling import MAX_SEED

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number in 0..2**63-1, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"expected a whole number in 0..2**63-1 ({MAX_SEED}), got {value}")
    return value


def _temperature(text):
    """An argparse type: a temperature in (0, 100]; inf, nan and <= 0 would give black images."""
    from imageae.generate.sampling import MAX_TEMPERATURE

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


def _mixture_components(text):
    return "auto" if text == "auto" else _positive_int(text)


def register(commands, train):
    """Add ``generate``, ``interpolate``, ``reconstruct``, ``train vae`` and ``train digit-classifier``;
    their handlers by command."""
    p = commands.add_parser(
        "generate", help="synthesise new images with a VAE", description="Synthesise new images with a VAE.",
        epilog=_EPILOG_GENERATE, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("-n", "--count", type=_positive_int, default=16, help="number of images (default: 16)")
    p.add_argument("-o", "--output", required=True, help="output folder for sample_NNNNN.png files (created)")
    p.add_argument("--model", default="vae-digits",
                   help="a generate model from 'imageae models', a .keras path, or a VAE decoder exported with "
                        "'imageae export MODEL --format tflite' (.tflite, run by LiteRT) (default: vae-digits, "
                        "28x28 grey digits; vae-faces64 for 64x64 faces)")
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
        "digit-classifier", help="the digit classifier whose features score generated digits (FID/KID)",
        description="Train the small MNIST classifier used as the feature space of digit FID/KID.",
    )
    t.add_argument("--images", required=True, help="MNIST images (IDX .gz or .npz)")
    t.add_argument("--labels", required=True, help="their labels (IDX .gz or .npz)")
    t.add_argument("-o", "--output", required=True, help="where to write the .keras model")
    t.add_argument("--epochs", type=_positive_int, default=8, help="epochs (default: 8)")
    t.add_argument("--validation", type=_positive_int, default=2000, help="last N images held out (default: 2000)")
    return {"generate": _cmd_generate, "interpolate": _cmd_interpolate, "reconstruct": _cmd_reconstruct,
            "train vae": _cmd_train_vae, "train digit-classifier": _cmd_train_digit_classifier}


def _write_png(path, array):
    from imageae.data.io import DecodedImage, write_image

    write_image(path, DecodedImage(array, None, 8, "PNG"), fmt="PNG")


def _cmd_generate(args):
    import numpy as np

    from imageae.generate.api import generate_batches
    from imageae.generate.sampling import contact_sheet
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
    from imageae.generate.api import _vae
    from imageae.generate.sampling import input_fit_problem

    problem = input_fit_problem(pixels, _vae(model), model)
    if problem:
        print(f"imageae {command}: warning: {path}: {problem}", file=sys.stderr)


def _cmd_interpolate(args):
    import warnings
    from pathlib import Path

    from imageae.data.io import DecodedImage, output_format, read_image, write_image
    from imageae.generate.api import interpolate
    from imageae.generate.sampling import InputFitWarning, contact_sheet

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

    from imageae.data.io import read_image
    from imageae.generate.api import _vae, reconstruct
    from imageae.generate.sampling import InputFitWarning
    from imageae.pipelines.folder import FolderReport, ensure_output_dir, plan_outputs, progress_bar

    _configure_device(args.device)
    _vae(args.model, encoder=True)  # an unknown or broken model is a usage error before anything is written
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


# `imageae train vae` options that default to the --init model's own values, else to these.
_VAE_MODEL_DEFAULTS = {"size": 64, "channels": 3, "latent_dim": 128, "filters": "32,64,128,256",
                       "likelihood": "gaussian", "gaussian_sigma": 0.1, "beta": 1.0, "mixture_components": "auto"}


def _cmd_train_vae(args):
    from imageae.generate.train import VAETrainConfig, train_vae

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


def _cmd_train_digit_classifier(args):
    from imageae.generate.train import train_digit_classifier

    path, accuracy = train_digit_classifier(args.images, args.labels, args.output, epochs=args.epochs,
                                            validation=args.validation)
    print(f"wrote {path} (validation accuracy {accuracy:.4f})")
    return EXIT_OK
