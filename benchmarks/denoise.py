#!/usr/bin/env python
"""Denoising benchmark: imageae against OpenCV non-local means and BM3D, quality and speed.

Everything is measured in one run on one machine; published numbers (DnCNN, BM3D from the
papers) are printed beside them, labelled as published.

Quality follows the protocol of the published denoising numbers: white Gaussian noise
N(0, sigma^2) on the 0..255 scale with a fixed seed per image, the noisy input is NOT clipped,
each method's output is clipped to [0, 255] and rounded to uint8, PSNR is taken against the
uint8 original (over RGB for colour) and averaged over the images of a set.

    python benchmarks/denoise.py                         # full run, writes benchmarks/results/
    python benchmarks/denoise.py --limit 2 --sigmas 25 --bm3d-limit 1 --speed-images 2   # smoke test
    python benchmarks/denoise.py --beyond                # also noise outside the training conditions

With ``--beyond`` (off by default) a further section measures the blind models outside their
training conditions (white Gaussian noise, sigma uniform in [0, 55]): Gaussian sigma 5, 65 and
75, Poisson photon noise, a camera-like clipped + JPEG pipeline and salt-and-pepper noise, on the
first ``--beyond-limit`` images of BSD68 and CBSD68, against OpenCV NLM and the noisy input.

Outputs: a table on stdout and ``denoise.md``, ``denoise.json`` (every per-image number) and
``denoise.png`` (PSNR against sigma, one panel per set) under ``--out``.
"""

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from common import Timer, git_commit, measure_subprocess  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "denoise"
SETS = {"Set12": 1, "BSD68": 1, "CBSD68": 3}  # name -> channels
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# Published PSNR (dB) at sigma 15 / 25 / 50, from the DnCNN paper (Zhang et al. 2017, Tables 2
# and 5) as collected in shared/ANCHORS.md. Not measured here. BM3D on CBSD68 is CBM3D;
# DnCNN is DnCNN-S (grey, one model per sigma) and CDnCNN-B (colour, blind).
PUBLISHED = {
    "BM3D": {
        "Set12": {15: 32.37, 25: 29.97, 50: 26.72},
        "BSD68": {15: 31.07, 25: 28.57, 50: 25.62},
        "CBSD68": {15: 33.52, 25: 30.71, 50: 27.38},
    },
    "DnCNN": {
        "Set12": {15: 32.86, 25: 30.44, 50: 27.18},
        "BSD68": {15: 31.73, 25: 29.23, 50: 26.23},
        "CBSD68": {15: 33.89, 25: 31.23, 50: 27.92},
    },
}

NOISE_SEED = "np.random.default_rng([sigma, i]).normal(0, sigma, shape), i = 0-based index in sorted file order"
NLM_WINDOWS = {"templateWindowSize": 7, "searchWindowSize": 21}  # OpenCV's defaults
NLM_GRID = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2, 1.3)  # h / sigma candidates
NLM_FALLBACK = {1: 0.9, 3: 0.7}  # h / sigma when no tuning images are found

# Outside the training conditions (--beyond). The models were trained on white Gaussian noise with
# sigma uniform in [0, 55]. Each condition: (key, description, noise kind, parameter).
BEYOND_CONDITIONS = (
    ("gaussian-5", "Gaussian sigma 5", "gaussian", 5),
    ("gaussian-65", "Gaussian sigma 65", "gaussian", 65),
    ("gaussian-75", "Gaussian sigma 75", "gaussian", 75),
    ("poisson-30", "Poisson, peak 30 photons", "poisson", 30),
    ("poisson-10", "Poisson, peak 10 photons", "poisson", 10),
    ("camera-15", "Gaussian sigma 15, uint8, JPEG q85", "camera", 15),
    ("salt-pepper-2", "salt and pepper 2 %", "salt_pepper", 2),
)
BEYOND_SETS = ("BSD68", "CBSD68")
BEYOND_METHODS = ("noisy", "imageae", "NLM")  # "noisy": no denoising, the input scored as it is
BEYOND_SEED_KIND = {"poisson": 1001, "camera": 1002, "salt_pepper": 1003}  # Gaussian: the main protocol's seeds
BEYOND_SEED = ("Gaussian: as the main protocol; others: np.random.default_rng([K, parameter, i]), K = "
               + ", ".join(f"{k} {kind}" for kind, k in BEYOND_SEED_KIND.items()))
BEYOND_JPEG_QUALITY = 85
NLM_BEYOND_SIGMAS = (5, 15, 25, 50, 65, 75)  # h / sigma tuned here for --beyond, interpolated in between


# ----------------------------------------------------------------------------------------------
# Data and protocol


def list_images(folder):
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path, channels):
    """uint8 (H, W) for grey, (H, W, 3) RGB for colour."""
    from PIL import Image

    with Image.open(path) as image:
        mode = "L" if channels == 1 else "RGB"
        return np.asarray(image if image.mode == mode else image.convert(mode), dtype=np.uint8).copy()


def add_noise(clean, sigma, index):
    """The protocol's noisy input: float64 on the 0..255 scale, not clipped."""
    rng = np.random.default_rng([int(sigma), int(index)])
    return clean.astype(np.float64) + rng.normal(0.0, float(sigma), clean.shape)


def to_uint8(y, scale=1.0):
    """Clip a result to the valid range and round it, as the protocol scores it."""
    return np.clip(np.round(np.asarray(y, np.float64) * scale), 0, 255).astype(np.uint8)


def score(clean, result):
    from imageae.metrics import psnr, ssim

    return psnr(clean, result), ssim(clean, result)


# ----------------------------------------------------------------------------------------------
# Methods: each maps (noisy float64 0..255 unclipped, sigma) -> uint8 result


SELF_ENSEMBLE = False  # --self-ensemble: imageae averages over the 8 flips and rotations


def run_imageae(noisy, sigma, *, model, precision="auto"):
    import imageae

    y = imageae.denoise((noisy / 255.0).astype(np.float32), model=model, precision=precision,
                        self_ensemble=SELF_ENSEMBLE)
    return to_uint8(y, 255.0)


def run_nlm(noisy, sigma, *, h):
    import cv2

    x = to_uint8(noisy)  # OpenCV NLM takes uint8 only, so its input is clipped
    if x.ndim == 2:
        return cv2.fastNlMeansDenoising(x, None, h=float(h), **NLM_WINDOWS)
    bgr = np.ascontiguousarray(x[..., ::-1])
    y = cv2.fastNlMeansDenoisingColored(bgr, None, float(h), float(h), NLM_WINDOWS["templateWindowSize"],
                                        NLM_WINDOWS["searchWindowSize"])
    return np.ascontiguousarray(y[..., ::-1])


def run_bm3d(noisy, sigma):
    import bm3d

    z = noisy / 255.0
    y = bm3d.bm3d(z, sigma_psd=sigma / 255.0) if z.ndim == 2 else bm3d.bm3d_rgb(z, sigma_psd=sigma / 255.0)
    return to_uint8(y, 255.0)


def tune_nlm(data, sigmas, channels, count):
    """h / sigma for OpenCV NLM per sigma, picked by mean PSNR on training images (not test ones).

    Grey: the first ``count`` Train400 images; colour: centre 256x256 crops of the first
    ``count`` BSDS500 train photos (disjoint from CBSD68, which comes from BSDS500 val).
    """
    folder = data / "Train400" if channels == 1 else data.parent / "photos" / "BSDS500" / "train"
    if count <= 0 or not folder.is_dir() or not list_images(folder):
        why = "disabled" if count <= 0 else f"{folder} not found"
        return {s: NLM_FALLBACK[channels] for s in sigmas}, {"source": f"fixed h = {NLM_FALLBACK[channels]} sigma ({why})"}
    from imageae.metrics import psnr

    images = []
    for path in list_images(folder)[:count]:
        x = read_image(path, channels)
        if channels == 3:
            top, left = max(0, (x.shape[0] - 256) // 2), max(0, (x.shape[1] - 256) // 2)
            x = x[top : top + 256, left : left + 256]
        images.append(x)
    chosen, grid = {}, {}
    for sigma in sigmas:
        noisy = [add_noise(x, sigma, 10_000 + i) for i, x in enumerate(images)]
        means = {m: float(np.mean([psnr(x, run_nlm(z, sigma, h=m * sigma)) for x, z in zip(images, noisy)]))
                 for m in NLM_GRID}
        chosen[sigma] = max(means, key=means.get)
        grid[sigma] = means
    return chosen, {"source": f"tuned on the first {len(images)} images of {folder}", "grid_psnr": grid}


# ----------------------------------------------------------------------------------------------
# Quality


def warm_up_imageae(images, model, precision):
    """One untimed call per distinct image shape: model load, precision clone, tf.function traces."""
    seen = set()
    for clean in images:
        if clean.shape not in seen:
            seen.add(clean.shape)
            run_imageae(clean.astype(np.float64), 25, model=model, precision=precision)


def quality(args, models, nlm_h, bar):
    """Per-image records for every set, sigma and method."""
    records = []
    for name in args.sets:
        channels = SETS[name]
        paths = list_images(args.data / name)[: args.limit or None]
        images = [read_image(p, channels) for p in paths]
        subset = min(args.bm3d_limit, len(images))
        warm_up_imageae(images, models[channels], "auto")
        for sigma in args.sigmas:
            for i, (path, clean) in enumerate(zip(paths, images)):
                noisy = add_noise(clean, sigma, i)
                methods = [("imageae", lambda z: run_imageae(z, sigma, model=models[channels])),
                           ("NLM", lambda z: run_nlm(z, sigma, h=nlm_h[channels][sigma] * sigma))]
                if i < subset:
                    methods.append(("BM3D", lambda z: run_bm3d(z, sigma)))
                for method, fn in methods:
                    bar.set_postfix_str(f"{name} s{sigma} {path.name} {method}")
                    with Timer() as t:
                        result = fn(noisy)
                    p, s = score(clean, result)
                    records.append({
                        "set": name, "sigma": sigma, "index": i, "image": path.name, "method": method,
                        "psnr": p, "ssim": s, "seconds": t.seconds, "pixels": clean.shape[0] * clean.shape[1],
                        "in_subset": i < subset,
                    })
                bar.update(1)
    return records


def precision_check(args, models, records, bar):
    """imageae on BSD68 at sigma 25: float32 against the auto policy (same noisy inputs)."""
    from imageae.runtime import choose_precision

    name, sigma = "BSD68", 25
    if not (args.data / name).is_dir():
        return None
    paths = list_images(args.data / name)[: args.limit or None]
    images = [read_image(p, 1) for p in paths]
    result = {"set": name, "sigma": sigma, "images": len(images), "auto_policy": choose_precision()}
    reuse = {r["index"]: r for r in records if r["set"] == name and r["sigma"] == sigma and r["method"] == "imageae"}
    for precision in ("float32", "auto"):
        if precision == "auto" and len(reuse) == len(images):
            rows = [reuse[i] for i in range(len(images))]
        else:
            warm_up_imageae(images, models[1], precision)
            rows = []
            for i, clean in enumerate(images):
                bar.set_postfix_str(f"precision {precision} {paths[i].name}")
                with Timer() as t:
                    out = run_imageae(add_noise(clean, sigma, i), sigma, model=models[1], precision=precision)
                p, s = score(clean, out)
                rows.append({"psnr": p, "ssim": s, "seconds": t.seconds})
                bar.update(1)
        result[precision] = {
            "psnr": float(np.mean([r["psnr"] for r in rows])),
            "ssim": float(np.mean([r["ssim"] for r in rows])),
            "seconds_per_image": float(np.mean([r["seconds"] for r in rows])),
        }
    result["psnr_auto_minus_float32"] = result["auto"]["psnr"] - result["float32"]["psnr"]
    return result


def summarise(records, sets, sigmas):
    """Mean PSNR/SSIM per (set, sigma, method, full|subset)."""
    rows = []
    for name in sets:
        for sigma in sigmas:
            here = [r for r in records if r["set"] == name and r["sigma"] == sigma]
            if not here:
                continue
            row = {"set": name, "sigma": sigma, "images": len({r["index"] for r in here}),
                   "subset_images": len({r["index"] for r in here if r["in_subset"]})}
            for method in ("imageae", "NLM", "BM3D"):
                for scope, keep in (("full", lambda r: True), ("subset", lambda r: r["in_subset"])):
                    chosen = [r for r in here if r["method"] == method and keep(r)]
                    if method == "BM3D" and scope == "full":
                        continue  # BM3D only ever runs on the subset
                    if chosen and (scope == "full" or row["subset_images"]):
                        row[f"{method}_{scope}"] = {
                            "psnr": float(np.mean([r["psnr"] for r in chosen])),
                            "ssim": float(np.mean([r["ssim"] for r in chosen])),
                        }
            for method, table in PUBLISHED.items():
                row[f"{method}_published"] = table.get(name, {}).get(sigma)
            rows.append(row)
    return rows


def throughput(records):
    """Seconds per image and Mpixel/s per method and set, from the quality runs."""
    out = []
    for method in ("imageae", "NLM", "BM3D"):
        for name in dict.fromkeys(r["set"] for r in records):
            chosen = [r for r in records if r["method"] == method and r["set"] == name]
            if chosen:
                seconds, pixels = sum(r["seconds"] for r in chosen), sum(r["pixels"] for r in chosen)
                out.append({"method": method, "set": name, "runs": len(chosen),
                            "seconds_per_image": seconds / len(chosen), "mpixel_per_s": pixels / 1e6 / seconds})
    return out


# ----------------------------------------------------------------------------------------------
# Speed


def make_speed_folder(folder, cbsd68, count, size=512, sigma=25):
    """``count`` noisy 512x512 colour PNGs: CBSD68 photos resized (bicubic) plus seeded noise."""
    from PIL import Image

    sources = list_images(cbsd68)
    if not sources:
        raise FileNotFoundError(f"no images in {cbsd68} to build the speed folder from")
    folder.mkdir(parents=True)
    for i in range(count):
        with Image.open(sources[i % len(sources)]) as image:
            clean = np.asarray(image.convert("RGB").resize((size, size), Image.BICUBIC))
        Image.fromarray(to_uint8(add_noise(clean, sigma, i))).save(folder / f"photo{i:03d}.png")


def speed(args, models, bar):
    import imageae
    from imageae.denoise.api import Denoiser

    colour_model = models[3]
    result = {"images": args.speed_images, "size": "512x512 RGB PNG", "noise_sigma": 25}
    with tempfile.TemporaryDirectory(prefix="imageae-bench-") as tmp:
        tmp = Path(tmp)
        src, warm = tmp / "src", tmp / "warm"
        make_speed_folder(src, args.data / "CBSD68", args.speed_images)
        warm.mkdir()
        for path in list_images(src)[:2]:
            shutil.copy(path, warm / path.name)

        bar.set_postfix_str("denoise_folder warm-up")
        imageae.denoise_folder(warm, tmp / "warm-out", model=colour_model, overwrite=True, progress=False)
        bar.set_postfix_str("denoise_folder")
        with Timer() as t:
            report = imageae.denoise_folder(src, tmp / "out", model=colour_model, overwrite=True, progress=False)
        if report.failed:
            raise RuntimeError(f"denoise_folder failed on {report.failed}")
        result["denoise_folder"] = {
            "seconds": report.seconds, "wall_seconds": t.seconds, "pixels": report.pixels,
            "mpixel_per_s": report.pixels / 1e6 / report.seconds, "images_per_s": len(report.written) / report.seconds,
        }
        bar.update(1)

        bar.set_postfix_str("CLI")
        command = [sys.executable, "-m", "imageae.cli", "denoise", str(src), "-o", str(tmp / "cli-out"),
                   "--overwrite", "--progress", "off"]
        if colour_model != "auto":
            command += ["--model", colour_model]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
        done = measure_subprocess(command, env)
        if done["rc"] != 0:
            raise RuntimeError(f"the CLI failed ({done['rc']}): {done['stderr'].strip()[-2000:]}")
        pixels = args.speed_images * 512 * 512
        result["cli"] = {
            "command": "python -m imageae.cli denoise SRC -o DST --overwrite --progress off"
            + (" --model MODEL" if colour_model != "auto" else ""),
            "wall_seconds": done["seconds"], "mpixel_per_s": pixels / 1e6 / done["seconds"],
            "peak_rss_mb": done["maxrss_kb"] / 1024, "summary": done["stdout"].strip(),
        }
        bar.update(1)

    bar.set_postfix_str("model only")
    runner = Denoiser(colour_model).runner(3)
    batch = np.random.default_rng(0).random((4, 512, 512, 3), dtype=np.float32)
    for _ in range(2):
        runner.predict(batch)
    repeats = 3
    with Timer() as t:
        for _ in range(repeats):
            runner.predict(batch)
    result["model_only"] = {
        "batch": [4, 512, 512, 3], "repeats": repeats, "seconds_per_batch": t.seconds / repeats,
        "mpixel_per_s": repeats * 4 * 512 * 512 / 1e6 / t.seconds, "policy": runner.model.dtype_policy.name,
    }
    bar.update(1)
    return result


# ----------------------------------------------------------------------------------------------
# Outside the training conditions


def add_poisson_noise(clean, peak, index):
    """Photon noise: clean / 255 * peak expected photons, Poisson-sampled, back to 0..255, not clipped.

    Signal-dependent: the noise at a pixel of value x has standard deviation sqrt(x * 255 / peak).
    """
    rng = np.random.default_rng([BEYOND_SEED_KIND["poisson"], int(peak), int(index)])
    return rng.poisson(clean.astype(np.float64) / 255.0 * peak) / peak * 255.0


def add_camera_noise(clean, sigma, index, quality=BEYOND_JPEG_QUALITY):
    """A camera-like pipeline: Gaussian noise, clipped and rounded to uint8, then a JPEG round trip.

    Pillow's encoder at ``quality`` (colour with its default 4:2:0 chroma subsampling), so the
    noise that reaches the denoiser is clipped and spatially correlated.
    """
    import io

    from PIL import Image

    rng = np.random.default_rng([BEYOND_SEED_KIND["camera"], int(sigma), int(index)])
    noisy = to_uint8(clean.astype(np.float64) + rng.normal(0.0, float(sigma), clean.shape))
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=quality)
    with Image.open(io.BytesIO(buffer.getvalue())) as image:
        return np.asarray(image, dtype=np.float64)


def add_salt_pepper(clean, percent, index):
    """Impulse noise: ``percent`` % of the pixels (all channels of a pixel together) set to 0 or 255, half each."""
    rng = np.random.default_rng([BEYOND_SEED_KIND["salt_pepper"], int(percent), int(index)])
    hit = rng.random(clean.shape[:2]) < percent / 100.0
    salt = rng.random(clean.shape[:2]) < 0.5
    noisy = clean.astype(np.float64)
    noisy[hit & salt] = 255.0
    noisy[hit & ~salt] = 0.0
    return noisy


NOISE_MAKERS = {"gaussian": add_noise, "poisson": add_poisson_noise, "camera": add_camera_noise,
                "salt_pepper": add_salt_pepper}  # kind -> (clean uint8, parameter, index) -> noisy float64


def estimate_sigma(image):
    """Blind noise level on the 0..255 scale: median |finest diagonal Haar coefficient| / 0.6745.

    Donoho's robust estimator (as in skimage.restoration.estimate_sigma, which uses db2), pooled
    over colour channels. Close for white Gaussian noise on natural images; texture raises it, noise
    whose high frequencies JPEG removed lowers it, and being a median it largely ignores sparse impulses.
    """
    x = np.asarray(image, np.float64)
    x = x[: x.shape[0] // 2 * 2, : x.shape[1] // 2 * 2]
    diagonal = (x[0::2, 0::2] - x[0::2, 1::2] - x[1::2, 0::2] + x[1::2, 1::2]) / 2.0
    return float(np.median(np.abs(diagonal)) / 0.6745)


def nlm_h_at(h_over_sigma, sigma):
    """OpenCV NLM's h for noise level ``sigma``: the tuned h / sigma, linear between tuned sigmas, times sigma."""
    tuned = sorted(h_over_sigma)
    return float(np.interp(sigma, tuned, [h_over_sigma[s] for s in tuned])) * sigma


def beyond_sigma(kind, parameter, noisy):
    """The noise level NLM's h is scaled from: the true sigma for Gaussian noise, else a blind estimate.

    The estimate is taken on the uint8 image NLM receives and floored at 1 so that h stays positive.
    """
    return float(parameter) if kind == "gaussian" else max(estimate_sigma(to_uint8(noisy)), 1.0)


def beyond(args, models, nlm_h, bar):
    """Per-image records for every condition of BEYOND_CONDITIONS on the first --beyond-limit images."""
    records = []
    for name in BEYOND_SETS:
        channels = SETS[name]
        paths = list_images(args.data / name)[: args.beyond_limit or None]
        images = [read_image(p, channels) for p in paths]
        warm_up_imageae(images, models[channels], "auto")
        for key, _, kind, parameter in BEYOND_CONDITIONS:
            for i, (path, clean) in enumerate(zip(paths, images)):
                noisy = NOISE_MAKERS[kind](clean, parameter, i)
                sigma = beyond_sigma(kind, parameter, noisy)
                h = nlm_h_at(nlm_h[channels], sigma)
                noise_rms = float(np.sqrt(np.mean((noisy - clean) ** 2)))
                methods = [("noisy", to_uint8),
                           ("imageae", lambda z: run_imageae(z, sigma, model=models[channels])),
                           ("NLM", lambda z: run_nlm(z, sigma, h=h))]
                for method, fn in methods:
                    bar.set_postfix_str(f"beyond {name} {key} {path.name} {method}")
                    with Timer() as t:
                        result = fn(noisy)
                    p, s = score(clean, result)
                    records.append({
                        "condition": key, "set": name, "index": i, "image": path.name, "method": method,
                        "psnr": p, "ssim": s, "seconds": t.seconds, "noise_rms": noise_rms, "nlm_sigma": sigma,
                        "nlm_h": h,
                    })
                bar.update(1)
    return records


def summarise_beyond(records):
    """Mean PSNR/SSIM per (condition, set, method), with the mean noise RMS and NLM's sigma and h."""
    rows = []
    for key, description, kind, parameter in BEYOND_CONDITIONS:
        for name in BEYOND_SETS:
            here = [r for r in records if r["condition"] == key and r["set"] == name]
            if not here:
                continue
            inputs = [r for r in here if r["method"] == "noisy"]
            row = {"condition": key, "description": description, "kind": kind, "parameter": parameter, "set": name,
                   "images": len(inputs), "noise_rms": float(np.mean([r["noise_rms"] for r in inputs])),
                   "nlm_sigma": float(np.mean([r["nlm_sigma"] for r in inputs])),
                   "nlm_h": float(np.mean([r["nlm_h"] for r in inputs]))}
            for method in BEYOND_METHODS:
                chosen = [r for r in here if r["method"] == method]
                row[method] = {"psnr": float(np.mean([r["psnr"] for r in chosen])),
                               "ssim": float(np.mean([r["ssim"] for r in chosen]))}
            rows.append(row)
    return rows


# ----------------------------------------------------------------------------------------------
# Reporting


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def quality_table(rows, key, digits):
    subset = any(r["subset_images"] for r in rows)
    head = ["set", "sigma", "n", "imageae", "NLM"]
    if subset:
        head += ["subset n", "imageae (subset)", "NLM (subset)", "BM3D (subset)"]
    if key == "psnr":
        head += ["BM3D (published)", "DnCNN (published)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        def cell(name):
            return fmt(r.get(name, {}).get(key), digits)

        cells = [r["set"], str(r["sigma"]), str(r["images"]), cell("imageae_full"), cell("NLM_full")]
        if subset:
            cells += [str(r["subset_images"]), cell("imageae_subset"), cell("NLM_subset"), cell("BM3D_subset")]
        if key == "psnr":
            cells += [fmt(r["BM3D_published"]), fmt(r["DnCNN_published"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def beyond_table(rows, key, digits):
    head = ["condition", "set", "n", "noise RMS", "NLM sigma", "NLM h", "noisy input", "imageae", "NLM",
            "imageae - input", "imageae - NLM"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        noisy, ours, nlm = (r[m][key] for m in BEYOND_METHODS)
        cells = [r["description"], r["set"], str(r["images"]), fmt(r["noise_rms"], 1), fmt(r["nlm_sigma"], 1),
                 fmt(r["nlm_h"], 1), fmt(noisy, digits), fmt(ours, digits), fmt(nlm, digits),
                 f"{ours - noisy:+.{digits}f}", f"{ours - nlm:+.{digits}f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def beyond_markdown(b):
    rows = b["summary"]
    worse = [f"{r['description']} ({r['set']})" for r in rows if r["imageae"]["psnr"] < r["noisy"]["psnr"]]
    beaten = [f"{r['description']} ({r['set']})" for r in rows if r["imageae"]["psnr"] < r["NLM"]["psnr"]]
    return [
        "## Outside the training conditions",
        "",
        f"The shipped denoisers are blind and were trained on {b['training_noise']}. Here they meet noise "
        f"they were not trained on, on the first {b['images_per_set']} images of {' and '.join(BEYOND_SETS)}; "
        "each condition's noisy input is the same for every method.",
        "",
        "- Gaussian sigma 5 (below most of the training mass), 65 and 75 (above the training range): the main "
        "protocol and seeds (unclipped input).",
        "- Poisson: clean / 255 * peak expected photons, Poisson-sampled, * 255 / peak, not clipped; "
        "signal-dependent, standard deviation sqrt(x * 255 / peak) at a pixel of value x.",
        f"- Camera-like: Gaussian sigma 15, clipped and rounded to uint8, then a Pillow JPEG round trip at "
        f"quality {BEYOND_JPEG_QUALITY} (colour 4:2:0): clipped, spatially correlated noise.",
        "- Salt and pepper: 2 % of the pixels (all channels of a pixel together) set to 0 or 255, half each. "
        "Impulse noise is not what a Gaussian denoiser (or NLM) is built for; a median filter is the usual tool.",
        f"- Seeds: {b['seed']}; i = 0-based image index.",
        "- noisy input: the input clipped and rounded to uint8, scored as is (no denoising). noise RMS: "
        "sqrt(mean((noisy - clean)^2)) of the input before that clipping, the effective sigma on the 0..255 "
        "scale; mean over images.",
        f"- NLM: as in the main table; h = (h / sigma) * sigma, with h / sigma tuned on training images at sigma "
        f"{', '.join(map(str, NLM_BEYOND_SIGMAS))} and linearly interpolated between them (constant beyond). "
        f"{b['nlm_sigma_rule']} *NLM sigma* and *NLM h* are means over images.",
        "",
        "### PSNR (dB)",
        "",
        beyond_table(rows, "psnr", 2),
        "",
        "### SSIM",
        "",
        beyond_table(rows, "ssim", 4),
        "",
        "imageae below the noisy input (PSNR): " + ("; ".join(worse) if worse else "none") + ".",
        "",
        "imageae below OpenCV NLM (PSNR): " + ("; ".join(beaten) if beaten else "none") + ".",
        "",
    ]


def markdown(result):
    env, cfg = result["environment"], result["config"]
    out = [
        "# Denoising benchmark",
        "",
        f"- date: {result['date']}",
        f"- command: `{result['command']}`",
        f"- git commit: {env['git_commit']}",
        f"- machine: {env['device']}; TensorFlow {env['tensorflow']}, Keras {env['keras']}, OpenCV {env['opencv']}, "
        f"bm3d {env['bm3d']}, Python {env['python']}; TF_NUM_INTRAOP_THREADS={env['tf_intraop_threads_env']}, "
        f"OpenCV threads {env['opencv_threads']}",
        f"- models: grey `{cfg['model_grey']}`, colour `{cfg['model_colour']}`; precision auto = "
        f"`{env['auto_precision']}`",
        f"- data: `{cfg['data']}`; sets {', '.join(cfg['sets'])}; sigmas {', '.join(map(str, cfg['sigmas']))}"
        + (f"; first {cfg['limit']} images per set only (--limit)" if cfg["limit"] else ""),
        "",
        "## Protocol",
        "",
        f"Noise: {NOISE_SEED}, added to the uint8 clean image as float64 on the 0..255 scale; the noisy "
        "input is not clipped. Every method's output is clipped to [0, 255] and rounded to uint8; PSNR "
        "and SSIM (imageae.metrics: tf.image, 11x11 Gaussian window) against the uint8 original, colour "
        "over RGB, mean over the images of a set. All methods see the same noisy images.",
        "",
        "- imageae: `imageae.denoise(noisy / 255" + (", self_ensemble=True" if cfg.get("self_ensemble") else "")
        + ")` (float32, unclipped), precision auto.",
        f"- NLM: OpenCV `fastNlMeansDenoising` (grey) / `fastNlMeansDenoisingColored` (colour, RGB->BGR, "
        f"hColor = h), template {NLM_WINDOWS['templateWindowSize']}, search {NLM_WINDOWS['searchWindowSize']}; "
        "input clipped and rounded to uint8 (OpenCV requires it). h per sigma: "
        + "; ".join(f"{'grey' if c == '1' else 'colour'}: " + ", ".join(f"sigma {s}: h = {m:.1f} sigma"
                                                                     for s, m in hs.items())
                    + f" ({result['nlm']['tuning'][c]['source']})" for c, hs in result["nlm"]["h_over_sigma"].items()),
        "- BM3D: pip `bm3d` (`bm3d.bm3d` grey / `bm3d.bm3d_rgb` colour, profile 'np'), sigma_psd = sigma/255 "
        "on the unclipped noisy image / 255. "
        + (f"BM3D runs on the first {cfg['bm3d_limit']} images of each set only; the *(subset)* columns give "
           "imageae and NLM on exactly those images for a like-for-like comparison."
           if cfg["bm3d_limit"] else "BM3D disabled (--bm3d-limit 0)."),
        "- *(published)* columns: numbers from the papers (DnCNN-S grey / CDnCNN-B colour; BM3D / CBM3D), "
        "not measured here.",
        "",
        "## PSNR (dB)",
        "",
        quality_table(result["summary"], "psnr", 2),
        "",
        "## SSIM",
        "",
        quality_table(result["summary"], "ssim", 4),
        "",
    ]
    p = result.get("precision")
    if p:
        out += [
            "## Precision",
            "",
            f"imageae on {p['set']} ({p['images']} images), sigma {p['sigma']}, same noisy inputs:",
            "",
            "| precision | PSNR | SSIM | s/image |",
            "|---|---|---|---|",
            f"| float32 | {p['float32']['psnr']:.3f} | {p['float32']['ssim']:.4f} | {p['float32']['seconds_per_image']:.3f} |",
            f"| auto ({p['auto_policy']}) | {p['auto']['psnr']:.3f} | {p['auto']['ssim']:.4f} | "
            f"{p['auto']['seconds_per_image']:.3f} |",
            "",
            f"auto - float32: {p['psnr_auto_minus_float32']:+.3f} dB",
            "",
        ]
    if result.get("beyond"):
        out += beyond_markdown(result["beyond"])
    out += ["## Speed", "", "Per method, from the quality runs (imageae after an untimed warm-up per image shape; "
            "one image per call; Mpixel = million spatial pixels):", "",
            "| method | set | runs | s/image | Mpixel/s |", "|---|---|---|---|---|"]
    out += [f"| {t['method']} | {t['set']} | {t['runs']} | {t['seconds_per_image']:.3f} | {t['mpixel_per_s']:.3f} |"
            for t in result["throughput"]]
    s = result.get("speed")
    if s:
        f, c, m = s["denoise_folder"], s["cli"], s["model_only"]
        out += [
            "",
            f"imageae end to end on {s['images']} noisy {s['size']} photos (CBSD68 resized, sigma {s['noise_sigma']}):",
            "",
            "| what | seconds | Mpixel/s | notes |",
            "|---|---|---|---|",
            f"| `imageae.denoise_folder` | {f['seconds']:.2f} | {f['mpixel_per_s']:.3f} | after a 2-image warm-up "
            f"call; report.seconds (decode, model, encode+write); {f['images_per_s']:.2f} images/s |",
            f"| `{c['command']}` | {c['wall_seconds']:.2f} | {c['mpixel_per_s']:.3f} | subprocess wall time incl. "
            f"Python/TF start-up and model load; peak RSS {c['peak_rss_mb']:.0f} MB |",
            f"| model only, `TiledRunner.predict` on a (4, 512, 512, 3) batch | {m['seconds_per_batch']:.3f} per batch | "
            f"{m['mpixel_per_s']:.3f} | {m['policy']}, mean of {m['repeats']} after warm-up |",
        ]
    out += ["", f"Peak RSS of the benchmark process: {result['peak_rss_mb']:.0f} MB. "
            f"Wall time of the whole run: {result['wall_seconds'] / 60:.1f} min.", ""]
    return "\n".join(out)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["summary"]
    sets = list(dict.fromkeys(r["set"] for r in rows))
    fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
    styles = {
        "imageae_full": ("imageae", "C0", "-", "o"), "NLM_full": ("OpenCV NLM", "C1", "-", "o"),
        "imageae_subset": ("imageae (subset)", "C0", "--", "s"), "NLM_subset": ("NLM (subset)", "C1", "--", "s"),
        "BM3D_subset": ("BM3D (subset)", "C2", "--", "s"),
    }
    for ax, name in zip(axes[0], sets):
        here = [r for r in rows if r["set"] == name]
        for key, (label, colour, line, marker) in styles.items():
            points = [(r["sigma"], r[key]["psnr"]) for r in here if key in r]
            if points:
                ax.plot(*zip(*points), line, marker=marker, color=colour, label=label)
        for method, marker in (("BM3D", "x"), ("DnCNN", "+")):
            points = [(r["sigma"], r[f"{method}_published"]) for r in here if r[f"{method}_published"] is not None]
            if points:
                ax.plot(*zip(*points), ":", marker=marker, color="grey", label=f"{method} (published)")
        n, k = here[0]["images"], here[0]["subset_images"]
        ax.set_title(f"{name} (n = {n}" + (f", subset = first {k}" if k else "") + ")")
        ax.set_xlabel("noise sigma (0..255)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_xticks([r["sigma"] for r in here])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"Gaussian denoising, {result['date'][:10]}, {result['environment']['device']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ----------------------------------------------------------------------------------------------
# Main


def environment():
    import cv2
    import keras
    import tensorflow as tf

    from imageae.runtime import choose_precision, describe_device

    commit = git_commit()
    try:
        from importlib.metadata import version

        bm3d_version = version("bm3d")
    except Exception:
        bm3d_version = "not installed"
    return {
        "device": describe_device(), "platform": platform.platform(), "python": platform.python_version(),
        "tensorflow": tf.__version__, "keras": keras.__version__, "opencv": cv2.__version__, "bm3d": bm3d_version,
        "numpy": np.__version__, "auto_precision": choose_precision(), "git_commit": commit,
        "tf_intraop_threads_env": os.environ.get("TF_NUM_INTRAOP_THREADS", "unset (all cores)"),
        "opencv_threads": cv2.getNumThreads(),
    }


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="Models: --model-grey/--model-colour, else the shipped denoise-grey / "
                                       "denoise-colour (saved_models/, or $IMAGEAE_MODELS).")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"folder holding Set12/, BSD68/, CBSD68/ (default: {DEFAULT_DATA})")
    p.add_argument("--sets", nargs="+", choices=list(SETS), default=list(SETS), help="test sets (default: all)")
    p.add_argument("--sigmas", nargs="+", type=int, default=[15, 25, 50], help="noise levels, 0..255 (default: 15 25 50)")
    p.add_argument("--limit", type=int, default=0, help="first N images per set only, for smoke tests (default: all)")
    p.add_argument("--bm3d-limit", type=int, default=6,
                   help="BM3D (slow) on the first N images of each set; 0 disables it (default: 6)")
    p.add_argument("--model-grey", default="auto", help="grey model: a registered name or .keras path (default: auto)")
    p.add_argument("--model-colour", default="auto", help="colour model: a registered name or .keras path (default: auto)")
    p.add_argument("--nlm-tune-images", type=int, default=6,
                   help="training images used to pick OpenCV NLM's h per sigma (Train400 grey, BSDS500 train "
                        "colour); 0 uses a fixed h (default: 6)")
    p.add_argument("--speed-images", type=int, default=16, help="512x512 photos in the throughput run (default: 16)")
    p.add_argument("--skip-speed", action="store_true", help="skip the throughput runs")
    p.add_argument("--skip-precision", action="store_true", help="skip the float32-vs-auto check")
    p.add_argument("--self-ensemble", action="store_true",
                   help="imageae with its x8 self-ensemble (flips and rotations averaged); write to another --out")
    p.add_argument("--beyond", action="store_true",
                   help="also measure noise outside the training conditions (Gaussian sigma 5/65/75, Poisson, "
                        "clipped + JPEG, salt and pepper) on BSD68 and CBSD68 (default: off)")
    p.add_argument("--beyond-limit", type=int, default=8,
                   help="images per set in the --beyond section, 0 for all (default: 8)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                   help="where denoise.md/.json/.png go (default: benchmarks/results)")
    args = p.parse_args(argv)
    if min(args.limit, args.bm3d_limit, args.nlm_tune_images, args.beyond_limit) < 0 or args.speed_images < 2:
        p.error("--limit, --bm3d-limit, --nlm-tune-images and --beyond-limit must be >= 0 and --speed-images >= 2")
    if any(s <= 0 for s in args.sigmas):
        p.error(f"--sigmas must be positive, got {args.sigmas}")
    return p, args


def check_inputs(parser, args):
    """Fail early, saying what is missing and where it was expected."""
    wanted = list(dict.fromkeys([*args.sets, *(BEYOND_SETS if args.beyond else ())]))
    missing = [name for name in wanted if not (args.data / name).is_dir() or not list_images(args.data / name)]
    if not args.skip_speed and "CBSD68" not in missing and not (args.data / "CBSD68").is_dir():
        missing.append("CBSD68 (for the speed run; or pass --skip-speed)")
    if missing:
        parser.error(
            f"datasets not found under --data {args.data}: missing {', '.join(dict.fromkeys(missing))}. "
            f"The benchmark expects the shared datasets at <repo>/../shared/datasets/denoise "
            f"(folders Set12/, BSD68/, CBSD68/ of PNGs, as in shared/datasets/README.md); pass --data DIR "
            f"if they live elsewhere."
        )
    from imageae import registry

    models = {1: args.model_grey, 3: args.model_colour}
    needed = {SETS[name] for name in wanted} | ({3} if not args.skip_speed else set())
    if not args.skip_precision and (args.data / "BSD68").is_dir():
        needed.add(1)  # the precision check runs on BSD68 whatever --sets says
    for channels in sorted(needed):
        name = models[channels] if models[channels] != "auto" else ("denoise-grey" if channels == 1 else "denoise-colour")
        try:
            path = registry.resolve(name, job="denoise")
        except (ValueError, FileNotFoundError) as error:
            flag = "--model-grey" if channels == 1 else "--model-colour"
            parser.error(f"{error}. Train it first, set IMAGEAE_MODELS to a folder holding {name}.keras, "
                         f"or pass {flag} PATH.keras")
        models[channels] = str(path) if models[channels] != "auto" else "auto"
    return models


def main(argv=None):
    start = time.perf_counter()
    parser, args = parse_args(argv)
    args.data = args.data.expanduser().resolve()
    models = check_inputs(parser, args)
    global SELF_ENSEMBLE
    SELF_ENSEMBLE = args.self_ensemble
    from tqdm.auto import tqdm

    env = environment()
    command = "python benchmarks/denoise.py" + "".join(" " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"{env['device']}; precision auto = {env['auto_precision']}; commit {env['git_commit']}", file=sys.stderr)

    nlm_h, tuning = {}, {}
    tune_sigmas = sorted(set(args.sigmas) | (set(NLM_BEYOND_SIGMAS) if args.beyond else set()))
    for channels in sorted({SETS[name] for name in [*args.sets, *(BEYOND_SETS if args.beyond else ())]}):
        print(f"tuning OpenCV NLM h for {'grey' if channels == 1 else 'colour'} ...", file=sys.stderr)
        nlm_h[channels], tuning[channels] = tune_nlm(args.data, tune_sigmas, channels, args.nlm_tune_images)

    counts = {name: len(list_images(args.data / name)[: args.limit or None]) for name in args.sets}
    precision_images = len(list_images(args.data / "BSD68")[: args.limit or None]) if (args.data / "BSD68").is_dir() else 0
    reuse = "BSD68" in args.sets and 25 in args.sigmas
    beyond_images = {name: len(list_images(args.data / name)[: args.beyond_limit or None]) for name in BEYOND_SETS}
    total = (sum(counts.values()) * len(args.sigmas)
             + (0 if args.skip_precision else precision_images * (1 if reuse else 2))
             + (0 if args.skip_speed else 3)
             + (sum(beyond_images.values()) * len(BEYOND_CONDITIONS) if args.beyond else 0))
    with tqdm(total=total, desc="benchmark", unit="step", dynamic_ncols=True) as bar:
        records = quality(args, models, nlm_h, bar)
        precision = None if args.skip_precision else precision_check(args, models, records, bar)
        beyond_records = beyond(args, models, nlm_h, bar) if args.beyond else None
        speed_result = None if args.skip_speed else speed(args, models, bar)

    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "environment": env,
        "config": {
            "data": str(args.data), "sets": args.sets, "sigmas": args.sigmas, "limit": args.limit,
            "bm3d_limit": args.bm3d_limit, "model_grey": models[1], "model_colour": models[3],
            "self_ensemble": args.self_ensemble,
            "speed_images": args.speed_images, "beyond": args.beyond, "beyond_limit": args.beyond_limit,
        },
        "protocol": {
            "noise": NOISE_SEED, "noisy_input": "float64 0..255, not clipped",
            "output": "clipped to [0, 255], rounded to uint8", "psnr": "vs uint8 original, colour over RGB, mean over images",
            "ssim": "imageae.metrics.ssim (tf.image.ssim, 11x11 Gaussian, sigma 1.5)",
        },
        "nlm": {"h_over_sigma": {str(c): h for c, h in nlm_h.items()}, "tuning": {str(c): t for c, t in tuning.items()},
                **NLM_WINDOWS},
        "published": PUBLISHED,
        "summary": summarise(records, args.sets, args.sigmas),
        "throughput": throughput(records),
        "precision": precision,
        "speed": speed_result,
        "beyond": None if beyond_records is None else {
            "training_noise": "white Gaussian noise, sigma uniform in [0, 55] on the 0..255 scale",
            "sets": list(BEYOND_SETS), "images_per_set": max(beyond_images.values()), "images": beyond_images,
            "conditions": [{"condition": k, "description": d, "kind": kind, "parameter": v}
                           for k, d, kind, v in BEYOND_CONDITIONS],
            "seed": BEYOND_SEED, "jpeg_quality": BEYOND_JPEG_QUALITY,
            "methods": {"noisy": "no denoising: the input clipped and rounded to uint8", "imageae":
                        "imageae.denoise(noisy / 255), model auto, precision auto", "NLM": "OpenCV NLM as above"},
            "nlm_sigma_rule": "Gaussian conditions use the true sigma; the others a blind estimate from the uint8 "
                              "image NLM receives, median |finest diagonal Haar coefficient| / 0.6745 (Donoho), "
                              "pooled over channels, floored at 1.",
            "summary": summarise_beyond(beyond_records),
            "records": beyond_records,
        },
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_seconds": time.perf_counter() - start,
        "records": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (args.out / "denoise.md").write_text(text)
    (args.out / "denoise.json").write_text(json.dumps(result, indent=1, default=float))
    plot(result, args.out / "denoise.png")
    print(text)
    print(f"wrote {args.out / 'denoise.md'}, denoise.json, denoise.png", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
