#!/usr/bin/env python
"""python tools/store_float16.py NAME [NAME ...] [--write]: store a shipped model's weights as
float16 (half the file; :func:`imageae.runtime.save_float16`), after measuring what the rounding
changes, in the same run, against what bfloat16 compute already changes.

For each model (a denoiser or a VAE in saved_models/), three outputs of the same inputs:
float32 weights in float32 compute (the reference), float16-stored weights in float32 compute,
and, as a yardstick, float32 weights in bfloat16 compute (what the denoisers run in by
default on CPUs with bfloat16, such as this one; the VAEs compute in float32 by default).
Denoisers: the noisy samples in data/samples of the model's kind, grey or colour (PSNR to the
clean image where data/clean has it); VAEs: 256 images generated with seed 0. Each difference is given in grey levels (0-255)
as the mean absolute and the largest, and as PSNR against the reference.

Without --write it only reports. With --write (and every model's float16 difference no larger
than its bfloat16 one) it replaces saved_models/NAME.keras atomically and records the
measurement in the card's "storage" field. The codec's float16 storage was measured by
benchmarks/compress.py instead (its card says how).
"""

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

JOBS = {"DenoiserUNet": "denoise", "ConvVAE": "generate"}


def _outputs(path, job, precision, channels):
    """The model file's outputs on the fixed inputs, float64 on 0..255, and their names."""
    from PIL import Image

    import imageae

    if job == "denoise":
        names, out = [], []
        for sample in sorted((REPO / "data" / "samples").glob("*.png")):
            noisy = np.asarray(Image.open(sample))
            if (noisy.ndim == 3 and noisy.shape[-1] == 3) == (channels == 3):  # the model's own kind
                names.append(sample.name)
                out.append(np.asarray(imageae.denoise(noisy, model=str(path), precision=precision), np.float64))
        return names, out
    images = imageae.generate(256, model=str(path), seed=0, precision=precision)
    return ["256 generated, seed 0"], [np.asarray(images, np.float64)]


def _difference(a, b):
    d = np.concatenate([np.abs(x - y).ravel() for x, y in zip(a, b)])
    mse = float(np.mean(d**2))
    return {"mean_abs_levels": round(float(d.mean()), 4), "max_abs_levels": round(float(d.max()), 1),
            "psnr_db": round(10 * np.log10(255.0**2 / mse), 2) if mse > 0 else float("inf")}


def _psnr_to_clean(names, outputs):
    """Mean PSNR against data/clean for the samples that have their clean image there."""
    from PIL import Image

    from imageae.metrics import psnr

    values = []
    for name, out in zip(names, outputs):
        clean_path = REPO / "data" / "clean" / (name.split("-")[0] + ".png")
        if clean_path.exists():
            clean = np.asarray(Image.open(clean_path), np.float64)
            if clean.shape == out.shape:
                values.append(psnr(clean, out))
    return round(float(np.mean(values)), 3) if values else None


def stored_dtypes(path):
    """The dtypes of the weights as stored in a .keras file (a loaded model is cast to its policy)."""
    import io
    import zipfile

    import h5py

    with zipfile.ZipFile(path) as archive, h5py.File(io.BytesIO(archive.read("model.weights.h5")), "r") as weights:
        found = set()
        weights.visititems(lambda _, item: found.add(str(item.dtype)) if isinstance(item, h5py.Dataset) else None)
    return found


def measure(name):
    from imageae.registry import load_model
    from imageae.runtime import save_float16

    path = REPO / "saved_models" / f"{name}.keras"
    model = load_model(str(path), job=None)
    if type(model).__name__ not in JOBS:
        raise SystemExit(f"{path} holds a {type(model).__name__}; this tool stores denoisers and VAEs")
    job = JOBS[type(model).__name__]
    if "float16" in stored_dtypes(path):
        raise SystemExit(f"{path} already stores float16 weights")
    staged = Path(tempfile.mkdtemp(prefix="float16-")) / f"{name}.keras"
    save_float16(model, staged)
    channels = model.channels
    names, reference = _outputs(path, job, "float32", channels)
    _, rounded = _outputs(staged, job, "float32", channels)
    yardstick = "mixed_bfloat16"
    _, fast = _outputs(path, job, yardstick, channels)
    row = {"model": name, "bytes_float32": path.stat().st_size, "bytes_float16": staged.stat().st_size,
           "inputs": names, "float16_storage_vs_float32": _difference(reference, rounded),
           f"{yardstick}_compute_vs_float32": _difference(reference, fast), "yardstick_precision": yardstick}
    if job == "denoise":
        row["psnr_to_clean_db"] = {"float32": _psnr_to_clean(names, reference),
                                   "float16_storage": _psnr_to_clean(names, rounded),
                                   yardstick: _psnr_to_clean(names, fast)}
    return row, staged


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="+", help="shipped model names, e.g. vae-faces64 denoise-colour")
    parser.add_argument("--write", action="store_true", help="replace the shipped files and update their cards")
    args = parser.parse_args(argv)
    rows = []
    for name in args.names:
        row, staged = measure(name)
        rows.append(row)
        print(json.dumps(row, indent=1), flush=True)
        f16, fast = row["float16_storage_vs_float32"], row[f"{row['yardstick_precision']}_compute_vs_float32"]
        if not args.write:
            continue
        if f16["mean_abs_levels"] > fast["mean_abs_levels"]:
            raise SystemExit(f"{name}: float16 storage changes more ({f16}) than {row['yardstick_precision']} compute "
                             f"({fast}); not written")
        target = REPO / "saved_models" / f"{name}.keras"
        partial = target.with_name(f".{name}.partial.keras")
        partial.write_bytes(staged.read_bytes())
        os.replace(partial, target)
        card_path = target.with_suffix(".json")
        card = json.loads(card_path.read_text())
        card["storage"] = {
            "how": "weights stored as float16 by `python tools/store_float16.py " + name + " --write` "
                   "(imageae.runtime.save_float16): the file loads as an ordinary float32 model",
            "measured": {k: v for k, v in row.items() if k != "model"},
            "note": "the card's benchmark numbers were measured with the float32 weights; the measurement "
                    "above is how far float16 storage moves the outputs (a small fraction of what bfloat16 "
                    "compute moves them)",
        }
        card_path.write_text(json.dumps(card, indent=2) + "\n")
        print(f"wrote {target} ({row['bytes_float32'] / 1e6:.2f} -> {row['bytes_float16'] / 1e6:.2f} MB) and its card")
    return 0


if __name__ == "__main__":
    sys.exit(main())
