"""The scaffolding every training recipe shares: data loading, callbacks, checkpoints and resume,
step and time budgets, how a run says it stopped and which epoch it kept, and the shipped model
with its card and training curve.

The recipes themselves live with their jobs (:mod:`imageae.denoise.train`,
:mod:`imageae.codec.train`, :mod:`imageae.generate.train`).
"""

import io
import json
import math
import os
import platform
import time
from pathlib import Path

import keras
import numpy as np

from imageae.data.io import find_images, read_image
from imageae.runtime import constructor_arguments


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
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=100)
    plt.close(fig)
    save_palette_png(buffer, png_path)


def save_palette_png(source, path):
    """Save an image (a path or file object) as a 256-colour PNG: a line plot needs no more, and
    the model cards' curves take about a third of the bytes (saved_models/ has a size budget)."""
    from PIL import Image

    with Image.open(source) as image:
        image.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
            path, optimize=True)
