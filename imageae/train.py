"""Training recipes: the code that produced the shipped weights.

``imageae train denoiser --data DIR ...`` calls :func:`train_denoiser`. Patches are cut and
noised in NumPy inside a :class:`keras.utils.PyDataset`, so the same recipe runs on the
TensorFlow and the JAX backend.
"""

import dataclasses
import json
import math
import os
import platform
import time
from pathlib import Path

import keras
import numpy as np

from imageae.data.io import find_images, read_image
from imageae.metrics import psnr_metric
from imageae.runtime import constructor_arguments, rebuilt


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
    validation_fraction: float = 0.05
    validation_sigmas: tuple = (15.0, 25.0, 50.0)
    patience_epochs: int = 10
    precision: str = "auto"
    checkpoint_dir: str = ""
    resume: bool = False
    seed: int = 0
    workers: int = 1  # threads cutting patches
    max_seconds: float = 0.0  # stop after this much training time (0: no limit)


def load_training_images(inputs, channels, *, uint8=False, min_side=0):
    """Every image under ``inputs`` as float32 (H, W, channels) arrays on the 0..1 scale, or
    with ``uint8`` as 8-bit arrays (400 BSDS500 photos: 185 MB instead of 740 MB).

    Files that cannot be read, and images with a side under ``min_side`` pixels, are left out
    and named on the console; ValueError if no image is left (FileNotFoundError for an input
    that does not exist).
    """
    from imageae.data.io import ImageReadError

    images, left_out = [], []
    for path, _ in find_images(inputs):
        try:
            decoded = read_image(path)
        except ImageReadError as error:
            left_out.append(f"{path} ({error})")
            continue
        if min(decoded.pixels.shape[:2]) < min_side:
            left_out.append(f"{path} ({decoded.pixels.shape[1]}x{decoded.pixels.shape[0]}, under {min_side} pixels)")
            continue
        x = decoded.to_float()
        if channels == 1 and x.shape[-1] == 3:
            x = (x @ np.array([0.299, 0.587, 0.114], np.float32))[..., None]
        elif channels == 3 and x.shape[-1] == 1:
            x = np.repeat(x, 3, axis=-1)
        images.append(np.round(x * 255.0).astype(np.uint8) if uint8 else x)
    where = ", ".join(map(str, [inputs] if isinstance(inputs, (str, os.PathLike)) else inputs))
    if left_out:
        shown = "\n  ".join(left_out[:10]) + (f"\n  ... and {len(left_out) - 10} more" if len(left_out) > 10 else "")
        print(f"left out {len(left_out)} of {len(left_out) + len(images)} images:\n  {shown}", flush=True)
    if not images and left_out and min_side:
        raise ValueError(f"none of the {len(left_out)} images in {where} can be used: each is unreadable or has a "
                         f"side under {min_side} pixels (the patch size); lower --patch-size or add larger images")
    if not images:
        raise ValueError(f"no images found in {where}" + (f" that can be read ({len(left_out)} cannot)" if left_out else ""))
    return images


def random_dihedral(x, rng):
    """One of the 8 flips/rotations of an (H, W, C) patch."""
    x = np.rot90(x, int(rng.integers(4)))
    return x[:, ::-1] if rng.integers(2) else x


class RandomCrops(keras.utils.PyDataset):
    """``steps_per_epoch`` batches of random square crops from in-memory images; batch ``i`` of
    epoch ``e`` is seeded by (seed, e, i), so a resumed run sees the same data.

    ``augment(crop, rng)`` transforms each crop; uint8 images are scaled to 0..1. Yields
    ``(x, x)`` when ``paired`` (a target equal to the input, as the denoiser's wrapper adds its
    noise on the device) and ``(x,)`` otherwise. ``scale=False`` keeps uint8 images as uint8
    batches, for a model that scales them on the device: a quarter of the bytes to cut, copy
    and transfer (at 16 x 256 x 256 float32 crops the threads feeding a GPU were the limit).
    """

    def __init__(self, images, config, *, channels, augment, paired, scale=True):
        super().__init__(workers=config.workers, use_multiprocessing=False)
        self.images, self.config, self.channels = images, config, channels
        self.augment, self.paired, self.scale = augment, paired, scale
        self.epoch = 0

    def __len__(self):
        return self.config.steps_per_epoch

    def on_epoch_end(self):
        self.epoch += 1

    def __getitem__(self, index):
        config = self.config
        rng = np.random.default_rng([config.seed, self.epoch, index])
        p = config.patch_size
        dtype = np.uint8 if not self.scale and self.images[0].dtype == np.uint8 else np.float32
        x = np.empty((config.batch_size, p, p, self.channels), dtype)
        for k in range(config.batch_size):
            img = self.images[int(rng.integers(len(self.images)))]
            top = int(rng.integers(img.shape[0] - p + 1))
            left = int(rng.integers(img.shape[1] - p + 1))
            crop = self.augment(img[top : top + p, left : left + p], rng)
            x[k] = crop / np.float32(255.0) if crop.dtype == np.uint8 and dtype != np.uint8 else crop
        return (x, x) if self.paired else (x,)


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


def _cosine_schedule(config):

    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if config.warmup_steps else config.learning_rate,
        decay_steps=max(1, config.steps - config.warmup_steps),
        alpha=config.min_learning_rate / config.learning_rate,
        warmup_target=config.learning_rate if config.warmup_steps else None,
        warmup_steps=config.warmup_steps,
    )


def hardware_summary():
    """A short description of the machine, for model cards."""
    from imageae.runtime import describe_device

    return {
        "device": describe_device(),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }


def _restoring_dtype_policy(function):
    """Training sets the process-wide Keras dtype policy; put the caller's back afterwards."""
    import functools

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        previous = keras.config.dtype_policy()
        try:
            return function(*args, **kwargs)
        finally:
            keras.config.set_dtype_policy(previous)

    return wrapper


@_restoring_dtype_policy
def train_denoiser(config, *, progress=True):
    """Train a denoiser as ``config`` says; write the .keras model, a model card and logs.

    Returns the path of the written model.
    """

    from imageae.models.denoiser import NoiseTrainingWrapper, build_denoiser
    from imageae.runtime import set_precision

    _check_run_settings(config, "steps", "steps_per_epoch", "batch_size", "patch_size")
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
            denoiser = build_denoiser(config.channels, config.filters, config.blocks_per_level)
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
    train_data = _make_patch_dataset(train_images, config, validation=False)
    val_data = _make_patch_dataset(val_images, config, validation=True, stride=stride)
    train_data.epoch = initial_epoch

    run = _fit(model, train_data, config=config, checkpoint_dir=checkpoint_dir, resuming=resuming,
               initial_epoch=initial_epoch, steps_per_epoch=config.steps_per_epoch, target=config.steps,
               monitor="val_psnr_metric", mode="max", output=output, progress=progress,
               validation_data=val_data, validation_batch_size=8)
    model = _best_float32(model, checkpoint_dir, part=lambda wrapper: wrapper.denoiser)
    metrics = _denoiser_validation_metrics(model, *val_data, config.validation_sigmas)
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
            "noise": f"additive white Gaussian, sigma uniform in [{config.sigma_min}, {config.sigma_max}] (0..255)",
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


def _denoiser_validation_metrics(denoiser, noisy, clean, sigmas):
    """Per validation sigma, the mean PSNR (dB, float, output clipped to 0..1 as the training
    metric does) of the denoised and of the noisy validation crops; keys are the sigmas."""
    out = np.concatenate([np.asarray(denoiser(noisy[i : i + 8])) for i in range(0, len(noisy), 8)])

    def psnr(x, reference):
        mse = np.mean((np.clip(x, 0.0, 1.0) - reference) ** 2, axis=(1, 2, 3))
        return round(float(np.mean(-10.0 * np.log10(np.maximum(mse, 1e-10)))), 3)

    denoised, inputs = {}, {}
    for k, sigma in enumerate(sigmas):
        index = slice(k, None, len(sigmas))  # the crops are stored image by image, each at every sigma
        denoised[f"{sigma:g}"] = psnr(out[index], clean[index])
        inputs[f"{sigma:g}"] = psnr(noisy[index], clean[index])
    return {"validation_psnr_db_by_sigma": denoised, "validation_noisy_psnr_db_by_sigma": inputs}


def _finish(output, run):
    """The written model's path, or KeyboardInterrupt once it is written if Ctrl-C ended the run."""
    if run["interrupted"]:
        print(f"wrote {output} from the kept epoch; interrupted", flush=True)
        raise KeyboardInterrupt
    return output


def _plain(mapping):
    """Tuples as lists, for JSON model cards."""
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in mapping.items()}


def _best_float32(model, checkpoint_dir, part=None):
    """The best checkpoint (if any) as the shipped model: float32, no optimizer state;
    inference picks its own precision per device. ``part`` picks the shipped sub-model."""
    from imageae.runtime import with_precision

    best = Path(checkpoint_dir) / "best.keras"
    if best.exists():
        model = keras.saving.load_model(best)
    return with_precision(part(model) if part else model, "float32", copy=True)


def _ship(model, output, checkpoint_dir, *, job, curve_metric, card, architecture=None):
    """Write the model, its training curve and its card (name, job, architecture, ``card``'s
    sections, hardware) next to ``output``; returns ``output``."""
    output.parent.mkdir(parents=True, exist_ok=True)
    partial = output.with_name(f".{output.stem}.partial.keras")  # a Ctrl-C while saving leaves no half model
    model.save(partial)
    os.replace(partial, output)
    plot_history(Path(checkpoint_dir) / "history.csv", output.with_suffix(".curve.png"), metric=curve_metric)
    full = {
        "name": output.stem,
        "job": job,
        "architecture": {
            "class": type(model).__name__,
            **_plain(constructor_arguments(model)),
            **(architecture or {}),
            "parameters": int(model.count_params()),
        },
        **card,
        "hardware": hardware_summary(),
    }
    partial = output.with_name(f".{output.stem}.partial.json")
    partial.write_text(json.dumps(full, indent=2) + "\n")
    os.replace(partial, output.with_suffix(".json"))
    return output


def _tensorboard(checkpoint_dir):
    """TensorBoard logs where they can be written: TensorFlow backend and the tensorboard
    package installed (TensorFlow 2.21 no longer requires it; imageae's install does)."""
    import importlib.util

    if keras.backend.backend() != "tensorflow" or importlib.util.find_spec("tensorboard") is None:
        return []
    return [keras.callbacks.TensorBoard(log_dir=str(Path(checkpoint_dir) / "tensorboard"))]


class SaveState(keras.callbacks.Callback):
    """After every epoch: the model with its optimizer as last.keras (written atomically) and
    the epoch and training time so far in state.json, so that --resume can continue."""

    def __init__(self, checkpoint_dir, previous_wall=0.0):
        super().__init__()
        self.checkpoint_dir = Path(checkpoint_dir)
        self.previous_wall = previous_wall

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_epoch_end(self, epoch, logs=None):
        _save_last(self.model, self.checkpoint_dir, epoch, self.previous_wall + time.time() - self.start,
                   steps=_steps_done(self.model))


def _save_last(model, checkpoint_dir, epoch, wall_seconds, *, steps):
    """``model`` as last.keras (written atomically) and state.json (epochs begun, optimizer
    steps and training time so far; an epoch cut short by a time budget counts as begun)."""
    checkpoint_dir = Path(checkpoint_dir)
    tmp = checkpoint_dir / "last.tmp.keras"
    model.save(tmp)
    os.replace(tmp, checkpoint_dir / "last.keras")
    state = {"epoch": epoch + 1, "steps": int(steps), "wall_time_seconds": wall_seconds}
    (checkpoint_dir / "state.json").write_text(json.dumps(state))


def _save_sample_sheet(model, latents, checkpoint_dir, epoch):
    """The VAE's decodings of ``latents`` as one contact sheet, samples_epochNNN.png."""
    from PIL import Image

    from imageae.generation import contact_sheet, decode_latents

    sheet = contact_sheet(decode_latents(model, latents), columns=8)
    Image.fromarray(sheet[..., 0] if sheet.shape[-1] == 1 else sheet).save(
        Path(checkpoint_dir) / f"samples_epoch{epoch + 1:03d}.png")


class StepBudget(keras.callbacks.Callback):
    """Counts the optimizer steps this run takes and stops training once the run's total,
    ``done`` steps of earlier runs included, reaches ``target``: a resumed run trains exactly
    the steps a time cut or Ctrl-C left, however far into an epoch the cut came."""

    def __init__(self, done, target):
        super().__init__()
        self.done, self.target, self.steps = int(done), int(target), 0

    @property
    def total(self):
        return self.done + self.steps

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.total >= self.target:
            self.model.stop_training = True


def _steps_done(model):
    """The optimizer steps a (resumed) model has taken: 0 for a freshly compiled one."""
    optimizer = getattr(model, "optimizer", None)
    return int(keras.ops.convert_to_numpy(optimizer.iterations)) if optimizer is not None else 0


def _checkpointing_callbacks(config, checkpoint_dir, previous_wall, monitor, mode, *, resuming=None):
    """What every recipe does each epoch: last/best checkpoints (the best-so-far carried over a
    resume), early stopping on ``monitor``, a CSV history, TensorBoard, the time budget."""
    checkpoint_dir = Path(checkpoint_dir)
    resuming = config.resume if resuming is None else resuming
    best = _best_so_far(checkpoint_dir, monitor, max if mode == "max" else min) if resuming else None
    return [
        SaveState(checkpoint_dir, previous_wall),
        keras.callbacks.ModelCheckpoint(checkpoint_dir / "best.keras", monitor=monitor, mode=mode,
                                        save_best_only=True, initial_value_threshold=best),
        keras.callbacks.EarlyStopping(monitor=monitor, mode=mode, patience=config.patience_epochs,
                                      restore_best_weights=True),
        keras.callbacks.CSVLogger(checkpoint_dir / "history.csv", append=resuming),
        *_tensorboard(checkpoint_dir),
        *([TimeBudget(config.max_seconds)] if config.max_seconds else []),
    ]


class TimeBudget(keras.callbacks.Callback):
    """Stops training once ``seconds`` of training time have passed in this run (for leased
    machines); ``reached`` says whether it did."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = float(seconds)
        self.reached = False

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if time.time() - self.start > self.seconds:
            self.reached = True
            self.model.stop_training = True


def _check_output(output):
    """``output`` as a Path, refused before any training if the run could not write it at its end."""
    output = Path(output)
    if output.suffix != ".keras":
        raise ValueError(f"--output must name a .keras file, got {str(output)!r}")
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder: name the .keras file to write in it")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the output folder {output.parent}: {error.strerror or error}") from None
    return output


def _check_run_settings(config, *counts):
    """Refuse settings no run can follow: counts (``steps``, ``batch_size`` ...) under 1 and a
    time budget that is negative or not a number."""
    for name in counts:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    if not config.max_seconds >= 0:
        raise ValueError(f"--max-minutes must be 0 (no limit) or positive, got {config.max_seconds / 60:g}")


def _open_checkpoint_dir(config, output):
    """The run's checkpoint folder (created) and whether the run resumes from it. A fresh run
    removes an older run's best.keras there, so that only this run's epochs can be kept."""
    checkpoint_dir = Path(config.checkpoint_dir or output.with_suffix("")).resolve()
    try:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise ValueError(f"cannot create the checkpoint folder {checkpoint_dir}: {error.strerror or error}") from None
    resuming = bool(config.resume) and (checkpoint_dir / "last.keras").exists()
    if config.resume and not resuming:
        print(f"--resume: no checkpoint (last.keras) in {checkpoint_dir}, so this is a new run", flush=True)
    if not resuming:
        (checkpoint_dir / "best.keras").unlink(missing_ok=True)
    return checkpoint_dir, resuming


def _nothing_left(checkpoint_dir, done, target, output):
    return ValueError(
        f"nothing to resume: the checkpoint in {checkpoint_dir} has already trained {done} of the {target} steps "
        f"asked for (its run wrote {output}); to train further, start a new run with --init {output}")


def _split_for_validation(count, fraction, seed):
    """Indices of the training and the validation images (a seeded shuffle with ``fraction``
    held out, at least one), said before training starts. One image serves as both."""
    order = np.random.default_rng(seed).permutation(count)
    if count == 1:
        print("training on 1 image and validating on that same image: with one image nothing can be held out, "
              "so the validation metrics are not those of unseen images (add images for a fair measure)", flush=True)
        return order, order
    n_val = min(count - 1, max(1, int(round(count * fraction))))
    print(f"training on {count - n_val} images, validating on {n_val} ({100 * n_val / count:.3g} %)", flush=True)
    return order[n_val:], order[:n_val]


def _kept_epoch(checkpoint_dir, monitor, mode):
    """The epoch whose weights best.keras holds: the first with the best ``monitor`` in
    history.csv (ModelCheckpoint saves on strict improvements only); None before any epoch."""
    import csv

    try:
        rows = list(csv.DictReader(open(Path(checkpoint_dir) / "history.csv")))
    except OSError:
        return None
    values = []
    for row in rows:
        try:
            value = float(row[monitor])
        except (KeyError, TypeError, ValueError):
            continue
        if math.isfinite(value):
            values.append((value, int(row["epoch"]) + 1))
    if not values:
        return None
    value, epoch = (max if mode == "max" else min)(values, key=lambda v: v[0])
    return {"epoch": epoch, "metric": monitor, "value": round(value, 4), "epochs": len(rows),
            "rule": f"the epoch with the {'highest' if mode == 'max' else 'lowest'} {monitor}"}


def _stop_reason(*, interrupted, done, target, this_run, early_stopped, time_budget, config, monitor, unit="steps"):
    """Why a run ended, for the console and the model card."""
    of = f"{done} of {target} {unit}"
    resume = f"; `--resume` (same --checkpoint-dir) trains the remaining {target - done}"
    if interrupted:
        reason, message = "interrupted", f"interrupted (Ctrl-C) after {of}{resume}"
    elif done >= target:
        reason, message = f"all {unit} done", f"all {target} {unit} done"
    elif early_stopped:
        reason, message = "early stop", (f"early stop after {config.patience_epochs} epochs without improvement "
                                         f"of {monitor}, after {of}")
    elif time_budget:
        reason, message = "time budget", f"time budget of {config.max_seconds / 60:g} min reached after {of}{resume}"
    else:
        reason, message = "stopped", f"stopped after {of}"
    return {"reason": reason, "message": message, f"{unit}_done": done, f"{unit}_requested": target,
            f"{unit}_this_run": this_run}


def _say_how_it_ended(stopped, kept):
    """One line: why training stopped and which epoch the model is."""
    if kept is None:
        print(f"training stopped: {stopped['message']}", flush=True)
        return
    if kept.get("value") is None:
        print(f"training stopped: {stopped['message']}; kept epoch {kept['epoch']}: {kept['rule']}", flush=True)
        return
    print(f"training stopped: {stopped['message']}; kept epoch {kept['epoch']} of {kept['epochs']}, "
          f"{kept['rule']} ({kept['value']:.4g})", flush=True)


def _fit(model, data, *, config, checkpoint_dir, resuming, initial_epoch, steps_per_epoch, target, monitor, mode,
         output, progress, callbacks=(), **fit_arguments):
    """``model.fit`` until ``target`` optimizer steps in all (a resumed checkpoint's included),
    with the checkpointing callbacks. Ctrl-C ends training as the time budget does, so that the
    best epoch so far can be written; the caller raises KeyboardInterrupt after writing it.

    Returns a dict: ``stopped`` (why, :func:`_stop_reason`), ``kept`` (:func:`_kept_epoch`),
    ``interrupted``, ``wall`` (this run's seconds) and ``previous_wall`` (earlier runs')."""
    checkpoint_dir = Path(checkpoint_dir)
    done = _steps_done(model) if resuming else 0
    if done >= target:
        raise _nothing_left(checkpoint_dir, done, target, output)
    if resuming:
        print(f"resuming from {checkpoint_dir / 'last.keras'} after epoch {initial_epoch} ({done} of {target} steps)",
              flush=True)
    previous_wall = _previous_wall_time(checkpoint_dir) if resuming else 0.0
    budget = StepBudget(done, target)
    standard = _checkpointing_callbacks(config, checkpoint_dir, previous_wall, monitor, mode, resuming=resuming)
    early = next(c for c in standard if isinstance(c, keras.callbacks.EarlyStopping))
    clock = next((c for c in standard if isinstance(c, TimeBudget)), None)
    start = time.time()
    interrupted = False
    try:
        model.fit(data, epochs=initial_epoch + math.ceil((target - done) / steps_per_epoch), initial_epoch=initial_epoch,
                  callbacks=[budget, *callbacks, *standard], verbose=1 if progress else 2, **fit_arguments)
    except KeyboardInterrupt:
        interrupted = True
    wall = time.time() - start
    stopped = _stop_reason(interrupted=interrupted, done=budget.total, target=target, this_run=budget.steps,
                           early_stopped=early.stopped_epoch > 0, time_budget=clock is not None and clock.reached,
                           config=config, monitor=monitor)
    kept = _kept_epoch(checkpoint_dir, monitor, mode) if (checkpoint_dir / "best.keras").exists() else None
    if interrupted and kept is None:
        print(f"training {stopped['message']}, before its first epoch ended: no model written", flush=True)
        raise KeyboardInterrupt
    _say_how_it_ended(stopped, kept)
    if interrupted:
        print("writing the kept epoch's model (Ctrl-C again abandons it; the checkpoints stay)", flush=True)
    return {"stopped": stopped, "kept": kept, "interrupted": interrupted, "wall": wall, "previous_wall": previous_wall}


def _best_so_far(checkpoint_dir, key, pick):
    """The best ``key`` an interrupted run reached (from history.csv), so that a resumed run's
    first epoch does not replace a better best.keras."""
    import csv

    try:
        values = [float(row[key]) for row in csv.DictReader(open(Path(checkpoint_dir) / "history.csv"))]
    except (OSError, KeyError, ValueError):
        return None
    return pick(values) if values else None


def _previous_wall_time(checkpoint_dir):
    """Training time spent by earlier runs of a resumed training (from its state.json)."""
    try:
        return float(json.loads((Path(checkpoint_dir) / "state.json").read_text()).get("wall_time_seconds", 0.0))
    except (OSError, ValueError):
        return 0.0


def plot_history(csv_path, png_path, metric=None):
    """Plot loss and a validation metric (default: the validation PSNR) per epoch from a
    Keras CSVLogger file."""
    import csv

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(csv_path)))
    if not rows:
        return
    epochs = [int(r["epoch"]) + 1 for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, [float(r["loss"]) for r in rows], label="train")
    if "val_loss" in rows[0]:
        ax1.plot(epochs, [float(r["val_loss"]) for r in rows], label="validation")
    ax1.set_yscale("log")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss")
    ax1.legend()
    key = metric or next((k for k in rows[0] if k.startswith("val_") and "psnr" in k), None)
    if key in rows[0]:
        ax2.plot(epochs, [float(r[key]) for r in rows])
        ax2.set_xlabel("epoch")
        ax2.set_ylabel("validation PSNR (dB)" if "psnr" in key else key)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)


@dataclasses.dataclass
class VAETrainConfig:
    """Everything that decides a VAE training run (saved in the model card)."""

    data: list
    output: str
    size: int = 28
    channels: int = 1
    crop: int = 0  # centre-crop side in pixels before resizing; 0 = largest centred square
    latent_dim: int = 16
    filters: tuple = (32, 64)
    likelihood: str = "bernoulli"
    gaussian_sigma: float = 0.1
    beta: float = 1.0
    kl_warmup_steps: int = 2000
    mixture_components: object = "auto"  # or a count; auto: the size the validation latents like best (select_mixture)
    flip: bool = False  # random horizontal flips (faces yes, digits no)
    epochs: int = 30
    batch_size: int = 128
    learning_rate: float = 1e-3
    validation_fraction: float = 0.05
    patience_epochs: int = 8
    precision: str = "auto"
    checkpoint_dir: str = ""
    resume: bool = False
    init: str = ""  # a generate model name or .keras path to fine-tune (same size, channels, latent, filters)
    seed: int = 0
    max_seconds: float = 0.0  # stop after this much training time (0: no limit)
    # > 0: sharpen the decoder of the --init VAE with a GAN loss of this weight (relative to the
    # reconstruction's gradient); the encoder and the latent mixture stay as they are
    adversarial_weight: float = 0.0
    discriminator_width: int = 32
    ema_decay: float = 0.999


@_restoring_dtype_policy
def train_vae(config, *, progress=True):
    """Train a :class:`~imageae.models.vae.ConvVAE` as ``config`` says, fit its latent mixture,
    and write the .keras model, a model card, a training curve and sample grids."""
    from imageae.data.arrays import load_image_array
    from imageae.generation import encode_images, fit_mixture, select_mixture
    from imageae.models.vae import build_vae
    from imageae.runtime import set_precision

    _check_run_settings(config, "epochs", "batch_size")
    policy = set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    output = _check_output(config.output)
    checkpoint_dir, resuming = _open_checkpoint_dir(config, output)
    last = checkpoint_dir / "last.keras"
    shape = {"image_size": config.size, "channels": config.channels, "latent_dim": config.latent_dim,
             "filters": tuple(config.filters)}
    source = None
    if config.adversarial_weight > 0 and not (config.init or resuming):
        raise ValueError("--adversarial-weight sharpens the decoder of a trained VAE: give it with --init")
    if config.adversarial_weight > 0 and keras.backend.backend() != "tensorflow":
        raise ValueError("--adversarial-weight trains on the TensorFlow backend only (unset KERAS_BACKEND)")
    if config.init and not resuming:  # checked before the images are read
        from imageae.registry import load_model

        source = load_model(config.init, job="generate")
        for key, value in shape.items():
            if getattr(source, key) != value:
                raise ValueError(f"--init model has {key.replace('image_', '')}={getattr(source, key)}, "
                                 f"the config says {value}: make them agree")

    images = load_image_array(config.data, size=config.size, channels=config.channels, crop=config.crop or None)
    train_order, val_order = _split_for_validation(len(images), config.validation_fraction, config.seed)
    val = images[val_order].astype(np.float32) / 255.0
    train = images[train_order]
    if len(train) < config.batch_size:
        raise ValueError(
            f"{len(train)} training image(s) ({len(images)} found, {len(images) - len(train)} held out for validation) "
            f"are fewer than "
            f"one batch of {config.batch_size}: lower --batch-size to at most {max(1, len(train))} or add images")

    class Batches(keras.utils.PyDataset):
        """Shuffled batches, flipped at random when asked; seeded by (seed, epoch)."""

        def __init__(self):
            super().__init__(workers=1, use_multiprocessing=False)
            self.epoch = 0
            self.order = np.arange(len(train))

        def __len__(self):
            return len(train) // config.batch_size

        def on_epoch_end(self):
            self.epoch += 1
            self.order = np.random.default_rng([config.seed, self.epoch]).permutation(len(train))

        def __getitem__(self, index):
            idx = self.order[index * config.batch_size : (index + 1) * config.batch_size]
            x = train[idx].astype(np.float32) / 255.0
            if config.flip:
                flips = np.random.default_rng([config.seed, self.epoch, index]).random(len(x)) < 0.5
                x[flips] = x[flips, :, ::-1]
            return (x,)

    data = Batches()
    initial_epoch = 0
    if resuming:
        model = keras.saving.load_model(last)
        if config.adversarial_weight > 0:  # its last.keras is a float32 snapshot
            model = _rebuilt_vae(model, policy)
        initial_epoch = json.loads((checkpoint_dir / "state.json").read_text())["epoch"]
        data.epoch = initial_epoch
    else:
        loss = {"likelihood": config.likelihood, "gaussian_sigma": config.gaussian_sigma, "beta": config.beta,
                "kl_warmup_steps": config.kl_warmup_steps, "seed": config.seed,
                "mixture_components": 1 if config.mixture_components == "auto" else config.mixture_components}
        if config.adversarial_weight > 0:  # the encoder is not trained: its latents keep their mixture
            loss["mixture_components"] = source.mixture_components
        if source is not None:
            # Fine-tuning: the init model's weights (its step counter too, so that a finished KL
            # warm-up is not run again) under this config's loss settings; the latent mixture is
            # refitted after training anyway.
            model = _rebuilt_vae(source, policy, **loss)
        else:
            model = build_vae(**shape, **loss)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, clipnorm=10.0))

    grid_z = np.random.default_rng(1234).standard_normal((64, model.latent_dim)).astype(np.float32)

    class SampleGrid(keras.callbacks.Callback):
        """A sheet of 64 decoded prior samples after every epoch, to watch training."""

        def on_epoch_end(self, epoch, logs=None):
            _save_sample_sheet(self.model, grid_z, checkpoint_dir, epoch)

    mixture_scores = None
    if config.adversarial_weight > 0:
        # The encoder, and with it the latents and their mixture, stay the init model's.
        model, run = _sharpen_decoder(model, train, val, config, checkpoint_dir, resuming, output, progress)
    else:
        run = _fit(model, data, config=config, checkpoint_dir=checkpoint_dir, resuming=resuming,
                   initial_epoch=initial_epoch, steps_per_epoch=len(data), target=config.epochs * len(data),
                   monitor="val_neg_elbo", mode="min", output=output, progress=progress, callbacks=[SampleGrid()],
                   validation_data=(val,), validation_batch_size=256)
        model = _best_float32(model, checkpoint_dir)

        # Ex-post density estimation: a Gaussian mixture over the training set's posterior means.
        latents = encode_images(model, train)
        if config.mixture_components == "auto":
            (log_w, means, log_vars), mixture_scores = select_mixture(latents, encode_images(model, val),
                                                                      seed=config.seed)
        else:
            log_w, means, log_vars = fit_mixture(latents, config.mixture_components, seed=config.seed)
        if len(log_w) != model.mixture_components:
            model = _rebuilt_vae(model, "float32", mixture_components=len(log_w))
        model.mixture_log_weights.assign(log_w)
        model.mixture_means.assign(means)
        model.mixture_log_vars.assign(log_vars)

    nll, kl = [], []
    for i in range(0, len(val), 256):
        a, b = model.negative_elbo(val[i : i + 256])  # one-sample ELBO estimate, as in training
        nll.append(np.asarray(a))
        kl.append(np.asarray(b))
    nll, kl = np.concatenate(nll), np.concatenate(kl)
    _ship(model, output, checkpoint_dir, job="generate", curve_metric="val_neg_elbo", card={
        "training": {
            "data": [str(d) for d in config.data],
            "images": int(len(train)),
            "validation_images": int(len(val)) if len(images) > 1 else "the training image (nothing held out)",
            "preprocessing": f"centre crop {'to ' + str(config.crop) + ' px' if config.crop else 'to the largest square'}, "
                             f"Lanczos resize to {config.size}x{config.size}" + (", random horizontal flips" if config.flip else ""),
            "epochs_run": len(list(open(checkpoint_dir / "history.csv"))) - 1,
            "steps_done": run["stopped"]["steps_done"],
            "steps_run_this_run": run["stopped"]["steps_this_run"],
            "stopped": run["stopped"],
            "kept_epoch": run["kept"],
            "batch_size": config.batch_size,
            "precision_policy": policy,
            "wall_time_seconds": round(run["wall"] + run["previous_wall"], 1),
            "config": _plain(dataclasses.asdict(config)),
            **({"mixture_selection": {
                "components": model.mixture_components,
                "validation_latent_log_likelihood_nats_by_components": mixture_scores,
            }} if mixture_scores else {}),
        },
        "metrics": {
            "validation_negative_elbo_nats": round(float(np.mean(nll + kl)), 3),
            "validation_reconstruction_nll_nats": round(float(np.mean(nll)), 3),
            "validation_kl_nats": round(float(np.mean(kl)), 3),
        },
    })
    return _finish(output, run)


def _discriminator(size, channels, width):
    """A PatchGAN-style critic for --adversarial-weight: four stride-2 convolutions with leaky
    ReLUs and spectral normalisation (Miyato et al. 2018, for stable steps without a gradient
    penalty), one float32 score per image."""
    x = keras.Input((size, size, channels))
    h = x * 2.0 - 1.0
    for i in range(4):
        h = keras.layers.SpectralNormalization(keras.layers.Conv2D(width * 2**i, 4, strides=2, padding="same"))(h)
        h = keras.layers.LeakyReLU(0.2)(h)
    score = keras.layers.SpectralNormalization(keras.layers.Dense(1, dtype="float32"))(keras.layers.Flatten()(h))
    return keras.Model(x, score, name="discriminator")


def _diff_augment(x, seed):
    """DiffAugment (Zhao et al. 2020): brightness, saturation, contrast and a translation of up
    to 1/8 of the side, differentiable, applied alike to real and generated batches so that a
    critic trained on a few thousand images does not memorise them."""
    import tensorflow as tf

    n, size = tf.shape(x)[0], x.shape[1]
    uniform = lambda k: tf.random.stateless_uniform([n, 1, 1, 1], seed + k)
    x = x + (uniform(0) - 0.5)
    mean = tf.reduce_mean(x, axis=3, keepdims=True)
    x = (x - mean) * uniform(1) * 2.0 + mean
    mean = tf.reduce_mean(x, axis=[1, 2, 3], keepdims=True)
    x = (x - mean) * (uniform(2) + 0.5) + mean
    pad = size // 8
    x = tf.pad(x, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    shifts = tf.random.stateless_uniform([n, 2], seed + 3, 0, 2 * pad + 1, dtype=tf.int32)
    x = tf.gather(x, shifts[:, :1] + tf.range(size)[None], axis=1, batch_dims=1)
    return tf.gather(x, shifts[:, 1:] + tf.range(size)[None], axis=2, batch_dims=1)


def _sharpen_decoder(model, train, val, config, checkpoint_dir, resuming, output, progress):
    """Fine-tune a VAE's decoder adversarially (`imageae train vae --adversarial-weight`);
    returns the float32 model holding the decoder's exponential moving average, and what
    happened (as :func:`_fit` says it).

    A Gaussian VAE's decoder outputs the mean of what could be there: blurred faces, which is
    what an Inception FID sees first (vae-faces64's reconstructions of test faces score about
    the same FID as its samples). Here the encoder and the latent mixture are fixed, and the
    decoder learns from two losses (as in VQGAN's autoencoder, Esser et al. 2021):

    * L1 between each training image and its reconstruction from a posterior sample;
    * a hinge GAN loss on those reconstructions and on decodings of mixture samples (the
      images `generate` makes), from a critic (:func:`_discriminator`) trained alongside on
      DiffAugment-ed batches. Its weight adapts, as in VQGAN: ``adversarial_weight`` times the
      ratio of the two losses' gradient norms at the decoder's last layer.

    The decoder's weights are averaged (``ema_decay``) and the average is what is kept, as is
    usual for GAN generators. Runs on the TensorFlow backend (two optimizers, one tape).
    """
    import csv

    import tensorflow as tf

    batch = config.batch_size
    images = np.concatenate([train, train[:, :, ::-1]]) if config.flip else train
    means, log_vars = [], []
    for i in range(0, len(images), 256):
        m, v = model.encode(images[i : i + 256].astype(np.float32) / 255.0)
        means.append(np.asarray(m, np.float32))
        log_vars.append(np.asarray(v, np.float32))
    means, stds = np.concatenate(means), np.exp(0.5 * np.concatenate(log_vars))
    weights = np.exp(np.asarray(model.mixture_log_weights, np.float64))
    weights /= weights.sum()
    mix_means, mix_stds = np.asarray(model.mixture_means), np.exp(0.5 * np.asarray(model.mixture_log_vars))

    decoder = [*model.decoder_dense.trainable_variables, *model.decoder_project.trainable_variables,
               *[v for conv in model.decoder_convs for v in conv.trainable_variables],
               *model.decoder_out.trainable_variables]
    last = next(i for i, v in enumerate(decoder) if v is model.decoder_out.kernel)  # the adaptive weight's layer
    critic = _discriminator(model.image_size, model.channels, config.discriminator_width)
    critic_file = Path(checkpoint_dir) / "discriminator.weights.h5"
    state = json.loads((Path(checkpoint_dir) / "state.json").read_text()) if resuming else {}
    initial_epoch = int(state.get("epoch", 0))
    if initial_epoch and critic_file.exists():
        critic.load_weights(critic_file)
    optimizer_g = keras.optimizers.Adam(config.learning_rate, beta_1=0.5, beta_2=0.9)
    optimizer_d = keras.optimizers.Adam(2 * config.learning_rate, beta_1=0.5, beta_2=0.9)
    optimizer_g.build(decoder)
    optimizer_d.build(critic.trainable_variables)
    average = [tf.Variable(v) for v in decoder]
    decay = float(config.ema_decay)

    def pixels(z):  # the decoder's image, unclipped where the likelihood is Gaussian (for L1's gradient)
        out = model.decode_logits(z)
        return tf.sigmoid(out) if model.likelihood == "bernoulli" else out

    @tf.function
    def step(x, z_posterior, z_mixture, seed):
        with tf.GradientTape(persistent=True) as tape:
            reconstruction = pixels(z_posterior)
            generated = tf.clip_by_value(tf.concat([reconstruction, pixels(z_mixture)], 0), 0.0, 1.0)
            l1 = tf.reduce_mean(tf.abs(reconstruction - x))
            fooling = -tf.reduce_mean(tf.cast(critic(_diff_augment(generated, seed), training=True), tf.float32))
            real = tf.cast(critic(_diff_augment(x, seed + 10), training=True), tf.float32)
            fake = tf.cast(critic(_diff_augment(tf.stop_gradient(generated), seed + 20), training=True), tf.float32)
            critic_loss = tf.reduce_mean(tf.nn.relu(1.0 - real)) + tf.reduce_mean(tf.nn.relu(1.0 + fake))
        l1_gradients, fooling_gradients = tape.gradient(l1, decoder), tape.gradient(fooling, decoder)
        ratio = tf.norm(tf.cast(l1_gradients[last], tf.float32)) / (
            tf.norm(tf.cast(fooling_gradients[last], tf.float32)) + 1e-4)
        weight = tf.stop_gradient(tf.minimum(ratio, 1e4)) * config.adversarial_weight
        gradients = [a + weight * tf.cast(b, a.dtype) for a, b in zip(l1_gradients, fooling_gradients)]
        critic_gradients = tape.gradient(critic_loss, critic.trainable_variables)
        del tape
        optimizer_g.apply_gradients(zip(gradients, decoder))
        optimizer_d.apply_gradients(zip(critic_gradients, critic.trainable_variables))
        for a, v in zip(average, decoder):
            a.assign(decay * a + (1.0 - decay) * tf.cast(v, a.dtype))
        return l1, fooling, critic_loss, weight

    def averaged_float32():
        current = [v.numpy() for v in decoder]
        for v, a in zip(decoder, average):
            v.assign(tf.cast(a, v.dtype))
        snapshot = _rebuilt_vae(model, "float32")
        for v, c in zip(decoder, current):
            v.assign(c)
        return snapshot

    grid_z = mix_means[np.random.default_rng(1234).choice(len(weights), 64, p=weights)]
    history = Path(checkpoint_dir) / "history.csv"
    steps_per_epoch = max(1, len(images) // batch)
    target = config.epochs * steps_per_epoch
    done = int(state.get("steps", initial_epoch * steps_per_epoch))
    if done >= target:
        raise _nothing_left(checkpoint_dir, done, target, output)
    if resuming:
        print(f"resuming from {checkpoint_dir / 'last.keras'} after epoch {initial_epoch} ({done} of {target} steps)",
              flush=True)
    previous_wall = float(state.get("wall_time_seconds", 0.0))
    start = time.time()
    epoch, this_run, interrupted, out_of_time = initial_epoch, 0, False, False
    with open(history, "a" if initial_epoch else "w", newline="") as log:
        writer = csv.writer(log)
        if not initial_epoch:
            writer.writerow(["epoch", "loss", "adversarial", "critic", "adversarial_weight", "val_neg_elbo"])
        while done < target and not (interrupted or out_of_time):
            rng = np.random.default_rng([config.seed, epoch])
            steps = min(steps_per_epoch, target - done)  # a resumed cut epoch's remainder comes last
            bar = keras.utils.Progbar(steps, verbose=1 if progress else 0,
                                      stateful_metrics=["l1", "adversarial", "critic", "weight"])
            sums, i = np.zeros(4), 0
            try:
                for i in range(steps):
                    idx = rng.integers(0, len(images), batch)
                    x = images[idx].astype(np.float32) / 255.0
                    z_post = means[idx] + stds[idx] * rng.standard_normal(means[idx].shape, np.float32)
                    comp = rng.choice(len(weights), batch, p=weights)
                    z_mix = mix_means[comp] + mix_stds[comp] * rng.standard_normal(mix_means[comp].shape, np.float32)
                    values = [float(v) for v in step(x, z_post, z_mix,
                                                     tf.constant([config.seed, epoch * steps_per_epoch + i], tf.int32))]
                    sums += values
                    done, this_run = done + 1, this_run + 1
                    bar.update(i + 1, list(zip(["l1", "adversarial", "critic", "weight"], values)))
                    if config.max_seconds and time.time() - start > config.max_seconds:
                        out_of_time = True
                        break
            except KeyboardInterrupt:
                interrupted = True
                break
            snapshot = averaged_float32()
            nll, kl = snapshot.negative_elbo(val[:256], sample=False)
            writer.writerow([epoch, *(sums / (i + 1)), float(np.mean(np.asarray(nll) + np.asarray(kl)))])
            log.flush()
            critic.save_weights(critic_file)
            _save_last(snapshot, checkpoint_dir, epoch, previous_wall + time.time() - start, steps=done)
            _save_sample_sheet(snapshot, grid_z, checkpoint_dir, epoch)
            if not progress:
                print(f"epoch {epoch + 1}/{config.epochs}: l1 {sums[0] / (i + 1):.4f} critic {sums[2] / (i + 1):.3f} "
                      f"weight {sums[3] / (i + 1):.4f}", flush=True)
            epoch += 1
    stopped = _stop_reason(interrupted=interrupted, done=done, target=target, this_run=this_run, early_stopped=False,
                           time_budget=out_of_time, config=config, monitor="val_neg_elbo")
    if interrupted and not done:
        print(f"training {stopped['message']}, before its first step: no model written", flush=True)
        raise KeyboardInterrupt
    kept = {"epoch": epoch if not interrupted else f"{epoch + 1} (cut short)", "metric": "val_neg_elbo", "value": None,
            "rule": "the exponential moving average of the decoder's weights where training ended "
                    "(no best-epoch selection for a GAN)"}
    _say_how_it_ended(stopped, kept)
    return averaged_float32(), {"stopped": stopped, "kept": kept, "interrupted": interrupted,
                                "wall": time.time() - start, "previous_wall": previous_wall}


def _rebuilt_vae(model, policy, **overrides):
    """:func:`imageae.runtime.rebuilt` for a ConvVAE: its weights under ``policy`` and the
    constructor ``overrides``; a mixture of another size than the model's starts zeroed."""
    from imageae.runtime import rebuilt

    k, d = overrides.get("mixture_components", model.mixture_components), model.latent_dim
    shapes = {"mixture_log_weights": (k,), "mixture_means": (k, d), "mixture_log_vars": (k, d)}
    weights = [np.zeros(shapes[v.name], np.float32) if v.name in shapes and k != model.mixture_components else w
               for v, w in zip(model.weights, model.get_weights())]
    return rebuilt(model, policy, weights, **overrides)


def train_digit_classifier(images, labels, output, *, epochs=8, validation=2000, seed=0):
    """Train the :class:`~imageae.models.classifier.DigitClassifier` used for digit FID/KID.

    ``images`` and ``labels`` are MNIST files (IDX or .npz); the last ``validation`` images are
    held out to report accuracy. Writes the .keras model and a model card.
    """
    from imageae.data.arrays import load_image_array
    from imageae.models.classifier import DigitClassifier

    keras.utils.set_random_seed(seed)
    x = load_image_array(images, size=28, channels=1).astype(np.float32) / 255.0
    y = load_labels(labels)
    if len(x) != len(y):
        raise ValueError(f"{len(x)} images but {len(y)} labels")
    if not 0 < validation < len(x):
        raise ValueError(f"--validation must hold out between 1 and {len(x) - 1} of the {len(x)} images, got {validation}")
    print(f"training on {len(x) - validation} images, validating on the last {validation} "
          f"({100 * validation / len(x):.3g} %)", flush=True)
    x_train, y_train, x_val, y_val = x[:-validation], y[:-validation], x[-validation:], y[-validation:]
    model = DigitClassifier()
    model.build((None, 28, 28, 1))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    start = time.time()
    model.fit(x_train, y_train, batch_size=128, epochs=epochs, validation_data=(x_val, y_val), verbose=2)
    wall = time.time() - start
    accuracy = float(model.evaluate(x_val, y_val, verbose=0, return_dict=True)["accuracy"])
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    model.compile()  # ship without optimizer state
    model.save(output)
    card = {
        "name": output.stem,
        "job": "features",
        "purpose": "feature space (128-d penultimate layer) for FID/KID of generated digits",
        "architecture": {"class": "DigitClassifier", "parameters": int(model.count_params())},
        "training": {
            "data": [str(images), str(labels)], "train_images": int(len(x_train)),
            "validation_images": int(len(x_val)), "epochs": epochs, "batch_size": 128,
            "wall_time_seconds": round(wall, 1),
        },
        "metrics": {"validation_accuracy": round(accuracy, 4)},
        "hardware": hardware_summary(),
    }
    output.with_suffix(".json").write_text(json.dumps(card, indent=2) + "\n")
    return output, accuracy


def load_labels(path):
    from imageae.data.arrays import _read_idx

    path = Path(path)
    if path.suffix == ".npz":
        with np.load(path) as data:
            return np.asarray(data[data.files[0]]).astype(np.int64)
    return _read_idx(path).astype(np.int64)


CODEC_LAMBDAS = (0.00025, 0.0005, 0.001, 0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483)


@dataclasses.dataclass
class CodecTrainConfig:
    """Everything that decides a learned-codec training run (saved in the model card)."""

    data: list
    output: str
    # Rate-distortion trade-off of each quality, increasing (loss = bpp + lmbda * 255^2 * MSE on
    # 0..1 images); one value: a single-rate model. Empty: those of the --init model, else
    # CODEC_LAMBDAS (codec-v4's nine: the published lambdas of qualities 1..6 and three below).
    lambdas: tuple = ()
    num_filters: int = 128
    num_latent: int = 192
    mean_scale: bool = True
    quantization: str = "mixed"  # what g_s and h_s see in training (HyperpriorCodec's quantization)
    init: str = ""  # a codec model name or .keras path to start from (same architecture; its lambdas or more)
    patch_size: int = 256
    batch_size: int = 8
    steps: int = 100000
    steps_per_epoch: int = 500
    learning_rate: float = 1e-4  # peak of the cosine schedule
    warmup_steps: int = 500
    min_learning_rate: float = 1e-6
    clipnorm: float = 1.0
    validation_fraction: float = 0.05
    patience_epochs: int = 12
    precision: str = "auto"
    checkpoint_dir: str = ""
    resume: bool = False
    seed: int = 0
    workers: int = 1  # threads cutting patches
    max_seconds: float = 0.0  # stop after this much training time (0: no limit)


def _pad_to(image, size):
    """Reflect-pad an (H, W, C) image so that both sides are at least ``size``."""
    h, w = image.shape[:2]
    if h >= size and w >= size:
        return image
    return np.pad(image, ((0, max(0, size - h)), (0, max(0, size - w)), (0, 0)), mode="reflect")


def _random_hflip(crop, rng):
    """Photos keep their up: only horizontal flips."""
    return crop[:, ::-1] if rng.integers(2) else crop


def _codec_validation_metrics(model, val):
    """Per quality, the mean estimated bpp and PSNR (of the uint8-rounded reconstruction) of the
    validation crops with hard rounding: two lists, index quality - 1."""
    bpp, psnr = [], []
    for quality in range(1, model.num_qualities + 1):
        rates, psnrs = [], []
        for i in range(0, len(val), 4):
            batch = val[i : i + 4]
            out = model(batch, training=False, quality=quality)
            rates.append(np.asarray(model.bits_per_image(out)) / (batch.shape[1] * batch.shape[2]))
            x_hat = np.round(np.clip(np.asarray(out["x_hat"]), 0.0, 1.0) * 255.0)
            mse = np.mean((x_hat - np.round(batch * 255.0)) ** 2, axis=(1, 2, 3))
            psnrs.append(10.0 * np.log10(255.0**2 / np.maximum(mse, 1e-10)))
        bpp.append(float(np.mean(np.concatenate(rates))))
        psnr.append(float(np.mean(np.concatenate(psnrs))))
    return bpp, psnr


@_restoring_dtype_policy
def train_codec(config, *, progress=True):
    """Train a :class:`~imageae.models.codec.HyperpriorCodec` as ``config`` says; write the
    .keras model (float32, no optimizer state), a model card, a training curve and logs.

    The rate-distortion loss is ``bpp + lmbda * 255^2 * MSE`` with images on the 0..1 scale
    (MSE on the 0..255 scale, the convention of the published lambdas 0.0018 ... 0.18 for
    qualities 1 ... 8). With several lambdas the model is variable-rate: each training crop
    draws a quality, and validation codes every held-out crop at every quality. Validation
    uses hard rounding, so ``val_bpp`` is the rate an ideal entropy coder would reach on the
    held-out crops. The learning rate warms up linearly and then follows a cosine to
    ``min_learning_rate`` over ``steps``. Returns the path of the written model.
    """
    from imageae.codec.session import freeze_coding_tables
    from imageae.models.codec import QUANTIZATIONS, build_codec, with_lambdas
    from imageae.runtime import set_precision

    _check_run_settings(config, "steps", "steps_per_epoch", "batch_size", "patch_size")
    policy = set_precision(config.precision)
    keras.utils.set_random_seed(config.seed)
    output = _check_output(config.output)
    checkpoint_dir, resuming = _open_checkpoint_dir(config, output)
    last = checkpoint_dir / "last.keras"
    # The model to start from: the last checkpoint, the --init model, or none; the lambdas:
    # the checkpoint's, else the config's, else the --init model's, else CODEC_LAMBDAS.
    source = None
    if resuming:
        source = keras.saving.load_model(last)
    elif config.init:
        from imageae.registry import load_model

        source = load_model(config.init, job="compress")
    lambdas = tuple(float(v) for v in (
        source.lambdas if resuming else config.lambdas or (source.lambdas if source else CODEC_LAMBDAS)))

    images = [_pad_to(img, config.patch_size) for img in load_training_images(config.data, 3, uint8=True)]
    train_order, val_order = _split_for_validation(len(images), config.validation_fraction, config.seed)
    val_images = [images[i] for i in val_order]
    train_images = [images[i] for i in train_order]
    p = config.patch_size
    val = np.stack([
        img[(img.shape[0] - p) // 2 : (img.shape[0] - p) // 2 + p, (img.shape[1] - p) // 2 : (img.shape[1] - p) // 2 + p]
        for img in val_images
    ]).astype(np.float32) / 255.0
    # Each crop once per quality, in batches of num_qualities: inference without a quality
    # codes batch position i at quality i % num_qualities + 1, so val_loss covers every rate.
    val_repeated = np.repeat(val, len(lambdas), axis=0)
    # uint8 batches: the codec scales them itself (HyperpriorCodec accepts 0..255 integers).
    train_data = RandomCrops(train_images, config, channels=3, augment=_random_hflip, paired=False, scale=False)

    initial_epoch = 0
    if resuming:
        model = source
        initial_epoch = json.loads((checkpoint_dir / "state.json").read_text())["epoch"]
        train_data.epoch = initial_epoch
    else:
        if source is not None:
            for key in ("num_filters", "num_latent", "mean_scale"):
                if getattr(source, key) != getattr(config, key):
                    raise ValueError(f"--init model has {key}={getattr(source, key)}, the config says "
                                     f"{getattr(config, key)}: make them agree")
            if source.lambdas == lambdas:
                model = rebuilt(source, policy, lambdas=lambdas, seed=config.seed, quantization=config.quantization)
            else:  # new qualities: start their gains from the model's own (raises if any is dropped)
                model = with_lambdas(source, lambdas, policy, seed=config.seed, quantization=config.quantization)
                print(f"--init model's lambdas {list(source.lambdas)} extended to {list(lambdas)}")
        else:
            model = build_codec(config.num_filters, config.num_latent, config.mean_scale, lambdas, seed=config.seed,
                                quantization=config.quantization)
        model.compile(optimizer=keras.optimizers.Adam(_cosine_schedule(config), clipnorm=config.clipnorm))

    run = _fit(model, train_data, config=config, checkpoint_dir=checkpoint_dir, resuming=resuming,
               initial_epoch=initial_epoch, steps_per_epoch=config.steps_per_epoch, target=config.steps,
               monitor="val_loss", mode="min", output=output, progress=progress,
               validation_data=(val_repeated,), validation_batch_size=len(lambdas))
    model = freeze_coding_tables(_best_float32(model, checkpoint_dir))  # the integer z tables, saved with it
    val_bpp, val_psnr = _codec_validation_metrics(model, val)
    _ship(model, output, checkpoint_dir, job="compress", curve_metric="val_psnr",
                 architecture={"stride": model.stride}, card={
        "rate_distortion": {
            "qualities": len(lambdas),
            "lambdas": list(lambdas),
            "loss": "bpp + lambdas[quality - 1] * 255^2 * MSE, images on the 0..1 scale (MSE on 0..255)",
            "variable_rate": "gain units (Cui et al. 2021), one quality drawn per training crop"
            if len(lambdas) > 1 else None,
        },
        "training": {
            "data": [str(d) for d in config.data],
            "init": config.init or None,
            "images": len(train_images),
            "validation_images": len(val_images) if len(images) > 1 else "the training image (nothing held out)",
            "steps": config.steps,
            "steps_done": run["stopped"]["steps_done"],
            "steps_run_this_run": run["stopped"]["steps_this_run"],
            "stopped": run["stopped"],
            "kept_epoch": run["kept"],
            "batch_size": config.batch_size,
            "patch_size": config.patch_size,
            "augmentation": "random crops, random horizontal flips",
            "quantization_proxy": QUANTIZATIONS[model.quantization],
            "precision_policy": policy,
            "wall_time_seconds": round(run["wall"] + run["previous_wall"], 1),
            "config": _plain(dataclasses.asdict(config)),
        },
        "metrics": {
            "validation": f"{len(val)} centre crops {p}x{p}, hard rounding",
            "validation_bpp_estimate_by_quality": [round(v, 4) for v in val_bpp],
            "validation_psnr_db_by_quality": [round(v, 3) for v in val_psnr],
        },
    })
    return _finish(output, run)
