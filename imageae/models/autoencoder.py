"""Convolutional autoencoder with a flat code, and the sparse and contractive regularisers.

encoder: image -> stride-2 conv stack -> flatten -> dense -> code (batch, code_size), linear
decoder: code -> dense -> transposed-conv stack -> sigmoid pixels on the 0..1 scale

Trained on normal images only, it reconstructs what it has seen and fails on what it has not:
the reconstruction error scores anomalies (imageae.anomaly), and the code is a feature vector
(imageae embed). Written with ``keras.ops`` and ``keras.random`` only, so it trains on the
TensorFlow and the JAX backend.

Regularisers (added as losses while training):

- sparsity "l1": ``sparsity_weight * mean |code|`` (Ng 2011, Sparse autoencoder notes);
- sparsity "kl": ``sparsity_weight * sum_j KL(rho || rho_hat_j)`` with ``rho_hat_j`` the
  batch mean of ``sigmoid(code_j)`` and ``rho = sparsity_target``;
- contractive: ``contractive_weight * ||J_f(x)||_F^2``, the squared Frobenius norm of the
  encoder's Jacobian (Rifai et al. 2011, ICML), estimated without second derivatives by a
  random finite difference, ``E ||f(x + s e) - f(x)||^2 / s^2`` with ``e ~ N(0, I)`` drawn
  from a ``keras.random.SeedGenerator`` (one draw per image per step: unbiased as s -> 0).
"""

import keras
from keras import ops

SPARSITY_KINDS = ("none", "l1", "kl")


@keras.saving.register_keras_serializable(package="imageae")
class ConvAutoencoder(keras.Model):
    """A convolutional autoencoder for ``image_size`` x ``image_size`` images.

    Parameters
    ----------
    image_size : int
        Side of the square inputs, a multiple of ``2 ** len(filters)``.
    channels : int
        1 (grey) or 3 (RGB).
    code_size : int
        Length of the flat code.
    filters : tuple of int
        Channels of the stride-2 encoder convolutions (mirrored by the decoder).
    sparsity : str
        "none", "l1" or "kl" (see the module docstring).
    sparsity_weight, sparsity_target : float
        Weight of the sparsity loss; target mean activation of the "kl" kind.
    contractive_weight : float
        Weight of the contractive loss (0: off).
    contractive_step : float
        Size ``s`` of the finite-difference step on the 0..1 pixel scale.
    seed : int
        Seed of the finite-difference noise.
    calibration : dict or None
        What an anomaly detector measured on held-out normal images after training (scoring
        method, score statistics, threshold, latent Gaussian); plain JSON values, saved in the
        .keras file with the weights so that one file is the whole detector.

    Examples
    --------
    >>> model = ConvAutoencoder(image_size=28, channels=1, code_size=16, filters=(32, 64))
    >>> tuple(model.encode(np.zeros((2, 28, 28, 1), "float32")).shape)
    (2, 16)
    """

    def __init__(self, image_size=32, channels=1, code_size=32, filters=(32, 64), sparsity="none",
                 sparsity_weight=0.0, sparsity_target=0.05, contractive_weight=0.0, contractive_step=0.01, seed=0,
                 calibration=None, **kwargs):
        super().__init__(**kwargs)
        filters = tuple(int(f) for f in filters)
        if int(image_size) % (2 ** len(filters)):
            raise ValueError(f"image_size must be a multiple of {2 ** len(filters)} for {len(filters)} stride-2 "
                             f"levels, got {image_size}")
        if sparsity not in SPARSITY_KINDS:
            raise ValueError(f"sparsity must be one of {', '.join(SPARSITY_KINDS)}, got {sparsity!r}")
        self.image_size, self.channels, self.code_size = int(image_size), int(channels), int(code_size)
        self.filters = filters
        self.sparsity, self.sparsity_weight = sparsity, float(sparsity_weight)
        self.sparsity_target = float(sparsity_target)
        self.contractive_weight, self.contractive_step = float(contractive_weight), float(contractive_step)
        self.seed = int(seed)
        self.calibration = dict(calibration) if calibration else None
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        inner = self.image_size // 2 ** len(filters)

        # One stride-2 convolution per level and a decoder that halves the channels as it
        # doubles the side: on the shared 2-core CPU a doubled conv per level (and a decoder at
        # full width) made each training step 2-3x slower for no gain in the first experiments.
        self.encoder = keras.Sequential(
            [keras.layers.Input((self.image_size, self.image_size, self.channels))]
            + [layer for f in filters for layer in (
                keras.layers.Conv2D(f, 3, strides=2, padding="same"), keras.layers.LeakyReLU(0.1))]
            + [keras.layers.Flatten(), keras.layers.Dense(self.code_size)],
            name="encoder",
        )
        widths = list(reversed(filters[:-1])) + [filters[0]]
        self.decoder = keras.Sequential(
            [keras.layers.Input((self.code_size,)), keras.layers.Dense(inner * inner * filters[-1]),
             keras.layers.LeakyReLU(0.1), keras.layers.Reshape((inner, inner, filters[-1]))]
            + [layer for f in widths for layer in (
                keras.layers.Conv2DTranspose(f, 3, strides=2, padding="same"), keras.layers.LeakyReLU(0.1))]
            + [keras.layers.Conv2D(self.channels, 3, padding="same", activation="sigmoid", dtype="float32")],
            name="decoder",
        )

    def encode(self, x):
        """The flat code, float (batch, code_size), of float (batch, S, S, C) images on 0..1."""
        return self.encoder(x)

    def decode(self, code):
        """Images on 0..1 from codes."""
        return self.decoder(code)

    def call(self, x, training=False):
        code = self.encoder(x, training=training)
        x_hat = self.decoder(code, training=training)
        if training:
            self._add_regularisers(x, code)
        return x_hat

    def _add_regularisers(self, x, code):
        if self.sparsity == "l1" and self.sparsity_weight:
            self.add_loss(self.sparsity_weight * ops.mean(ops.abs(code)))
        elif self.sparsity == "kl" and self.sparsity_weight:
            rho = self.sparsity_target
            rho_hat = ops.clip(ops.mean(ops.sigmoid(ops.cast(code, "float32")), axis=0), 1e-6, 1 - 1e-6)
            kl = rho * ops.log(rho / rho_hat) + (1 - rho) * ops.log((1 - rho) / (1 - rho_hat))
            self.add_loss(self.sparsity_weight * ops.sum(kl))
        if self.contractive_weight:
            s = self.contractive_step
            e = keras.random.normal(ops.shape(x), seed=self.seed_generator, dtype=x.dtype)
            moved = self.encoder(x + s * e, training=True)
            jacobian = ops.sum(ops.square(ops.cast(moved - code, "float32")), axis=-1) / (s * s)
            self.add_loss(self.contractive_weight * ops.mean(jacobian))

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size, channels=self.channels, code_size=self.code_size, filters=list(self.filters),
            sparsity=self.sparsity, sparsity_weight=self.sparsity_weight, sparsity_target=self.sparsity_target,
            contractive_weight=self.contractive_weight, contractive_step=self.contractive_step, seed=self.seed,
            calibration=self.calibration,
        )
        return config
