"""The hyper-synthesis ``h_s`` in fixed-point arithmetic: coding probabilities from integers only.

A hyperprior decoder chooses the Gaussian table of every main-latent symbol from the scales
that ``h_s`` computes out of the decoded hyper-latents ``z``. Encoder and decoder must choose
the same table, and in float32 they need not: another CPU, BLAS, thread count or the graph
that TensorFlow Serving runs can round a convolution differently, and a scale that lies within
a rounding error of a table bound then picks the neighbouring table, so the file no longer
decodes. (Balle, Johnston and Minnen, "Integer networks for data compression with
latent-variable models", ICLR 2019, describe the problem and train integer networks against it.)

:class:`FixedPointHyperSynthesis` evaluates a trained ``h_s`` (and the quality's inverse
hyper gain in front of it) on integers instead, after training, without retraining:

- each layer's kernel and bias are rounded to integers at a power-of-two scale
  (``round(w * 2**s)``: exact for any float32 weight), the inverse gains likewise;
- activations are integers at scale ``2**ACTIVATION_BITS``: after each layer the accumulator is
  divided by a power of two and rounded half up, clamped to +-``2**ACTIVATION_RANGE_BITS`` (in
  real units), and the leaky ReLU multiplies by ``LEAKY_SLOPE`` = 3355443 / 2**24 (0.19999998, for
  Keras's 0.2) and rounds;
- every integer is held in a float64 and every sum is bounded, per layer and for any input
  (``z`` is clamped to +-``Z_RANGE``), below 2**52. A float64 sum of integers below 2**53 is
  exact in any order, so any convolution kernel (Eigen, MKL, a GPU, TF Serving's graph) gives
  the same integers: the scales, means and table indexes are identical everywhere.

The output, ``params = accumulator * 2**-s`` (exact), differs from the float32 ``h_s`` by
about 1e-5 (measured in the tests), far below what the coding cares about; the means derived
here are what both encoder and decoder use. Only ``h_s`` needs this: the analysis and synthesis
transforms can round differently on another machine and merely move a reconstructed pixel's
last bit (or, at the encoder, a symbol), never the decodability of a file.

One float operation remains: ``exp`` of the learned log-gains (libm, once per model), then
rounded to ``GAIN_BITS`` bits; a different libm could flip one of those roundings only if the
gain fell within 1e-16 of a rounding boundary.
"""

import math

import numpy as np

ACTIVATION_BITS = 15  # fractional bits of the integer activations
ACTIVATION_RANGE_BITS = 8  # activations clamped to +-256 (real units; codec-v2's stayed below 10 on photos)
GAIN_BITS = 14  # fractional bits of the inverse hyper gains
Z_RANGE = 2**10  # hyper-latent symbols clamped to +-1024 (real ones stay within a few dozen)
MAX_WEIGHT_BITS = 30
LEAKY_SLOPE = (3355443, 24)  # 3355443 / 2**24 = 0.19999998, for Keras's leaky_relu default 0.2
_EXACT = 2.0**52  # every accumulator stays below this: float64 sums of integers are then exact


def _activation_name(layer):
    name = getattr(layer.activation, "__name__", "linear")
    if name not in ("linear", "relu", "leaky_relu"):
        raise ValueError(f"h_s layer {layer.name!r} has activation {name!r}; fixed point supports "
                         "linear, relu and leaky_relu")
    return name


class FixedPointHyperSynthesis:
    """``(z_symbols, quality) -> (scales, means)`` of a :class:`~imageae.models.codec.HyperpriorCodec`
    in exact integer arithmetic (see the module docstring).

    Parameters
    ----------
    model : HyperpriorCodec
        Its ``h_s`` must be Conv2D / Conv2DTranspose layers (``padding="same"``) with linear,
        relu or leaky_relu activations.

    Calling it with int32 ``z_symbols`` (N, h, w, num_filters) and a quality (an int or an
    int32 scalar tensor, 1-based; ignored by a single-rate model) returns float64 scales
    (bounded below at ``SCALE_BOUND``) and float32 means, each (N, 4h, 4w, num_latent), as
    TensorFlow tensors; it works eagerly and inside a ``tf.function`` (the export's graph).
    """

    def __init__(self, model):
        import keras

        from imageae.models.codec import SCALE_BOUND

        self.mean_scale = bool(model.mean_scale)
        # The float32 bound, as the float model applies it (index 0 of the scale table is that value too).
        self.scale_bound = float(np.float32(SCALE_BOUND))
        if model.num_qualities > 1:
            log_gains = np.asarray(model.log_hyper_inverse_gains.numpy(), np.float64)
            gains = np.vectorize(math.exp)(log_gains)  # Python's libm exp, then rounded
            self.gains = np.round(gains * 2.0**GAIN_BITS)
            input_bits, input_bound = GAIN_BITS, Z_RANGE * float(self.gains.max())
        else:
            self.gains = None
            input_bits, input_bound = 0, float(Z_RANGE)
        self.layers = []
        for i, layer in enumerate(model.h_s):
            transpose = isinstance(layer, keras.layers.Conv2DTranspose)
            if not isinstance(layer, (keras.layers.Conv2D, keras.layers.Conv2DTranspose)) or layer.padding != "same":
                raise ValueError(f"h_s layer {layer.name!r} is not a 'same'-padded convolution")
            kernel = np.asarray(layer.kernel.numpy(), np.float64)
            out_channels = kernel.shape[-2 if transpose else -1]
            bias = np.asarray(layer.bias.numpy(), np.float64) if layer.use_bias else np.zeros(out_channels)
            # Sum of |weights| into each output channel: Conv2D (kh, kw, in, out), transposed (kh, kw, out, in).
            weight_mass = np.abs(kernel).sum(axis=(0, 1, 3) if transpose else (0, 1, 2)).max()
            # The largest scale at which |input| * sum|w| + |bias| stays below 2**52 for any input.
            bias_mass = float(np.abs(bias).max(initial=0.0)) * 2.0**input_bits
            bits = math.floor(math.log2(_EXACT / (input_bound * weight_mass + bias_mass + 1.0)))
            bits = min(bits, MAX_WEIGHT_BITS)
            if bits < 8:
                raise ValueError(f"h_s layer {layer.name!r}: weights too large for exact fixed point")
            last = i == len(model.h_s) - 1
            if last and _activation_name(layer) == "leaky_relu":
                raise ValueError(f"h_s layer {layer.name!r}: a leaky_relu output layer is not supported")
            self.layers.append({
                "kernel": np.round(kernel * 2.0**bits),
                "bias": np.round(bias * 2.0 ** (bits + input_bits)),
                "transpose": transpose,
                "stride": int(layer.strides[0]),
                "activation": _activation_name(layer),
                "bits": bits + input_bits,  # fractional bits of the accumulator
                "last": last,
            })
            input_bits, input_bound = ACTIVATION_BITS, 2.0 ** (ACTIVATION_BITS + ACTIVATION_RANGE_BITS)
        self._tensors = None

    def _constants(self):
        import tensorflow as tf

        if self._tensors is None:
            self._tensors = {
                "gains": None if self.gains is None else tf.constant(self.gains, tf.float64),
                "layers": [(tf.constant(L["kernel"], tf.float64), tf.constant(L["bias"], tf.float64))
                           for L in self.layers],
            }
        return self._tensors

    def __call__(self, z_symbols, quality=1):
        import tensorflow as tf

        constants = self._constants()
        h = tf.clip_by_value(tf.cast(z_symbols, tf.float64), -float(Z_RANGE), float(Z_RANGE))
        if constants["gains"] is not None:
            index = tf.cast(tf.reshape(quality, []), tf.int32) - 1
            h = h * tf.reshape(tf.gather(constants["gains"], index), [1, 1, 1, -1])
        limit = 2.0 ** (ACTIVATION_BITS + ACTIVATION_RANGE_BITS)
        slope, slope_bits = LEAKY_SLOPE
        for layer, (kernel, bias) in zip(self.layers, constants["layers"]):
            stride = layer["stride"]
            if layer["transpose"]:
                shape = tf.shape(h)
                out = tf.stack([shape[0], shape[1] * stride, shape[2] * stride, tf.shape(kernel)[2]])
                h = tf.nn.conv2d_transpose(h, kernel, out, stride, "SAME")
            else:
                h = tf.nn.conv2d(h, kernel, stride, "SAME")
            h = h + bias
            if layer["last"]:
                h = h * 2.0 ** -layer["bits"]  # real units, exactly
                if layer["activation"] == "relu":
                    h = tf.nn.relu(h)
                break
            # Back to ACTIVATION_BITS fractional bits (round half up), clamp, activation.
            h = tf.floor(h * 2.0 ** (ACTIVATION_BITS - layer["bits"]) + 0.5)
            h = tf.clip_by_value(h, -limit, limit)
            if layer["activation"] == "relu":
                h = tf.nn.relu(h)
            elif layer["activation"] == "leaky_relu":
                h = tf.where(h < 0, tf.floor(h * (slope * 2.0**-slope_bits) + 0.5), h)
        if self.mean_scale:
            scales, means = tf.split(h, 2, axis=-1)
        else:
            scales, means = h, tf.zeros_like(h)
        return tf.maximum(scales, self.scale_bound), tf.cast(means, tf.float32)
