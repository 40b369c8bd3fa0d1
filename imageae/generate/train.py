"""The VAE's training recipe (and its adversarial sharpening), and the digit classifier whose
features score generated digits: the code that produced the shipped generate weights."""

import dataclasses
import json
import time
from pathlib import Path

import keras
import numpy as np

from imageae.training import (
    _best_float32,
    _check_output,
    _check_run_settings,
    _finish,
    _fit,
    _nothing_left,
    _open_checkpoint_dir,
    _plain,
    _restoring_dtype_policy,
    _save_last,
    _say_how_it_ended,
    _ship,
    _split_for_validation,
    _stop_reason,
    hardware_summary,
)


def _save_sample_sheet(model, latents, checkpoint_dir, epoch):
    """The VAE's decodings of ``latents`` as one contact sheet, samples_epochNNN.png."""
    from PIL import Image

    from imageae.generate.sampling import contact_sheet, decode_latents

    sheet = contact_sheet(decode_latents(model, latents), columns=8)
    Image.fromarray(sheet[..., 0] if sheet.shape[-1] == 1 else sheet).save(
        Path(checkpoint_dir) / f"samples_epoch{epoch + 1:03d}.png")


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
    from imageae.generate.sampling import encode_images, fit_mixture, select_mixture
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
