"""Anomaly scores from an autoencoder: the terms, their calibration on held-out normal images,
and how they combine (see :mod:`imageae.anomaly.api` for what the scores mean)."""

import numpy as np

PIXEL_TERMS = ("l2", "ssim", "l2max", "l2wide", "zmax", "l2dark")
TERMS = PIXEL_TERMS + ("latent", "intensity", "darker")
#: ``scoring="auto"``: the combination of up to AUTO_MAX_TERMS terms that best separates the
#: held-out normal images from synthetic anomalies made of them (:func:`choose_scoring`).
AUTO = "auto"
#: The default since it ranks on turned copies too: on MNIST one-class it beat the former default
#: ssim+latent (mean AUROC 0.978 against 0.970, same models), on ELPV cells 0.799 against 0.698
#: (benchmarks/anomaly.py, runs default-auto-turned and default-5min-auto-turned).
DEFAULT_SCORING = AUTO
#: What auto keeps with too few held-out images to rank on (the former default).
FALLBACK_SCORING = "ssim+latent"
AUTO_MAX_TERMS = 3
#: auto ranks on turned copies (:func:`synthetic_turned`) when some combination tells them from
#: the normal images at least this well (the images have an orientation), else on drawn defects.
TURNED_MIN_AUROC = 0.9
#: auto with fewer held-out images than this keeps :data:`FALLBACK_SCORING` (too few to rank 129
#: combinations).
AUTO_MIN_IMAGES = 20


def parse_scoring(scoring):
    """``"ssim+latent"`` -> ("ssim", "latent"), ``"auto"`` -> ("auto",); ValueError naming the
    choices otherwise."""
    if str(scoring).strip() == AUTO:
        return (AUTO,)
    terms = tuple(t.strip() for t in str(scoring).split("+") if t.strip())
    bad = [t for t in terms if t not in TERMS]
    if not terms or bad or len(set(terms)) != len(terms):
        raise ValueError(f"scoring must be 'auto' or terms from {', '.join(TERMS)} joined by '+' "
                         f"(e.g. 'ssim+latent'), got {scoring!r}")
    return terms


def to_model_input(x, size, channels):
    """A float (H, W, C) image on 0..1 as the model's (size, size, channels) input."""
    import cv2

    x = np.asarray(x, np.float32)
    if x.ndim == 2:
        x = x[..., None]
    if channels == 1 and x.shape[-1] == 3:
        x = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
    elif channels == 3 and x.shape[-1] == 1:
        x = np.repeat(x, 3, axis=-1)
    if x.shape[:2] != (size, size):
        shrink = x.shape[0] > size or x.shape[1] > size
        x = cv2.resize(x, (size, size), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
        x = x.reshape(size, size, channels)
    return np.clip(x, 0.0, 1.0)


def gaussian_blur(z, *, window=0, sigma=1.5):
    """Gaussian blur of each channel of each image of a float (N, S, S, C) batch (``window`` 0:
    from ``sigma``), mirrored at the edges."""
    import cv2

    z = np.asarray(z, np.float32)
    flat = z.transpose(1, 2, 0, 3).reshape(z.shape[1], z.shape[2], -1)  # channels of all images at once
    out = np.empty_like(flat)
    for k in range(0, flat.shape[-1], 128):  # OpenCV blurs at most 128 channels at once
        out[..., k : k + 128] = cv2.GaussianBlur(np.ascontiguousarray(flat[..., k : k + 128]), (window, window),
                                                 sigma, borderType=cv2.BORDER_REFLECT).reshape(
            flat.shape[0], flat.shape[1], -1)
    return out.reshape(z.shape[1], z.shape[2], z.shape[0], z.shape[3]).transpose(2, 0, 1, 3)


def ssim_map(a, b, *, window=7, sigma=1.5):
    """Local SSIM (Wang et al. 2004) of two float (N, S, S, C) batches on 0..1, averaged over
    channels: (N, S, S). Gaussian window ``window`` x ``window`` of standard deviation ``sigma``."""
    c1, c2 = 0.01**2, 0.03**2

    def blur(z):
        return gaussian_blur(z, window=window, sigma=sigma)

    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a * mu_a
    var_b = blur(b * b) - mu_b * mu_b
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean(axis=-1)


def _ssim_window(size):
    return 7 if size < 64 else 11  # 11 x 11 as in AE-SSIM for larger images; 7 for digits


def raw_terms(model, x, *, batch_size=64, terms=TERMS, calibration=None):
    """Per image, each term's raw score, and the pixel error maps, for a float (N, S, S, C) batch.

    Returns ``(terms, maps, codes)``: ``terms[name]`` float64 (N,); ``maps[name]`` float32
    (N, S, S) for the pixel terms; the codes (N, code_size). ``calibration`` holds what the
    terms fitted on the training images need (a detector's calibration, or a dict of these keys):
    ``latent`` (the Gaussian's ``mean`` and ``precision``; without it no latent term),
    ``pixel_error`` (the per-pixel error ``mean`` and ``std``, S x S nested lists, for zmax) and
    ``intensity`` (the training images' mean-intensity ``mean`` and ``std``, for the intensity
    and darker terms). Only the ``terms`` asked for (and "l2", which the heat
    maps use) are computed: the SSIM map is the costliest part of scoring.
    """
    calibration = calibration or {}
    latent, pixel_error, intensity = (calibration.get(k) for k in ("latent", "pixel_error", "intensity"))
    recon, codes = [], []
    for i in range(0, len(x), batch_size):
        batch = np.ascontiguousarray(x[i : i + batch_size], np.float32)
        code, x_hat = _forward(model, batch)
        recon.append(x_hat)
        codes.append(code)
    x_hat = np.concatenate(recon) if recon else np.zeros_like(x)
    code = np.concatenate(codes) if codes else np.zeros((0, model.code_size), np.float32)
    wanted = set(terms)
    maps = {"l2": np.mean((x_hat - x) ** 2, axis=-1)}
    if "ssim" in wanted:
        maps["ssim"] = 1.0 - ssim_map(x, x_hat, window=_ssim_window(model.image_size))
    terms = {name: m.reshape(len(m), -1).mean(axis=1).astype(np.float64) for name, m in maps.items()}
    if "l2max" in wanted:
        # The largest local mean of the squared error (Gaussian, sigma = side / 32: 2 pixels at
        # 64), for defects that are small against the image, whose mean error they barely move.
        terms["l2max"] = _local_max(maps["l2"], model.image_size / 32.0)
    if "l2wide" in wanted:
        # The same at sigma = side / 16 (4 pixels at 64): defects a few times larger, such as the
        # dark (inactive) regions of solar cells.
        terms["l2wide"] = _local_max(maps["l2"], model.image_size / 16.0)
    if "l2dark" in wanted:
        # l2wide of only the pixels darker than their reconstruction: for images whose defects
        # are dark (cracks and dead regions in electroluminescence, stains on paper), a bright
        # glint or a reflection is then no anomaly.
        maps["l2dark"] = np.mean(np.maximum(x_hat - x, 0.0) ** 2, axis=-1)
        terms["l2dark"] = _local_max(maps["l2dark"], model.image_size / 16.0)
    if "zmax" in wanted:
        # Each pixel's squared error standardised by that pixel's error mean and spread on the
        # training images (some places, such as edges and busbars, always reconstruct worse),
        # then the largest local mean as for l2max: the standardised error map of MVTec-style
        # inspection.
        if pixel_error is None:
            raise ValueError("the zmax term needs the per-pixel error statistics of a calibration (pixel_error)")
        z = (maps["l2"] - np.asarray(pixel_error["mean"], np.float32)) / np.asarray(pixel_error["std"], np.float32)
        terms["zmax"] = _local_max(z, model.image_size / 32.0)
    for name in ("intensity", "darker"):
        if name in wanted and intensity is None:
            raise ValueError(f"the {name} term needs the training images' intensity statistics of a calibration")
    if wanted & {"intensity", "darker"}:
        # How much darker than the training images the image is on average (a z-score):
        # "intensity" squares it (either way: a cell that is dark all over, or overexposed,
        # reconstructs well and still is not like the normal ones); "darker" keeps its sign
        # (one-sided, negative when brighter, for images whose defects are dark).
        darker = (intensity["mean"] - x.reshape(len(x), -1).mean(axis=1).astype(np.float64)) / intensity["std"]
        terms.update({name: value for name, value in (("intensity", darker**2), ("darker", darker)) if name in wanted})
    if latent is not None and "latent" in wanted:
        d = code.astype(np.float64) - np.asarray(latent["mean"])
        terms["latent"] = np.einsum("ij,jk,ik->i", d, np.asarray(latent["precision"]), d)
    return terms, maps, code


def _local_max(maps, sigma):
    """Per map of an (N, S, S) stack, its largest local mean (Gaussian of ``sigma`` pixels)."""
    local = gaussian_blur(maps[..., None], sigma=sigma)[..., 0]
    return local.reshape(len(local), -1).max(axis=1).astype(np.float64) if len(local) else np.zeros(0)


def _standardisation(raw, names):
    """Each term's mean and spread over held-out normal images: what :func:`combine` divides by."""
    return {name: {"mean": float(raw[name].mean()), "std": float(max(raw[name].std(), 1e-12))} for name in names}


def _forward(model, batch):
    """The code and the reconstruction of a float32 batch, as numpy (one compiled function per model)."""
    call = getattr(model, "_imageae_forward", None)
    if call is None:
        from imageae.runtime import import_tensorflow

        tf = import_tensorflow()

        @tf.function(input_signature=[tf.TensorSpec((None, model.image_size, model.image_size, model.channels),
                                                    tf.float32)])
        def call(x):
            code = model.encoder(x, training=False)
            return code, model.decoder(code, training=False)

        model._imageae_forward = call
    code, x_hat = call(batch)
    return np.asarray(code, np.float32), np.asarray(x_hat, np.float32)


def fit_latent_gaussian(codes, *, shrinkage=1e-3):
    """Mean and precision of a Gaussian fitted to codes (N, D), with ``shrinkage`` times the
    mean variance added to the diagonal so that few images still give an invertible covariance."""
    codes = np.asarray(codes, np.float64)
    mean = codes.mean(axis=0)
    cov = np.cov(codes, rowvar=False) if len(codes) > 1 else np.zeros((codes.shape[1], codes.shape[1]))
    cov = np.atleast_2d(cov)
    cov += (shrinkage * max(float(np.trace(cov)) / len(cov), 1e-6)) * np.eye(len(cov))
    return {"mean": mean.tolist(), "precision": np.linalg.inv(cov).tolist()}


def pixel_error_statistics(errors):
    """Mean and spread of each pixel's squared error over (N, S, S) error maps of normal images,
    the spread blurred a little (sigma 1 pixel) and floored at a tenth of its median, so that a
    pixel that happened to reconstruct well on every training image cannot dominate the zmax map."""
    errors = np.asarray(errors, np.float32)
    mean = errors.mean(axis=0)
    std = gaussian_blur(errors.std(axis=0)[None, ..., None], sigma=1.0)[0, ..., 0]
    std = np.maximum(std, 0.1 * float(np.median(std)) + 1e-12)
    return {"mean": np.round(mean, 8).tolist(), "std": np.round(std, 8).tolist()}


def _fit_on_training(model, x_train, terms, batch_size):
    """What ``terms`` need from the training images: the latent Gaussian, the per-pixel error
    statistics and the mean-intensity statistics (None where no term needs them)."""
    fitted = {"latent": None, "pixel_error": None, "intensity": None}
    if {"intensity", "darker"} & set(terms):
        means = x_train.reshape(len(x_train), -1).mean(axis=1)
        fitted["intensity"] = {"mean": float(means.mean()), "std": float(max(means.std(), 1e-6))}
    if {"latent", "zmax"} & set(terms):
        codes, errors = [], []
        for i in range(0, len(x_train), batch_size):
            batch = np.ascontiguousarray(x_train[i : i + batch_size], np.float32)
            code, x_hat = _forward(model, batch)
            codes.append(code)
            errors.append(np.mean((x_hat - batch) ** 2, axis=-1))
        if "latent" in terms:
            fitted["latent"] = fit_latent_gaussian(np.concatenate(codes))
        if "zmax" in terms:
            fitted["pixel_error"] = pixel_error_statistics(np.concatenate(errors))
    return fitted


def calibrate(model, x_train, x_val, *, scoring=DEFAULT_SCORING, false_positive_rate=0.01, batch_size=64):
    """The ``calibration`` dict of a trained autoencoder, from its training images (the latent
    Gaussian) and held-out normal images (score statistics and threshold); arrays (N, S, S, C).
    ``scoring="auto"`` chooses the terms first (:func:`choose_scoring`; the table is kept in the
    calibration's ``scoring_choice``)."""
    terms = parse_scoring(scoring)
    if not 0.0 < false_positive_rate < 1.0:
        raise ValueError(f"false_positive_rate must be between 0 and 1 (e.g. 0.01 for 1 %), got {false_positive_rate}")
    auto = terms == (AUTO,)
    choice = None
    if auto and len(x_val) < AUTO_MIN_IMAGES:  # decided before any term is computed
        auto, terms = False, parse_scoring(FALLBACK_SCORING)
        choice = {"method": f"auto with {len(x_val)} held-out images (fewer than {AUTO_MIN_IMAGES}): too few to rank "
                            f"scorings, so {FALLBACK_SCORING}", "chosen": FALLBACK_SCORING}
    candidates = TERMS if auto else terms  # auto: every term once, then the chosen ones kept
    fitted = _fit_on_training(model, x_train, candidates, batch_size)
    raw, maps, _ = raw_terms(model, x_val, batch_size=batch_size, terms=candidates, calibration=fitted)
    if auto:
        chosen, table, facts = choose_scoring(model, x_val, fitted, normal=raw, batch_size=batch_size)
        terms = parse_scoring(chosen)
        choice = {"method": f"auto: the combination of up to {AUTO_MAX_TERMS} terms with the highest AUROC of the "
                            f"{len(x_val)} held-out normal images against synthetic anomalies made of them: turned "
                            f"copies (synthetic_turned) when some combination separates those with AUROC >= "
                            f"{TURNED_MIN_AUROC}, else copies with one drawn defect (synthetic_defects, seed 0); "
                            f"ties to fewer terms",
                  "chosen": chosen, **facts, "synthetic_auroc_top": dict(list(table.items())[:10])}
    latent = fitted["latent"] if "latent" in terms else None
    pixel_error = fitted["pixel_error"] if "zmax" in terms else None
    intensity = fitted["intensity"] if {"intensity", "darker"} & set(terms) else None
    stats = _standardisation(raw, terms)
    calibration = {"scoring": "+".join(terms), "terms": stats, "latent": latent,
                   "ssim_window": _ssim_window(model.image_size)}
    if pixel_error is not None:
        calibration["pixel_error"] = pixel_error
    if intensity is not None:
        calibration["intensity"] = intensity
    if choice is not None:
        calibration["scoring_choice"] = choice
    scores = combine(raw, calibration)
    # The heat map is the squared error whatever the score (the local SSIM of flat, noisy
    # regions, a dark background, is unstable and lit up whole backgrounds in the tests), or only
    # its darker-than-reconstructed part when the score looks only there (l2dark).
    pixel = ["l2dark"] if "l2dark" in terms else ["l2"]
    heat = sum(maps[t] / float(max(raw[t].std(), 1e-12)) for t in pixel)
    calibration.update(
        false_positive_rate=float(false_positive_rate),
        threshold=float(np.quantile(scores, 1.0 - false_positive_rate)),
        validation_images=len(x_val),
        validation_scores={"mean": float(scores.mean()), "std": float(scores.std()), "max": float(scores.max())},
        # Heat maps are drawn on one scale for all images: full colour at the 99.9th percentile of
        # the held-out normal images' pixel errors, so a normal image stays mostly uncoloured.
        map_terms=pixel,
        map_scale={t: float(max(raw[t].std(), 1e-12)) for t in pixel},
        map_high=float(max(np.quantile(heat, 0.999), 1e-12)),
    )
    return calibration


def combine(raw, calibration):
    """The anomaly score: the sum of the standardised terms of ``calibration['scoring']``."""
    return sum((raw[name] - stat["mean"]) / stat["std"] for name, stat in calibration["terms"].items())


def choose_scoring(model, x_val, fitted, *, terms=TERMS, normal=None, max_terms=AUTO_MAX_TERMS, batch_size=64):
    """The scoring for ``scoring="auto"``: every combination of up to ``max_terms`` of ``terms``,
    each term standardised on the held-out normal images ``x_val`` as the detector does, ranked by
    the AUROC of ``x_val`` against synthetic anomalies made of it. Only normal images are needed.

    Two kinds of synthetic anomaly are made: turned copies (:func:`synthetic_turned`: rotated or
    mirrored, a different kind of object wherever the images have an orientation: digits, faces,
    parts) and drawn defects (:func:`synthetic_defects`: a line or a blot). When some combination
    tells the turned copies from the normal images with an AUROC of at least
    :data:`TURNED_MIN_AUROC`, the images have an orientation and the combinations are ranked on
    the turned copies; otherwise (textures, solar cells, images that look alike turned) on the drawn
    defects. Measured (``benchmarks/anomaly.py``): drawn defects alone favour pixel terms, which
    on MNIST digits miss the other digits that the latent term finds.

    ``fitted``: what the terms need from the training images (as :func:`raw_terms`'s
    ``calibration``); ``normal``: ``x_val``'s raw terms when already computed. Returns
    ``(scoring, {scoring: AUROC} best first, facts)``, ``facts`` saying which kind ranked and the
    best AUROC of each kind; ties go to fewer terms, then to the order of terms."""
    import itertools

    given = {"terms": terms, "calibration": fitted, "batch_size": batch_size}
    if normal is None:
        normal, _, _ = raw_terms(model, x_val, **given)
    stats = _standardisation(normal, terms)
    combos = [combo for r in range(1, max_terms + 1) for combo in itertools.combinations(terms, r)]
    tables = {}
    for kind, make in (("turned", synthetic_turned), ("drawn", synthetic_defects)):
        anomalous, _, _ = raw_terms(model, make(x_val, seed=0), **given)
        rows = []
        for combo in combos:
            sub = {"terms": {t: stats[t] for t in combo}}
            rows.append(("+".join(combo), round(auroc(combine(normal, sub), combine(anomalous, sub)), 4), len(combo)))
        rows.sort(key=lambda row: (-row[1], row[2]))  # stable: the order of terms within a tie
        tables[kind] = {name: value for name, value, _ in rows}
    best = {kind: next(iter(table.values())) for kind, table in tables.items()}
    kind = "turned" if best["turned"] >= TURNED_MIN_AUROC else "drawn"
    facts = {"ranked_on": kind, "best_auroc_turned": best["turned"], "best_auroc_drawn": best["drawn"]}
    return next(iter(tables[kind])), tables[kind], facts


def synthetic_turned(x, *, seed=0):
    """Copies of normal float (N, S, S, C) images turned: image k rotated by 90 degrees, by 180,
    mirrored left to right or upside down (by k mod 4; ``seed`` is unused, for the same call as
    :func:`synthetic_defects`). A turned 2 is no 2: for images with an orientation these stand in
    for anomalies of another kind (another digit, another part), which drawn defects do not."""
    del seed
    x = np.asarray(x, np.float32)
    turns = (lambda i: np.rot90(i, 1), lambda i: np.rot90(i, 2), lambda i: i[:, ::-1], lambda i: i[::-1])
    return np.ascontiguousarray(np.stack([turns[k % 4](image) for k, image in enumerate(x)])) if len(x) else x


def synthetic_defects(x, *, seed=0):
    """Copies of normal float (N, S, S, C) images on 0..1, each with one drawn defect: a line
    (a crack, odd images) or a filled ellipse (a dead region, even images), drawn part of the way
    to the intensity opposite to the image's median (towards black on bright images, towards white
    on dark ones such as digits).

    They stand in for anomalies where only normal images are known: ``scoring="auto"`` ranks
    the scorings on them when the images have no orientation (:func:`choose_scoring`), and
    ``imageae train anomaly --tune`` ranks its trials on the kind its calibration ranked on.
    """
    import cv2

    rng = np.random.default_rng(seed)
    x = np.asarray(x, np.float32)
    out = x.copy()
    side = x.shape[1]
    for k in range(len(out)):
        mask = np.zeros(x.shape[1:3], np.uint8)
        if k % 2:
            ends = rng.integers(0, side, 4)
            cv2.line(mask, (int(ends[0]), int(ends[1])), (int(ends[2]), int(ends[3])), 1, thickness=max(1, side // 32))
        else:
            centre = rng.integers(side // 4, max(side // 4 + 1, 3 * side // 4), 2)
            axes = rng.integers(max(1, side // 16), max(2, side // 5), 2)
            cv2.ellipse(mask, (int(centre[0]), int(centre[1])), (int(axes[0]), int(axes[1])),
                        float(rng.uniform(0, 180)), 0, 360, 1, -1)
        # Part of the way to black or white (a strength from 0.15 to 0.6), so that the defects are
        # not all trivially found and the trials' AUROCs do not all reach 1.
        target = 0.0 if np.median(x[k]) > 0.25 else 1.0
        strength = float(rng.uniform(0.15, 0.6))
        region = mask.astype(bool)
        out[k][region] = (1.0 - strength) * out[k][region] + strength * target
    return out


def auroc(normal, anomalous):
    """Area under the ROC curve of scores (higher = anomalous): the probability that an
    anomalous image scores above a normal one, ties counted half (Mann-Whitney U)."""
    normal, anomalous = np.asarray(normal, np.float64), np.asarray(anomalous, np.float64)
    if not len(normal) or not len(anomalous):
        return float("nan")
    both = np.r_[normal, anomalous]
    _, inverse, counts = np.unique(both, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0  # tied scores share their mean rank
    ranks = average_rank[inverse]
    n, m = len(normal), len(anomalous)
    return float((ranks[n:].sum() - m * (m + 1) / 2.0) / (n * m))
