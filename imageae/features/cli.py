"""The features job's subcommand: ``imageae embed``."""

import argparse

from imageae.cli.common import EXIT_FAILED, EXIT_OK, _add_runtime_flags, _configure_device, _positive_int, _progress

_EPILOG = """\
examples:
  imageae embed digits/ --model vae-digits -o features.csv       16 features per digit, one row
                                                                  per image: path,z0,...,z15
  imageae embed faces/ --model vae-faces64 -o faces.npy           128 features; image paths in
                                                                  faces.paths.txt, one a line
  imageae embed parts/ --model my-detector.keras -o codes.parquet  a model from 'imageae train
                                                                  anomaly' (needs pyarrow)
  python -c "import numpy as np; print(np.load('faces.npy').shape)"
Any encoder works: the VAEs give their encoder's mean, an autoencoder (anomaly job, or any
.keras model with encode(x) and code_size) its code, codec-v4 its analysis transform averaged
over a 256x256 view, digit-classifier its 128 penultimate (supervised) features. Each image is
centre-cropped to a square and resized to the model's input size (the summary says how many),
and converted to its grey or colour. Rows follow the sorted order of the files found, and the
file is written once every image is encoded (atomically: an interrupted run leaves none). An
existing output is an error unless --overwrite. Unreadable files are named and left out (exit 1).
In Python: imageae.embed(images, model="vae-digits") -> float32 (N, 16).
"""


def register(commands, train):
    """Add ``embed``; its handler."""
    from imageae import registry

    names = ", ".join(m.name for m in registry.list_models() if m.job != "denoise")
    p = commands.add_parser(
        "embed", help="latent features of images from an encoder (.npy, .csv or .parquet)",
        description="Write the latent features of every image to one .npy, .csv or .parquet file.",
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders (searched recursively)")
    p.add_argument("-o", "--output", required=True, metavar="FEATURES",
                   help="the features file: .npy (with NAME.paths.txt beside it), .csv or .parquet (a path column, "
                        "then z0, z1, ...)")
    p.add_argument("--model", required=True,
                   help=f"the encoder: {names}, or a .keras file (e.g. from 'imageae train anomaly')")
    p.add_argument("--batch-size", type=_positive_int, default=256, help="images encoded at a time (default: 256)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    p.add_argument("--progress", choices=["auto", "on", "off"], default="auto",
                   help="progress bar with images/s (auto: only on a terminal)")
    _add_runtime_flags(p, precision_help="compute precision: auto = float32, the same features on every machine; "
                                         "mixed_bfloat16 is faster on CPUs that have it (default: auto)")
    return {"embed": _cmd_embed}


def _cmd_embed(args):
    from imageae.features.api import embed_folder

    _configure_device(args.device)
    report = embed_folder(args.inputs, args.output, model=args.model, overwrite=args.overwrite,
                          batch_size=args.batch_size, precision=args.precision, progress=_progress(args))
    print(report.summary("embedded"))
    return EXIT_OK if report.ok else EXIT_FAILED
