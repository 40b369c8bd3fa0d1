#!/usr/bin/env python
"""Real camera noise: imageae against OpenCV NLM and BM3D on PolyU crops (issue 25).

Each pair is a single shot (``*_real.JPG``, the noisy input) and the mean of many shots of the
same static scene (``*_mean.JPG``, the ground truth), 512x512 crops as the cameras wrote them
(demosaiced, in-camera JPEG). Evaluation only: nothing here trains on them.

    python benchmarks/realnoise.py                                # PolyU-Canon, 55 pairs
    python benchmarks/realnoise.py --data /work/data/polyu-other  # held-out Nikon/Sony crops
    python benchmarks/realnoise.py --limit 8 --bm3d-limit 1       # smoke test
    python benchmarks/realnoise.py --models auto denoise-colour   # a new default against today's

Methods, all in one run on the same images, every output clipped and rounded to uint8, PSNR (over
RGB) and SSIM against the uint8 mean image:

- input: the noisy shot as it is;
- imageae: ``imageae.denoise(noisy / 255, model=M)`` at its defaults (no ``strength`` given).
  When ``imageae.denoise`` takes ``strength`` (checked with inspect.signature, so the same script
  runs before and after it exists), also ``strength=None`` (blind), ``strength="auto"`` and a sweep
  of fixed strengths (``--strengths``, 0..255 scale) reported as a curve; "best fixed" is the
  strength with the best mean PSNR on the tuning pairs (below), the curve's maximum over all
  pairs is shown beside it as an oracle;
- OpenCV NLM (``fastNlMeansDenoisingColored``, hColor = h, windows 7/21): h picked from ``--nlm-h``
  by mean PSNR on five tuning pairs spread evenly over the sorted file names (so over the
  cameras), then scored on the other pairs and on all of them;
- BM3D (pip ``bm3d``, ``bm3d_rgb``, profile 'np') with sigma from
  ``skimage.restoration.estimate_sigma(channel_axis=-1, average_sigmas=True)``. It takes minutes
  per 512x512 crop on a shared 2-core CPU, so it runs on ``--bm3d-limit`` test pairs spread evenly
  over the list, and the others are given on the same subset for a like-for-like comparison.

The issue's bar: imageae at its defaults >= the best baseline of the run + 0.5 dB, and ahead of
NLM on >= 90 % of the crops (on the test pairs: the tuning pairs are excluded).

Outputs under ``--out`` (default benchmarks/results), stem ``--name`` (default ``realnoise`` for
PolyU-Canon, ``realnoise-<folder>`` otherwise): ``.md``, ``.json`` (every per-crop number),
``.png`` (PSNR against imageae's strength and NLM's h) and ``_example.png`` (a crop: noisy, NLM,
imageae, ground truth; pass ``--no-example`` for data that must not leave its folder).
"""

import argparse
import datetime
import inspect
import json
import os
import platform
import resource
import shlex
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np
from common import REPO, Timer, git_commit
from denoise import NLM_WINDOWS, read_image, run_bm3d, run_nlm, to_uint8

from imageae.denoise.train import find_pairs

DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "realnoise" / "PolyU-Canon"
NLM_H = (2, 3, 4, 5, 6, 7, 8, 10)
STRENGTHS = (1, 2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25)
TUNING_PAIRS = 5
BAR_MARGIN_DB, BAR_SHARE = 0.5, 0.9


# ----------------------------------------------------------------------------------------------
# Data


def spread(count, n, *, exclude=()):
    """``count`` indices spread evenly over range(n), skipping ``exclude`` (deterministic)."""
    pool = [i for i in range(n) if i not in set(exclude)]
    if count >= len(pool):
        return pool
    return sorted({pool[round(k)] for k in np.linspace(0, len(pool) - 1, count)})


def camera_of(name):
    return name.split("_")[0]


def true_sigma(noisy, clean):
    """std(real - mean) on the 0..255 scale, mean over channels: the noise the denoiser should remove."""
    return float(np.mean(np.std(noisy.astype(np.float64) - clean.astype(np.float64), axis=(0, 1))))


def skimage_sigma(noisy):
    from skimage.restoration import estimate_sigma

    if noisy.ndim == 2:
        return float(estimate_sigma(noisy.astype(np.float64)))
    return float(estimate_sigma(noisy.astype(np.float64), channel_axis=-1, average_sigmas=True))


#: 3, or 1 with --grey: the pairs are read as grey (Pillow's "L": ITU-R 601 luma), as a scan or a
#: black-and-white conversion of a camera JPEG would be.
CHANNELS = 3


# ----------------------------------------------------------------------------------------------
# imageae, with or without a strength


def strength_support():
    """(takes ``strength``, its default) for today's ``imageae.denoise``."""
    import imageae

    parameter = inspect.signature(imageae.denoise).parameters.get("strength")
    if parameter is None:
        return False, None
    return True, (None if parameter.default is inspect.Parameter.empty else parameter.default)


_UNSET = object()


def run_imageae(noisy, *, model, strength=_UNSET):
    """imageae on a uint8 image; ``strength`` passed only when given (so "defaults" means defaults)."""
    import imageae

    options = {} if strength is _UNSET else {"strength": strength}
    y = imageae.denoise((noisy / 255.0).astype(np.float32), model=model, **options)
    return to_uint8(y, 255.0)


def noise_level_estimator(model):
    """uint8 image -> the level (0..255) ``model`` itself estimates for ``strength="auto"``, or None for a
    model without one (blind models, checkouts before the noise-level input)."""
    try:
        from imageae.denoise.api import Denoiser, estimate_noise_level

        runner = Denoiser(model).runner(CHANNELS)
    except (ImportError, ValueError, FileNotFoundError):
        return None
    if not getattr(getattr(runner, "model", None), "noise_level", False):
        return None
    def level(noisy):
        x = noisy.astype(np.float32) / 255.0
        x = np.repeat(x[..., None], runner.channels, axis=-1) if x.ndim == 2 else x  # as the API runs grey
        return 255.0 * float(estimate_noise_level(runner.model, x))

    return level


def model_label(model):
    """The registered name "auto" picks for colour images, else the model as given."""
    if model != "auto":
        return model
    try:
        from imageae.denoise.api import _pick_model

        return f"auto ({_pick_model('auto', CHANNELS)})"
    except (ImportError, AttributeError, ValueError):  # the private helper moved: the label only loses its detail
        return "auto"


def imageae_variants(models, supported, default, strengths):
    """``(method, model, strength)``: defaults first, then blind, auto and the fixed sweep where supported."""
    out = []
    for model in models:
        out.append(("imageae", model, _UNSET))
        if supported:
            if default is not None:  # otherwise "blind" is what the defaults already ran
                out.append(("imageae blind", model, None))
            if default != "auto":
                out.append(("imageae auto", model, "auto"))
            out += [("imageae fixed", model, float(s)) for s in strengths]
    return out


# ----------------------------------------------------------------------------------------------
# The run


def evaluate(args, pairs, bar):
    from imageae.metrics import psnr, ssim

    supported, default = strength_support()
    variants = imageae_variants(args.models, supported, default, args.strengths)
    n = len(pairs)
    tuning = spread(min(TUNING_PAIRS, max(n - 1, 1)), n)
    test = [i for i in range(n) if i not in tuning]
    bm3d_subset = spread(args.bm3d_limit, n, exclude=tuning) if args.bm3d_limit else []
    images = [(read_image(noisy, CHANNELS), read_image(mean, CHANNELS)) for _, noisy, mean in pairs]
    crops, records = [], []

    def record(i, method, result, **extra):
        clean = images[i][1]
        records.append({"index": i, "image": pairs[i][0], "camera": camera_of(pairs[i][0]), "method": method,
                        "psnr": psnr(clean, result), "ssim": ssim(clean, result), **extra})

    # Untimed warm-up on the first pair (model load, precision clone, tf.function traces), which is
    # also the probe: a variant the API refuses (a blind model given a strength, a strength value the
    # API does not take) is left out and the reason reported, the defaults never are.
    skipped = []
    for method, model, strength in list(variants):
        try:
            run_imageae(images[0][0], model=model, strength=strength)
        except (ValueError, TypeError) as error:
            if strength is _UNSET:
                raise
            variants.remove((method, model, strength))
            skipped.append({"method": method, "model": model, "strength": strength, "reason": str(error)})
    levels = {model: noise_level_estimator(model) for model in args.models}

    nlm_grid = {}
    for i in tuning:
        noisy, clean = images[i]
        for h in args.nlm_h:
            bar.set_postfix_str(f"NLM tuning {pairs[i][0]} h={h}")
            nlm_grid.setdefault(h, []).append(psnr(clean, run_nlm(noisy.astype(np.float64), 0, h=h)))
    nlm_tuning = {h: float(np.mean(v)) for h, v in nlm_grid.items()}
    nlm_h = args.fixed_nlm_h if args.fixed_nlm_h else max(nlm_tuning, key=nlm_tuning.get)

    for i, (noisy, clean) in enumerate(images):
        name = pairs[i][0]
        z = noisy.astype(np.float64)
        crops.append({"index": i, "image": name, "camera": camera_of(name), "tuning": i in tuning,
                      "bm3d": i in bm3d_subset, "true_sigma": true_sigma(noisy, clean),
                      "skimage_sigma": skimage_sigma(noisy),
                      "model_level": {m: f(noisy) for m, f in levels.items() if f is not None}})
        record(i, "input", noisy)
        for method, model, strength in variants:
            bar.set_postfix_str(f"{name} {method} {'' if strength is _UNSET else strength}")
            with Timer() as t:
                result = run_imageae(noisy, model=model, strength=strength)
            record(i, method, result, model=model, strength=None if strength is _UNSET else strength,
                   seconds=t.seconds)
        bar.set_postfix_str(f"{name} NLM h={nlm_h}")
        with Timer() as t:
            result = run_nlm(z, 0, h=nlm_h)
        record(i, "NLM", result, h=nlm_h, seconds=t.seconds)
        if i in bm3d_subset:
            sigma = crops[-1]["skimage_sigma"]
            bar.set_postfix_str(f"{name} BM3D sigma={sigma:.2f} (minutes)")
            with Timer() as t:
                result = run_bm3d_rgb(z, sigma, threads=args.threads) if z.ndim == 3 else run_bm3d(z, sigma)
            record(i, "BM3D", result, sigma=sigma, seconds=t.seconds)
        bar.update(1)
    return {"supported": supported, "default": default, "skipped": skipped, "tuning": tuning, "test": test, "bm3d_subset": bm3d_subset,
            "nlm_h": nlm_h, "nlm_tuning_psnr": nlm_tuning, "crops": crops, "records": records}


def mean_of(records, method, indices, *, model=None, strength=_UNSET, key="psnr"):
    chosen = [r[key] for r in records if r["method"] == method and r["index"] in indices
              and (model is None or r.get("model") == model) and (strength is _UNSET or r.get("strength") == strength)]
    return float(np.mean(chosen)) if chosen and len(chosen) == len(indices) else None


def per_index(records, method, **match):
    return {r["index"]: r["psnr"] for r in records if r["method"] == method
            and all(r.get(k) == v for k, v in match.items())}


def summarise(run, models, strengths):
    """Means per method over the test pairs, all pairs and the BM3D subset; the sweep; the bar."""
    records = run["records"]
    scopes = {"test": set(run["test"]), "all": set(range(len(run["crops"]))), "bm3d": set(run["bm3d_subset"]),
              "tuning": set(run["tuning"])}
    rows = []

    def add(label, method, **match):
        row = {"label": label, "method": method, **{k: v for k, v in match.items() if k != "strength"}}
        if "strength" in match:
            row["strength"] = match["strength"]
        for scope, idx in scopes.items():
            if idx:
                row[scope] = {k: mean_of(records, method, idx, key=k, **match) for k in ("psnr", "ssim")}
        rows.append(row)

    add("input (noisy shot)", "input")
    sweeps, best = {}, {}
    for model in models:
        label = model_label(model)
        add(f"imageae {label}, defaults", "imageae", model=model)
        if run["supported"]:
            ran = {r["method"] for r in records if r.get("model") == model}
            if "imageae blind" in ran:
                add(f"imageae {label}, strength None (blind)", "imageae blind", model=model)
            if "imageae auto" in ran:
                add(f"imageae {label}, strength auto", "imageae auto", model=model)
            if "imageae fixed" not in ran:
                continue
            curve = {float(s): {scope: mean_of(records, "imageae fixed", idx, model=model, strength=float(s))
                                for scope, idx in scopes.items() if idx} for s in strengths}
            curve = {s: v for s, v in curve.items() if v["all"] is not None}  # refused strengths drop out
            sweeps[model] = curve
            pick = max(curve, key=lambda s: curve[s]["tuning"])
            oracle = max(curve, key=lambda s: curve[s]["all"])
            best[model] = {"chosen_on_tuning": pick, "oracle_on_all": oracle}
            add(f"imageae {label}, best fixed strength {pick:g} (picked on the tuning pairs)", "imageae fixed",
                model=model, strength=pick)
            if oracle != pick:
                add(f"imageae {label}, strength {oracle:g} (oracle: best over all pairs)", "imageae fixed",
                    model=model, strength=oracle)
    add(f"OpenCV NLM h = {run['nlm_h']:g} (picked on the tuning pairs)", "NLM")
    if run["bm3d_subset"]:
        add("BM3D, sigma = skimage estimate_sigma", "BM3D")

    # The bar: imageae at its defaults (first model, no strength given) against the best baseline.
    model = models[0]
    ours = per_index(records, "imageae", model=model)
    nlm = per_index(records, "NLM")
    test = sorted(scopes["test"])
    ahead = [i for i in test if ours[i] > nlm[i]]
    bar = {"model": model_label(model), "test_pairs": len(test),
           "imageae": float(np.mean([ours[i] for i in test])), "NLM": float(np.mean([nlm[i] for i in test])),
           "ahead_of_nlm": len(ahead), "share_ahead_of_nlm": len(ahead) / len(test),
           "share_ahead_of_nlm_all": float(np.mean([ours[i] > nlm[i] for i in nlm]))}
    bar["margin_over_nlm"] = bar["imageae"] - bar["NLM"]
    margins = {"NLM": bar["margin_over_nlm"]}
    if run["bm3d_subset"]:
        bm3d = per_index(records, "BM3D")
        sub = sorted(bm3d)
        bar["bm3d_pairs"] = len(sub)
        margins["BM3D"] = float(np.mean([ours[i] - bm3d[i] for i in sub]))
        bar["margin_over_bm3d_on_subset"] = margins["BM3D"]
    bar["best_baseline"] = min(margins, key=margins.get)
    bar["margin_over_best_baseline"] = margins[bar["best_baseline"]]
    bar["met_margin"] = bar["margin_over_best_baseline"] >= BAR_MARGIN_DB
    bar["met_share"] = bar["share_ahead_of_nlm"] >= BAR_SHARE
    bar["met"] = bar["met_margin"] and bar["met_share"]
    return {"rows": rows, "sweeps": sweeps, "best_strength": best, "bar": bar}


# ----------------------------------------------------------------------------------------------
# Reporting


def fmt(value, digits=2):
    return "-" if value is None else f"{value:.{digits}f}"


def skipped_summary(skipped):
    """{(model, reason): "method strength, ..."} so that a refused sweep is one line per model and reason."""
    out = {}
    for item in skipped:
        key = (item["model"], item["reason"])
        what = item["method"] + ("" if item["strength"] is None else f" {item['strength']:g}"
                                 if isinstance(item["strength"], float) else f" {item['strength']}")
        out[key] = f"{out[key]}, {what}" if key in out else what
    return out


def run_bm3d_rgb(noisy, sigma, *, threads):
    """BM3D on a uint8-valued RGB image with noise std ``sigma`` (0..255): pip bm3d's bm3d_rgb,
    profile 'np' with ``num_threads`` set (its automatic choice was slower on this 2-core machine)."""
    import bm3d

    profile = bm3d.BM3DProfile()
    profile.num_threads = threads
    return to_uint8(bm3d.bm3d_rgb(noisy / 255.0, sigma_psd=sigma / 255.0, profile=profile), 255.0)


def markdown(result):
    env, cfg, run, summary = result["environment"], result["config"], result["run"], result["summary"]
    crops = run["crops"]
    names = [c["image"] for c in crops]
    n, bar = len(crops), summary["bar"]
    sizes = {"test": len(run["test"]), "all": n, "bm3d": len(run["bm3d_subset"])}
    supported = run["supported"]
    out = [
        f"# Real camera noise: {Path(cfg['data']).name}",
        "",
        f"- date: {result['date']}",
        f"- command: `{result['command']}`",
        f"- git commit: {env['git_commit']}",
        (f"- machine: {env['device']}; TensorFlow {env['tensorflow']}, OpenCV {env['opencv']}, bm3d {env['bm3d']}, "
         f"scikit-image {env['skimage']}; {env['threads']} thread(s) for TF and OpenCV. The machine's 2 cores "
         "were shared with other jobs (a training run among them) during this run: times are indicative only."),
        f"- data: `{cfg['data']}`, {n} pairs (cameras: "
        + ", ".join(f"{c} {sum(camera_of(x) == c for x in names)}" for c in dict.fromkeys(map(camera_of, names)))
        + "); noisy = `*_real`, ground truth = `*_mean` (mean of many shots). Evaluation only."
        + (f" First {cfg['limit']} pairs only (--limit)." if cfg["limit"] else ""),
        f"- imageae models: {', '.join('`' + model_label(m) + '`' for m in cfg['models'])}; "
        + (f"`imageae.denoise` takes `strength` (default {run['default']!r}); fixed strengths tried: "
           f"{', '.join(f'{s:g}' for s in cfg['strengths'])}."
           if supported else "`imageae.denoise` takes no `strength` yet (this checkout): imageae runs blind, "
           "at its defaults only."),
        *[f"- left out (the API refused it on the first pair): {k} x `{m}`: {v}"
          for (m, v), k in skipped_summary(run["skipped"]).items()],
        "- tuning pairs (NLM's h" + (" and imageae's best fixed strength" if supported else "") + f", excluded from "
        f"*test*): {', '.join(names[i] for i in run['tuning'])}",
        "- NLM: mean PSNR on the tuning pairs per h: "
        + ", ".join(f"h={h:g}: {v:.2f}" for h, v in run["nlm_tuning_psnr"].items())
        + f" -> **h = {run['nlm_h']:g}**" + (" (fixed by --fixed-nlm-h)" if cfg["fixed_nlm_h"] else "")
        + f"; windows {NLM_WINDOWS['templateWindowSize']}/{NLM_WINDOWS['searchWindowSize']}, hColor = h.",
        f"- BM3D: on {sizes['bm3d']} test pairs (--bm3d-limit; minutes each): "
        + (", ".join(names[i] for i in run["bm3d_subset"]) if run["bm3d_subset"] else "disabled")
        + ". sigma from skimage's estimate_sigma, median "
        + fmt(float(np.median([c["skimage_sigma"] for c in crops]))) + " against a true std(real - mean) of median "
        + fmt(float(np.median([c["true_sigma"] for c in crops]))) + " (the estimator sees only the finest scale; "
        "this noise is spatially correlated by demosaicing and JPEG).",
        "",
        "## PSNR (dB), mean over pairs",
        "",
        (f"*test*: the {sizes['test']} pairs not used for tuning; *all*: all {n}; *BM3D subset*: the "
         f"{sizes['bm3d']} test pairs BM3D ran on. SSIM in the JSON."),
        "",
        "| method | test | all | BM3D subset | test - input |",
        "|---|---|---|---|---|",
    ]
    base = summary["rows"][0]["test"]["psnr"]
    for row in summary["rows"]:
        cells = [row.get(s, {}).get("psnr") for s in ("test", "all", "bm3d")]
        gain = "" if row["method"] == "input" or cells[0] is None else f"{cells[0] - base:+.2f}"
        out.append(f"| {row['label']} | " + " | ".join(fmt(c) for c in cells) + f" | {gain} |")
    out += ["", "## The issue's bar", ""]
    out.append(
        f"imageae at its defaults ({bar['model']}) on the {bar['test_pairs']} test pairs: {bar['imageae']:.2f} dB, "
        f"NLM {bar['NLM']:.2f} dB, margin {bar['margin_over_nlm']:+.2f} dB"
        + (f"; against BM3D on its {bar['bm3d_pairs']} pairs {bar['margin_over_bm3d_on_subset']:+.2f} dB"
           if "bm3d_pairs" in bar else "")
        + f". Best baseline: {bar['best_baseline']}; margin {bar['margin_over_best_baseline']:+.2f} dB against "
        f"+{BAR_MARGIN_DB} needed: **{'met' if bar['met_margin'] else 'not met'}**. Ahead of NLM on "
        f"{bar['ahead_of_nlm']} of {bar['test_pairs']} test crops ({100 * bar['share_ahead_of_nlm']:.0f} %; all "
        f"pairs {100 * bar['share_ahead_of_nlm_all']:.0f} %) against {100 * BAR_SHARE:.0f} % needed: "
        f"**{'met' if bar['met_share'] else 'not met'}**.")
    for model, curve in summary["sweeps"].items():
        b = summary["best_strength"][model]
        out += ["", f"## imageae {model_label(model)}: PSNR against a fixed strength", "",
                "| strength | tuning | test | all |", "|---|---|---|---|"]
        out += [f"| {s:g}{' (picked)' if s == b['chosen_on_tuning'] else ''}{' (oracle)' if s == b['oracle_on_all'] else ''}"
                f" | {fmt(v.get('tuning'))} | {fmt(v.get('test'))} | {fmt(v.get('all'))} |" for s, v in curve.items()]
    cams = list(dict.fromkeys(c["camera"] for c in crops))
    if len(cams) > 1:
        out += ["", "## Per camera (all pairs, PSNR dB)", "", "| camera | n | input | imageae defaults | NLM |",
                "|---|---|---|---|---|"]
        for cam in cams:
            idx = {c["index"] for c in crops if c["camera"] == cam}
            out.append(f"| {cam} | {len(idx)} | {fmt(mean_of(run['records'], 'input', idx))} | "
                       f"{fmt(mean_of(run['records'], 'imageae', idx, model=cfg['models'][0]))} | "
                       f"{fmt(mean_of(run['records'], 'NLM', idx))} |")
    out += ["", "## Noise-level estimates against the true std(real - mean) per crop", "",
            "| estimator | median estimate | median true | median ratio | correlation |", "|---|---|---|---|---|"]
    true = np.array([c["true_sigma"] for c in crops])
    estimates = {"skimage estimate_sigma (BM3D's sigma)": [c["skimage_sigma"] for c in crops]}
    for model in cfg["models"]:
        if all(model in c["model_level"] for c in crops):
            estimates[f"imageae {model_label(model)}, its own estimate (strength auto)"] = [
                c["model_level"][model] for c in crops]
    for label, values in estimates.items():
        v = np.array(values)
        out.append(f"| {label} | {np.median(v):.2f} | {np.median(true):.2f} | {np.median(v / true):.2f} | "
                   f"{np.corrcoef(v, true)[0, 1]:.2f} |")
    out += ["", "## Time per 512x512 crop (s, shared CPU)", "", "| method | runs | mean s |", "|---|---|---|"]
    for method in dict.fromkeys(r["method"] for r in run["records"] if "seconds" in r):
        secs = [r["seconds"] for r in run["records"] if r["method"] == method and "seconds" in r]
        out.append(f"| {method} | {len(secs)} | {np.mean(secs):.2f} |")
    if result.get("example"):
        e = result["example"]
        out += ["", (f"Figure `{e['file']}`: {e['image']} (the test pair where imageae - NLM is the median, "
                     f"{e['imageae_minus_nlm']:+.2f} dB), the {e['box']} window with the most ground-truth detail, "
                     "whole-crop PSNR in the titles.")]
    out += ["", f"Peak RSS {result['peak_rss_mb']:.0f} MB; wall time {result['wall_seconds'] / 60:.1f} min.", ""]
    return "\n".join(out)


def plot_curves(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run, summary = result["run"], result["summary"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ax = axes[0]
    for k, (model, curve) in enumerate(summary["sweeps"].items()):
        s = sorted(curve)
        ax.plot(s, [curve[x]["all"] for x in s], "-o", color=f"C{k}", label=f"imageae {model_label(model)}, fixed")
    styles = [("input", "grey", ":"), ("imageae", "C0", "--"), ("imageae blind", "C4", "--"),
              ("imageae auto", "C3", "--"), ("NLM", "C1", "-."), ("BM3D", "C2", "-.")]
    for method, colour, line in styles:
        for row in summary["rows"]:
            if row["method"] == method and row.get("model", cfg_model(result)) == cfg_model(result):
                scope = "bm3d" if method == "BM3D" else "all"
                value = row.get(scope, {}).get("psnr")
                if value is not None:
                    ax.axhline(value, color=colour, ls=line, lw=1,
                               label=row["label"] + (" (BM3D subset)" if method == "BM3D" else ""))
    ax.set_xlabel("imageae strength (noise level, 0..255)")
    ax.set_ylabel("PSNR (dB), all pairs")
    ax.set_title("imageae" if summary["sweeps"] else "imageae (no strength in this checkout)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6)
    ax = axes[1]
    hs = sorted(run["nlm_tuning_psnr"])
    ax.plot(hs, [run["nlm_tuning_psnr"][h] for h in hs], "-o", color="C1")
    ax.axvline(run["nlm_h"], color="C1", ls=":")
    ax.set_xlabel("OpenCV NLM h")
    ax.set_ylabel("PSNR (dB), tuning pairs")
    ax.set_title(f"NLM h on the {len(run['tuning'])} tuning pairs (picked h = {run['nlm_h']:g})")
    ax.grid(alpha=0.3)
    fig.suptitle(f"Real camera noise, {Path(result['config']['data']).name}, {result['date'][:10]}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cfg_model(result):
    return result["config"]["models"][0]


def plot_example(result, pairs, path, *, size=160):
    """A crop of the representative test pair: noisy, NLM, imageae (defaults, and auto if run), ground truth."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run, model = result["run"], cfg_model(result)
    ours, nlm = per_index(run["records"], "imageae", model=model), per_index(run["records"], "NLM")
    test = sorted(run["test"], key=lambda i: ours[i] - nlm[i])
    i = test[len(test) // 2]
    noisy, clean = read_image(pairs[i][1], CHANNELS), read_image(pairs[i][2], CHANNELS)
    # the size x size window with the most detail in the ground truth (where denoisers differ)
    luma = clean.astype(np.float64) if clean.ndim == 2 else clean.astype(np.float64).mean(2)
    grad = np.abs(np.diff(luma, axis=1))[:-1] + np.abs(np.diff(luma, axis=0))[:, :-1]
    best, where = -1.0, (0, 0)
    for top in range(0, clean.shape[0] - size + 1, size // 4):
        for left in range(0, clean.shape[1] - size + 1, size // 4):
            v = float(grad[top : top + size, left : left + size].mean())
            if v > best:
                best, where = v, (top, left)
    top, left = where
    panels = [("noisy", noisy, None), (f"OpenCV NLM h={run['nlm_h']:g}", run_nlm(noisy.astype(np.float64), 0, h=run["nlm_h"]), None),
              (f"imageae {model_label(model)}", run_imageae(noisy, model=model), None)]
    if run["supported"] and run["default"] != "auto":
        panels.append(("imageae strength auto", run_imageae(noisy, model=model, strength="auto"), None))
    panels.append(("ground truth (mean of many shots)", clean, None))
    from imageae.metrics import psnr

    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.6))
    for ax, (title, image, _) in zip(axes, panels):
        ax.imshow(image[top : top + size, left : left + size], interpolation="nearest",
                  **({"cmap": "gray", "vmin": 0, "vmax": 255} if image.ndim == 2 else {}))
        label = title if image is clean else f"{title}\n{psnr(clean, image):.2f} dB"
        ax.set_title(label, fontsize=8)
        ax.axis("off")
    fig.suptitle(f"{pairs[i][0]}, {size}x{size} at ({top}, {left}); PSNR of the whole 512x512 crop", fontsize=8)
    fig.tight_layout()
    fig.subplots_adjust(top=0.8)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"file": path.name, "image": pairs[i][0], "index": i, "box": f"{size}x{size} at (row {top}, col {left})",
            "imageae_minus_nlm": ours[i] - nlm[i]}


# ----------------------------------------------------------------------------------------------
# Main


def environment(threads):
    import cv2
    import tensorflow as tf

    from imageae.runtime import choose_precision, describe_device

    def installed(name):
        try:
            return version(name)
        except PackageNotFoundError:
            return "not installed"

    return {"device": describe_device(), "platform": platform.platform(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "opencv": cv2.__version__, "bm3d": installed("bm3d"),
            "skimage": installed("scikit-image"), "numpy": np.__version__, "auto_precision": choose_precision(),
            "git_commit": git_commit(), "threads": threads}


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python benchmarks/realnoise.py\n"
               "  python benchmarks/realnoise.py --data /work/data/polyu-other --no-example\n"
               "  python benchmarks/realnoise.py --limit 8 --bm3d-limit 1 --out /tmp/rn   # smoke test\n"
               "  python benchmarks/realnoise.py --models auto denoise-colour --strengths 2 4 6 8")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"folder of <name>_real.<ext> / <name>_mean.<ext> pairs (default: {DEFAULT_DATA})")
    p.add_argument("--models", nargs="+", default=["auto", "denoise-colour"],
                   help="imageae models (registered names or .keras paths); the first is the one the bar is "
                        "checked on; a model that is what 'auto' picks anyway is measured once "
                        "(default: auto denoise-colour, the default against the blind Gaussian model)")
    p.add_argument("--strengths", nargs="+", type=float, default=list(STRENGTHS),
                   help="fixed strengths (0..255) swept when imageae.denoise takes strength= (default: "
                        f"{' '.join(map(str, STRENGTHS))})")
    p.add_argument("--nlm-h", nargs="+", type=float, default=list(NLM_H),
                   help=f"NLM h candidates tried on the tuning pairs (default: {' '.join(map(str, NLM_H))})")
    p.add_argument("--fixed-nlm-h", type=float, default=0,
                   help="use this NLM h instead of the one picked on the tuning pairs (e.g. the h picked on "
                        "PolyU-Canon, for a held-out set)")
    p.add_argument("--bm3d-limit", type=int, default=8,
                   help="BM3D (minutes per crop here) on N test pairs spread over the set; 0 disables it (default: 8)")
    p.add_argument("--limit", type=int, default=0, help="first N pairs only, for smoke tests (default: all)")
    p.add_argument("--threads", type=int, default=1, help="TensorFlow and OpenCV threads (default: 1)")
    p.add_argument("--grey", action="store_true",
                   help="read the pairs as grey (luma), as scans or black-and-white photos: NLM and BM3D grey, imageae "
                        "through the model 'auto' picks for grey (outputs named realnoise-grey[-<data folder>])")
    p.add_argument("--no-example", action="store_true", help="no before/after figure (the images stay unpublished)")
    p.add_argument("--name", default=None, help="file stem of the outputs (default: realnoise[-<data folder>])")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                   help="output folder (default: benchmarks/results)")
    args = p.parse_args(argv)
    if min(args.limit, args.bm3d_limit) < 0 or args.threads < 1:
        p.error(f"--limit and --bm3d-limit must be >= 0 and --threads >= 1, got {args.limit}, {args.bm3d_limit}, "
                f"{args.threads}")
    if any(s <= 0 for s in [*args.strengths, *args.nlm_h]) or args.fixed_nlm_h < 0:
        p.error("--strengths, --nlm-h and --fixed-nlm-h must be positive")
    return p, args


def main(argv=None):
    start = time.perf_counter()
    global CHANNELS
    parser, args = parse_args(argv)
    CHANNELS = 1 if args.grey else 3
    args.data = args.data.expanduser().resolve()
    if not args.data.is_dir():
        parser.error(f"--data {args.data} is not a folder; the default is PolyU-Canon at {DEFAULT_DATA}")
    try:
        pairs = find_pairs(args.data)[: args.limit or None]
    except FileNotFoundError as error:
        parser.error(str(error))
    if len(pairs) < 2:
        parser.error(f"--data {args.data} holds {len(pairs)} <name>_real/<name>_mean pairs; at least 2 are needed")
    for name, package in (("cv2", "opencv-python"), ("skimage", "scikit-image"), ("bm3d", "bm3d")):
        try:
            __import__(name)
        except ImportError:
            if name != "bm3d" or args.bm3d_limit:
                parser.error(f"{name} is not installed: pip install -e '.[bench]' (or pip install {package})"
                             + ("; or pass --bm3d-limit 0" if name == "bm3d" else ""))
    from imageae import registry

    picked = model_label("auto")
    args.models = list(dict.fromkeys(m for m in args.models if not (m != "auto" and f"auto ({m})" == picked
                                                                    and "auto" in args.models)))
    for model in args.models:
        name = picked[6:-1] if model == "auto" and picked.startswith("auto (") else model
        try:
            registry.resolve(name, job="denoise")
        except (ValueError, FileNotFoundError) as error:
            parser.error(f"--models {model}: {error}. Train it first, set IMAGEAE_MODELS to a folder holding it, "
                         f"or pass --models with other names / .keras paths")
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import cv2
    import tensorflow as tf

    cv2.setNumThreads(args.threads)
    try:
        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        tf.config.threading.set_inter_op_parallelism_threads(args.threads)
    except RuntimeError:  # TensorFlow already started in this process (tests): it keeps its threads
        pass
    from tqdm.auto import tqdm

    stem = "realnoise-grey" if args.grey else "realnoise"
    name = args.name or (stem if args.data == DEFAULT_DATA.resolve() else f"{stem}-{args.data.name}")
    command = "python benchmarks/realnoise.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    env = environment(args.threads)
    print(f"{env['device']}; commit {env['git_commit']}; {len(pairs)} pairs from {args.data}", file=sys.stderr)
    with tqdm(total=len(pairs), desc="realnoise", unit="pair", dynamic_ncols=True) as bar:
        run = evaluate(args, pairs, bar)
    summary = summarise(run, args.models, args.strengths)
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command, "environment": env,
        "config": {"data": str(args.data), "models": args.models, "strengths": args.strengths, "nlm_h": args.nlm_h,
                   "fixed_nlm_h": args.fixed_nlm_h, "bm3d_limit": args.bm3d_limit, "limit": args.limit},
        "protocol": {
            "pairs": "<name>_real (noisy shot) against <name>_mean (mean of many shots), uint8 RGB",
            "imageae": "imageae.denoise(noisy / 255 as float32, model=M[, strength=S]), precision auto",
            "output": "clipped to [0, 255], rounded to uint8",
            "psnr": "imageae.metrics.psnr over RGB against the uint8 mean image; mean over pairs",
            "tuning": f"{TUNING_PAIRS} pairs spread evenly over the sorted names (numpy.linspace); excluded from 'test'",
            "nlm": f"cv2.fastNlMeansDenoisingColored(RGB->BGR, h, hColor = h, {NLM_WINDOWS})",
            "bm3d": "bm3d.bm3d_rgb(noisy / 255, sigma_psd = skimage estimate_sigma(channel_axis=-1, "
                    "average_sigmas=True) / 255), profile 'np', num_threads = --threads",
            "true_sigma": "std(real - mean) per channel on 0..255, mean over channels (per crop, in 'crops')",
            "bar": f"imageae defaults (first model) - best baseline >= {BAR_MARGIN_DB} dB on the test pairs (BM3D "
                   f"on its subset) and ahead of NLM on >= {100 * BAR_SHARE:.0f} % of the test crops",
        },
        "run": run, "summary": summary,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.no_example:
        result["example"] = plot_example(result, pairs, args.out / f"{name}_example.png")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["wall_seconds"] = time.perf_counter() - start
    text = markdown(result)
    (args.out / f"{name}.md").write_text(text)
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1, default=float))
    plot_curves(result, args.out / f"{name}.png")
    print(text)
    print(f"wrote {args.out / name}.md, .json, .png" + ("" if args.no_example else ", _example.png"), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
