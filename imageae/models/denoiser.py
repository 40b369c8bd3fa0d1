"""Residual U-Net denoising autoencoder.

The encoder folds 2x2 pixel blocks into channels with a stride-2 convolution (as FFDNet does
with its pixel unshuffle), so every 3x3 convolution works at half resolution or below; two
further stride-2 levels form the autoencoder's bottleneck, and transposed convolutions with
additive skip connections (DRUNet, Zhang et al. 2021) decode back. The network predicts the
noise and subtracts it from its input (residual learning, DnCNN, Zhang et al. 2017).

Input and output are float images on the 0..1 scale, (batch, height, width, channels), with
height and width multiples of :attr:`DenoiserUNet.stride`; the pipelines pad and crop.

With ``noise_level=True`` the model is conditioned on a noise level, as FFDNet (Zhang et al.
2018) and DRUNet take a noise map: the level (the noise's standard deviation on the 0..1
scale) enters as one more input plane, so a user can turn the strength up or down. A small
estimator (a CNN whose per-position log-levels are averaged over the image, as the noise
estimation subnetwork of CBDNet, Guo et al. 2019) gives the level when none is passed.

With ``noise_highpass`` > 0 the predicted noise loses its low frequencies (its local mean over
a Gaussian of that width, in pixels, is given back to the image), so the model cannot move an
image's brightness or colour over large areas. Camera noise averaged over such areas is almost
zero, but a model trained on synthetic camera noise learns local-mean shifts that real cameras'
pipelines do not make (near-black and clipped channels: the training targets are the clean
images, not the mean of many noisy shots). ``imageae train auto-strength`` chooses the width on
real noisy/clean pairs.
"""

import keras
import numpy as np

from imageae.layers.blocks import ResidualBlock


@keras.saving.register_keras_serializable(package="imageae")
class DenoiserUNet(keras.Model):
    """Blind Gaussian denoiser: noisy image in, clean image out.

    Parameters
    ----------
    channels : int
        1 for grey, 3 for colour.
    filters : tuple of int
        Channels at each level, from the half-resolution one down to the bottleneck.
        Each level after the first halves the resolution again.
    blocks_per_level : int
        Residual blocks on each side of each level (and in the bottleneck).
    """

    #: Lowest level the model is given (0..1 scale): half a grey level; also the floor of the
    #: estimator's training target, so log-levels stay finite on clean inputs.
    MIN_LEVEL = 0.5 / 255.0

    def __init__(self, channels=1, filters=(48, 96, 192), blocks_per_level=1, noise_level=False,
                 level_calibration=1.0, auto_level_floor=None, grey_level_gain=1.0, noise_highpass=0.0, **kwargs):
        super().__init__(**kwargs)
        # Width (pixels) of the Gaussian whose average of the predicted noise is given back to
        # the image (0: off); see the module docstring.
        self.noise_highpass = float(noise_highpass)
        if self.noise_highpass < 0:
            raise ValueError(f"noise_highpass must be 0 (off) or a width in pixels, got {noise_highpass}")
        # Multiplies the estimator's level: set by the recipe after training, as the median ratio
        # of true to estimated level on the held-out validation images at full size.
        self.level_calibration = float(level_calibration)
        # The least level "auto" gives the model (0..1 scale): below a few grey levels the
        # estimator cannot tell faint camera noise from fine texture, so this is calibrated on
        # real noisy/clean pairs (``imageae train auto-strength``); MIN_LEVEL when not.
        self.auto_level_floor = float(self.MIN_LEVEL if auto_level_floor is None else auto_level_floor)
        # A colour model given a grey image sees the same noise in R, G and B, which it takes for
        # weaker noise than independent noise of that level; a set strength for a grey image is
        # multiplied by this (calibrated by ``imageae train auto-strength --grey-data``).
        self.grey_level_gain = float(grey_level_gain)
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.blocks_per_level = int(blocks_per_level)
        self.noise_level = bool(noise_level)
        levels = len(self.filters)
        if self.noise_level:
            # The level estimator: full-resolution 3x3 convolutions, then two stride-2 ones, a
            # log-level per position (float32: it is a likelihood-like output), averaged.
            self.estimator = [
                keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="estimator_conv0"),
                keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="estimator_conv1"),
                keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="estimator_conv2"),
                keras.layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="estimator_conv3"),
                keras.layers.Conv2D(1, 3, padding="same", name="estimator_out", dtype="float32"),
            ]
        self.head = keras.layers.Conv2D(self.filters[0], 2, strides=2, name="head")
        self.encoder_blocks = []
        self.downs = []
        for i, f in enumerate(self.filters[:-1]):
            self.encoder_blocks.append(
                [ResidualBlock(f, name=f"enc{i}_block{j}") for j in range(self.blocks_per_level)]
            )
            self.downs.append(keras.layers.Conv2D(self.filters[i + 1], 2, strides=2, name=f"down{i}"))
        self.bottleneck = [
            ResidualBlock(self.filters[-1], name=f"bottleneck_block{j}") for j in range(self.blocks_per_level)
        ]
        self.ups = []
        self.decoder_blocks = []
        for i in reversed(range(levels - 1)):
            f = self.filters[i]
            self.ups.append(keras.layers.Conv2DTranspose(f, 2, strides=2, name=f"up{i}"))
            self.decoder_blocks.append(
                [ResidualBlock(f, name=f"dec{i}_block{j}") for j in range(self.blocks_per_level)]
            )
        # The noise estimate and the subtraction stay in float32 under a mixed policy, so the
        # output image is never rounded to bfloat16's 8-bit mantissa.
        self.tail = keras.layers.Conv2DTranspose(self.channels, 2, strides=2, name="tail", dtype="float32")

    def build(self, input_shape):
        # Built explicitly, layer by layer, so weights exist before the first call (and a
        # copy under another dtype policy can take them with set_weights).
        def shape(channels):
            return (None, None, None, channels)

        input_shape = tuple(input_shape[0] if isinstance(input_shape[0], (tuple, list)) else input_shape)
        self.head.build(input_shape[:-1] + (self.channels + int(self.noise_level),))
        if self.noise_level:
            for i, layer in enumerate(self.estimator):
                layer.build(shape(self.channels if i == 0 else 32))
        for i, (blocks, down) in enumerate(zip(self.encoder_blocks, self.downs)):
            for block in blocks:
                block.build(shape(self.filters[i]))
            down.build(shape(self.filters[i]))
        for block in self.bottleneck:
            block.build(shape(self.filters[-1]))
        for j, (up, blocks) in enumerate(zip(self.ups, self.decoder_blocks)):
            i = len(self.filters) - 2 - j
            up.build(shape(self.filters[i + 1]))
            for block in blocks:
                block.build(shape(self.filters[i]))
        self.tail.build(shape(self.filters[0]))
        self.built = True

    @property
    def stride(self):
        """Height and width of inputs must be multiples of this."""
        return 2 ** len(self.filters)

    @property
    def receptive_radius(self):
        """How far (in input pixels) an output pixel can see: a tile margin of this or more
        makes tiled inference equal to whole-image inference."""
        radius = self.stride  # the 2x2 stride-2 folds and unfolds, at most one block each
        levels = len(self.filters)
        for i in range(levels):
            convs = 2 * self.blocks_per_level * (2 if i < levels - 1 else 1)
            radius += convs * 2 ** (i + 1)  # a 3x3 conv at level i reaches one pixel of 2**(i+1)
        return radius + gaussian_radius(self.noise_highpass)

    def call(self, x):
        """Denoise ``x``, or ``(x, level)`` for a model with ``noise_level``: ``level`` (batch,)
        or (batch, 1) on the 0..1 scale; without it the model estimates it per input (at least
        ``auto_level_floor``)."""
        x, level = (x[0], x[1]) if isinstance(x, (tuple, list)) else (x, None)
        x = keras.ops.cast(x, "float32")
        return x - keras.ops.cast(self.predict_noise(x, level), "float32")

    def estimate_log_level(self, x):
        """Per input, the log of the estimated noise level (0..1 scale), shape (batch,)."""
        h = x
        for layer in self.estimator:
            h = layer(h)
        return keras.ops.mean(keras.ops.cast(h, "float32"), axis=(1, 2, 3)) + float(np.log(self.level_calibration))

    def estimate_level(self, x):
        """Per input, the estimated noise level on the 0..1 scale, shape (batch,)."""
        return keras.ops.maximum(keras.ops.exp(self.estimate_log_level(x)), self.MIN_LEVEL)

    def predict_noise(self, x, level=None):
        """The noise the model finds in ``x`` (``call`` returns ``x`` minus this). Exported alone
        for int8 LiteRT, so that the subtraction stays in float outside the quantised graph.
        ``level`` is used only by a model with ``noise_level`` (None: estimated)."""
        if self.noise_level:
            if level is None:
                level = keras.ops.maximum(self.estimate_level(x), self.auto_level_floor)
            level = keras.ops.reshape(keras.ops.cast(level, x.dtype), (-1, 1, 1, 1))
            plane = keras.ops.ones_like(x[..., :1]) * level
            x = keras.ops.concatenate([x, plane], axis=-1)
        h = self.head(x)
        skips = []
        for blocks, down in zip(self.encoder_blocks, self.downs):
            for block in blocks:
                h = block(h)
            skips.append(h)
            h = down(h)
        for block in self.bottleneck:
            h = block(h)
        for up, blocks, skip in zip(self.ups, self.decoder_blocks, reversed(skips)):
            h = up(h) + skip
            for block in blocks:
                h = block(h)
        noise = self.tail(h)
        if self.noise_highpass > 0:
            noise = noise - gaussian_lowpass(noise, self.noise_highpass)
        return noise

    def _flat_blind_layers(self):
        """The layers a blind model has, in a fixed order (for copying weights across)."""
        layers = [self.head]
        for blocks, down in zip(self.encoder_blocks, self.downs):
            layers += blocks + [down]
        layers += self.bottleneck
        for up, blocks in zip(self.ups, self.decoder_blocks):
            layers += [up] + blocks
        return layers + [self.tail]

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, filters=list(self.filters), blocks_per_level=self.blocks_per_level,
                      noise_level=self.noise_level, level_calibration=self.level_calibration,
                      auto_level_floor=self.auto_level_floor, grey_level_gain=self.grey_level_gain,
                      noise_highpass=self.noise_highpass)
        return config


def _lowpass_plan(sigma):
    """``(k, sigma at 1/k resolution)`` for :func:`gaussian_lowpass`: blocks of k x k pixels
    (k a power of two up to 8, so blocks align with the model's stride) while the coarse Gaussian
    still has a width of 4 or more; k = 1 below a width of 8."""
    k = 1
    while k < 8 and sigma / (2 * k) >= 4.0:
        k *= 2
    return k, float(np.sqrt(max(sigma**2 - (k**2 - 1) / 12.0, 1e-6)) / k)  # less the block's own spread


def gaussian_radius(sigma):
    """How far (pixels) :func:`gaussian_lowpass` reaches: 0 when off."""
    if sigma <= 0:
        return 0
    k, coarse = _lowpass_plan(sigma)
    return k * int(np.ceil(3.0 * coarse)) + (2 * k if k > 1 else 0)  # the coarse kernel, the block, the upsampling


def _blur(z, sigma):
    """``z`` (batch, H, W, C) blurred by a zero-padded separable Gaussian cut at 3 sigma."""
    radius = int(np.ceil(3.0 * sigma))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1) / sigma) ** 2)
    taps = (taps / taps.sum()).astype(np.float32)
    return _separable(z, taps)


def _along(z, taps, axis):
    """``z`` filtered by the 1-D ``taps`` along ``axis`` (1: down, 2: across), each channel apart,
    zero-padded ("same")."""
    shape = (len(taps), 1) if axis == 1 else (1, len(taps))
    kernel = np.tile(taps.reshape(shape + (1, 1)), (1, 1, z.shape[-1], 1))
    return keras.ops.depthwise_conv(z, keras.ops.convert_to_tensor(kernel), strides=1, padding="same")


def _separable(z, taps):
    return _along(_along(z, taps, 1), taps, 2)


def gaussian_lowpass(x, sigma):
    """``x`` (batch, H, W, C), float32, blurred by a Gaussian of width ``sigma`` pixels, each
    channel apart. Outside the image counts as missing, not as zero (normalised convolution: the
    zero-padded blur divided by the blur of ones), so borders are not pulled towards 0 and any
    image size works. Widths of 8 and more are computed on k x k block sums (k up to 8, a Gaussian
    of width sigma / k there, then linear upsampling: within 6 % RMS of the full-resolution blur
    of a random field, at about a third of its cost). Every step is a fixed local
    window, so a window with :func:`gaussian_radius` pixels of context around it gets the whole
    image's values exactly, provided it starts at a multiple of k (the model's stride is)."""
    x = keras.ops.cast(x, "float32")
    # from x, not its shape: with a fixed input shape (LiteRT) a shape-only ones would be folded into
    # full-size constant planes in the file
    ones = x[..., :1] * 0.0 + 1.0
    k, coarse = _lowpass_plan(sigma)
    if k == 1:
        return _blur(x, sigma) / _blur(ones, sigma)
    height, width = x.shape[1], x.shape[2]
    if height is not None and width is not None and (height % k or width % k):  # pad to whole blocks (known
        pad = ((0, 0), (0, -height % k), (0, -width % k), (0, 0))          # sizes; the model's are multiples)
        x, ones = keras.ops.pad(x, pad), keras.ops.pad(ones, pad)
    sums = _blur(keras.ops.average_pool(x, k, k, padding="valid"), coarse)
    counts = _blur(keras.ops.average_pool(ones, k, k, padding="valid"), coarse)
    low = sums / keras.ops.maximum(counts, 1e-6)

    box = np.full(k, 1.0 / k, np.float32)

    def upsample(z):  # nearest, then a k-wide box, one axis at a time: linear interpolation
        z = _along(keras.ops.repeat(z, k, axis=1), box, 1)
        return _along(keras.ops.repeat(z, k, axis=2), box, 2)

    up = upsample(low * counts) / keras.ops.maximum(upsample(counts), 1e-6)
    return up[:, :height, :width] if height is not None and width is not None else up


def build_denoiser(channels=1, filters=(48, 96, 192), blocks_per_level=1, name=None, noise_level=False):
    """Build a :class:`DenoiserUNet` with its weights created."""
    model = DenoiserUNet(channels=channels, filters=filters, blocks_per_level=blocks_per_level, name=name,
                         noise_level=noise_level)
    model.build((None, None, None, channels))
    return model


def with_noise_level_input(blind):
    """A :class:`DenoiserUNet` with ``noise_level`` that starts as ``blind`` does: every weight
    copied, the head's kernel for the new level plane zero (so the output is unchanged until
    training teaches the model to use it), the estimator freshly initialised."""
    model = build_denoiser(blind.channels, blind.filters, blind.blocks_per_level, noise_level=True)
    for layer, source in zip(model._flat_blind_layers(), blind._flat_blind_layers()):
        if layer is model.head:
            kernel, bias = source.get_weights()
            extra = np.zeros(kernel.shape[:2] + (1,) + kernel.shape[3:], kernel.dtype)
            layer.set_weights([np.concatenate([kernel, extra], axis=2), bias])
        else:
            layer.set_weights(source.get_weights())
    return model


@keras.saving.register_keras_serializable(package="imageae")
class NoiseTrainingWrapper(keras.Model):
    """Trains a denoiser on clean images: in training mode it adds white Gaussian noise, with
    sigma drawn per image uniformly from [sigma_min, sigma_max] (0..255 scale), before calling
    the denoiser; otherwise it calls the denoiser on its input as given.

    Noise is drawn with ``keras.random`` from a ``SeedGenerator`` inside the model, so training
    runs on the TensorFlow or JAX backend and the input pipeline only cuts patches. Fit it on
    ``(clean, clean)`` pairs and validate on fixed ``(noisy, clean)`` pairs.
    """

    def __init__(self, denoiser, sigma_min=0.0, sigma_max=55.0, seed=0, **kwargs):
        super().__init__(**kwargs)
        if isinstance(denoiser, dict):
            denoiser = keras.saving.deserialize_keras_object(denoiser)
        self.denoiser = denoiser
        self.sigma_min = float(sigma_min)
        self.sigma_max = float(sigma_max)
        self.seed = int(seed)
        self.seed_generator = keras.random.SeedGenerator(self.seed)

    def build(self, input_shape):
        if not self.denoiser.built:
            self.denoiser.build(input_shape)
        self.built = True

    def call(self, x, training=False):
        x = keras.ops.cast(x, "float32")
        if training:
            batch = keras.ops.shape(x)[0]
            sigma = keras.random.uniform(
                (batch, 1, 1, 1), self.sigma_min / 255.0, self.sigma_max / 255.0, seed=self.seed_generator
            )
            x = x + sigma * keras.random.normal(keras.ops.shape(x), seed=self.seed_generator)
        return self.denoiser(x)

    def get_config(self):
        config = super().get_config()
        config.update(
            denoiser=keras.saving.serialize_keras_object(self.denoiser),
            sigma_min=self.sigma_min, sigma_max=self.sigma_max, seed=self.seed,
        )
        return config


@keras.saving.register_keras_serializable(package="imageae")
class NoiseLevelTrainingWrapper(keras.Model):
    """Trains a :class:`DenoiserUNet` with ``noise_level`` on ``((noisy, level), clean)`` batches.

    The denoiser is given the true level; its estimator learns to predict that level's log from
    the noisy input alone, by a squared error added to the compiled loss with weight
    ``estimator_weight``. The two share no weights, so neither loss moves the other's part.
    """

    def __init__(self, denoiser, estimator_weight=1e-3, **kwargs):
        super().__init__(**kwargs)
        if isinstance(denoiser, dict):
            denoiser = keras.saving.deserialize_keras_object(denoiser)
        self.denoiser = denoiser
        self.estimator_weight = float(estimator_weight)

    def build(self, input_shape):
        if not self.denoiser.built:
            self.denoiser.build(input_shape[0])
        self.built = True

    def call(self, inputs, training=False):
        return self.denoiser((inputs[0], inputs[1]))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training)
        noisy, level = x
        target = keras.ops.log(keras.ops.maximum(keras.ops.cast(level, "float32"), DenoiserUNet.MIN_LEVEL))
        error = self.denoiser.estimate_log_level(keras.ops.cast(noisy, "float32")) - keras.ops.reshape(target, (-1,))
        return loss + self.estimator_weight * keras.ops.mean(keras.ops.square(error))

    def get_config(self):
        config = super().get_config()
        config.update(denoiser=keras.saving.serialize_keras_object(self.denoiser),
                      estimator_weight=self.estimator_weight)
        return config
