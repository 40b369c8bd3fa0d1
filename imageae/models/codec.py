"""Learned image compression: the scale hyperprior (Balle et al. 2018) and its mean-scale
variant (Minnen et al. 2018).

    y = g_a(x)                 analysis: four 5x5 stride-2 convolutions with GDN between (/16)
    z = h_a(|y|)  or  h_a(y)   hyper analysis, two more stride-2 convolutions (/64 in all)
    z_hat = round(z)           coded with a factorized prior p(z_hat) (:class:`EntropyBottleneck`)
    scales, means = h_s(z_hat) hyper synthesis (means are 0 for the scale-only hyperprior)
    symbols = round(y - means), y_hat = symbols + means
                               symbols coded with N(0, scales^2) convolved with U(-1/2, 1/2)
    x_hat = g_s(y_hat)         synthesis: four 5x5 stride-2 transposed convolutions with IGDN

One model can code at several qualities (variable rate with gain units, Cui et al. 2021): with
Q lambdas, quality q in 1..Q scales y channel-wise by a learned gain before rounding and by a
learned inverse gain before synthesis (and z likewise, before its rounding and before h_s), so
one set of transforms and entropy models serves every rate. Training draws a quality per image
and weights its distortion with that quality's lambda.

Training replaces rounding by additive uniform noise (``keras.random`` from a
``SeedGenerator``) in the rate term. With ``quantization="mixed"`` (Minnen & Singh 2020) the
synthesis and h_s see the rounded values instead (y_hat = round(y - means) + means, z_hat =
round(z), straight-through gradients), as they will when decoding a file; with "noise" (the
original recipe) they see the noisy ones too. Either way it minimises the rate-distortion loss

    loss = bpp + lmbda * 255^2 * MSE(x, x_hat)

with ``x`` on the 0..1 scale: the distortion is the MSE on the 0..255 scale, which is the
convention of CompressAI and of the published lambdas, 0.0018 ... 0.18 for qualities 1 ... 8
(:data:`QUALITY_LAMBDAS`; the shipped codec-v4 uses those of qualities 1...6 and three smaller
ones). bpp is the negative log2-likelihood of y and z per image pixel.

The entropy models (the factorized prior of z, the Gaussian conditional of y), the
likelihoods and the loss are float32 under every dtype policy; so are y, z, scales and means
(the last layer of each transform is a float32 layer): a bfloat16 y would carry only 8
significant bits, a quarter of a quantization step at |y| = 32. The remaining layers of the
transforms compute in the policy's dtype.

This module does no entropy coding: :mod:`imageae.codec` turns ``symbols``, ``z_hat``,
``scales`` and :meth:`HyperpriorCodec.z_pmf_tables` into bytes. Everything here is
``keras.ops``, so the model trains on the TensorFlow or the JAX backend.

References
----------
Z. Cui, J. Wang, S. Gao, T. Guo, Y. Feng, B. Bai, "Asymmetric gained deep image compression with
continuous rate adaptation", CVPR 2021 (the gain units).
J. Balle, D. Minnen, S. Singh, S. J. Hwang, N. Johnston, "Variational image compression with a
scale hyperprior", ICLR 2018 (the factorized density: appendix 6.1).
D. Minnen, J. Balle, G. Toderici, "Joint autoregressive and hierarchical priors for learned
image compression", NeurIPS 2018 (the mean-scale hyperprior, without the context model).
"""

import collections
import math
import statistics

import keras
import numpy as np
from keras import ops

from imageae.layers.gdn import GDN, lower_bound

QUALITY_LAMBDAS = (0.0018, 0.0035, 0.0067, 0.0130, 0.0250, 0.0483, 0.0932, 0.1800)
"""lmbda for qualities 1..8 (index quality - 1), distortion as MSE on the 0..255 scale."""

SCALE_BOUND = 0.11  # the smallest scale of the Gaussian conditional (Balle 2018, CompressAI)
LIKELIHOOD_BOUND = 1e-9  # no symbol costs more than log2(1e9) ~ 30 bits
DISTORTIONS = ("mse",)
QUANTIZATIONS = {  # what training feeds g_s and h_s in place of rounding, and its description
    "noise": "additive uniform noise U(-0.5, 0.5) on y and z",
    "mixed": "rate: additive uniform noise U(-0.5, 0.5) on y and z; g_s and h_s: rounded y - means and z, "
             "straight-through gradients (Minnen & Singh 2020)",
}
Z_TABLE_SUPPORT = 256  # integers per hyper-latent coding table (values outside are escape-coded)

PmfTables = collections.namedtuple("PmfTables", ["pmf", "offsets", "lengths"])
PmfTables.__doc__ = """Per-channel probability tables over integer supports.

pmf : float64 (C, max(lengths)); row c holds P(k) for k = offsets[c] ... offsets[c] + lengths[c] - 1
    and zeros after. A row sums to 1 minus the tail mass outside its support.
offsets : int32 (C,), the first integer of each support.
lengths : int32 (C,), the length of each support.
"""


def lambda_for_quality(quality):
    """The published lmbda of ``quality`` (1..8)."""
    if not 1 <= int(quality) <= len(QUALITY_LAMBDAS):
        raise ValueError(f"quality must be 1..{len(QUALITY_LAMBDAS)}, got {quality}")
    return QUALITY_LAMBDAS[int(quality) - 1]


# ------------------------------------------------------------------------------ entropy models


def _round_straight_through(values):
    """round(values) forward, the identity backward."""
    return values + ops.stop_gradient(ops.round(values) - values)


def _standard_normal_cdf(t):
    # erfc keeps relative precision in the lower tail, where 1 - erf rounds to 0 in float32.
    return 0.5 * ops.erfc(t * (-1.0 / math.sqrt(2.0)))


def gaussian_likelihood(values, scales):
    """P(symbol) of ``values = y - means`` under N(0, scales^2) convolved with U(-1/2, 1/2).

    ``Phi((v + 1/2) / s) - Phi((v - 1/2) / s)``, evaluated at ``-|v|`` so that both terms are
    lower-tail probabilities (no cancellation of two numbers near 1). Scales are bounded below
    at :data:`SCALE_BOUND`, the result at :data:`LIKELIHOOD_BOUND`; float32 throughout.
    """
    values = ops.abs(ops.cast(values, "float32"))
    scales = lower_bound(ops.cast(scales, "float32"), SCALE_BOUND)
    upper = _standard_normal_cdf((0.5 - values) / scales)
    lower = _standard_normal_cdf((-0.5 - values) / scales)
    return lower_bound(upper - lower, LIKELIHOOD_BOUND)


@keras.saving.register_keras_serializable(package="imageae")
class EntropyBottleneck(keras.layers.Layer):
    """A learned univariate density per channel: the factorized prior of z (Balle 2018, 6.1).

    The cumulative c(v) = sigmoid(f_K(...f_1(v))) is a composition of per-channel layers
    ``f_k(h) = g(softplus(H_k) h + b_k)`` with ``g(h) = h + tanh(a_k) * tanh(h)`` (not on the
    last one); softplus keeps every matrix positive and ``|tanh(a_k)| < 1`` keeps ``g``
    increasing, so c is a valid cumulative for any weights. Calling the layer returns the
    likelihood of each value: the mass of the density convolved with U(-1/2, 1/2),
    ``c(v + 1/2) - c(v - 1/2)``, computed on whichever side of the median keeps both sigmoids
    in their tails (the sign trick), bounded below at :data:`LIKELIHOOD_BOUND`. Always float32.

    Parameters
    ----------
    channels : int
        Channels of z (its last axis).
    filters : tuple of int
        Widths of the hidden layers of the density (3, 3, 3 as in the paper; CompressAI 3, 3, 3, 3).
    init_scale : float
        Initial width of the density (in quantization steps).
    """

    def __init__(self, channels, filters=(3, 3, 3), init_scale=10.0, **kwargs):
        kwargs["dtype"] = "float32"  # a density and its likelihoods are never bfloat16
        super().__init__(**kwargs)
        self.channels = int(channels)
        self.filters = tuple(int(f) for f in filters)
        self.init_scale = float(init_scale)

    def build(self, input_shape=None):
        widths = (1,) + self.filters + (1,)
        scale = self.init_scale ** (1.0 / (len(self.filters) + 1))
        self.matrices, self.biases, self.factors = [], [], []
        for i in range(len(self.filters) + 1):
            init = math.log(math.expm1(1.0 / scale / widths[i + 1]))
            self.matrices.append(self.add_weight(
                shape=(self.channels, widths[i + 1], widths[i]), initializer=keras.initializers.Constant(init),
                name=f"matrix{i}",
            ))
            self.biases.append(self.add_weight(
                shape=(self.channels, widths[i + 1], 1), initializer=keras.initializers.RandomUniform(-0.5, 0.5),
                name=f"bias{i}",
            ))
            if i < len(self.filters):
                self.factors.append(self.add_weight(
                    shape=(self.channels, widths[i + 1], 1), initializer="zeros", name=f"factor{i}",
                ))

    def logits_cumulative(self, values):
        """logit of the cumulative at ``values`` of shape (C, 1, n): float32 (C, 1, n)."""
        logits = values
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            logits = ops.matmul(ops.softplus(matrix), logits) + bias
            if i < len(self.factors):
                logits = logits + ops.tanh(self.factors[i]) * ops.tanh(logits)
        return logits

    def call(self, values):
        values = ops.cast(values, "float32")
        # (B, h, w, C) -> (C, 1, B*h*w): each channel evaluates its own density.
        per_channel = ops.transpose(values, (3, 0, 1, 2))
        shape = ops.shape(per_channel)
        flat = ops.reshape(per_channel, (self.channels, 1, -1))
        lower = self.logits_cumulative(flat - 0.5)
        upper = self.logits_cumulative(flat + 0.5)
        sign = ops.where(lower + upper > 0.0, -1.0, 1.0)
        likelihood = ops.abs(ops.sigmoid(sign * upper) - ops.sigmoid(sign * lower))
        likelihood = ops.transpose(ops.reshape(likelihood, shape), (1, 2, 3, 0))
        return lower_bound(likelihood, LIKELIHOOD_BOUND)

    def logits_cumulative_numpy(self, values):
        """:meth:`logits_cumulative` in float64 NumPy from the weights: ``values`` (C, n) -> (C, n).

        Used to build the probability tables once, outside any backend or device.
        """
        logits = np.asarray(values, np.float64)[:, None, :]
        for i, (matrix, bias) in enumerate(zip(self.matrices, self.biases)):
            m = np.asarray(ops.convert_to_numpy(matrix), np.float64)
            logits = np.matmul(np.logaddexp(0.0, m), logits) + np.asarray(ops.convert_to_numpy(bias), np.float64)
            if i < len(self.factors):
                a = np.asarray(ops.convert_to_numpy(self.factors[i]), np.float64)
                logits = logits + np.tanh(a) * np.tanh(logits)
        return logits[:, 0, :]

    def quantiles(self, probabilities):
        """Per channel, the points where the cumulative equals each of ``probabilities``:
        float64 (C, len(probabilities)), by bisection (the cumulative is increasing)."""
        targets = np.log(np.asarray(probabilities, np.float64) / (1.0 - np.asarray(probabilities, np.float64)))
        out = np.empty((self.channels, len(targets)))
        for j, target in enumerate(targets):
            low = np.full(self.channels, -1.0)
            high = np.full(self.channels, 1.0)
            for _ in range(64):  # widen the bracket until it holds the quantile of every channel
                below = self.logits_cumulative_numpy(low[:, None])[:, 0] > target
                above = self.logits_cumulative_numpy(high[:, None])[:, 0] < target
                if not (below.any() or above.any()):
                    break
                low = np.where(below, 2.0 * low, low)
                high = np.where(above, 2.0 * high, high)
            for _ in range(60):
                middle = 0.5 * (low + high)
                go_up = self.logits_cumulative_numpy(middle[:, None])[:, 0] < target
                low = np.where(go_up, middle, low)
                high = np.where(go_up, high, middle)
            out[:, j] = 0.5 * (low + high)
        return out

    def pmf_tables(self, max_support=256, *, tail_mass=1e-9):
        """The probability of each integer value per channel, as :class:`PmfTables`.

        Each support covers the central ``1 - tail_mass`` of its channel's density, at most
        ``max_support`` integers (centred on the median when the density is wider).
        """
        if int(max_support) < 1:
            raise ValueError(f"max_support must be at least 1, got {max_support}")
        if not 0.0 < tail_mass < 1.0:
            raise ValueError(f"tail_mass must be in (0, 1), got {tail_mass}")
        q = self.quantiles([tail_mass / 2, 0.5, 1.0 - tail_mass / 2])
        first = np.floor(q[:, 0] + 0.5).astype(np.int64)
        last = np.floor(q[:, 2] + 0.5).astype(np.int64)
        lengths = last - first + 1
        too_wide = lengths > max_support
        first = np.where(too_wide, np.floor(q[:, 1] + 0.5).astype(np.int64) - (max_support - 1) // 2, first)
        lengths = np.minimum(lengths, max_support)
        width = int(lengths.max())
        k = first[:, None] + np.arange(width)[None, :]
        lower = self.logits_cumulative_numpy(k - 0.5)
        upper = self.logits_cumulative_numpy(k + 0.5)
        sign = np.where(lower + upper > 0.0, -1.0, 1.0)
        pmf = np.abs(_sigmoid_numpy(sign * upper) - _sigmoid_numpy(sign * lower))
        pmf[np.arange(width)[None, :] >= lengths[:, None]] = 0.0
        return PmfTables(pmf, first.astype(np.int32), lengths.astype(np.int32))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(channels=self.channels, filters=list(self.filters), init_scale=self.init_scale)
        return config


def _sigmoid_numpy(x):
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def scale_table(minimum=SCALE_BOUND, maximum=256.0, levels=64):
    """Log-spaced scales (CompressAI's ``get_scale_table``) for coders that index scales."""
    return np.exp(np.linspace(math.log(minimum), math.log(maximum), levels))


def gaussian_pmf_tables(scales, max_support=4096, *, tail_mass=1e-9):
    """:class:`PmfTables` of the symbols under N(0, s^2) convolved with U(-1/2, 1/2), one row per
    scale in ``scales`` (float64 NumPy: the same formula as :func:`gaussian_likelihood`)."""
    scales = np.maximum(np.asarray(scales, np.float64).reshape(-1), SCALE_BOUND)
    z = statistics.NormalDist().inv_cdf(1.0 - tail_mass / 2)
    half = np.minimum(np.ceil(scales * z), (max_support - 1) // 2).astype(np.int64)
    width = int(2 * half.max() + 1)
    k = np.arange(width)[None, :] - half[:, None]
    v = np.abs(k).astype(np.float64)
    erfc = np.vectorize(math.erfc)

    def cdf(t):
        return 0.5 * erfc(-t / math.sqrt(2.0))

    pmf = cdf((0.5 - v) / scales[:, None]) - cdf((-0.5 - v) / scales[:, None])
    pmf[np.abs(k) > half[:, None]] = 0.0
    return PmfTables(pmf, (-half).astype(np.int32), (2 * half + 1).astype(np.int32))


# ------------------------------------------------------------------------------------ model


@keras.saving.register_keras_serializable(package="imageae")
class HyperpriorCodec(keras.Model):
    """Scale hyperprior (Balle 2018) or mean-scale hyperprior (Minnen 2018) image codec model,
    at one quality or at several (gain units, Cui 2021).

    Calling the model on a float image batch (N, H, W, channels) on the 0..1 scale (or a
    uint8 batch on 0..255), with H and W multiples of :attr:`stride`, returns a dict: ``x_hat`` (unclipped reconstruction),
    ``y_likelihoods`` (N, H/16, W/16, num_latent), ``z_likelihoods`` (N, H/64, W/64,
    num_filters), all float32, and ``quality`` (int32 (N,), the quality each image was coded
    at). ``training=True`` adds uniform noise in place of rounding (see ``quantization``).

    Parameters
    ----------
    num_filters : int
        N: channels of the hidden layers and of z.
    num_latent : int
        M: channels of y.
    mean_scale : bool
        True: h_a sees y and h_s predicts means and scales (Minnen 2018, leaky ReLUs).
        False: h_a sees |y| and h_s predicts scales only (Balle 2018, ReLUs).
    lambdas : sequence of float
        The rate-distortion trade-off of each quality, increasing: quality q (1-based) trains
        with ``loss = bpp + lambdas[q-1] * 255^2 * MSE`` (MSE on 0..1 images).
        :data:`QUALITY_LAMBDAS` lists the published values for single-rate models 1..8.
        One lambda: a single-rate model (no gains); more: a variable-rate model.
    distortion : str
        "mse" (the only one so far).
    channels : int
        Image channels (3 for RGB).
    seed : int
        Seed of the training noise and of the qualities drawn in training.
    quantization : str
        What training feeds the synthesis and h_s: "mixed" (rounded values with straight-through
        gradients, noise only in the likelihoods) or "noise" (noisy values everywhere).
        Inference and coding always round; this changes training only.

    Examples
    --------
    >>> import numpy as np
    >>> model = build_codec(num_filters=8, num_latent=12, lambdas=(0.0035, 0.013, 0.0483))
    >>> x = np.random.default_rng(0).random((1, 64, 64, 3), dtype=np.float32)
    >>> out = model(x, quality=3)
    >>> tuple(out["x_hat"].shape), tuple(out["y_likelihoods"].shape), tuple(out["z_likelihoods"].shape)
    ((1, 64, 64, 3), (1, 4, 4, 12), (1, 1, 1, 8))
    >>> model.num_qualities
    3
    """

    def __init__(self, num_filters=128, num_latent=192, mean_scale=True, lambdas=(0.0130,), distortion="mse",
                 channels=3, seed=0, quantization="noise", **kwargs):
        super().__init__(**kwargs)
        if distortion not in DISTORTIONS:
            raise ValueError(f"distortion must be one of {DISTORTIONS}, got {distortion!r}")
        if quantization not in QUANTIZATIONS:
            raise ValueError(f"quantization must be one of {tuple(QUANTIZATIONS)}, got {quantization!r}")
        if isinstance(lambdas, (int, float)):
            lambdas = (lambdas,)
        lambdas = tuple(float(v) for v in lambdas)
        if not lambdas or any(not v > 0 for v in lambdas):
            raise ValueError(f"lambdas must be positive (published: {QUALITY_LAMBDAS[0]} ... {QUALITY_LAMBDAS[-1]}), "
                             f"got {lambdas}")
        if any(b <= a for a, b in zip(lambdas, lambdas[1:])):
            raise ValueError(f"lambdas must increase with quality, got {lambdas}")
        if len(lambdas) > 255:
            raise ValueError(f"at most 255 qualities (a file stores the quality in one byte), got {len(lambdas)}")
        self.num_filters = int(num_filters)
        self.num_latent = int(num_latent)
        self.mean_scale = bool(mean_scale)
        self.lambdas = lambdas
        self.distortion = distortion
        self.channels = int(channels)
        self.seed = int(seed)
        self.quantization = quantization
        n, m = self.num_filters, self.num_latent

        def conv(filters, kernel, stride, name, activation=None, dtype=None):
            return keras.layers.Conv2D(filters, kernel, strides=stride, padding="same", activation=activation,
                                       name=name, **({"dtype": dtype} if dtype else {}))

        def deconv(filters, name, activation=None):
            return keras.layers.Conv2DTranspose(filters, 5, strides=2, padding="same", activation=activation,
                                                name=name)

        self.g_a = [
            conv(n, 5, 2, "g_a0"), GDN(name="g_a_gdn0"),
            conv(n, 5, 2, "g_a1"), GDN(name="g_a_gdn1"),
            conv(n, 5, 2, "g_a2"), GDN(name="g_a_gdn2"),
            conv(m, 5, 2, "g_a3", dtype="float32"),
        ]
        self.g_s = [
            deconv(n, "g_s0"), GDN(inverse=True, name="g_s_igdn0"),
            deconv(n, "g_s1"), GDN(inverse=True, name="g_s_igdn1"),
            deconv(n, "g_s2"), GDN(inverse=True, name="g_s_igdn2"),
            keras.layers.Conv2DTranspose(self.channels, 5, strides=2, padding="same", name="g_s3", dtype="float32"),
        ]
        act = "leaky_relu" if self.mean_scale else "relu"
        self.h_a = [
            conv(n, 3, 1, "h_a0", act),
            conv(n, 5, 2, "h_a1", act),
            conv(n, 5, 2, "h_a2", dtype="float32"),
        ]
        if self.mean_scale:
            self.h_s = [
                deconv(m, "h_s0", act),
                deconv(m * 3 // 2, "h_s1", act),
                conv(2 * m, 3, 1, "h_s2", dtype="float32"),
            ]
        else:
            self.h_s = [
                deconv(n, "h_s0", act),
                deconv(n, "h_s1", act),
                conv(m, 3, 1, "h_s2", "relu", dtype="float32"),
            ]
        self.entropy_bottleneck = EntropyBottleneck(n, name="entropy_bottleneck")
        self.seed_generator = keras.random.SeedGenerator(self.seed)
        self._tracker_loss = keras.metrics.Mean(name="loss")
        self._tracker_bpp = keras.metrics.Mean(name="bpp")
        self._tracker_mse = keras.metrics.Mean(name="mse")
        self._tracker_psnr = keras.metrics.Mean(name="psnr")

    def build(self, input_shape=None):
        # Built layer by layer, so weights exist before the first call (and a copy under
        # another dtype policy can take them with set_weights).
        def build_stack(layers, channels):
            shape = (None, None, None, channels)
            for layer in layers:
                layer.build(shape)
                shape = layer.compute_output_shape(shape)
            return shape[-1]

        build_stack(self.g_a, self.channels)
        build_stack(self.g_s, self.num_latent)
        build_stack(self.h_a, self.num_latent)
        build_stack(self.h_s, self.num_filters)
        self.entropy_bottleneck.build((None, None, None, self.num_filters))
        # The hyper-latents' integer coding tables (per channel of z: a 16-bit frequency table,
        # escape last, zero-padded; its length; the integer of its first entry), stored with the
        # weights once training is done (imageae.codec.session.freeze_coding_tables) so that
        # every machine codes with the same integers. All zero until then: the coder then
        # quantizes them from the float density, which another machine may round differently.
        def table(name, shape):
            return self.add_weight(shape=shape, initializer="zeros", dtype="int32", trainable=False, name=name)

        self.z_cdf_tables = table("z_cdf_tables", (self.num_filters, Z_TABLE_SUPPORT + 1))
        self.z_table_lengths = table("z_table_lengths", (self.num_filters,))
        self.z_table_offsets = table("z_table_offsets", (self.num_filters,))
        if self.num_qualities > 1:
            # Log-gains (always positive gains). y's start at sqrt(lambda / geometric mean): at
            # high rate the quantization step that balances MSE against bits goes as
            # 1/sqrt(lambda), so each quality starts near its own step size.
            log_lambdas = np.log(np.asarray(self.lambdas))
            start = (0.5 * (log_lambdas - log_lambdas.mean()))[:, None].repeat(self.num_latent, axis=1)
            q, m, n = self.num_qualities, self.num_latent, self.num_filters

            def gains(name, width, initializer):
                # float32 and never autocast: the gains scale y before rounding.
                return self.add_weight(shape=(q, width), initializer=initializer, name=name, dtype="float32",
                                       autocast=False)

            self.log_gains = gains("log_gains", m, keras.initializers.Constant(start))
            self.log_inverse_gains = gains("log_inverse_gains", m, keras.initializers.Constant(-start))
            self.log_hyper_gains = gains("log_hyper_gains", n, "zeros")
            self.log_hyper_inverse_gains = gains("log_hyper_inverse_gains", n, "zeros")
        self.built = True

    def load_own_variables(self, store):
        # Files saved before the coding tables were stored hold only the gains (if any): load
        # those and leave the tables unfrozen.
        if len(store.keys()) == len(self._trainable_variables):
            for i, variable in enumerate(self._trainable_variables):
                variable.assign(store[f"{i}"])
            return
        super().load_own_variables(store)

    @property
    def coding_tables_frozen(self):
        """Whether the integer coding tables of z are stored with the weights."""
        return bool(np.all(np.asarray(self.z_table_lengths) > 0))

    @property
    def stride(self):
        """Height and width of inputs must be multiples of this (16 for y, 4 more for z)."""
        return 64

    @property
    def num_qualities(self):
        """Qualities this model codes at: 1 .. num_qualities."""
        return len(self.lambdas)

    # --- qualities -----------------------------------------------------------------------------
    def check_quality(self, quality):
        """``quality`` as an int in 1..num_qualities; ValueError naming the range otherwise."""
        if isinstance(quality, (bool, np.bool_)) or not isinstance(quality, (int, np.integer)):
            raise ValueError(f"quality must be an integer 1..{self.num_qualities}, got {quality!r}")
        if not 1 <= int(quality) <= self.num_qualities:
            raise ValueError(f"quality must be 1..{self.num_qualities} for this model, got {quality}")
        return int(quality)

    def _qualities(self, quality, batch):
        """int32 (batch,) 1-based qualities from an int or an (batch,) integer tensor."""
        if quality is None:
            if self.num_qualities == 1:
                return ops.ones((batch,), "int32")
            raise ValueError(f"this model codes at qualities 1..{self.num_qualities}: pass quality=")
        if isinstance(quality, (int, np.integer, bool, np.bool_)):
            return ops.full((batch,), self.check_quality(quality), "int32")
        return ops.cast(ops.reshape(quality, (-1,)), "int32")

    def _gain(self, table, values, quality):
        """values * exp(table[quality - 1]) per image; identity for a single-rate model."""
        if self.num_qualities == 1:
            return values
        index = self._qualities(quality, ops.shape(values)[0]) - 1
        gains = ops.exp(ops.take(table, index, axis=0))
        return values * ops.reshape(gains, (-1, 1, 1, ops.shape(table)[-1]))

    # --- transforms (no entropy coding) ----------------------------------------------------
    def _check_images(self, x):
        shape = tuple(x.shape)
        if len(shape) != 4 or shape[-1] != self.channels:
            raise ValueError(f"expected images (batch, height, width, {self.channels}) on the 0..1 scale, "
                             f"got shape {shape}")
        for side in shape[1:3]:
            if isinstance(side, int) and side % self.stride:
                raise ValueError(f"height and width must be multiples of {self.stride} (model.stride), got "
                                 f"{shape[1]}x{shape[2]}: pad the image first (imageae's pipelines pad and crop)")

    @staticmethod
    def _run(layers, h):
        for layer in layers:
            h = layer(h)
        return h

    @staticmethod
    def unit_scale(x):
        """Images as float32 on the 0..1 scale: integer (uint8) input is divided by 255, float
        input is taken as already on 0..1."""
        x = ops.convert_to_tensor(x)
        if "int" in keras.backend.standardize_dtype(x.dtype):
            return ops.cast(x, "float32") / 255.0
        return ops.cast(x, "float32")

    def analyze(self, x, quality=None):
        """y = g_a(x) (times the quality's gain): float32 (N, H/16, W/16, num_latent) latents of
        images on the 0..1 scale (or uint8 images, see :meth:`unit_scale`)."""
        x = ops.convert_to_tensor(x)
        self._check_images(x)
        y = ops.cast(self._run(self.g_a, self.unit_scale(x)), "float32")
        return self._gain(getattr(self, "log_gains", None), y, quality)

    def hyper(self, y, quality=None):
        """z = h_a(y) (h_a(|y|) for the scale-only model), times the quality's hyper gain:
        float32 (N, H/64, W/64, num_filters)."""
        y = ops.cast(y, "float32")
        z = ops.cast(self._run(self.h_a, y if self.mean_scale else ops.abs(y)), "float32")
        return self._gain(getattr(self, "log_hyper_gains", None), z, quality)

    def y_scales_means(self, z_hat, quality=None):
        """(scales, means) of y given z_hat: float32 (N, H/16, W/16, num_latent) each.

        Scales are already bounded below at :data:`SCALE_BOUND`; means are zeros for the
        scale-only model.
        """
        z_hat = self._gain(getattr(self, "log_hyper_inverse_gains", None), ops.cast(z_hat, "float32"), quality)
        params = ops.cast(self._run(self.h_s, z_hat), "float32")
        if self.mean_scale:
            scales, means = ops.split(params, 2, axis=-1)
        else:
            scales, means = params, ops.zeros_like(params)
        return lower_bound(scales, SCALE_BOUND), means

    def _synthesize(self, y_hat, quality=None):
        y_hat = self._gain(getattr(self, "log_inverse_gains", None), ops.cast(y_hat, "float32"), quality)
        return ops.cast(self._run(self.g_s, y_hat), "float32")

    def synthesize(self, y_hat, quality=None):
        """x_hat = g_s(y_hat) (y_hat times the quality's inverse gain first), clipped to 0..1:
        float32 (N, 16 h, 16 w, channels)."""
        return ops.clip(self._synthesize(y_hat, quality), 0.0, 1.0)

    @staticmethod
    def quantize_latents(values, means=None):
        """Integer symbols: round(values - means) (round(values) without means), int32.

        (Not named ``quantize``: that is Keras's weight-quantization method of every Model.)

        For y pass the means of :meth:`y_scales_means` (zeros, or None, for the scale-only
        model); for z pass none: z_hat = round(z).
        """
        values = ops.cast(values, "float32")
        if means is not None:
            values = values - ops.cast(means, "float32")
        return ops.cast(ops.round(values), "int32")

    @staticmethod
    def dequantize_latents(symbols, means=None):
        """The inverse of :meth:`quantize_latents`: symbols + means, float32."""
        values = ops.cast(symbols, "float32")
        return values if means is None else values + ops.cast(means, "float32")

    def z_pmf_tables(self, max_support=256, *, tail_mass=1e-9):
        """The prior of z_hat as float64 :class:`PmfTables` (pmf, offsets, lengths), one row per
        channel of z (shared by every quality), computed in NumPy from the weights; each row
        sums to 1 minus the mass outside its support (about ``tail_mass``). Symbols outside
        [offset, offset + length) need an escape code in the bitstream."""
        return self.entropy_bottleneck.pmf_tables(max_support, tail_mass=tail_mass)

    # --- forward pass, rate estimate --------------------------------------------------------
    def call(self, x, training=False, quality=None):
        """See the class docstring. ``quality`` (an int or an int (N,) tensor, 1-based) may be
        left out for a variable-rate model: training then draws one per image, uniformly, and
        inference codes image i at quality ``i % num_qualities + 1`` (a batch that repeats each
        image num_qualities times covers every quality)."""
        x = ops.convert_to_tensor(x)
        batch = ops.shape(x)[0]
        if quality is None:
            if self.num_qualities == 1:
                quality = ops.ones((batch,), "int32")
            elif training:
                quality = keras.random.randint((batch,), 1, self.num_qualities + 1, seed=self.seed_generator,
                                               dtype="int32")
            else:
                quality = ops.arange(batch, dtype="int32") % self.num_qualities + 1
        quality = self._qualities(quality, batch)
        y = self.analyze(x, quality)
        z = self.hyper(y, quality)
        # z_noisy / y_noisy: what the likelihoods see; z_hat / y_hat: what h_s and g_s see.
        if training:
            z_noisy = z + keras.random.uniform(ops.shape(z), -0.5, 0.5, seed=self.seed_generator)
            z_hat = _round_straight_through(z) if self.quantization == "mixed" else z_noisy
        else:
            z_hat = z_noisy = ops.round(z)
        z_likelihoods = self.entropy_bottleneck(z_noisy)
        scales, means = self.y_scales_means(z_hat, quality)
        if training:
            y_noisy = y + keras.random.uniform(ops.shape(y), -0.5, 0.5, seed=self.seed_generator)
            y_hat = _round_straight_through(y - means) + means if self.quantization == "mixed" else y_noisy
        else:
            y_hat = y_noisy = ops.round(y - means) + means
        y_likelihoods = gaussian_likelihood(y_noisy - means, scales)
        return {"x_hat": self._synthesize(y_hat, quality), "y_likelihoods": y_likelihoods,
                "z_likelihoods": z_likelihoods, "quality": quality}

    @staticmethod
    def bits_per_image(outputs):
        """-log2 of the likelihoods of y and z summed per image: float32 (N,)."""
        bits = 0.0
        for key in ("y_likelihoods", "z_likelihoods"):
            bits = bits + ops.sum(-ops.log(outputs[key]), axis=(1, 2, 3)) / math.log(2.0)
        return bits

    def estimate_bpp(self, x, quality=None, *, num_pixels=None):
        """Bits per pixel per image, float32 (N,), from the model's likelihoods with hard rounding.

        This is what an ideal entropy coder spends on y and z; a file adds its header and the
        coder's overhead. ``quality``: as in :meth:`call`. ``num_pixels``: the pixel count of
        the original image when ``x`` is a padded copy (default: the pixels of ``x``).
        """
        x = ops.convert_to_tensor(x)
        outputs = self(x, training=False, quality=quality)
        if num_pixels is None:
            num_pixels = ops.shape(x)[1] * ops.shape(x)[2]
        return self.bits_per_image(outputs) / ops.cast(num_pixels, "float32")

    # --- loss --------------------------------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if y_pred is None:
            y_pred = self(x, training=training)
        x = self.unit_scale(x)
        x_hat = ops.cast(y_pred["x_hat"], "float32")
        num_pixels = ops.cast(ops.shape(x)[1] * ops.shape(x)[2], "float32")
        bpp = self.bits_per_image(y_pred) / num_pixels
        mse = ops.mean(ops.square(x - x_hat), axis=(1, 2, 3))
        lmbda = ops.take(ops.convert_to_tensor(self.lambdas, "float32"), y_pred["quality"] - 1)
        loss = ops.mean(bpp + lmbda * 255.0**2 * mse)
        image_mse = ops.mean(ops.square(ops.clip(x_hat, 0.0, 1.0) - x), axis=(1, 2, 3))
        psnr = ops.mean(-10.0 * ops.log(ops.maximum(image_mse, 1e-10)) / math.log(10.0))
        self._tracker_loss.update_state(loss)
        self._tracker_bpp.update_state(ops.mean(bpp))
        self._tracker_mse.update_state(ops.mean(mse) * 255.0**2)
        self._tracker_psnr.update_state(psnr)
        return loss

    @property
    def metrics(self):
        return [self._tracker_loss, self._tracker_bpp, self._tracker_mse, self._tracker_psnr]

    def get_config(self):
        config = super().get_config()
        config.update(
            num_filters=self.num_filters, num_latent=self.num_latent, mean_scale=self.mean_scale,
            lambdas=list(self.lambdas), distortion=self.distortion, channels=self.channels, seed=self.seed,
            quantization=self.quantization,
        )
        return config


GAIN_TABLES = ("log_gains", "log_inverse_gains", "log_hyper_gains", "log_hyper_inverse_gains")


def gains_for_lambdas(log_gains, old_lambdas, new_lambdas):
    """A gain table (one row per quality) carried over to ``new_lambdas``, which must contain
    every lambda of ``old_lambdas``: their rows are kept, each new row is the line in log(lambda)
    through the two nearest old rows (interpolated between them, extrapolated beyond the ends).
    """
    log_gains = np.asarray(log_gains, dtype=np.float64)
    old, new = list(old_lambdas), list(new_lambdas)
    lost = [v for v in old if v not in new]
    if lost:
        raise ValueError(f"the new lambdas {new} drop {lost} of the model's {old}: a model can only gain qualities")
    if len(old) < 2:
        raise ValueError("a single-rate model has no gains to extend: train a variable-rate model")
    x = np.log(np.asarray(old))
    rows = []
    for value in new:
        if value in old:
            rows.append(log_gains[old.index(value)])
            continue
        t = math.log(value)
        j = int(np.clip(np.searchsorted(x, t), 1, len(x) - 1))  # the segment [j-1, j] nearest to t
        slope = (log_gains[j] - log_gains[j - 1]) / (x[j] - x[j - 1])
        rows.append(log_gains[j - 1] + slope * (t - x[j - 1]))
    return np.stack(rows).astype(np.float32)


def with_lambdas(model, lambdas, policy=None, **overrides):
    """A copy of the variable-rate codec ``model`` that codes at ``lambdas`` (a superset of its
    own): same transforms and entropy models, the gains of its qualities kept and those of new
    qualities inter/extrapolated by :func:`gains_for_lambdas`, a starting point for training
    the new ones. Its layers are built under dtype ``policy`` (default: the current one);
    ``overrides`` go to the constructor like :func:`imageae.runtime.rebuilt`'s."""
    from imageae.runtime import rebuilt

    lambdas = tuple(float(v) for v in lambdas)
    tables = {id(getattr(model, name)) for name in GAIN_TABLES if hasattr(model, name)}
    if not tables:
        raise ValueError("a single-rate model has no gains to extend: train a variable-rate model")
    weights = [
        gains_for_lambdas(v.numpy(), model.lambdas, lambdas) if id(v) in tables else v.numpy() for v in model.weights
    ]
    return rebuilt(model, policy or keras.config.dtype_policy().name, lambdas=lambdas, weights=weights, **overrides)


def build_codec(num_filters=128, num_latent=192, mean_scale=True, lambdas=(0.0130,), distortion="mse", channels=3,
                seed=0, name=None, quantization="noise"):
    """Build a :class:`HyperpriorCodec` with its weights created."""
    model = HyperpriorCodec(num_filters=num_filters, num_latent=num_latent, mean_scale=mean_scale, lambdas=lambdas,
                            distortion=distortion, channels=channels, seed=seed, quantization=quantization, name=name)
    model.build((None, None, None, channels))
    return model
