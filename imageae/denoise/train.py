"""The denoiser's training recipe: the code that produced the shipped denoise weights.

``imageae train denoiser --data DIR ...`` calls :func:`train_denoiser`. Patches are cut and
noised in NumPy inside a :class:`keras.utils.PyDataset`, so the same recipe runs on the
TensorFlow and the JAX backend.
"""

import dataclasses
import json

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
