#!/usr/bin/env python
"""Compression benchmark: imageae codec models against JPEG, WebP and JPEG 2000, rate, quality and speed.

Everything is measured in one run on one machine, on the same images: rate from real file sizes
(bytes * 8 / pixels of the original image), PSNR over RGB and MS-SSIM of the decoded uint8 image
against the uint8 original, encode and decode time. Published Kodak24 numbers
(shared/ANCHORS.md) are printed beside them, labelled as such: they are on other images.

    python benchmarks/compress.py                          # the shipped codec (every quality) and the baselines
    python benchmarks/compress.py --model my-codec.keras   # a codec of your own (all its qualities)
    python benchmarks/compress.py --model codec-v4 new.keras   # two codecs, one curve each, BD-rate between them
    python benchmarks/compress.py --model a.keras b.keras --one-curve   # single-rate models: one curve
    python benchmarks/compress.py --model none             # baselines only
    python benchmarks/compress.py --limit 3                # smoke test

Protocol (CompressAI's): each codec setting (quality or target rate) is one point of the curve,
at the mean over images of the per-image bpp and the mean of the per-image PSNR (the PSNR of the
mean MSE is reported too); MS-SSIM is averaged over images and then written in dB as
-10 log10(1 - MS-SSIM). BD-rate: :func:`imageae.metrics.bd_rate`, the cubic fit of
Bjontegaard 2001 over the shared quality interval.

Each model given to ``--model`` is its own curve, "imageae NAME", with BD-rates against every
baseline and against the models listed before it; ``--one-curve`` joins them into one "imageae"
curve instead (single-rate models, one lambda each, that together make one curve).

Outputs: a table on stdout and ``compress.md``, ``compress.json`` (every per-image number) and
``compress.png`` (bpp against PSNR and against MS-SSIM dB) under ``--out``. Without ``--model``
the same files are written, labelled "baselines only".
"""

import argparse
import datetime
import io
import json
import math
import os
import platform
import resource
import shlex
import sys
import time
from pathlib import Path

import numpy as np

from common import Timer, git_commit  # noqa: E402

from imageae.codec.api import DEFAULT_CODEC

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "datasets" / "photos" / "BSDS500" / "val"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")

# Codec settings, chosen so that each curve spans about 0.1 - 1.5 bpp on BSDS500-like photos
# (JPEG q50 is about 1.05 bpp there, q80 about 1.9; WebP q0 about 0.14, q80 about 1.5).
JPEG_QUALITIES = (3, 5, 8, 12, 16, 20, 25, 30, 40, 50, 60, 70)
WEBP_QUALITIES = (0, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80)
JP2_BPP = (0.1, 0.15, 0.2, 0.25, 0.35, 0.5, 0.7, 0.9, 1.2, 1.5)  # target rates; the files decide the real bpp
RATE_POINTS = (0.25, 0.5, 1.0)  # bpp at which every curve's PSNR is read off (interpolated)
BASELINES = ("JPEG", "WebP", "JPEG 2000")
IMAGEAE = "imageae"  # the curve name with --one-curve; each model's curve is "imageae NAME" otherwise

# Published / measured elsewhere, on Kodak24 (768x512), from shared/ANCHORS.md. Not measured here,
# and on other images: compare the ordering and the BD-rates, not the dB.
KODAK_ANCHORS = {
    "JPEG (Pillow, 4:2:0)": (24.66, 28.95, 32.59, 0.0),
    "WebP (Pillow)": (28.55, 31.32, 35.11, -36.6),
    "JPEG 2000 (OpenJPEG)": (28.57, 31.27, 34.71, -36.6),
    "BPG 4:4:4": (30.32, 33.32, 37.16, -59.1),
    "Balle 2018 scale hyperprior": (29.95, 33.06, 37.14, -55.3),
    "Minnen 2018 mean-scale": (30.30, 33.41, 37.49, -58.2),
}


# ----------------------------------------------------------------------------------------------
# Data


def list_images(folder):
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)


def read_image(path):
    """uint8 (H, W, 3) RGB: EXIF orientation applied, grey replicated, alpha dropped."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8).copy()


# ----------------------------------------------------------------------------------------------
# Codecs: each setting is (label, encode: uint8 RGB -> bytes); decoding is Pillow for every baseline


def pillow_encoder(**options):
    from PIL import Image

    def encode(image):
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, **options)
        return buffer.getvalue()

    return encode


def pillow_decode(data):
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB") if image.mode != "RGB" else image, dtype=np.uint8)


def jp2_available():
    """(True, "") if Pillow can write and read JPEG 2000 here, else (False, why)."""
    from PIL import features

    if not features.check("jpg_2000"):
        return False, "Pillow was built without OpenJPEG (PIL.features.check('jpg_2000') is False)"
    try:
        probe = np.zeros((32, 32, 3), np.uint8)
        pillow_decode(jp2_settings([0.5])[0][2](probe))
    except Exception as error:  # an OpenJPEG that loads but fails: say so and go on without JP2
        return False, f"Pillow's JPEG 2000 round trip failed: {error}"
    return True, ""


def jpeg_settings(qualities):
    return [(f"q{q}", q, pillow_encoder(format="JPEG", quality=q, optimize=True)) for q in qualities]


def webp_settings(qualities):
    return [(f"q{q}", q, pillow_encoder(format="WEBP", quality=q, method=6)) for q in qualities]


def jp2_settings(rates):
    # quality_mode "rates": the layer's compression ratio against 24-bit RGB, so 24 / bpp. 9/7 irreversible
    # wavelet and the colour transform (mct=1, the ICT); Pillow's defaults (5/3 reversible, mct=0, i.e.
    # R, G, B coded independently) cost 1-6 dB here.
    return [(f"{b:g} bpp", b, pillow_encoder(format="JPEG2000", quality_mode="rates", quality_layers=[24.0 / b],
                                              irreversible=True, mct=1)) for b in rates]


CODEC_DESCRIPTIONS = {
    "JPEG": "Pillow `format='JPEG', quality=q, optimize=True`, default 4:2:0 chroma subsampling (libjpeg {jpeg})",
    "WebP": "Pillow `format='WEBP', quality=q, method=6` (lossy, 4:2:0; libwebp {webp})",
    "JPEG 2000": "Pillow `format='JPEG2000', quality_mode='rates', quality_layers=[24 / bpp], irreversible=True, "
                 "mct=1` (OpenJPEG {jp2}: one quality layer, 9/7 wavelet, irreversible colour transform); "
                 "the setting is a target bpp that every image gets, whereas JPEG, WebP and imageae fix a quality "
                 "and let each image's rate vary, which the two PSNR averages reward differently (see the BD-rate "
                 "table)",
}


# ----------------------------------------------------------------------------------------------
# Measuring


def score(clean, decoded, use_ms_ssim):
    from imageae.metrics import ms_ssim, psnr

    mse = float(np.mean((clean.astype(np.float64) - decoded.astype(np.float64)) ** 2))
    return {"psnr": psnr(clean, decoded), "mse": mse, "ms_ssim": ms_ssim(clean, decoded) if use_ms_ssim else None}


def record(codec, setting, value, index, path, clean, data, decoded, enc, dec, use_ms_ssim):
    pixels = clean.shape[0] * clean.shape[1]
    if decoded.shape != clean.shape:
        raise RuntimeError(f"{codec} {setting}: {path.name} decoded to {decoded.shape}, expected {clean.shape}")
    return {"codec": codec, "setting": setting, "value": value, "index": index, "image": path.name,
            "pixels": pixels, "bytes": len(data), "bpp": len(data) * 8 / pixels,
            "encode_s": enc, "decode_s": dec, **score(clean, decoded, use_ms_ssim)}


def measure_baseline(codec, settings, paths, images, use_ms_ssim, bar):
    records = []
    for label, value, encode in settings:
        encode(images[0])  # untimed: loads the plugin and its library
        for i, (path, clean) in enumerate(zip(paths, images)):
            bar.set_postfix_str(f"{codec} {label} {path.name}")
            with Timer() as te:
                data = encode(clean)
            with Timer() as td:
                decoded = pillow_decode(data)
            records.append(record(codec, label, value, i, path, clean, data, decoded, te.seconds, td.seconds,
                                  use_ms_ssim))
            bar.update(1)
    return records


def is_imageae(codec):
    return codec == IMAGEAE or codec.startswith(IMAGEAE + " ")


def load_codecs(specs, one_curve=False, refine_steps=0, qualities=None):
    """[(curve, name, quality, session, lmbda, refine_steps)]: every quality of every codec in ``specs``
    (registered names or .keras files); names as the session writes them into files. Each model is
    its own curve ("imageae NAME") unless ``one_curve``; two models of the same name are refused,
    since their curves and their files could not be told apart. With ``refine_steps``, each model
    has a second curve, "imageae NAME refineN": the same model, encoding with N steps of latent
    refinement (``compress_array(..., refine_steps=N)``). ``qualities``: only these of each model
    (default: all); ValueError names one a model does not have."""
    from imageae.codec.api import codec_session

    settings, names = [], {}
    for spec in specs:
        session = codec_session(spec)
        if session.name in names:
            raise ValueError(f"--model {names[session.name]!r} and {spec!r} are both named {session.name!r} "
                             "(a .keras file is named after its file name): rename one of the files")
        names[session.name] = spec
        curve_name = IMAGEAE if one_curve else f"{IMAGEAE} {session.name}"
        chosen = (range(1, session.num_qualities + 1) if qualities is None
                  else [session.check_quality(q) for q in sorted(set(qualities))])
        for steps in (0, refine_steps) if refine_steps else (0,):
            curve = curve_name + (f" refine{steps}" if steps else "")
            for quality in chosen:
                settings.append((curve, session.name, quality, session, session.model.lambdas[quality - 1], steps))
    return settings


def measure_imageae(codecs, paths, images, use_ms_ssim, bar):
    """Per-image records for every setting, the estimate-vs-file gap and a determinism check per setting."""
    from imageae.codec import compress_array, decompress_bytes, estimate_bits, make_session_lookup

    records, checks = [], []
    for curve_name, name, quality, session, lmbda, refine in codecs:
        lookup = make_session_lookup(session)
        label = f"{name} q{quality}" + (f" refine{refine}" if refine else "")
        seen = set()
        for clean in images:  # untimed warm-up per shape: first eager calls, kernel selection
            if clean.shape not in seen:
                seen.add(clean.shape)
                decompress_bytes(lookup, compress_array(session, clean, quality, refine_steps=min(refine, 1)))
        for i, (path, clean) in enumerate(zip(paths, images)):
            bar.set_postfix_str(f"imageae {label} {path.name}")
            with Timer() as te:
                data = compress_array(session, clean, quality, refine_steps=refine)
            with Timer() as td:
                decoded = decompress_bytes(lookup, data)
            row = record(curve_name, label, quality, i, path, clean, data, decoded, te.seconds, td.seconds, use_ms_ssim)
            if not refine:  # the estimate is of the plain latents; a refined file has others
                estimate = estimate_bits(session, clean, quality)
                real = 8 * len(data)
                row.update(
                    model_bits=estimate.model_bits, table_bits=estimate.table_bits,
                    overhead_bits=estimate.overhead_bits,
                    model_estimate_gap_pct=((estimate.model_bits + estimate.overhead_bits) / real - 1) * 100,
                    table_estimate_gap_pct=((estimate.table_bits + estimate.overhead_bits) / real - 1) * 100,
                )
            records.append(row)
            if i == 0:
                checks.append(determinism_check(session, label, quality, clean, data, decoded, refine))
            bar.update(1)
    return records, checks


def determinism_check(session, label, quality, clean, data, decoded, refine=0):
    """Encode and decode the first image again, and decode it with a second, separately built session."""
    from imageae.codec import CodecSession, compress_array, decompress_bytes, make_session_lookup

    again = compress_array(session, clean, quality, refine_steps=refine)
    fresh = CodecSession(session.model, session.name)
    redecoded = decompress_bytes(make_session_lookup(session), data)
    fresh_decoded = decompress_bytes(make_session_lookup(fresh), data)
    result = {"model": label, "same_bytes_on_re_encode": again == data,
              "same_image_on_re_decode": bool(np.array_equal(redecoded, decoded)),
              "same_image_with_fresh_session": bool(np.array_equal(fresh_decoded, decoded))}
    result["ok"] = all(result[k] for k in ("same_bytes_on_re_encode", "same_image_on_re_decode",
                                           "same_image_with_fresh_session"))
    return result


# ----------------------------------------------------------------------------------------------
# Summaries


def db(ms_ssim):
    return None if ms_ssim is None else (math.inf if ms_ssim >= 1.0 else -10.0 * math.log10(1.0 - ms_ssim))


def summarise(records):
    """One RD point per (codec, setting), in codec order and increasing bpp."""
    points = []
    for codec in dict.fromkeys(r["codec"] for r in records):
        here = [r for r in records if r["codec"] == codec]
        rows = []
        for setting in dict.fromkeys(r["setting"] for r in here):
            chosen = [r for r in here if r["setting"] == setting]
            pixels = sum(r["pixels"] for r in chosen) / 1e6
            msssim = [r["ms_ssim"] for r in chosen]
            mean_msssim = None if None in msssim else float(np.mean(msssim))
            mean_mse = float(np.mean([r["mse"] for r in chosen]))
            row = {
                "codec": codec, "setting": setting, "value": chosen[0]["value"], "images": len(chosen),
                "bpp": float(np.mean([r["bpp"] for r in chosen])),
                "psnr": float(np.mean([r["psnr"] for r in chosen])),
                "psnr_of_mean_mse": math.inf if mean_mse == 0 else 10 * math.log10(255.0**2 / mean_mse),
                "ms_ssim": mean_msssim, "ms_ssim_db": db(mean_msssim),
                "encode_s_per_mpixel": sum(r["encode_s"] for r in chosen) / pixels,
                "decode_s_per_mpixel": sum(r["decode_s"] for r in chosen) / pixels,
            }
            if is_imageae(codec) and "model_estimate_gap_pct" in chosen[0]:
                for key in ("model_estimate_gap_pct", "table_estimate_gap_pct"):
                    row[key] = float(np.mean([r[key] for r in chosen]))
            rows.append(row)
        points += sorted(rows, key=lambda r: r["bpp"])
    return points


def curve(points, codec, key="psnr"):
    chosen = [p for p in points if p["codec"] == codec and p[key] is not None and math.isfinite(p[key])]
    return [p["bpp"] for p in chosen], [p[key] for p in chosen]


def value_at(points, codec, bpp, key="psnr"):
    """``key`` at ``bpp`` on a codec's curve, linear in log(bpp) between its two neighbouring points;
    None outside the measured range."""
    rates, values = curve(points, codec, key)
    if not rates or not min(rates) <= bpp <= max(rates):
        return None
    order = np.argsort(rates)
    return float(np.interp(math.log(bpp), np.log(np.asarray(rates)[order]), np.asarray(values)[order]))


def bd_rates(points):
    """BD-rates (three quality measures) of each baseline against those listed before it (JPEG first), and of
    each imageae curve against every baseline and the imageae curves listed before it."""
    from imageae.metrics import bd_rate

    codecs = list(dict.fromkeys(p["codec"] for p in points))
    baselines = [codec for codec in codecs if not is_imageae(codec)]
    ours = [codec for codec in codecs if is_imageae(codec)]
    pairs = [(anchor, test) for i, test in enumerate(baselines) for anchor in baselines[:i]]
    pairs += [(anchor, test) for i, test in enumerate(ours) for anchor in baselines + ours[:i]]
    out = []
    for anchor, test in pairs:
        row = {"anchor": anchor, "test": test}
        for key in ("psnr", "psnr_of_mean_mse", "ms_ssim_db"):
            a, t = curve(points, anchor, key), curve(points, test, key)
            try:
                row[key] = bd_rate(a[0], a[1], t[0], t[1])
                row[f"{key}_interval"] = [max(min(a[1]), min(t[1])), min(max(a[1]), max(t[1]))]
            except ValueError as error:
                row[key] = None
                row[f"{key}_why"] = str(error)
        out.append(row)
    return out


def speed_rows(points, records):
    """Encode/decode seconds per Mpixel per codec over all its settings (and the fastest / slowest setting)."""
    out = []
    for codec in dict.fromkeys(r["codec"] for r in records):
        chosen = [r for r in records if r["codec"] == codec]
        pixels = sum(r["pixels"] for r in chosen) / 1e6
        per_setting = [p for p in points if p["codec"] == codec]
        out.append({
            "codec": codec, "runs": len(chosen),
            "encode_s_per_mpixel": sum(r["encode_s"] for r in chosen) / pixels,
            "decode_s_per_mpixel": sum(r["decode_s"] for r in chosen) / pixels,
            "encode_range": [min(p["encode_s_per_mpixel"] for p in per_setting),
                             max(p["encode_s_per_mpixel"] for p in per_setting)],
            "decode_range": [min(p["decode_s_per_mpixel"] for p in per_setting),
                             max(p["decode_s_per_mpixel"] for p in per_setting)],
        })
    return out


# ----------------------------------------------------------------------------------------------
# Reporting


def fmt(value, digits=2, suffix=""):
    if value is None:
        return "-"
    return ("inf" if math.isinf(value) else f"{value:.{digits}f}") + suffix


def fmt_bd(value):
    return "-" if value is None else f"{value:+.1f} %"


def codec_label(codec, result):
    """A curve's name: the baseline's, "imageae NAME", or with --one-curve "imageae" and the models in it."""
    if codec != IMAGEAE:
        return codec
    return f"{IMAGEAE} " + ", ".join(dict.fromkeys(m["name"] for m in result["config"]["models"]))


def markdown(result):
    env, cfg = result["environment"], result["config"]
    points, baselines_only = result["points"], result["baselines_only"]
    codecs = list(dict.fromkeys(p["codec"] for p in points))
    title = "# Compression benchmark" + (" — baselines only (no imageae model given)" if baselines_only else "")
    out = [
        title,
        "",
    ]
    if baselines_only:
        out += ["**Baselines only**: no codec model was given (`--model`), so only JPEG, WebP and JPEG 2000 "
                "were measured (`--model none`).", ""]
    out += [
        f"- date: {result['date']}",
        f"- command: `{result['command']}`",
        f"- git commit: {env['git_commit']}",
        f"- machine: {env['device']}; Python {env['python']}, Pillow {env['pillow']} (libjpeg {env['libjpeg']}, "
        f"libwebp {env['libwebp']}, OpenJPEG {env['openjpeg']}), TensorFlow {env['tensorflow']}, Keras "
        f"{env['keras']}; TF_NUM_INTRAOP_THREADS={env['tf_intraop_threads_env']}",
        f"- data: `{cfg['data']}`, {cfg['images']} images"
        + (f" (first {cfg['limit']} only, --limit)" if cfg["limit"] else "")
        + f", {cfg['megapixels']:.2f} Mpixel in all; sizes {', '.join(cfg['sizes'])}",
        f"- wall time: {result['wall_seconds'] / 60:.1f} min; peak RSS {result['peak_rss_mb']:.0f} MB",
        "",
        "## Protocol",
        "",
        "Every codec encodes the uint8 RGB original and decodes its own bytes back to uint8 RGB. "
        "Rate: the real size of the encoded bytes, `bytes * 8 / (H * W)` of the original (headers and all). "
        "PSNR over RGB (`imageae.metrics.psnr`); MS-SSIM: `imageae.metrics.ms_ssim` (`tf.image.ssim_multiscale`, "
        "5 scales, 0..255 range)"
        + ("" if cfg["ms_ssim"] else " — **not computed** in this run: " + cfg["ms_ssim_why"]) + ".",
        "",
        "Each setting is one curve point at the **mean per-image bpp** and the **mean per-image PSNR** (CompressAI's "
        "convention; the curves, interpolations and BD-rates use it). The PSNR of the mean MSE is listed too (it "
        "weights the worst images more and comes out lower). MS-SSIM is averaged over images, then written "
        "in dB as -10 log10(1 - MS-SSIM).",
        "",
        "BD-rate: `imageae.metrics.bd_rate`, Bjontegaard's cubic fit of log(rate) against quality over the "
        "quality interval both curves cover, all points of each curve; negative = fewer bits for the same quality.",
        "",
    ]
    for codec in BASELINES:
        if codec in cfg["codecs"]:
            described = CODEC_DESCRIPTIONS[codec].format(jpeg=env["libjpeg"], webp=env["libwebp"], jp2=env["openjpeg"])
            out.append(f"- {codec}: {described}"
                       f"; settings {', '.join(map(str, cfg['settings'][codec]))}.")
    if cfg.get("jp2_skipped"):
        out.append(f"- JPEG 2000: **skipped**: {cfg['jp2_skipped']}.")
    for skipped in cfg.get("skipped_codecs", []):
        out.append(f"- {skipped}: not measured (--codecs).")
    if not baselines_only:
        out.append("- imageae: `CodecSession(model, name)` + `compress_array(session, image, quality)` -> `.iae` bytes, "
                   "`decompress_bytes` -> uint8; images padded (bottom/right mirror) to multiples of the model's "
                   "stride 64 inside the session, bpp counts the original pixels. The session computes in "
                   "**float32** whatever the dtype policy (the scale indexes the decoder derives must match bit "
                   "for bit), so there is no bf16 variant. Models: "
                   + "; ".join(f"`{m['name']}` quality {m['quality']} (lmbda {m['lmbda']:g}, "
                               f"{m['parameters']:,} parameters, policy {m['session_policy']})"
                               for m in cfg["models"] if not m.get("refine_steps"))
                   + ".")
        refined = sorted({m["refine_steps"] for m in cfg["models"] if m.get("refine_steps")})
        if refined:
            out.append(f"- imageae ... refine{refined[0]}: the same models and files, encoded with "
                       f"`compress_array(..., refine_steps={refined[0]})`: {refined[0]} steps of rate-distortion "
                       "descent on the latents before coding (`imageae.codec.refine`); the decoder is unchanged. "
                       "No estimate gap is listed for these (the estimate is of the plain latents).")
    out += ["", "## Rate-distortion points", "",
            "| codec | setting | n | bpp | PSNR | PSNR of mean MSE | MS-SSIM | MS-SSIM dB | enc s/Mpx | dec s/Mpx |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for p in points:
        out.append(f"| {p['codec']} | {p['setting']} | {p['images']} | {p['bpp']:.3f} | {fmt(p['psnr'])} | "
                   f"{fmt(p['psnr_of_mean_mse'])} | {fmt(p['ms_ssim'], 4)} | {fmt(p['ms_ssim_db'])} | "
                   f"{p['encode_s_per_mpixel']:.3f} | {p['decode_s_per_mpixel']:.3f} |")
    heads = " | ".join([f"PSNR@{b:g}" for b in RATE_POINTS] + [f"MS-SSIM dB@{b:g}" for b in RATE_POINTS])
    out += ["", "## At fixed rates", "",
            "PSNR and MS-SSIM dB read off each curve at the given bpp (linear in log bpp between the two "
            "neighbouring points; - where the curve does not reach). BD-rate vs JPEG over the shared interval.", "",
            f"| codec | {heads} | BD-rate vs JPEG (PSNR) | BD-rate vs JPEG (MS-SSIM dB) |",
            "|---|" + "---|" * (2 * len(RATE_POINTS) + 2)]
    bd = {(r["anchor"], r["test"]): r for r in result["bd_rate"]}
    for codec in codecs:
        cells = [fmt(value_at(points, codec, b)) for b in RATE_POINTS]
        cells += [fmt(value_at(points, codec, b, "ms_ssim_db")) for b in RATE_POINTS]
        row = bd.get(("JPEG", codec))
        if codec == "JPEG":
            cells += ["0 (anchor)", "0 (anchor)"]
        else:
            cells += [fmt_bd(row and row.get("psnr")), fmt_bd(row and row.get("ms_ssim_db"))]
        out.append(f"| {codec_label(codec, result)} | " + " | ".join(cells) + " |")
    out += ["", "## BD-rate", "",
            "The curves of the main convention (mean per-image PSNR), of the PSNR of the mean MSE, and of MS-SSIM dB.",
            "", "| test | anchor | BD-rate (PSNR) | PSNR interval (dB) | BD-rate (PSNR of mean MSE) | "
            "BD-rate (MS-SSIM dB) |", "|---|---|---|---|---|---|"]
    for r in result["bd_rate"]:
        interval = r.get("psnr_interval")
        value = fmt_bd(r["psnr"]) if r["psnr"] is not None else f"- ({r['psnr_why']})"
        out.append(f"| {r['test']} | {r['anchor']} | {value} | "
                   f"{'-' if not interval else f'{interval[0]:.2f} - {interval[1]:.2f}'} | "
                   f"{fmt_bd(r.get('psnr_of_mean_mse'))} | {fmt_bd(r.get('ms_ssim_db'))} |")
    if not result["bd_rate"]:
        out.append("| - | - | - | - | - | - |")
    if not baselines_only:
        out += ["", "## imageae: estimated vs real size, determinism", "",
                "Gap = estimate / real file bits - 1, mean over images. *model*: `estimate_bits(...).model_bits` "
                "(the likelihoods training minimises) + container overhead; *tables*: `table_bits` (the coder's "
                "integer tables) + overhead, which the file should match to a few 32-bit words.", "",
                "| model | bpp | model-estimate gap | table-estimate gap |", "|---|---|---|---|"]
        for p in points:
            if is_imageae(p["codec"]) and "model_estimate_gap_pct" in p:
                out.append(f"| {p['setting']} | {p['bpp']:.4f} | {p['model_estimate_gap_pct']:+.2f} % | "
                           f"{p['table_estimate_gap_pct']:+.3f} % |")
        out += ["", "Determinism (first image of each model: re-encode gives the same bytes, re-decode the same "
                "image, a second separately built `CodecSession` decodes the same image):", ""]
        out += [f"- {c['model']}: {'ok' if c['ok'] else 'FAILED'} (re-encode {c['same_bytes_on_re_encode']}, "
                f"re-decode {c['same_image_on_re_decode']}, fresh session {c['same_image_with_fresh_session']})"
                for c in result["determinism"]]
    out += ["", "## Speed", "",
            "Seconds per Mpixel (of the original image), sum over all images and settings of a codec; in brackets "
            "the fastest and slowest setting. One image per call on the CPU; the baselines run in Pillow "
            "(single-threaded), imageae in TensorFlow (eager, threads per TF_NUM_INTRAOP_THREADS) plus the "
            "NumPy range coder; imageae after an untimed warm-up call per image shape. Encode times include "
            "Pillow's array-to-image conversion; decode times include the conversion back to an array.", "",
            "| codec | runs | encode s/Mpixel | decode s/Mpixel |", "|---|---|---|---|"]
    for s in result["speed"]:
        out.append(f"| {s['codec']} | {s['runs']} | {s['encode_s_per_mpixel']:.3f} ({s['encode_range'][0]:.3f} - "
                   f"{s['encode_range'][1]:.3f}) | {s['decode_s_per_mpixel']:.3f} ({s['decode_range'][0]:.3f} - "
                   f"{s['decode_range'][1]:.3f}) |")
    out += ["", "## Kodak24 anchors (shared/ANCHORS.md; other images, not measured here)", "",
            "PSNR over RGB at 0.25 / 0.5 / 1.0 bpp and BD-rate vs JPEG on Kodak24 (768x512). Other images give other "
            "dB at the same rate (BSDS500 photos are more textured than Kodak's); compare orderings and BD-rates.", "",
            "| codec | PSNR@0.25 | PSNR@0.5 | PSNR@1.0 | BD-rate vs JPEG |", "|---|---|---|---|---|"]
    out += [f"| {name} | {a:.2f} | {b:.2f} | {c:.2f} | {d:+.1f} % |" for name, (a, b, c, d) in KODAK_ANCHORS.items()]
    notes = result.get("notes") or []
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    out.append("")
    return "\n".join(out)


def plot(result, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = result["points"]
    styles = {"JPEG": ("C1", "o"), "WebP": ("C2", "s"), "JPEG 2000": ("C3", "^")}
    ours = [codec for codec in dict.fromkeys(p["codec"] for p in points) if is_imageae(codec)]
    styles |= {codec: (colour, "D") for codec, colour in zip(ours, ("C0", "C4", "C5", "C6", "C9"))}
    panels = [("psnr", "PSNR over RGB (dB)")]
    if any(p["ms_ssim_db"] is not None for p in points):
        panels.append(("ms_ssim_db", "MS-SSIM (dB), -10 log10(1 - MS-SSIM)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        for codec in dict.fromkeys(p["codec"] for p in points):
            rates, values = curve(points, codec, key)
            colour, marker = styles.get(codec, ("C7", "x"))
            ax.plot(rates, values, "-", marker=marker, color=colour, markersize=4, label=codec_label(codec, result))
        ax.set_xlabel("bits per pixel (real file size)")
        ax.set_ylabel(label)
        ax.set_xlim(0, min(max(p["bpp"] for p in points) * 1.05, 2.0))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    cfg = result["config"]
    title = (f"{Path(cfg['data']).name if Path(cfg['data']).name != 'val' else 'BSDS500 val'}, "
             f"{cfg['images']} images, {result['date'][:10]}, {result['environment']['device']}")
    if result["baselines_only"]:
        title = "BASELINES ONLY (no imageae model given) — " + title
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def print_table(result):
    """A short table for stdout: every codec at the fixed rates, and its speed."""
    points = result["points"]
    bd = {(r["anchor"], r["test"]): r.get("psnr") for r in result["bd_rate"]}
    speed = {s["codec"]: s for s in result["speed"]}
    width = max([22] + [len(codec_label(p["codec"], result)) + 2 for p in points])
    head = f"{'codec':<{width}}" + "".join(f"{f'PSNR@{b:g}':>11}" for b in RATE_POINTS) + f"{'BD vs JPEG':>12}" \
        + f"{'enc s/Mpx':>11}{'dec s/Mpx':>11}"
    lines = ["baselines only (no --model given)" if result["baselines_only"] else "", head, "-" * len(head)]
    for codec in dict.fromkeys(p["codec"] for p in points):
        value = 0.0 if codec == "JPEG" else bd.get(("JPEG", codec))
        lines.append(f"{codec_label(codec, result):<{width}}"
                     + "".join(f"{fmt(value_at(points, codec, b)):>11}" for b in RATE_POINTS)
                     + f"{fmt_bd(value):>12}" + f"{speed[codec]['encode_s_per_mpixel']:>11.3f}"
                     + f"{speed[codec]['decode_s_per_mpixel']:>11.3f}")
    return "\n".join(line for line in lines if line)


# ----------------------------------------------------------------------------------------------
# Main


def environment():
    import keras
    import PIL
    import tensorflow as tf
    from PIL import features

    from imageae.runtime import describe_device

    commit = git_commit()
    return {
        "device": describe_device(), "platform": platform.platform(), "python": platform.python_version(),
        "tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__, "pillow": PIL.__version__,
        "libjpeg": features.version("jpg") or "?", "libwebp": features.version("webp") or "?",
        "openjpeg": features.version("jpg_2000") or "not available", "git_commit": commit,
        "tf_intraop_threads_env": os.environ.get("TF_NUM_INTRAOP_THREADS", "unset (all cores)"),
        "cpu_count": os.cpu_count(),
    }


def int_list(text):
    return [int(v) for v in text.split(",") if v.strip()]


def float_list(text):
    return [float(v) for v in text.split(",") if v.strip()]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="--model none measures the baselines only.")
    p.add_argument("--model", nargs="+", default=[DEFAULT_CODEC], metavar="PATH_OR_NAME",
                   help="codecs (every quality of each, one curve each): registered names or .keras files; "
                        f"'none' for the baselines only (default: {DEFAULT_CODEC})")
    p.add_argument("--one-curve", action="store_true",
                   help="draw all --model codecs as one 'imageae' curve (single-rate models that together make "
                        "a curve) instead of one curve per model")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help=f"folder of test images, read as RGB (default: {DEFAULT_DATA})")
    p.add_argument("--limit", type=int, default=0, help="first N images only, for smoke tests (default: all)")
    p.add_argument("--refine-steps", type=int, default=0, metavar="N",
                   help="also measure each model encoding with N steps of latent refinement, as a second curve "
                        "'imageae NAME refineN' (slow: N x about 1.2 s per Mpixel per image and quality)")
    p.add_argument("--qualities", type=int_list, metavar="Q,Q,...",
                   help="only these qualities of each model, e.g. 1,3,5,7,9 to halve a refined run (default: all; "
                        "BD-rates then fit the curve through fewer points)")
    p.add_argument("--codecs", nargs="+", choices=["jpeg", "webp", "jp2"], default=["jpeg", "webp", "jp2"],
                   help="baselines to measure (default: all three)")
    p.add_argument("--jpeg-qualities", type=int_list, default=list(JPEG_QUALITIES),
                   help=f"comma-separated (default: {','.join(map(str, JPEG_QUALITIES))})")
    p.add_argument("--webp-qualities", type=int_list, default=list(WEBP_QUALITIES),
                   help=f"comma-separated (default: {','.join(map(str, WEBP_QUALITIES))})")
    p.add_argument("--jp2-bpp", type=float_list, default=list(JP2_BPP),
                   help=f"comma-separated target rates (default: {','.join(map(str, JP2_BPP))})")
    p.add_argument("--skip-ms-ssim", action="store_true", help="PSNR only (MS-SSIM is most of the baselines' run time)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results",
                   help="where compress.md/.json/.png go (default: benchmarks/results)")
    args = p.parse_args(argv)
    if args.limit < 0:
        p.error("--limit must be >= 0")
    if args.refine_steps < 0:
        p.error("--refine-steps must be >= 0")
    if any(not 0 <= q <= 100 for q in args.jpeg_qualities + args.webp_qualities):
        p.error("JPEG and WebP qualities must be 0..100")
    if any(not 0 < b < 24 for b in args.jp2_bpp):
        p.error("--jp2-bpp rates must be between 0 and 24")
    return p, args


def main(argv=None):
    start = time.perf_counter()
    parser, args = parse_args(argv)
    args.data = args.data.expanduser().resolve()
    if not args.data.is_dir() or not list_images(args.data):
        parser.error(f"no images ({', '.join(IMAGE_SUFFIXES)}) in --data {args.data}. The default is the shared "
                     "BSDS500 val photos at <repo>/../shared/datasets/photos/BSDS500/val; pass --data DIR otherwise.")
    codecs = []
    if args.model != ["none"]:
        try:
            codecs = load_codecs(args.model, args.one_curve, args.refine_steps, args.qualities)
        except (ValueError, FileNotFoundError) as error:
            parser.error(f"{error}. Pass codec names from 'imageae models' or .keras files of HyperpriorCodec models")
    else:
        print("no --model given: measuring the baselines only (JPEG, WebP, JPEG 2000); the outputs are labelled "
              "'baselines only'", file=sys.stderr)
    from tqdm.auto import tqdm

    env = environment()
    command = "python benchmarks/compress.py" + "".join(
        " " + shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    print(f"{env['device']}; Pillow {env['pillow']}; commit {env['git_commit']}", file=sys.stderr)

    paths = list_images(args.data)[: args.limit or None]
    images = [read_image(p) for p in paths]
    smallest = min(min(x.shape[:2]) for x in images)
    from imageae.metrics import MS_SSIM_MIN_SIDE

    use_ms_ssim, ms_ssim_why = not args.skip_ms_ssim, ""
    if args.skip_ms_ssim:
        ms_ssim_why = "--skip-ms-ssim"
    elif smallest < MS_SSIM_MIN_SIDE:
        use_ms_ssim = False
        ms_ssim_why = f"the smallest image side is {smallest} px, MS-SSIM needs {MS_SSIM_MIN_SIDE}"
        print(f"MS-SSIM skipped: {ms_ssim_why}", file=sys.stderr)

    baselines = {}
    jp2_skipped = None
    if "jpeg" in args.codecs:
        baselines["JPEG"] = jpeg_settings(args.jpeg_qualities)
    if "webp" in args.codecs:
        baselines["WebP"] = webp_settings(args.webp_qualities)
    if "jp2" in args.codecs:
        ok, why = jp2_available()
        if ok:
            baselines["JPEG 2000"] = jp2_settings(args.jp2_bpp)
        else:
            jp2_skipped = why
            print(f"JPEG 2000 skipped: {why}", file=sys.stderr)

    total = len(images) * (sum(len(s) for s in baselines.values()) + len(codecs))
    records, determinism = [], []
    with tqdm(total=total, desc="benchmark", unit="encode", dynamic_ncols=True) as bar:
        for codec, settings in baselines.items():
            records += measure_baseline(codec, settings, paths, images, use_ms_ssim, bar)
        if codecs:
            rows, determinism = measure_imageae(codecs, paths, images, use_ms_ssim, bar)
            records += rows

    points = summarise(records)
    notes = []
    if "JPEG" in baselines and any(p.suffix.lower() in (".jpg", ".jpeg") for p in paths):
        notes.append("The originals are themselves JPEG files (BSDS500: quality about 94). JPEG re-encoding at a "
                     "quality near theirs reuses their 8x8 grid and nearly their quantizers and scores unrealistically "
                     "well (q95 gave about 50 dB at 3.7 bpp on BSDS500 val), so the JPEG settings here stop at "
                     f"q{max(args.jpeg_qualities)}; at the low rates measured the effect should be small, but any "
                     "residual bias favours JPEG.")
    bd = bd_rates(points)
    for row in bd:
        if row["psnr"] is not None and row["psnr_of_mean_mse"] is not None \
                and abs(row["psnr"] - row["psnr_of_mean_mse"]) > 5:
            notes.append(f"{row['test']} vs {row['anchor']}: BD-rate {row['psnr']:+.1f} % on mean per-image PSNR but "
                         f"{row['psnr_of_mean_mse']:+.1f} % on the PSNR of the mean MSE: the comparison depends on how "
                         "the images are averaged.")
    if any(not c["ok"] for c in determinism):
        failed = ", ".join(c["model"] for c in determinism if not c["ok"])
        notes.append(f"imageae determinism check FAILED for {failed}")
    sizes = sorted({f"{x.shape[1]}x{x.shape[0]}" for x in images})
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "command": command,
        "baselines_only": not codecs,
        "environment": env,
        "config": {
            "data": str(args.data), "images": len(images), "limit": args.limit, "sizes": sizes,
            "megapixels": sum(x.shape[0] * x.shape[1] for x in images) / 1e6,
            "codecs": list(baselines) + list(dict.fromkeys(curve_name for curve_name, *_ in codecs)),
            "skipped_codecs": [name for key, name in (("jpeg", "JPEG"), ("webp", "WebP"), ("jp2", "JPEG 2000"))
                               if key not in args.codecs],
            "jp2_skipped": jp2_skipped,
            "settings": {codec: [value for _, value, _ in settings] for codec, settings in baselines.items()},
            "ms_ssim": use_ms_ssim, "ms_ssim_why": ms_ssim_why,
            "models": [{"curve": curve_name, "name": name, "quality": quality, "lmbda": lmbda, "refine_steps": refine,
                        "parameters": int(session.model.count_params()), "session_policy": "float32"}
                       for curve_name, name, quality, session, lmbda, refine in codecs],
        },
        "protocol": {
            "rate": "bytes * 8 / (H * W) of the original, real encoded sizes",
            "curve_point": "mean per-image bpp, mean per-image PSNR (CompressAI convention); psnr_of_mean_mse also",
            "psnr": "imageae.metrics.psnr over RGB, uint8 decoded vs uint8 original",
            "ms_ssim": "imageae.metrics.ms_ssim (tf.image.ssim_multiscale, 0..255), mean over images, dB of the mean",
            "bd_rate": "imageae.metrics.bd_rate: cubic fit of log rate vs quality, shared quality interval",
            "imageae_precision": "float32 (CodecSession always computes in float32)",
        },
        "points": points,
        "bd_rate": bd,
        "speed": speed_rows(points, records),
        "determinism": determinism,
        "kodak_anchors": {name: dict(zip(["psnr_0.25", "psnr_0.5", "psnr_1.0", "bd_rate_vs_jpeg"], values))
                          for name, values in KODAK_ANCHORS.items()},
        "notes": notes,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "wall_seconds": time.perf_counter() - start,
        "records": records,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    text = markdown(result)
    (args.out / "compress.md").write_text(text)
    (args.out / "compress.json").write_text(json.dumps(result, indent=1, default=float))
    plot(result, args.out / "compress.png")
    print(print_table(result))
    print(f"wrote {args.out / 'compress.md'}, compress.json, compress.png ({result['wall_seconds'] / 60:.1f} min)",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
