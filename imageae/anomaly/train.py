"""The anomaly detector's training recipe: the code that produced the shipped anomaly-elpv model.

``imageae train anomaly --data NORMAL_DIR ...`` calls :func:`train_anomaly`, and
``AnomalyDetector.fit(images)`` calls :func:`fit_autoencoder`. A :class:`ConvAutoencoder` is
trained on normal images only (each resized to the model's side) with a squared-error loss,
on the shared scaffolding of :mod:`imageae.training` (validation split, checkpoints, time
budget, model card, training curve); then :func:`imageae.anomaly.api.calibrate` sets the
decision threshold on the held-out normal images.
"""

import dataclasses
import json
import math

import keras
import numpy as np

from imageae.anomaly.scoring import DEFAULT_SCORING, calibrate, parse_scoring, to_model_input
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

# The automatic side stops at 64: a 128-pixel model costs 4x the CPU time per step, so the
# few-minute CPU budgets of the benchmarks would see a quarter of the steps (--size 128 is there).
MAX_AUTO_SIZE = 64


@dataclasses.dataclass
class AnomalyTrainConfig:
    """Everything that decides an anomaly-detector training run (saved in the model card)."""

    data: list
    output: str
    size: int = 0  # model side; 0: the images' median side rounded up to the model's stride, at most 64
    channels: int = 1
    code_size: int = 32
    filters: tuple = ()  # (): by size, see default_filters
    steps: int = 6000
    steps_per_epoch: int = 100
    batch_size: int = 64
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    warmup_steps: int = 0
    validation_fraction: float = 0.1
    false_positive_rate: float = 0.01
    scoring: str = DEFAULT_SCORING
    sparsity: str = "none"  # "none", "l1" or "kl" on the code
    sparsity_weight: float = 0.0
    sparsity_target: float = 0.05
    contractive_weight: float = 0.0
    patience_epochs: int = 15
    precision: str = "float32"
    checkpoint_dir: str = ""
    resume: bool = False
    seed: int = 0
    workers: int = 1
    max_seconds: float = 0.0  # stop after this much training time (0: no limit)
    tune_trials: int = 0  # --tune: KerasTuner trials before the final run (0: no search)

    @property
    def patch_size(self):  # RandomCrops cuts patch_size squares: here the whole resized image
        return self.size


def _levels(size):
    return 2 if size <= 32 else 3 if size <= 64 else 4


def default_filters(size):
    """Channels per stride-2 level for a side: 32-64 for digits (28 -> 7 x 7), 16-32-64 for 64."""
    return {2: (32, 64), 3: (16, 32, 64), 4: (16, 32, 64, 128)}[_levels(size)]


def auto_size(images):
    """The images' median short side, rounded up to a multiple of the model's stride, at most 64."""
    side = int(np.median([min(x.shape[:2]) for x in images]))
    side = max(16, min(MAX_AUTO_SIZE, side))
    stride = 2 ** _levels(side)
    return int(math.ceil(side / stride) * stride)


def _resolved(config, images):
    """``config`` with size and filters filled in (a copy); ValueError for a side off the stride."""
    size = config.size or auto_size(images)
    filters = tuple(config.filters) or default_filters(size)
    stride = 2 ** len(filters)
    if size % stride:
        raise ValueError(f"--size must be a multiple of {stride} (the stride of {len(filters)} levels), got {size}; "
                         f"try {int(math.ceil(size / stride) * stride)}")
    return dataclasses.replace(config, size=int(size), filters=filters)


def _check_options(config):
    parse_scoring(config.scoring)
    if config.sparsity not in ("none", "l1", "kl"):
        raise ValueError(f"--sparsity must be none, l1 or kl, got {config.sparsity!r}")
    if config.sparsity != "none" and not config.sparsity_weight > 0:
        raise ValueError(f"--sparsity {config.sparsity} needs a positive weight, got {config.sparsity_weight:g}")
    if not 0 < config.sparsity_target < 1:
        raise ValueError(f"the sparsity target must be between 0 and 1, got {config.sparsity_target:g}")
    if not config.contractive_weight >= 0:
        raise ValueError(f"--contractive must be 0 (off) or positive, got {config.contractive_weight:g}")
    if not 0.0 < config.false_positive_rate < 1.0:
        raise ValueError(f"--false-positive-rate must be between 0 and 1 (0.01 is 1 %), got {config.false_positive_rate:g}")
    if not 0.0 < config.validation_fraction < 1.0:
        raise ValueError(f"the validation fraction must be between 0 and 1, got {config.validation_fraction:g}")
    if config.channels not in (1, 3):
        raise ValueError(f"--channels must be 1 or 3, got {config.channels}")


def _identity(crop, rng):
    return crop


@_restoring_dtype_policy
def fit_autoencoder(images, config, *, checkpoint_dir, resuming=False, output=None, progress=False):
    """Train and calibrate a :class:`ConvAutoencoder` on normal float (H, W, C) images.

    Returns ``(model, info)``: the float32 model with its ``calibration`` set, and a dict with
    the run (``run``, from :func:`imageae.training._fit`), the resolved ``config`` and the
    image counts.
    """
    from imageae.models.autoencoder import ConvAutoencoder
    from imageae.runtime import set_precision

    if config.channels == 0:  # AnomalyDetector.fit: the first image's
        config = dataclasses.replace(config, channels=images[0].shape[-1] if images[0].ndim == 3 else 1)
    _check_options(config)
    _check_run_settings(config, "steps", "steps_per_epoch", "batch_size", "code_size")
    config = _resolved(config, images)
    policy = set_precision("float32" if config.precision == "auto" else config.precision)
    keras.utils.set_random_seed(config.seed)
    x = np.stack([to_model_input(image, config.size, config.channels) for image in images])
    train_order, val_order = _split_for_validation(len(x), config.validation_fraction, config.seed)
    x_train, x_val = x[train_order], x[val_order]

    initial_epoch = 0
    if resuming:
        model = keras.saving.load_model(checkpoint_dir / "last.keras")
        initial_epoch = json.loads((checkpoint_dir / "state.json").read_text())["epoch"]
        if (model.image_size, model.channels) != (config.size, config.channels):
            raise ValueError(f"--resume: the checkpoint is a {model.image_size}x{model.image_size}x{model.channels} "
                             f"model, this run asks for {config.size}x{config.size}x{config.channels}")
    else:
        model = ConvAutoencoder(
            image_size=config.size, channels=config.channels, code_size=config.code_size, filters=config.filters,
            sparsity=config.sparsity, sparsity_weight=config.sparsity_weight, sparsity_target=config.sparsity_target,
            contractive_weight=config.contractive_weight, seed=config.seed,
        )
        model.build((None, config.size, config.size, config.channels))
        model.compile(optimizer=keras.optimizers.Adam(_cosine_schedule(config)), loss="mse")
    data = RandomCrops(list(x_train), config, channels=config.channels, augment=_identity, paired=True)
    data.epoch = initial_epoch
    run = _fit(model, data, config=config, checkpoint_dir=checkpoint_dir, resuming=resuming,
               initial_epoch=initial_epoch, steps_per_epoch=config.steps_per_epoch, target=config.steps,
               monitor="val_loss", mode="min", output=output, progress=progress,
               validation_data=(x_val, x_val), validation_batch_size=config.batch_size)
    model = _best_float32(model, checkpoint_dir)
    recalibrate(model, images, config, x=x)
    return model, {"run": run, "config": config, "images": len(x_train), "validation_images": len(x_val),
                   "policy": policy, "train_indices": train_order, "validation_indices": val_order,
                   "x_val": x_val}


def recalibrate(model, images, config, *, x=None):
    """Set ``model.calibration`` as the recipe does after training: the same resize and
    training/validation split of ``images`` (the run's normal images, in the recipe's order) and
    ``config``'s scoring and false-positive rate. Also re-scores a trained detector with another
    ``config.scoring``, weights unchanged (``tools/recalibrate_anomaly_elpv.py``). Returns the
    calibration. ``x``: the images already resized (as :func:`fit_autoencoder` has them)."""
    if x is None:
        x = np.stack([to_model_input(image, config.size, config.channels) for image in images])
    train_order, val_order = _split_for_validation(len(x), config.validation_fraction, config.seed)
    model.calibration = calibrate(model, x[train_order], x[val_order], scoring=config.scoring,
                                  false_positive_rate=config.false_positive_rate)
    # The training images' own side: larger images are scored in windows of this size (tiling).
    model.calibration["source_side"] = int(np.median([min(image.shape[:2]) for image in images]))
    return model.calibration


# --tune's search space: small on purpose (each trial is a short training run on the CPU).
TUNE_SPACE = {
    "code_size": [16, 32, 64],
    "base_filters": [8, 16, 32],  # channels of the first level, doubled at each further level
    "learning_rate": [3e-4, 1e-3, 3e-3],
    "sparsity_weight": [0.0, 1e-4, 1e-3],  # L1 on the code (0: off)
    "contractive_weight": [0.0, 1e-3, 1e-2],
}


def _import_keras_tuner():
    try:
        import keras_tuner
    except ImportError as error:
        raise RuntimeError(f"--tune needs KerasTuner: pip install 'imageae[tune]' (keras-tuner; {error})") from None
    return keras_tuner


def _with_hyperparameters(config, values, size):
    levels = len(config.filters) if config.filters else _levels(size)
    return dataclasses.replace(
        config, code_size=int(values["code_size"]),
        filters=tuple(int(values["base_filters"]) * 2**i for i in range(levels)),
        learning_rate=float(values["learning_rate"]),
        sparsity="l1" if values["sparsity_weight"] > 0 else "none", sparsity_weight=float(values["sparsity_weight"]),
        contractive_weight=float(values["contractive_weight"]))


def validation_objective(model, x_val, *, seed=0):
    """How a trial is scored: the AUROC of its detector's scores (the run's ``scoring``) on the
    held-out normal images against synthetic anomalies made of them: turned copies where the
    calibration's ``scoring="auto"`` ranked on those (:func:`imageae.anomaly.scoring.synthetic_turned`),
    else copies with a drawn defect (:func:`imageae.anomaly.scoring.synthetic_defects`); and their
    mean squared error."""
    from imageae.anomaly.scoring import auroc, combine, raw_terms, synthetic_defects, synthetic_turned

    cal = model.calibration
    given = {"terms": tuple(cal["terms"]), "calibration": cal}
    turned = cal.get("scoring_choice", {}).get("ranked_on") == "turned"
    normal, _, _ = raw_terms(model, x_val, **given)
    anomalous, _, _ = raw_terms(model, (synthetic_turned if turned else synthetic_defects)(x_val, seed=seed), **given)

    return {"val_auroc_synthetic": auroc(combine(normal, cal), combine(anomalous, cal)),
            "val_mse": float(normal["l2"].mean())}


def tune_hyperparameters(images, config, trials, *, directory, progress=False):
    """A KerasTuner random search of :data:`TUNE_SPACE` on ``images``: ``trials`` short runs of
    the recipe, each with ``config``'s steps and time budget split over twice the trials (half
    of the budget is left for the final run), scored on the run's validation split by
    :func:`validation_objective` (higher synthetic-anomaly AUROC wins; lower MSE breaks ties).

    Returns ``(chosen, table)``: the winning values (a dict over :data:`TUNE_SPACE`) and one row
    per trial (its values, objective, steps and seconds), best first.
    """
    import time
    from pathlib import Path

    keras_tuner = _import_keras_tuner()
    size = config.size or auto_size(images)
    share = 2 * trials
    trial_config = dataclasses.replace(
        config, size=size, steps=max(1, config.steps // share),
        steps_per_epoch=max(1, min(config.steps_per_epoch, config.steps // share)),
        max_seconds=config.max_seconds / share if config.max_seconds else 0.0)
    rows = []

    class _Search(keras_tuner.engine.base_tuner.BaseTuner):
        def run_trial(self, trial, *args, **kwargs):
            values = {name: trial.hyperparameters.get(name) for name in TUNE_SPACE}
            run_config = _with_hyperparameters(trial_config, values, size)
            start = time.perf_counter()
            model, info = fit_autoencoder(images, run_config, checkpoint_dir=Path(directory) / f"trial-{trial.trial_id}",
                                          progress=progress)
            result = validation_objective(model, info["x_val"], seed=config.seed)
            rows.append({"trial": trial.trial_id, **values, **{k: round(v, 5) for k, v in result.items()},
                         "steps": info["run"]["stopped"]["steps_done"],
                         "seconds": round(time.perf_counter() - start, 1)})
            # One number for the oracle: the AUROC, with the MSE (well under 1e-3 of it) breaking ties.
            return {"objective": result["val_auroc_synthetic"] - 1e-3 * min(result["val_mse"], 1.0)}

    space = keras_tuner.HyperParameters()
    for name, choices in TUNE_SPACE.items():
        space.Choice(name, choices)
    oracle = keras_tuner.oracles.RandomSearchOracle(
        objective=keras_tuner.Objective("objective", direction="max"), max_trials=trials, seed=config.seed,
        hyperparameters=space, max_consecutive_failed_trials=1)
    search = _Search(oracle, directory=str(directory), project_name="search", overwrite=True)
    print(f"--tune: {trials} trial(s) of {trial_config.steps} steps"
          + (f" or {trial_config.max_seconds / 60:.2g} min" if trial_config.max_seconds else "")
          + " each, scored on the validation split", flush=True)
    search.search(verbose=0)
    if not rows:
        raise RuntimeError("--tune: no trial finished (see the messages above)")
    rows.sort(key=lambda r: (-r["val_auroc_synthetic"], r["val_mse"]))
    chosen = {name: rows[0][name] for name in TUNE_SPACE}
    return chosen, rows


def train_anomaly(config, *, progress=True, licence=None):
    """Train a detector as ``config`` says on the images under ``config.data``; write the
    .keras model (calibration included), its card and its training curve. Returns the path."""
    output = _check_output(config.output)
    _check_options(config)
    checkpoint_dir, resuming = _open_checkpoint_dir(config, output)
    if config.tune_trials:
        _import_keras_tuner()  # before loading images: say at once that the extra is missing
        if resuming:
            raise ValueError("--tune cannot be combined with --resume: resume the final run without --tune, with "
                             "the chosen values from the model card's 'tuning' section")
    images = load_training_images(config.data, config.channels)
    if len(images) < 2:
        raise ValueError(f"found {len(images)} image in {', '.join(map(str, config.data))}: an anomaly detector "
                         "needs at least 2 normal images (some are held out to set the threshold), ideally hundreds")
    tuning = None
    if config.tune_trials:
        import time

        start = time.perf_counter()
        chosen, table = tune_hyperparameters(images, config, config.tune_trials, directory=checkpoint_dir / "tune",
                                             progress=progress)
        spent = time.perf_counter() - start
        size = config.size or auto_size(images)
        config = dataclasses.replace(_with_hyperparameters(config, chosen, size),
                                     max_seconds=round(max(60.0, config.max_seconds - spent)) if config.max_seconds else 0.0)
        tuning = {"trials": config.tune_trials, "chosen": chosen, "search_seconds": round(spent, 1),
                  "space": TUNE_SPACE, "method": "KerasTuner RandomSearchOracle (keras-tuner), seeded with --seed",
                  "objective": "AUROC of the detector's score on the validation split's normal images against "
                               "synthetic anomalies made of them (turned copies where the auto scoring ranked on "
                               "those, else copies with one drawn line or ellipse), higher is better; "
                               "validation MSE breaks ties",
                  "budget": "each trial: the steps and --max-minutes split over 2 x trials; the final run: the rest "
                            "(at least 1 min)",
                  "table": table}
        print("--tune chose " + ", ".join(f"{k}={v:g}" for k, v in chosen.items()), flush=True)
    model, info = fit_autoencoder(images, config, checkpoint_dir=checkpoint_dir, resuming=resuming, output=output,
                                  progress=progress)
    config, run, cal = info["config"], info["run"], model.calibration
    choice = cal.get("scoring_choice")
    if choice:
        kinds = {"turned": "turned or mirrored copies", "drawn": "copies with a drawn line or blot"}
        how = (f"ranked on {kinds[choice['ranked_on']]} of the held-out images, AUROC "
               f"{choice['synthetic_auroc_top'][cal['scoring']]:.3f}" if "ranked_on" in choice else choice["method"])
        print(f"scoring auto chose {cal['scoring']} ({how}); --scoring TERMS sets it", flush=True)
    # The card's own calibration section leaves out the arrays (the latent Gaussian, the per-pixel
    # error statistics); its architecture section holds the whole calibration, as the model does
    # (imageae.anomaly.litert recognises the shipped detector by it).
    brief = {k: v for k, v in cal.items() if k not in ("latent", "pixel_error")}
    _ship(model, output, checkpoint_dir, job="anomaly", curve_metric="val_loss", card={
        "training": {
            "data": [str(d) for d in config.data],
            "images": info["images"],
            "validation_images": info["validation_images"],
            "image_size": config.size,
            "steps": config.steps,
            "steps_done": run["stopped"]["steps_done"],
            "stopped": run["stopped"],
            "kept_epoch": run["kept"],
            "batch_size": config.batch_size,
            "loss": "mean squared error of the reconstruction (pixels 0..1)"
                    + (f" + {config.sparsity} sparsity x {config.sparsity_weight:g}" if config.sparsity != "none" else "")
                    + (f" + contractive x {config.contractive_weight:g}" if config.contractive_weight else ""),
            "precision_policy": info["policy"],
            "wall_time_seconds": round(run["wall"] + run["previous_wall"], 1),
            "config": _plain(dataclasses.asdict(config)),
        },
        "calibration": brief,
        "metrics": {
            "validation": f"{info['validation_images']} held-out normal images: the threshold is the "
                          f"{100 * (1 - cal['false_positive_rate']):g}th percentile of their scores",
            "validation_scores": cal["validation_scores"],
        },
        **({"licence": licence} if licence else {}),
        **({"tuning": tuning} if tuning else {}),
    })
    return _finish(output, run)
