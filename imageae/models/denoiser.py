"""Residual U-Net denoising autoencoder.

The encoder folds 2x2 pixel blocks into channels with a stride-2 convolution (as FFDNet does
with its pixel unshuffle), so every 3x3 convolution works at half resolution or below; two
further stride-2 levels form the autoencoder's bottleneck, and transposed convolutions with
additive skip connections (DRUNet, Zhang et al. 2021) decode back. The network predicts the
noise and subtracts it from its input (residual learning, DnCNN, Zhang et al. 2017).

Input and output are float images on the 0..1 scale, (batch, height, width, channels), with
height and width multiples of :attr:`DenoiserUNet.stride`; the pipelines pad and crop.
"""

import keras

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

    def __init__(self, channels=1, filters=(48, 96, 192), blocks_per_level=1, **kwargs):
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.blocks_per_level = int(blocks_per_level)
        levels = len(self.filters)
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

        self.head.build(tuple(input_shape))
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
        return radius

    def call(self, x):
        x = keras.ops.cast(x, "float32")
        return x - keras.ops.cast(self.predict_noise(x), "float32")

    def predict_noise(self, x):
        """The noise the model finds in ``x`` (``call`` returns ``x`` minus this). Exported alone
        for int8 LiteRT, so that the subtraction stays in float outside the quantised graph."""
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
        return self.tail(h)

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, filters=list(self.filters), blocks_per_level=self.blocks_per_level)
        return config


def build_denoiser(channels=1, filters=(48, 96, 192), blocks_per_level=1, name=None):
    """Build a :class:`DenoiserUNet` with its weights created."""
    model = DenoiserUNet(channels=channels, filters=filters, blocks_per_level=blocks_per_level, name=name)
    model.build((None, None, None, channels))
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
