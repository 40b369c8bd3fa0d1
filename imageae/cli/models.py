"""The subcommands about models rather than one job: ``imageae export`` and ``imageae models``."""

import argparse
import json
import os

from imageae.cli.common import EXIT_OK, _positive_int


def register(commands, train):
    """Add ``export`` and ``models``; their handlers by command."""
    p = commands.add_parser(
        "export", help="export a model as a SavedModel for TensorFlow Serving, or as LiteRT .tflite",
        description="Write MODEL as a SavedModel in TF Serving's layout DIR/<model>/<version>/, or "
                    "(--format tflite: the denoisers, the VAE decoders and the anomaly detectors) as "
                    "DIR/<model>-<quantize>.tflite plus a .json recording its fixed input (a denoiser's window: "
                    "tile, margin, stride; a VAE decoder's batch, latent size, output shape and latent mixture; a "
                    "detector's side, threshold and score statistics).",
        epilog="example:\n  imageae export denoise-colour -o serving/ --version 1\n"
               "  saved_model_cli show --all --dir serving/denoise-colour/1\n"
               "  imageae export denoise-grey --format tflite --quantize int8 -o edge/\n"
               "  imageae denoise noisy.png -o clean/ --model edge/denoise-grey-int8.tflite\n"
               "  imageae export vae-digits --format tflite -o edge/\n"
               "  imageae generate -n 64 -o digits/ --model edge/vae-digits-int8.tflite\n"
               "  imageae export anomaly-elpv --format tflite -o edge/\n"
               "  imageae anomaly score cells/ -o report/ --model edge/anomaly-elpv-int8.tflite\n\n"
               "See README.md, 'Serving with TensorFlow Serving', for the signatures and REST/gRPC requests.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", metavar="MODEL", help="a name from 'imageae models' or a .keras path")
    p.add_argument("-o", "--output", required=True, help="model base folder (TF Serving's --model_base_path parent)")
    p.add_argument("--version", type=_positive_int, default=1, help="version number folder (default: 1)")
    p.add_argument("--format", choices=("savedmodel", "tflite"), default="savedmodel",
                   help="savedmodel (TF Serving, default) or tflite (LiteRT; the denoisers, VAE decoders and anomaly "
                        "detectors)")
    p.add_argument("--quantize", choices=("int8", "float16", "none"), default=None,
                   help="tflite only: int8 (full-integer, calibrated; float32 in/out, default), float16 or none "
                        "(float32)")
    p.add_argument("--calibration", metavar="DIR",
                   help="tflite int8: folder of images to calibrate on, like the model's training images: noisy "
                        "ones for a denoiser (default: the checkout's data/), normal ones for an anomaly detector "
                        "(default for anomaly-elpv: the elpv-dataset package's training cells); a VAE decoder "
                        "calibrates on latents from its own samplers")
    p.add_argument("--tile", type=_positive_int, default=None,
                   help="tflite, denoisers only: the fixed input window in pixels (default: 512)")

    p = commands.add_parser("models", help="list the shipped models", description="List the shipped models.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    return {"export": _cmd_export, "models": _cmd_models}


def _cmd_export(args):
    from imageae.export import export_saved_model, export_tflite

    if args.format == "tflite":
        path = export_tflite(args.model, args.output, quantize=args.quantize or "int8",
                             calibration=args.calibration, tile=args.tile)
        print(f"wrote {path} and {path.with_suffix('.json')}")
        return EXIT_OK
    given = [f for f, v in (("--quantize", args.quantize), ("--calibration", args.calibration), ("--tile", args.tile)) if v is not None]
    if given:
        raise ValueError(f"{' and '.join(given)} {'applies' if len(given) == 1 else 'apply'} to --format tflite only")
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
