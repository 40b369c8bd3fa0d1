"""The learned codec's training recipe: the code that produced the shipped compress weights."""

import dataclasses
import json

import keras
import numpy as np

from imageae.runtime import rebuilt
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
