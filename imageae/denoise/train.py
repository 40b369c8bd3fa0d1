"""The denoiser's training recipe: the code that produced the shipped denoise weights.

``imageae train denoiser --data DIR ...`` calls :func:`train_denoiser`. Patches are cut and
noised in NumPy inside a :class:`keras.utils.PyDataset`, so the same recipe runs on the
TensorFlow and the JAX backend.
"""

import dataclasses
import json
import os
import re
from pathlib import Path

import keras
import numpy as np

from imageae.metrics import psnr_metric
from imageae.training import (
    RandomCrops,
    _best_float32,
    _check_output,
    _check_run_settings,
    _cosine_schedule,
    _finish,
    _fit,
    _open_checkpoint_dir,
    _plain,
    _restoring_dtype_policy,
    _ship,
    _split_for_validation,
    load_training_images,
)


@dataclasses.dataclass
class DenoiserTrainConfig:
    """Everything that decides a denoiser training run (saved in the model card)."""

    data: list
    output: str
    channels: int = 1
    init: str = ""  # a model name or .keras path to fine-tune instead of starting afresh
    filters: tuple = (64, 128, 256)
    blocks_per_level: int = 1
    patch_size: int = 96
    batch_size: int = 16
    steps: int = 14000
    steps_per_epoch: int = 500
    learning_rate: float = 4e-4  # 1e-3 diverged after ~1500 steps (grey and colour)
    min_learning_rate: float = 1e-6
    warmup_steps: int = 200
    sigma_min: float = 0.0
    sigma_max: float = 55.0
    # "gaussian": a blind model trained on white Gaussian noise; "camera": a model that takes a
    # noise level (--strength), trained on imageae/denoise/degrade.py's camera noise and, with
    # probability gaussian_probability, white Gaussian noise up to sigma_max.
    noise: str = "gaussian"
    gaussian_probability: float = 0.35
    validation_fraction: float = 0.05
    validation_sigmas: tuple = (15.0, 25.0, 50.0)
    patience_epochs: int = 10
    precision: str = "auto"
    checkpoint_dir: str = ""
    resume: bool = False
    seed: int = 0
    workers: int = 1  # threads cutting patches
    max_seconds: float = 0.0  # stop after this much training time (0: no limit)


def random_dihedral(x, rng):
    """One of the 8 flips/rotations of an (H, W, C) patch."""
    x = np.rot90(x, int(rng.integers(4)))
    return x[:, ::-1] if rng.integers(2) else x


def _make_patch_dataset(images, config, validation, *, stride=8):
    if validation:
        # A fixed set: the centre crop of each held-out image at each validation sigma, 128
        # pixels a side or, when an image is smaller, the largest multiple of the model's
        # stride that every one of them holds.
        rng = np.random.default_rng(12345)
        p = min(128, min(min(img.shape[:2]) for img in images) // stride * stride)
        clean, noisy = [], []
        for img in images:
            h, w = img.shape[:2]
            top, left = (h - p) // 2, (w - p) // 2
            crop = img[top : top + p, left : left + p]
            for sigma in config.validation_sigmas:
                clean.append(crop)
                noisy.append(crop + rng.standard_normal(crop.shape, dtype=np.float32) * np.float32(sigma / 255.0))
        return np.stack(noisy), np.stack(clean)
    return RandomCrops(images, config, channels=config.channels, augment=random_dihedral, paired=True)


class DegradedCrops(RandomCrops):
    """Random crops through :func:`imageae.denoise.degrade.degrade`: ``((noisy, level), clean)``."""

    def __init__(self, images, config):
        super().__init__(images, config, channels=config.channels, augment=random_dihedral, paired=False)

    def __getitem__(self, index):
        from imageae.denoise.degrade import degrade

        (clean,) = super().__getitem__(index)
        rng = np.random.default_rng([self.config.seed, self.epoch, index, 1])
        noisy, levels = np.empty_like(clean), np.empty(len(clean), np.float32)
        for k, patch in enumerate(clean):
            noisy[k], levels[k] = degrade(patch, rng, gaussian_probability=self.config.gaussian_probability,
                                          sigma_max=self.config.sigma_max)
        return (noisy, levels), clean


def _camera_validation(images, config, stride):
    """Fixed validation pairs for the "camera" recipe: each held-out image's centre crop at
    each validation sigma (Gaussian, level = sigma) and twice with camera noise."""
    from imageae.denoise.degrade import camera_noise, jpeg

    noisy, clean = _make_patch_dataset(images, config, validation=True, stride=stride)
    levels = [s / 255.0 for _ in images for s in config.validation_sigmas]
    rng = np.random.default_rng(54321)
    extra_noisy, extra_clean = [], []
    for crop in clean[:: len(config.validation_sigmas)]:
        for quality in (None, 90):
            z = camera_noise(crop, rng)
            z = z if quality is None else jpeg(z, quality)
            extra_noisy.append(z)
            extra_clean.append(crop)
            levels.append(float(np.std(z - crop)))
    noisy = np.concatenate([noisy, np.stack(extra_noisy)])
    clean = np.concatenate([clean, np.stack(extra_clean)])
    return (noisy, np.asarray(levels, np.float32)), clean


@_restoring_dtype_policy
def train_denoiser(config, *, progress=True):
    """Train a denoiser as ``config`` says; write the .keras model, a model card and logs.

    Returns the path of the written model.
    """

    from imageae.models.denoiser import (
        NoiseLevelTrainingWrapper,
        NoiseTrainingWrapper,
        build_denoiser,
        with_noise_level_input,
    )
    from imageae.runtime import set_precision

    _check_run_settings(config, "steps", "steps_per_epoch", "batch_size", "patch_size")
    camera = config.noise == "camera"
    if config.noise not in ("gaussian", "camera"):
        raise ValueError(f"--noise must be 'gaussian' or 'camera', got {config.noise!r}")
    if camera and config.channels != 3:
        raise ValueError("--noise camera trains colour models only: pass --channels 3")
    policy = set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    output = _check_output(config.output)
    checkpoint_dir, resuming = _open_checkpoint_dir(config, output)
    last = checkpoint_dir / "last.keras"

    # The model first (cheap), so that a patch size off its stride is refused before any image is read.
    initial_epoch = 0
    if resuming:
        model = keras.saving.load_model(last)
        initial_epoch = json.loads((checkpoint_dir / "state.json").read_text())["epoch"]
    else:
        if config.init:
            from imageae.registry import load_model
            from imageae.runtime import with_precision

            denoiser = with_precision(load_model(config.init, job="denoise"), policy)
            if denoiser.channels != config.channels:
                raise ValueError(f"--init model has {denoiser.channels} channels, --channels is {config.channels}")
        else:
            denoiser = build_denoiser(config.channels, config.filters, config.blocks_per_level, noise_level=camera)
        if camera and not denoiser.noise_level:  # start from a blind model's weights
            denoiser = with_precision(with_noise_level_input(denoiser), policy)
        elif not camera and denoiser.noise_level:
            raise ValueError("--init model takes a noise level; train it on with --noise camera")
        if camera:
            model = NoiseLevelTrainingWrapper(denoiser)
            model.build(((None, None, None, config.channels), (None,)))
        else:
            model = NoiseTrainingWrapper(denoiser, config.sigma_min, config.sigma_max, seed=config.seed)
            model.build((None, None, None, config.channels))
        model.compile(
            optimizer=keras.optimizers.Adam(_cosine_schedule(config), clipnorm=1.0),
            loss="mse",
            metrics=[psnr_metric],
        )
    stride = model.denoiser.stride
    if config.patch_size % stride:
        raise ValueError(f"--patch-size must be a multiple of {stride} (the stride of the model's "
                         f"{len(model.denoiser.filters)}-level U-Net), got {config.patch_size}")

    images = load_training_images(config.data, config.channels, min_side=config.patch_size)
    train_order, val_order = _split_for_validation(len(images), config.validation_fraction, config.seed)
    val_images = [images[i] for i in val_order]
    train_images = [images[i] for i in train_order]
    if camera:
        train_data = DegradedCrops(train_images, config)
        val_data = _camera_validation(val_images, config, stride)
    else:
        train_data = _make_patch_dataset(train_images, config, validation=False)
        val_data = _make_patch_dataset(val_images, config, validation=True, stride=stride)
    train_data.epoch = initial_epoch

    run = _fit(model, train_data, config=config, checkpoint_dir=checkpoint_dir, resuming=resuming,
               initial_epoch=initial_epoch, steps_per_epoch=config.steps_per_epoch, target=config.steps,
               monitor="val_psnr_metric", mode="max", output=output, progress=progress,
               validation_data=val_data, validation_batch_size=8)
    model = _best_float32(model, checkpoint_dir, part=lambda wrapper: wrapper.denoiser)
    if camera:
        calibrate_level_estimator(model, val_images, config.validation_sigmas)
    metrics = _denoiser_validation_metrics(model, *val_data, config.validation_sigmas)
    noise = f"additive white Gaussian, sigma uniform in [{config.sigma_min}, {config.sigma_max}] (0..255)"
    if camera:
        noise = (f"camera noise (imageae/denoise/degrade.py: unprocessing, Poisson-Gaussian on a Bayer mosaic, "
                 f"bilinear demosaicing, correlated noise, JPEG 60-95 with probability 0.7) and, with probability "
                 f"{config.gaussian_probability}, additive white Gaussian with sigma uniform in [0, {config.sigma_max}]; "
                 f"the model is given the noise level")
    _ship(model, output, checkpoint_dir, job="denoise", curve_metric=None, card={
        "training": {
            "data": [str(d) for d in config.data],
            "images": len(train_images),
            "validation_images": len(val_images) if len(images) > 1 else "the training image (nothing held out)",
            "steps": config.steps,
            "steps_done": run["stopped"]["steps_done"],
            "steps_run_this_run": run["stopped"]["steps_this_run"],
            "stopped": run["stopped"],
            "kept_epoch": run["kept"],
            "batch_size": config.batch_size,
            "patch_size": config.patch_size,
            "noise": noise,
            "precision_policy": policy,
            "wall_time_seconds": round(run["wall"] + run["previous_wall"], 1),
            "config": _plain(dataclasses.asdict(config)),
        },
        "metrics": {
            "validation": f"the centre {val_data[1].shape[1]}x{val_data[1].shape[2]} crop of each of the "
                          f"{len(val_images)} validation images at each sigma, seeded white Gaussian noise (unclipped); "
                          "PSNR of the shipped float32 model's output clipped to 0..1",
            **metrics,
        },
    })
    return _finish(output, run)


def calibrate_level_estimator(model, images, sigmas, *, seed=7):
    """Set ``model.level_calibration`` so that "auto" is unbiased on whole images.

    The estimator learns on small patches; on whole images (the median over 256-pixel crops that
    :func:`imageae.denoise.api.estimate_noise_level` takes) it reads low. The factor is the median
    ratio of true to estimated level over ``images`` (the held-out validation images, never a
    benchmark set) with seeded Gaussian noise at ``sigmas`` and with three camera degradations each.
    Returns the factor.
    """
    from imageae.denoise.api import estimate_noise_level
    from imageae.denoise.degrade import degrade

    model.level_calibration = 1.0
    rng = np.random.default_rng(seed)
    ratios = []
    for image in images:
        x = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
        for sigma in sigmas:
            noisy = x + rng.standard_normal(x.shape, dtype=np.float32) * np.float32(sigma / 255.0)
            ratios.append(sigma / 255.0 / estimate_noise_level(model, noisy))
        for _ in range(3):
            noisy, level = degrade(x, rng, gaussian_probability=0.0)
            ratios.append(level / estimate_noise_level(model, noisy))
    model.level_calibration = float(np.median(ratios))
    if hasattr(model, "_imageae_estimate"):
        del model._imageae_estimate  # traced with the old factor
    return model.level_calibration


def _denoiser_validation_metrics(denoiser, noisy, clean, sigmas):
    """Per validation sigma, the mean PSNR (dB, float, output clipped to 0..1 as the training
    metric does) of the denoised and of the noisy validation crops; keys are the sigmas.

    ``noisy`` is an array for a blind model, ``(noisy, levels)`` for one that takes a noise level
    (the Gaussian crops first, then the camera-noise ones): its crops are scored with the true
    level and with the level it estimates itself ("auto"), and the camera crops on their own.
    """
    def run(x, levels=None):
        return np.concatenate([np.asarray(denoiser(x[i : i + 8] if levels is None else (x[i : i + 8], levels[i : i + 8])))
                               for i in range(0, len(x), 8)])

    def psnr(x, reference):
        mse = np.mean((np.clip(x, 0.0, 1.0) - reference) ** 2, axis=(1, 2, 3))
        return round(float(np.mean(-10.0 * np.log10(np.maximum(mse, 1e-10)))), 3)

    levels = None
    if isinstance(noisy, tuple):
        noisy, levels = noisy
    out = run(noisy, levels)
    gaussian = len(clean) if levels is None else len(clean) - 2 * (len(clean) // (len(sigmas) + 2))
    denoised, inputs = {}, {}
    for k, sigma in enumerate(sigmas):
        index = slice(k, gaussian, len(sigmas))  # the crops are stored image by image, each at every sigma
        denoised[f"{sigma:g}"] = psnr(out[index], clean[index])
        inputs[f"{sigma:g}"] = psnr(noisy[index], clean[index])
    metrics = {"validation_psnr_db_by_sigma": denoised, "validation_noisy_psnr_db_by_sigma": inputs}
    if levels is not None:
        auto = run(noisy)
        camera = slice(gaussian, None)
        metrics["validation_psnr_db_by_sigma_auto_level"] = {
            f"{sigma:g}": psnr(auto[slice(k, gaussian, len(sigmas))], clean[slice(k, gaussian, len(sigmas))])
            for k, sigma in enumerate(sigmas)}
        metrics["validation_camera_noise_psnr_db"] = {
            "noisy": psnr(noisy[camera], clean[camera]), "true_level": psnr(out[camera], clean[camera]),
            "auto_level": psnr(auto[camera], clean[camera])}
        estimate = np.concatenate([np.asarray(denoiser.estimate_level(noisy[i : i + 8])) for i in range(0, len(noisy), 8)])
        metrics["validation_level_estimate_error"] = {
            "median_abs_log_ratio": round(float(np.median(np.abs(np.log(estimate / np.maximum(levels, 0.5 / 255))))), 3)}
    return metrics


# ----------------------------------------------------------------------------------------------
# The "auto" strength's floor, calibrated on real noisy/clean pairs

#: Candidate floors (0..255 scale) for :func:`calibrate_auto_floor`; 0 means no floor.
AUTO_FLOORS = (0, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 15)
#: Candidate ``noise_highpass`` widths (pixels) for :func:`calibrate_auto_floor`; 0 means off.
NOISE_HIGHPASSES = (0, 4, 8, 16, 32)
HIGHPASS_TOLERANCE_DB = 0.01
_PAIR = re.compile(r"^(?P<stem>.+)_real\.(?P<ext>jpe?g|png|tiff?|bmp|webp)$", re.IGNORECASE)


def find_pairs(folder):
    """``(name, noisy path, clean path)`` for every ``<stem>_real.<ext>`` in ``folder`` with a
    ``<stem>_mean.<ext>`` beside it (PolyU's naming: one shot and the mean of many shots of the
    same static scene), sorted by name. A ``_real`` file without its ``_mean`` is an error naming
    it: a silently smaller set would change the numbers."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of <name>_real / <name>_mean image pairs")
    pairs, lonely = [], []
    for path in sorted(folder.iterdir()):
        match = _PAIR.match(path.name)
        if not match:
            continue
        mean = path.with_name(f"{match['stem']}_mean.{match['ext']}")
        (pairs.append((match["stem"], path, mean)) if mean.exists() else lonely.append(path.name))
    if lonely:
        raise FileNotFoundError(f"no *_mean file beside {', '.join(lonely)} in {folder}")
    if not pairs:
        raise FileNotFoundError(f"no <name>_real.<ext> / <name>_mean.<ext> pairs in {folder}")
    return pairs


def _uint8_psnr(x, reference):
    """PSNR (dB) of float 0..1 images as they would be written: clipped and rounded to uint8."""
    from imageae.metrics import psnr

    return psnr(np.round(np.clip(reference, 0.0, 1.0) * 255.0), np.round(np.clip(x, 0.0, 1.0) * 255.0))


def calibrate_auto_floor(model, pairs, *, floors=AUTO_FLOORS, highpasses=NOISE_HIGHPASSES, progress=None):
    """Choose ``model.auto_level_floor`` and ``model.noise_highpass`` together: the pair whose
    "auto" strength (the estimate, but at least the floor) gives the best mean PSNR over ``pairs``
    of float (H, W, 3) noisy and clean images. Returns ``(floor on the 0..255 scale, highpass in
    pixels, {(floor, highpass): mean PSNR}, per-pair rows)``; the model is left unchanged. Ties go
    to the smaller floor; the highpass is the narrowest within ``HIGHPASS_TOLERANCE_DB`` of the
    best at that floor (each pixel of width costs 3 pixels of tile margin)."""
    from imageae.denoise.api import estimate_noise_level
    from imageae.models.denoiser import gaussian_lowpass
    from imageae.pipelines.engine import TiledRunner

    if not getattr(model, "noise_level", False):
        raise ValueError("only a denoiser that takes a noise level has an auto strength to calibrate")
    kept = model.noise_highpass
    model.noise_highpass = 0.0  # the network once per level; each highpass is then applied here
    try:
        runner = TiledRunner(model)
        scores = {(f, h): [] for f in floors for h in highpasses}
        rows = []
        for name, noisy, clean in pairs:
            estimate = 255.0 * estimate_noise_level(model, noisy)
            by_level = {}
            row = {"pair": name, "estimate": round(estimate, 3), "input_psnr_db": round(_uint8_psnr(noisy, clean), 3)}
            for f in floors:
                level = round(max(estimate, float(f)), 3)
                if level not in by_level:
                    out = next(iter(runner.run([(0, noisy, level / 255.0)])))[1]
                    noise = noisy - out
                    by_level[level] = {
                        h: _uint8_psnr(out + (np.asarray(gaussian_lowpass(noise[None], h))[0] if h > 0 else 0.0), clean)
                        for h in highpasses}
                for h in highpasses:
                    scores[f, h].append(by_level[level][h])
                    row[f"floor_{f:g}_highpass_{h:g}"] = round(by_level[level][h], 3)
            rows.append(row)
            if progress:
                progress(name)
    finally:
        model.noise_highpass = kept
    table = {key: round(float(np.mean(v)), 4) for key, v in scores.items()}
    best = max(table.values())
    floor, highpass = min(key for key, v in table.items() if v == best)
    # A wider highpass widens every tile's margin by 3 widths (slower on large images and in
    # LiteRT's fixed windows): the narrowest within HIGHPASS_TOLERANCE_DB of the best is taken.
    highpass = min(h for (f, h), v in table.items() if f == floor and v >= best - HIGHPASS_TOLERANCE_DB)
    return floor, highpass, table, rows


#: Candidate gains for :func:`calibrate_grey_gain`, and the Gaussian sigmas it scores them at.
GREY_GAINS = (1.0, 1.2, 1.3, 1.4, 1.5, 1.6, 1.8, 2.0)
GREY_SIGMAS = (15.0, 25.0, 50.0)


def calibrate_grey_gain(model, images, *, gains=GREY_GAINS, sigmas=GREY_SIGMAS, seed=11, progress=None):
    """Choose ``model.grey_level_gain`` for a colour model that takes a noise level: a grey image
    runs through it copied into R, G and B, and the same noise in all three reads to the model as
    weaker than independent noise of that level. Each clean grey image in ``images`` (float
    (H, W, 1), held-out training images, never a benchmark set) gets seeded Gaussian noise at each
    of ``sigmas`` and is denoised at ``gain * sigma`` for every gain. Returns ``(gain,
    {gain: mean PSNR})``; ties go to the smaller gain. The model is left unchanged."""
    from imageae.pipelines.engine import TiledRunner

    if getattr(model, "channels", 0) != 3 or not getattr(model, "noise_level", False):
        raise ValueError("the grey gain is for a colour model that takes a noise level")
    runner = TiledRunner(model)
    rng = np.random.default_rng(seed)
    scores = {g: [] for g in gains}
    for k, x in enumerate(images):
        for sigma in sigmas:
            noisy = x + rng.standard_normal(x.shape).astype(np.float32) * np.float32(sigma / 255.0)
            for g in gains:
                out = next(iter(runner.run([(0, noisy, min(1.0, g * sigma / 255.0))])))[1]
                scores[g].append(_uint8_psnr(out, x))
        if progress:
            progress(f"grey image {k + 1} of {len(images)}")
    table = {g: round(float(np.mean(v)), 4) for g, v in scores.items()}
    best = max(table.values())
    return min(g for g, v in table.items() if v == best), table


def calibrate_auto_strength(model, output, *, pairs_dir=None, grey_dir=None, grey_limit=40, floors=AUTO_FLOORS,
                            progress=None):
    """``imageae train auto-strength``: ``model`` (a name or .keras path of a denoiser that takes a
    noise level) with its "auto" floor calibrated on the real noisy/clean pairs in ``pairs_dir``
    (:func:`calibrate_auto_floor`) and/or, for a colour model, its grey gain on the first
    ``grey_limit`` clean images of ``grey_dir`` (:func:`calibrate_grey_gain`), written to ``output``
    (.keras) with its card (the source card plus an ``auto_strength`` and/or a ``grey_strength``
    section with every candidate's mean PSNR). Returns the output path."""
    import imageae.models.denoiser  # noqa: F401  (registers the model class)
    from imageae import registry
    from imageae.data.io import find_images, read_image
    from imageae.training import hardware_summary

    if pairs_dir is None and grey_dir is None:
        raise ValueError("give --pairs (real noisy/clean pairs) and/or --grey-data (clean grey images)")
    output = _check_output(output)
    source = registry.resolve(model, job="denoise")
    if Path(output).resolve() == Path(source).resolve():
        raise ValueError(f"--output {output} is the model being calibrated: name a new .keras file")
    loaded = keras.saving.load_model(source)  # a fresh copy: the cached one stays as it is
    if not getattr(loaded, "noise_level", False):
        raise ValueError(f"{model} is a blind denoiser: it has no auto strength to calibrate "
                         f"(use a model that takes a noise level, e.g. denoise-colour)")
    try:
        card = json.loads(Path(source).with_suffix(".json").read_text())
    except (OSError, ValueError):
        card = {"name": output.stem, "job": "denoise"}
    card["name"] = output.stem
    if pairs_dir is not None:
        pairs = []
        for name, noisy_path, clean_path in find_pairs(pairs_dir):
            noisy, clean = read_image(noisy_path), read_image(clean_path)
            if noisy.pixels.shape != clean.pixels.shape:
                raise ValueError(f"{noisy_path.name} and {clean_path.name} differ in size or channels")
            if noisy.pixels.shape[-1] != loaded.channels:
                raise ValueError(f"{noisy_path.name} has {noisy.pixels.shape[-1]} channels; the model takes "
                                 f"{loaded.channels}")
            pairs.append((name, noisy.to_float(), clean.to_float()))
        floor, highpass, table, rows = calibrate_auto_floor(loaded, pairs, floors=floors, progress=progress)
        loaded.auto_level_floor = max(floor / 255.0, loaded.MIN_LEVEL)
        loaded.noise_highpass = float(highpass)
        card.setdefault("architecture", {}).update(auto_level_floor=loaded.auto_level_floor,
                                                   noise_highpass=loaded.noise_highpass)
        card["auto_strength"] = {
            "pairs": str(pairs_dir), "pair_count": len(pairs), "floor": floor, "noise_highpass": highpass,
            "mean_psnr_db_by_floor": {f"{f:g}": v for (f, h), v in table.items() if h == highpass},
            "mean_psnr_db_by_highpass": {f"{h:g}": v for (f, h), v in table.items() if f == floor},
            "mean_psnr_db": {f"floor {f:g}, highpass {h:g}": v for (f, h), v in table.items()},
            "mean_input_psnr_db": round(float(np.mean([r["input_psnr_db"] for r in rows])), 4),
            "median_estimate": round(float(np.median([r["estimate"] for r in rows])), 3),
            # each pair's PSNR along the chosen width and the chosen floor (the whole grid's means above)
            "per_pair": [{k: v for k, v in row.items() if not k.startswith("floor_")
                          or k.endswith(f"_highpass_{highpass:g}") or k.startswith(f"floor_{floor:g}_")}
                         for row in rows],
            "hardware": hardware_summary(),
            "method": "strength='auto' = max(estimate, floor), and the predicted noise's Gaussian average of width "
                      "noise_highpass pixels given back to the image; the (floor, highpass) with the best mean "
                      "PSNR (uint8) over the pairs",
        }
    if grey_dir is not None:
        paths = [path for path, _ in find_images([str(grey_dir)])][:grey_limit]
        if not paths:
            raise FileNotFoundError(f"no images in {grey_dir}")
        images = []
        for path in paths:
            x = read_image(path).to_float()
            images.append(x if x.shape[-1] == 1 else x[..., :3].mean(axis=-1, keepdims=True))
        gain, table = calibrate_grey_gain(loaded, images, progress=progress)
        loaded.grey_level_gain = gain
        card.setdefault("architecture", {})["grey_level_gain"] = gain
        card["grey_strength"] = {
            "images": f"{grey_dir} (first {len(images)} in sorted order)", "sigmas": list(GREY_SIGMAS), "gain": gain,
            "mean_psnr_db_by_gain": {f"{g:g}": v for g, v in table.items()}, "hardware": hardware_summary(),
            "method": "a set strength s on a grey image runs the colour model at gain * s; the gain with the best "
                      "mean PSNR (uint8) over the images at Gaussian noise of each sigma",
        }
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.partial.keras")
    loaded.save(partial)
    os.replace(partial, output)
    partial = output.with_name(f".{output.stem}.partial.json")
    partial.write_text(json.dumps(card, indent=2) + "\n")
    os.replace(partial, output.with_suffix(".json"))
    return output
