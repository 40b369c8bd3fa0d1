"""Encoder-side latent refinement: spend encoding time to make smaller or better files that
every decoder reads unchanged.

The analysis transform ``g_a`` predicts the latents of an image in one pass; for a given image
they are not the latents that minimise the codec's own rate-distortion cost
``J = bits / pixels + lambda * MSE`` (on 0..255). The gap (the "amortization gap"; Campos et
al. 2019, Yang et al. 2020) is largest for undertrained encoders. :func:`refine_latents`
closes part of it by gradient descent on y and z themselves, through the fixed ``h_s``, ``g_s``
and entropy models:

* rounding is relaxed by stochastic Gumbel annealing (SGA; Yang et al. 2020): each latent is
  rounded down or up by a Gumbel-softmax draw whose temperature falls from
  :data:`TEMPERATURE_START` to :data:`TEMPERATURE_END`, so the relaxed cost the descent
  follows becomes the discrete cost of the file (rate and distortion see the same soft-rounded
  latents);
* Adam with a cosine-decayed step size, from the encoder's latents;
* every ``check_every`` steps the cost is measured with hard rounding, and the best latents so
  far are kept, so a step size that overshoots cannot make the result worse than an earlier one;
* at the end the refined and the plain latents are both coded as the file would be (the
  integer tables' bits, the decoded uint8 pixels) and the one with the lower ``J`` wins.

The bitstream does not change: a refined file is an ordinary ``.iae`` file. On codec-v4 and
three BSDS500 train photos (481x321), 100 steps lower ``J`` by 11-14 % (the straight-through +
noise relaxation used before SGA: 4-8 %), in about 1.2 s per Mpixel per step on 2 CPU cores
(:func:`descent_model`; measured with 100 steps: 1.14 s on data/clean/coffee.png, 600 x 400,
0.91 s on camera.png, 512 x 512 grey, so about 18 s for a 481 x 321 photo; the earlier figure
of 10 s a photo, 0.7 s per Mpixel per step, was 30-50 % low). Along the rate-distortion
curve that is a BD-rate of -24.3 % against the one-pass encoder, and -40.3 % / -5.6 % against
JPEG / WebP (all 100 BSDS500 val photos, qualities 1, 3, 5, 7, 9; ``python benchmarks/compress.py --refine-steps 100 --qualities
1,3,5,7,9 --out benchmarks/results/refine-full``).

The random draws use seeds fixed by the step number, so the same image, quality and steps give
the same bytes on one machine.
"""

import weakref

import numpy as np

# The gradient pass holds g_s's activations for the whole padded image at once (no tiling):
# measured peak RSS 1.6 GB for 1024x1024, 3.3 GB for 2048x2048 (bfloat16 descent; 2.0 and
# 5.4 GB in float32). Larger images are refused rather than swapped.
MAX_REFINE_PIXELS = 4 * 2**20
DEFAULT_LEARNING_RATE = 0.06
# SGA's temperature falls geometrically over the steps between these two.
TEMPERATURE_START = 0.5
TEMPERATURE_END = 0.02
_ATANH_EDGE = 1.0 - 1e-5  # atanh is infinite at 1: a latent exactly on a bin centre
_DESCENT_MODELS = weakref.WeakKeyDictionary()


def descent_model(session):
    """The model the descent differentiates: ``session.model`` computing in bfloat16 on CPUs with
    native bf16 (codec-v4, 100 steps, three photos: 10.2 s instead of 14.0 s a photo, the same
    cost reductions to within 0.1 %), else the session's float32 model; built once per session.
    Its rounding needs no bit-exactness: the symbols are chosen from its latents by the
    session's float32 and fixed-point path, as for any encoder."""
    from imageae.runtime import cpu_has_bf16, with_precision

    if session not in _DESCENT_MODELS:
        _DESCENT_MODELS[session] = (with_precision(session.model, "mixed_bfloat16", copy=True)
                                    if cpu_has_bf16() else session.model)
    return _DESCENT_MODELS[session]


def check_refine_steps(refine_steps):
    """``refine_steps`` as an int; ValueError unless it is a whole number >= 0 (0: no refinement)."""
    if isinstance(refine_steps, bool) or not isinstance(refine_steps, (int, np.integer)) or refine_steps < 0:
        raise ValueError(f"refine_steps must be a whole number >= 0, got {refine_steps!r}")
    return int(refine_steps)


def file_cost(session, image, latents, quality):
    """``J`` of latents as their file would realise it: the integer tables' bits per pixel plus
    lambda times the MSE (0..255) of the decoded uint8 pixels against ``image``."""
    from imageae.codec.transforms import latent_table_bits, synthesize_image

    height, width = image.shape[:2]
    bits = latent_table_bits(session, latents)
    colour_mode = "grey" if image.shape[-1] == 1 else "rgb"
    decoded = synthesize_image(session, latents, height, width, colour_mode)
    mse = np.mean(np.square(decoded.astype(np.float64) - image.astype(np.float64)))
    return bits / (height * width) + session.model.lambdas[quality - 1] * mse


def annealed_round(v, temperature, seed):
    """SGA's relaxed rounding (Yang et al. 2020) of the float tensor ``v``: ``floor(v)`` plus a
    Gumbel-softmax draw between rounding down (0) and up (1), with logits ``-atanh(distance to
    that integer) / temperature``. Differentiable in ``v``; as the temperature falls it tends
    to ``round(v)``, so a cost computed on it tends to the cost of the rounded latents.
    ``seed``: a stateless-RNG seed, shape (2,) int64 (the same seed gives the same draw)."""
    import tensorflow as tf

    floor = tf.floor(v)
    fraction = v - floor
    logits = tf.stack([-tf.atanh(tf.minimum(fraction, _ATANH_EDGE)),
                       -tf.atanh(tf.minimum(1.0 - fraction, _ATANH_EDGE))], -1)
    uniform = tf.random.stateless_uniform(tf.concat([tf.shape(v), [2]], 0), seed, 1e-6, 1.0 - 1e-6, v.dtype)
    gumbel = -tf.math.log(-tf.math.log(uniform))
    return floor + tf.nn.softmax(logits / temperature + gumbel, axis=-1)[..., 1]


def refine_latents(session, image, quality, steps, *, learning_rate=None, check_every=5, seed=0, progress=None):
    """Latents (:class:`~imageae.codec.session.CodecLatents`) of ``image`` at ``quality`` after
    ``steps`` steps of rate-distortion descent (see the module docstring); never worse, by the
    file's own ``J``, than :func:`~imageae.codec.session.analyze_image`'s.

    ``image``: uint8 (H, W, C), already checked by the caller; ``quality``: a valid int.
    ``learning_rate``: Adam's peak step in quantization bins (default
    :data:`DEFAULT_LEARNING_RATE`), cosine-decayed to 0 over ``steps``.
    ``progress``: None, or a callable called as ``progress(done, steps)`` after each step (a
    progress bar's hook).
    Raises ValueError for ``steps`` < 1 or an image above :data:`MAX_REFINE_PIXELS`.
    """
    import keras
    import tensorflow as tf

    from imageae.codec.transforms import _encoder_latents, _latents_from, _model_input
    from imageae.models.codec import gaussian_likelihood

    steps = int(steps)
    if steps < 1:
        raise ValueError(f"refinement steps must be at least 1, got {steps}")
    height, width = image.shape[:2]
    x = _model_input(session, image)
    if x.shape[1] * x.shape[2] > MAX_REFINE_PIXELS:
        raise ValueError(f"latent refinement handles images up to {MAX_REFINE_PIXELS / 2**20:.0f} Mpixel "
                         f"(padded), this one is {height}x{width}: compress it without refinement")
    model = descent_model(session)
    lmbda = float(model.lambdas[quality - 1])
    q = tf.constant([quality], tf.int32)
    target = tf.constant(x[:, :height, :width, : image.shape[-1]])
    grey = image.shape[-1] == 1 and x.shape[-1] != 1  # grey decodes as the mean of the channels
    x = tf.constant(x)
    num_pixels = float(height * width)
    y0, z0 = _encoder_latents(session, image, quality)
    y, z = tf.Variable(y0), tf.Variable(z0)

    def cost(y, z, seed_pair=None, temperature=None):
        """bits per pixel + lambda MSE: with SGA's soft rounding when seed_pair is given, else
        with hard rounding (the file's cost, up to the tables' integer precision)."""
        if seed_pair is None:
            z_hat = tf.round(z)
            scales, means = model.y_scales_means(z_hat, q)
            y_hat = tf.round(y - means) + means
        else:
            z_hat = annealed_round(z, temperature, seed_pair)
            scales, means = model.y_scales_means(z_hat, q)
            y_hat = annealed_round(y - means, temperature, seed_pair + 1) + means
        nats = -tf.reduce_sum(tf.math.log(model.entropy_bottleneck(z_hat)))
        nats -= tf.reduce_sum(tf.math.log(gaussian_likelihood(y_hat - means, scales)))
        x_hat = model._synthesize(y_hat, q)[:, :height, :width]
        if seed_pair is None:
            x_hat = tf.clip_by_value(x_hat, 0.0, 1.0)
        if grey:
            x_hat = tf.reduce_mean(x_hat, axis=-1, keepdims=True)
        bpp = nats / (np.log(2.0) * num_pixels)
        return bpp + lmbda * 255.0**2 * tf.reduce_mean(tf.square(x_hat - target))

    peak = DEFAULT_LEARNING_RATE if learning_rate is None else float(learning_rate)
    optimizer = keras.optimizers.Adam(keras.optimizers.schedules.CosineDecay(peak, steps))
    optimizer.build([y, z])

    @tf.function(autograph=False)
    def step(index):
        with tf.GradientTape() as tape:
            progress = tf.cast(index, tf.float32) / steps
            temperature = TEMPERATURE_START * (TEMPERATURE_END / TEMPERATURE_START) ** progress
            loss = cost(y, z, tf.stack([tf.constant(seed, tf.int64), 2 * tf.cast(index, tf.int64)]), temperature)
        optimizer.apply_gradients(zip(tape.gradient(loss, [y, z]), [y, z]))

    hard_cost = tf.function(lambda: cost(y, z), autograph=False)
    best = (float(hard_cost()), y0, z0)
    for index in range(steps):
        step(tf.constant(index, tf.int64))
        if (index + 1) % check_every == 0 or index + 1 == steps:
            current = float(hard_cost())
            if current < best[0]:
                best = (current, y.numpy(), z.numpy())
        if progress is not None:
            progress(index + 1, steps)
    plain = _latents_from(session, y0, z0, quality)
    if best[1] is y0:
        return plain
    refined = _latents_from(session, best[1], best[2], quality)
    return refined if file_cost(session, image, refined, quality) < file_cost(session, image, plain, quality) else plain
