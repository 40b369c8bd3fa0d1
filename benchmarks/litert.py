"""int8 LiteRT (.tflite) against the Keras model: file size, latency and PSNR (issue 23).

For each denoiser named (default ``denoise-grey``) the script exports a full-integer int8
``.tflite`` with ``imageae.export.export_tflite`` (calibration: the checkout's ``data/``), then
measures in the same process:

- file size of the ``.keras`` and the ``.tflite``;
- latency per 512x512 image, 2 threads for both (TensorFlow intra-op 2 / inter-op 1, LiteRT
  ``num_threads=2``), end to end through each tiled runner (Keras: float32 and the "auto"
  precision; tflite: one 512x512 window), median of ``--repeats`` after a warm-up;
- PSNR at sigma 25 on BSD68 (grey) or CBSD68 (colour) with benchmarks/denoise.py's protocol
  (N(0, sigma^2) on 0..255 with seed [sigma, i], input not clipped, output clipped and rounded).

Usage::

    python benchmarks/litert.py                       # denoise-grey, all 68 BSD68 images
    python benchmarks/litert.py --limit 10 --repeats 3   # quicker

Writes ``benchmarks/results/litert.md`` and ``litert.json`` (``--out``).
"""

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import REPO, Timer, git_commit

SHARED = REPO.parent / "shared" / "datasets" / "denoise"
SETS = {1: "BSD68", 3: "CBSD68"}
SIGMA = 25


def add_noise(clean, sigma, index):
    rng = np.random.default_rng([int(sigma), int(index)])
    return clean.astype(np.float64) + rng.normal(0.0, float(sigma), clean.shape)


def to_uint8(y):
    return np.clip(np.round(np.asarray(y, np.float64) * 255.0), 0, 255).astype(np.uint8)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["denoise-grey"])
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)

    from imageae.runtime import import_tensorflow

    tf = import_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from PIL import Image

    import imageae
    from imageae import registry
    from imageae.export import export_saved_model, export_tflite
    from imageae.metrics import psnr
    from imageae.pipelines.engine import TiledRunner
    from imageae.pipelines.litert import LiteRTRunner
    from imageae.runtime import with_precision

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="imageae-litert-bench-"))
    for name in args.models:
        keras_path = registry.resolve(name, job="denoise")
        exports = {}
        for quantize in ("int8", "float16"):
            with Timer() as t_export:
                exports[quantize] = export_tflite(name, workdir, quantize=quantize, tile=args.tile)
            exports[quantize + " seconds"] = t_export.seconds
        meta = json.loads(exports["int8"].with_suffix(".json").read_text())
        channels = meta["channels"]
        saved = export_saved_model(name, workdir / "serving", version=1)
        served = tf.saved_model.load(str(saved)).signatures["denoise"]

        class SavedModelRunner:  # the SavedModel's own 'denoise' signature on the whole image
            def run(self, items, served=served):
                for key, x in items:
                    yield key, served(images=tf.constant(x[None]))["denoised"].numpy()[0]

        # (label, runner for latency, model argument for imageae.denoise or None, precision, file)
        variants = [
            ("Keras float32", TiledRunner(with_precision(registry.load_model(name, job="denoise"), "float32"),
                                          tile=1024), name, "float32", keras_path),
            ("Keras auto", TiledRunner(with_precision(registry.load_model(name, job="denoise"), "auto"), tile=1024),
             name, "auto", keras_path),
            ("SavedModel float32", SavedModelRunner(), None, None, saved),
            ("tflite int8", LiteRTRunner(exports["int8"], num_threads=2), str(exports["int8"]), "auto",
             exports["int8"]),
            ("tflite float16", LiteRTRunner(exports["float16"], num_threads=2), str(exports["float16"]), "auto",
             exports["float16"]),
        ]
        auto_dtype = variants[1][1].model.dtype_policy.compute_dtype

        rng = np.random.default_rng(0)
        image = rng.random((512, 512, channels)).astype(np.float32)
        folder = args.data / SETS[channels]
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".bmp", ".jpg", ".tif"))
        files = files[: args.limit] if args.limit else files
        cleans, noisies = [], []
        for i, path in enumerate(files):
            with Image.open(path) as im:
                clean = np.asarray(im.convert("L" if channels == 1 else "RGB"), np.uint8)
            cleans.append(clean)
            noisies.append((add_noise(clean, SIGMA, i) / 255.0).astype(np.float32))
        for label, runner, model_arg, precision, path in variants:
            list(runner.run([(0, image)]))  # warm-up (traces / allocates)
            times = []
            for _ in range(args.repeats):
                with Timer() as t:
                    list(runner.run([(0, image)]))
                times.append(t.seconds)
            size = path.stat().st_size if path.is_file() else sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
            row = {"model": name, "variant": label, "bytes": size, "latency_s_512": float(np.median(times)),
                   "psnr_set": SETS[channels], "psnr_images": len(files), "sigma": SIGMA}
            if label == "Keras auto":
                row["variant"] = f"Keras auto ({auto_dtype})"
            if model_arg is not None:
                scores = [psnr(c, to_uint8(imageae.denoise(z, model=model_arg, precision=precision)))
                          for c, z in zip(cleans, noisies)]
                row["psnr"] = float(np.mean(scores))
            if label.startswith("tflite"):
                q = label.split()[1]
                row.update(export_seconds=exports[q + " seconds"], tile=meta["tile"], margin=meta["margin"])
            rows.append(row)
            print(json.dumps(row), flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    info = {"commit": git_commit(), "machine": platform.processor() or platform.machine(),
            "python": sys.version.split()[0], "tensorflow": tf.__version__, "argv": sys.argv[1:]}
    (args.out / "litert.json").write_text(json.dumps({"info": info, "rows": rows}, indent=2) + "\n")
    lines = [
        "# int8 LiteRT against Keras (benchmarks/litert.py)",
        "",
        (f"Commit {info['commit']}, TensorFlow {info['tensorflow']}, {platform.machine()}, "
         f"command `python benchmarks/litert.py {' '.join(sys.argv[1:])}`."),
        ("Latency: one 512x512 image end to end, 2 threads (TF intra-op 2 / inter-op 1, LiteRT"
         f" num_threads=2), median of {args.repeats} after a warm-up; Keras and tflite through the tiled"
         " runners (tflite: one 512x512 window), the SavedModel through its `denoise` signature."
         f" PSNR: sigma {SIGMA}, noise seed [sigma, i], input not clipped, output clipped and rounded"
         " (benchmarks/denoise.py's protocol). The machine's 2 cores were shared with other work, so"
         " latencies are indicative."),
        "",
        "| model | variant | file | size vs .keras | ms per 512x512 | PSNR (dB) | vs Keras float32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.models:
        mine = [r for r in rows if r["model"] == name]
        ref = mine[0]
        for r in mine:
            psnr_text = f"{r['psnr']:.2f} ({r['psnr_set']}, {r['psnr_images']} images)" if "psnr" in r else "not run"
            drop = f"{r['psnr'] - ref['psnr']:+.2f} dB" if "psnr" in r else ""
            lines.append(
                f"| {name} | {r['variant']} | {r['bytes'] / 1e6:.2f} MB | {r['bytes'] / ref['bytes']:.2f} "
                f"| {r['latency_s_512'] * 1e3:.0f} | {psnr_text} | {drop} |"
            )
    tfl = [r for r in rows if "tile" in r]
    lines += ["", "tflite window " + ", ".join(
        f"{r['variant']} {r['tile']} px (margin {r['margin']}, export {r['export_seconds']:.0f} s"
        + (" incl. int8 calibration on 24 noisy windows of data/)" if "int8" in r["variant"] else ")")
        for r in tfl) + ". The SavedModel's PSNR equals Keras float32's (tests/test_export.py)."]
    (args.out / "litert.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
