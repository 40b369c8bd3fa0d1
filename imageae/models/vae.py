"""Convolutional variational autoencoder (Kingma and Welling 2014).

encoder: image -> stride-2 conv stack -> dense -> mean and log-variance of q(z|x)
sample:  z = mean + exp(logvar / 2) * eps, eps drawn from a ``keras.random.SeedGenerator``
decoder: z -> dense -> transposed-conv stack -> pixel logits (Bernoulli likelihood for
         near-binary images such as digits) or pixel means (Gaussian likelihood for photos)

The loss is written in ``compute_loss`` with ``keras.ops`` only, so training runs on the
TensorFlow and the JAX backend. Images are float (N, S, S, C) on the 0..1 scale with S a
multiple of 2**len(filters) (28 works with two levels: 28 -> 14 -> 7).
"""

import math

import keras
from keras import ops

LIKELIHOODS = ("bernoulli", "gaussian")


@keras.saving.register_keras_serializable(package="imageae")
class ConvVAE(keras.Model):
    """A convolutional VAE with a diagonal Gaussian posterior and a N(0, I) prior.

    Parameters
    ----------
    image_size : int
        Side of the square images.
    channels : int
        1 (grey) or 3 (RGB).
    latent_dim : int
        Size of z.
    filters : tuple of int
        Channels of the stride-2 encoder convolutions (mirrored by the decoder).
    likelihood : str
        "bernoulli" (cross-entropy on logits) or "gaussian" (squared error with a fixed
        standard deviation ``gaussian_sigma`` on the 0..1 scale).
    gaussian_sigma : float
        Observation noise of the Gaussian likelihood; smaller trades sample diversity for
        sharper reconstructions.
    beta : float
        Weight of the KL term once warm-up has ended.
    kl_warmup_steps : int
        The KL weight rises linearly from 0 to ``beta`` over this many training steps.
    seed : int
        Seed of the sampling noise.
    """

    def __init__(
        self,
        image_size=28,
        channels=1,
        latent_dim=16,
        filters=(32, 64),
        likelihood="bernoulli",
        gaussian_sigma=0.1,
        beta=1.0,
        kl_warmup_steps=2000,
        seed=0,
        mixture_components=10,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood must be one of {LIKELIHOODS}, got {likelihood!r}")
        self.image_size = int(image_size)
        self.channels = int(channels)
        self.latent_dim = int(latent_dim)
        self.filters = tuple(int(f) for f in filters)
        self.likelihood = likelihood
        self.gaussian_sigma = float(gaussian_sigma)
        self.beta = float(beta)
        self.kl_warmup_steps = int(kl_warmup_steps)
        self.seed = int(seed)
        self.mixture_components = int(mixture_components)
        factor = 2 ** len(self.filters)
        if self.image_size % factor:
            raise ValueError(f"image_size {self.image_size} must be a multiple of {factor} for {len(self.filters)} levels")
        self.base = self.image_size // factor
        self.encoder_convs = []
        for i, f in enumerate(self.filters):
            self.encoder_convs.append(keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"enc{i}a"))
            self.encoder_convs.append(
                keras.layers.Conv2D(f, 4, strides=2, padding="same", activation="relu", name=f"enc{i}_down")
            )
        self.flatten = keras.layers.Flatten()
        self.encoder_dense = keras.layers.Dense(256, activation="relu", name="enc_dense")
        self.z_mean = keras.layers.Dense(self.latent_dim, dtype="float32", name="z_mean")
        self.z_logvar = keras.layers.Dense(self.latent_dim, dtype="float32", name="z_logvar")
        self.decoder_dense = keras.layers.Dense(256, activation="relu", name="dec_dense")
        self.decoder_project = keras.layers.Dense(
            self.base * self.base * self.filters[-1], activation="relu", name="dec_project"
        )
        self.decoder_convs = []
        for i, f in reversed(list(enumerate(self.filters))):
            self.decoder_convs.append(
                keras.layers.Conv2DTranspose(f, 4, strides=2, padding="same", activation="relu", name=f"dec{i}_up")
            )
            self.decoder_convs.append(keras.layers.Conv2D(f, 3, padding="same", activation="relu", name=f"dec{i}a"))
        self.decoder_out = keras.layers.Conv2D(self.channels, 3, padding="same", dtype="float32", name="dec_out")
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self._tracker_loss = keras.metrics.Mean(name="loss")
        self._tracker_nll = keras.metrics.Mean(name="nll")
        self._tracker_kl = keras.metrics.Mean(name="kl")
        self._tracker_elbo = keras.metrics.Mean(name="neg_elbo")

    def build(self, input_shape=None):
        s, c = self.image_size, self.channels
        shape = (None, s, s, c)
        for conv in self.encoder_convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        flat = (None, math.prod(shape[1:]))
        self.encoder_dense.build(flat)
        self.z_mean.build((None, 256))
        self.z_logvar.build((None, 256))
        self.decoder_dense.build((None, self.latent_dim))
        self.decoder_project.build((None, 256))
        shape = (None, self.base, self.base, self.filters[-1])
        for conv in self.decoder_convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.decoder_out.build(shape)
        self.step = self.add_weight(shape=(), initializer="zeros", trainable=False, dtype="float32", name="step")
        # A Gaussian mixture fitted to the training latents after training (Ghosh et al. 2020's
        # ex-post density estimation); stored in the model so that a .keras file or an export
        # carries its own sampler. Until fitted it is one N(0, I) component.
        k, d = self.mixture_components, self.latent_dim
        self.mixture_log_weights = self.add_weight(
            shape=(k,), initializer=keras.initializers.Constant(-math.log(k)), trainable=False, dtype="float32",
            name="mixture_log_weights",
        )
        self.mixture_means = self.add_weight(shape=(k, d), initializer="zeros", trainable=False, dtype="float32",
                                             name="mixture_means")
        self.mixture_log_vars = self.add_weight(shape=(k, d), initializer="zeros", trainable=False, dtype="float32",
                                                name="mixture_log_vars")
        self.built = True

    # --- the three parts -------------------------------------------------------------------
    def encode(self, x):
        """Posterior parameters (mean, logvar), float32 (N, latent_dim)."""
        h = ops.cast(x, self.compute_dtype)
        for conv in self.encoder_convs:
            h = conv(h)
        h = self.encoder_dense(self.flatten(h))
        return self.z_mean(h), ops.clip(self.z_logvar(h), -20.0, 10.0)

    def decode_logits(self, z):
        h = self.decoder_project(self.decoder_dense(ops.cast(z, self.compute_dtype)))
        h = ops.reshape(h, (-1, self.base, self.base, self.filters[-1]))
        for conv in self.decoder_convs:
            h = conv(h)
        return ops.cast(self.decoder_out(h), "float32")

    def decode(self, z):
        """Images (N, S, S, C) float32 in 0..1: the likelihood's mean given z."""
        out = self.decode_logits(z)
        return ops.sigmoid(out) if self.likelihood == "bernoulli" else ops.clip(out, 0.0, 1.0)

    def sample_posterior(self, mean, logvar):
        eps = keras.random.normal(ops.shape(mean), seed=self.seed_generator)
        return mean + ops.exp(0.5 * logvar) * eps

    def call(self, x, training=False):
        mean, logvar = self.encode(x)
        z = self.sample_posterior(mean, logvar) if training else mean
        return self.decode(z)

    # --- loss --------------------------------------------------------------------------------
    def reconstruction_nll(self, x, logits):
        """Negative log-likelihood per image, in nats."""
        x = ops.cast(x, "float32")
        if self.likelihood == "bernoulli":
            # numerically stable binary cross-entropy on logits (x may be grey, not binary)
            per_pixel = ops.maximum(logits, 0.0) - logits * x + ops.log1p(ops.exp(-ops.abs(logits)))
        else:
            s = self.gaussian_sigma
            per_pixel = 0.5 * ops.square((logits - x) / s) + math.log(s) + 0.5 * math.log(2 * math.pi)
        return ops.sum(per_pixel, axis=(1, 2, 3))

    @staticmethod
    def kl_divergence(mean, logvar):
        return 0.5 * ops.sum(ops.square(mean) + ops.exp(logvar) - 1.0 - logvar, axis=-1)

    def negative_elbo(self, x, *, sample=True):
        """(nll, kl) per image for the batch ``x``."""
        mean, logvar = self.encode(x)
        z = self.sample_posterior(mean, logvar) if sample else mean
        return self.reconstruction_nll(x, self.decode_logits(z)), self.kl_divergence(mean, logvar)

    def kl_weight(self):
        if self.kl_warmup_steps <= 0:
            return ops.convert_to_tensor(self.beta, "float32")
        return self.beta * ops.minimum(1.0, self.step / float(self.kl_warmup_steps))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        nll, kl = self.negative_elbo(x)
        if training:
            self.step.assign_add(1.0)
        weight = self.kl_weight() if training else self.beta
        loss = ops.mean(nll + weight * kl)
        self._tracker_loss.update_state(loss)
        self._tracker_nll.update_state(ops.mean(nll))
        self._tracker_kl.update_state(ops.mean(kl))
        self._tracker_elbo.update_state(ops.mean(nll + kl))
        return loss

    @property
    def metrics(self):
        return [self._tracker_loss, self._tracker_nll, self._tracker_kl, self._tracker_elbo]

    def get_config(self):
        config = super().get_config()
        config.update(
            image_size=self.image_size, channels=self.channels, latent_dim=self.latent_dim,
            filters=list(self.filters), likelihood=self.likelihood, gaussian_sigma=self.gaussian_sigma,
            beta=self.beta, kl_warmup_steps=self.kl_warmup_steps, seed=self.seed,
            mixture_components=self.mixture_components,
        )
        return config


def build_vae(**kwargs):
    model = ConvVAE(**kwargs)
    model.build()
    return model
