"""Sampling, reconstruction and interpolation with a :class:`~imageae.models.vae.ConvVAE`.

Pure functions on arrays (no file IO). Latents are drawn with TensorFlow's stateless
generators, so the same seed gives the same images in the Python API and in an exported
SavedModel; a ``temperature`` scales the prior's (or each mixture component's) standard
deviation.
"""

import numpy as np

SAMPLERS = ("normal", "gmm")


def fit_mixture(latents, components, *, seed=0, iterations=200, tolerance=1e-6):
    """Fit a diagonal-covariance Gaussian mixture to latent vectors by EM.

    Written here in NumPy (about 30 lines) because OpenCV 5 no longer ships its ``ml``
    module and scikit-learn would be a large dependency for one function. Initialised with
    k-means++ and the data's variance. Returns
    ``(log_weights (K,), means (K, D), log_variances (K, D))`` as float32.
    """
    x = np.asarray(latents, np.float64)
    n = len(x)
    k = int(min(components, n))
    rng = np.random.default_rng(seed)
    # k-means++ starting points: each next mean is drawn with probability proportional to the
    # squared distance from the nearest mean chosen so far, which spreads them over the clusters.
    means = [x[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min([((x - m) ** 2).sum(1) for m in means], axis=0)
        total = d2.sum()
        means.append(x[rng.choice(n, p=d2 / total)] if total > 0 else x[rng.integers(n)])
    means = np.stack(means)
    variances = np.tile(x.var(axis=0) + 1e-6, (k, 1))
    log_weights = np.full(k, -np.log(k))
    previous = -np.inf
    for _ in range(iterations):
        # E step: log responsibilities under each diagonal Gaussian
        log_p = _joint_log_probs(x, log_weights, means, variances)
        log_norm = _log_sum_exp(log_p)
        resp = np.exp(log_p - log_norm)
        # M step
        counts = resp.sum(axis=0) + 1e-10
        means = (resp.T @ x) / counts[:, None]
        variances = (resp.T @ x**2) / counts[:, None] - means**2 + 1e-6
        log_weights = np.log(counts / n)
        likelihood = float(log_norm.mean())
        if likelihood - previous < tolerance:
            break
        previous = likelihood
    return log_weights.astype(np.float32), means.astype(np.float32), np.log(variances).astype(np.float32)


def _joint_log_probs(x, log_weights, means, variances):
    """log(weight_k N(x_n; mean_k, diag(variance_k))), (n, k), without an (n, k, d) array."""
    precisions = 1.0 / variances
    squared = (x**2) @ precisions.T - 2.0 * x @ (means * precisions).T + (means**2 * precisions).sum(1)[None]
    return -0.5 * (squared + np.log(variances).sum(-1)[None] + x.shape[1] * np.log(2 * np.pi)) + log_weights[None]


def _log_sum_exp(log_p):
    top = log_p.max(axis=1, keepdims=True)
    return top + np.log(np.exp(log_p - top).sum(axis=1, keepdims=True))


def mixture_log_likelihood(latents, log_weights, means, log_vars):
    """Mean log-density (nats per vector) of ``latents`` under a diagonal Gaussian mixture."""
    x = np.asarray(latents, np.float64)
    log_p = _joint_log_probs(x, np.asarray(log_weights, np.float64), np.asarray(means, np.float64),
                             np.exp(np.asarray(log_vars, np.float64)))
    return float(_log_sum_exp(log_p).mean())


MIXTURE_SIZES = (5, 10, 20, 40, 80, 160)


def select_mixture(latents, held_out, sizes=MIXTURE_SIZES, *, seed=0):
    """Fit a mixture of each size in ``sizes`` to ``latents`` and keep the one under which the
    ``held_out`` latents (a validation split's) are most likely: more components follow the
    training latents more closely until they start to model single points. Returns
    ``(fit, {size: held-out log-likelihood})`` with ``fit`` as :func:`fit_mixture` gives it."""
    scores, best, best_score = {}, None, -np.inf
    for k in sizes:
        fit = fit_mixture(latents, k, seed=seed)
        scores[int(k)] = round(mixture_log_likelihood(held_out, *fit), 3)
        if scores[int(k)] > best_score:
            best, best_score = fit, scores[int(k)]
    return best, scores


# Latents are drawn in blocks of SAMPLE_BLOCK: block b takes its noise from the stateless seed
# (seed, 2b) and its mixture components from (seed, 2b + 1), whatever range of images a call
# asks for. Image i is therefore a function of (seed, i) alone: the first k of n images are the
# k images of a call for k, and streaming in chunks of any size gives the same images.
SAMPLE_BLOCK = 1024
# Every model call (decode, encode) runs on exactly DECODE_BLOCK rows, the last block padded,
# aligned to the image index. A float32 matrix product may round differently for a batch of
# another size (vae-faces64: 96 pixels one grey level apart between batches of 7 and 600), so
# a fixed shape is what makes the API, any chunking and the exported SavedModel agree exactly.
DECODE_BLOCK = 64
MAX_SEED = 2**63 - 1  # TensorFlow's stateless seeds are int64
MAX_TEMPERATURE = 100.0


def check_seed(seed, *, name="seed"):
    """``seed`` as an int, or a TypeError/ValueError that says what was received and the range."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"{name} must be a whole number in 0..2**63-1, got {seed!r} ({type(seed).__name__})")
    if not 0 <= int(seed) <= MAX_SEED:
        raise ValueError(f"{name} must be a whole number in 0..2**63-1 ({MAX_SEED}), got {int(seed)}")
    return int(seed)


def check_temperature(temperature, *, name="temperature"):
    """``temperature`` as a float in (0, MAX_TEMPERATURE], else a clear error.

    Zero, negative, NaN and infinite temperatures would give NaN latents and black images;
    far above a few, samples are noise and the decoder's float32 overflows into NaN too."""
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {temperature!r} ({type(temperature).__name__})")
    value = float(temperature)
    if not 0.0 < value <= MAX_TEMPERATURE:  # False for NaN too
        raise ValueError(f"{name} must be positive and at most {MAX_TEMPERATURE:g} (a finite number; 1 samples "
                         f"the model's own spread), got {value!r}")
    return value


def sample_latents_tf(n, latent_dim, seed, temperature, mixture=None, start=0):
    """The sampling graph shared by the Python API and the exported ``generate`` signature.

    Latents of images ``start .. start + n - 1`` (float32 (n, latent_dim)). TensorFlow's
    stateless Philox generators make each block of SAMPLE_BLOCK draws a pure function of
    (seed, block index), so a seed gives the same latents here, in a SavedModel on a server,
    and for any chunking. ``mixture`` is ``(log_weights, means, log_vars)`` or None for N(0, I).
    Runs eagerly or inside a ``tf.function`` (``n``, ``seed``, ``temperature`` may be tensors).
    """
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    n, start = tf.cast(n, tf.int64), tf.cast(start, tf.int64)
    temperature = tf.cast(temperature, tf.float32)
    first = start // SAMPLE_BLOCK
    end = tf.maximum((start + n + SAMPLE_BLOCK - 1) // SAMPLE_BLOCK, first)

    def block(b):
        eps = tf.random.stateless_normal([SAMPLE_BLOCK, latent_dim], seed=tf.stack([seed, 2 * b]))
        if mixture is None:
            return eps * temperature
        log_weights, means, log_vars = mixture
        component = tf.random.stateless_categorical(log_weights[None], SAMPLE_BLOCK, seed=tf.stack([seed, 2 * b + 1]))[0]
        # In float64, rounded once to float32: a graph (the exported signature) and eager code
        # may evaluate exp and the products with different float32 kernels (they did: 1 ulp
        # apart at a third of the latents), but not differently enough to move a float64
        # result across a float32 rounding boundary.
        f64 = tf.float64
        z = tf.gather(tf.cast(means, f64), component) + tf.exp(0.5 * tf.gather(tf.cast(log_vars, f64), component)) * (
            tf.cast(eps, f64) * tf.cast(temperature, f64)
        )
        return tf.cast(z, tf.float32)

    z = tf.map_fn(block, tf.range(first, end), fn_output_signature=tf.TensorSpec([SAMPLE_BLOCK, latent_dim], tf.float32))
    offset = start - first * SAMPLE_BLOCK
    return tf.reshape(z, [-1, latent_dim])[offset : offset + n]


def mixture_of(model):
    return (model.mixture_log_weights, model.mixture_means, model.mixture_log_vars)


def sample_latents(model, n, *, seed=0, temperature=1.0, sampler="gmm", start=0):
    """Latent vectors (n, latent_dim) float32 of images ``start .. start + n - 1``, from the
    fitted mixture or the prior."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    seed, temperature = check_seed(seed), check_temperature(temperature)
    mixture = mixture_of(model) if sampler == "gmm" else None
    return np.asarray(sample_latents_tf(int(n), model.latent_dim, seed, temperature, mixture, int(start)))


def to_uint8(images):
    return np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


def run_in_blocks_tf(fn, x, out_specs, *, block=DECODE_BLOCK):
    """``fn`` over ``x`` (a tensor, first axis the batch) in model calls of exactly ``block`` rows,
    the last one zero-padded; ``out_specs`` are the per-row TensorSpecs of ``fn``'s outputs (a
    tuple). Graph form of :func:`run_in_blocks`, for exported signatures: same shapes, same
    numbers."""
    import tensorflow as tf

    n = tf.shape(x)[0]
    blocks = (n + block - 1) // block
    padded = tf.pad(x, [[0, blocks * block - n]] + [[0, 0]] * (len(x.shape) - 1))
    padded = tf.reshape(padded, tf.concat([[blocks, block], tf.shape(x)[1:]], 0))
    specs = tuple(tf.TensorSpec([block, *s.shape], s.dtype) for s in out_specs)
    outputs = tf.map_fn(fn, padded, fn_output_signature=specs)
    return tuple(tf.reshape(y, tf.concat([[-1], tf.shape(y)[2:]], 0))[:n] for y in outputs)


def run_in_blocks(fn, x, *, block=DECODE_BLOCK):
    """``fn`` (returning a tuple of arrays) over the NumPy batch ``x`` in calls of exactly
    ``block`` rows, the last zero-padded; yields the outputs block by block (NumPy)."""
    for i in range(0, len(x), block):
        chunk = x[i : i + block]
        rows = len(chunk)
        if rows < block:
            chunk = np.concatenate([chunk, np.zeros((block - rows, *chunk.shape[1:]), chunk.dtype)])
        yield tuple(np.asarray(y)[:rows] for y in fn(chunk))


def decode_latents(model, z):
    """Decode latents to uint8 images (n, S, S, C), DECODE_BLOCK rows per model call."""
    z = np.asarray(z, np.float32)
    outputs = [to_uint8(y) for (y,) in run_in_blocks(lambda c: (model.decode(c),), z)]
    if not outputs:
        return np.zeros((0, model.image_size, model.image_size, model.channels), np.uint8)
    return np.concatenate(outputs)


def encode_images(model, images):
    """Posterior means (n, latent_dim) of uint8 or 0..1 float images (n, S, S, C)."""
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    means = [mean for mean, _ in run_in_blocks(model.encode, x)]
    return np.concatenate(means) if means else np.zeros((0, model.latent_dim), np.float32)


def iter_samples(model, n, *, seed=0, temperature=1.0, sampler="gmm", batch_size=256):
    """Yield the ``n`` samples of (seed, temperature, sampler) as uint8 batches of ``batch_size``
    images (the last may be smaller), holding at most one block of latents and one batch of
    images: the images of :func:`imageae.generate` for the same arguments, for any batch size."""
    seed, temperature = check_seed(seed), check_temperature(temperature)
    buffered, count = [], 0
    for start in range(0, n, SAMPLE_BLOCK):  # block-aligned, so the decode blocks are too
        z = sample_latents(model, min(SAMPLE_BLOCK, n - start), seed=seed, temperature=temperature,
                           sampler=sampler, start=start)
        for (y,) in run_in_blocks(lambda c: (model.decode(c),), z):
            buffered.append(to_uint8(y))
            count += len(y)
            while count >= batch_size:
                batch = np.concatenate(buffered)
                yield batch[:batch_size]
                buffered, count = [batch[batch_size:]], count - batch_size
    if count:
        yield np.concatenate(buffered)


class InputFitWarning(UserWarning):
    """An input image the VAE does not fit: the result will look like the model's training data."""


# An input whose shorter side is this many times the model's side (or smaller by as much) is
# mostly resampling away: a photo given to the 28x28 digit model, say.
_FAR_SIZE = 8


def input_fit_problem(image, vae, model_name):
    """Why ``image`` (H, W[, C] array) does not fit ``vae``, or None when it does.

    A VAE reconstructs only what it was trained on: the shipped vae-digits turns a photo into
    a digit-like blob. A colour image given to a grey model, or an image far from the
    model's size, gets a sentence naming the model and what to use instead.
    """
    from pathlib import Path

    from imageae import registry

    x = np.asarray(image)
    height, width = x.shape[:2]
    channels = x.shape[2] if x.ndim == 3 else 1
    colour = channels >= 3 and not (np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 0], x[..., 2]))
    size = vae.image_size
    entry = registry.MODELS.get(str(model_name))
    name = entry.name if entry else Path(str(model_name)).name
    knows = entry.description if entry else f"{size}x{size} {'grey' if vae.channels == 1 else 'colour'} images"
    reasons = []
    if colour and vae.channels == 1:
        reasons.append("it is a colour image and the model is grey")
    short = min(height, width)
    if short > _FAR_SIZE * size or _FAR_SIZE * short < size:
        reasons.append(f"it is {width}x{height}, far from the model's {size}x{size} (it is cropped and resized)")
    if not reasons:
        return None
    hint = ""
    if colour and name != "vae-faces64":
        hint = "; for photos of faces use --model vae-faces64 (model='vae-faces64')"
    return (f"{' and '.join(reasons)}: {name} knows {knows}, so the result will look like those, "
            f"not like this image{hint}")


def interpolate_latents(z_a, z_b, steps):
    """``steps`` latents from ``z_a`` to ``z_b``: Slerp on directions, linear in length.

    The direction moves along the great circle (a straight line would pass through the
    low-density centre of the Gaussian prior) and the length moves linearly between the two
    endpoints' lengths, so every point's norm stays between theirs.
    """
    z_a, z_b = np.asarray(z_a, np.float64), np.asarray(z_b, np.float64)
    t = np.linspace(0.0, 1.0, int(steps))[:, None]
    norm_a, norm_b = np.linalg.norm(z_a), np.linalg.norm(z_b)
    if norm_a < 1e-12 or norm_b < 1e-12:
        return ((1 - t) * z_a + t * z_b).astype(np.float32)
    u_a, u_b = z_a / norm_a, z_b / norm_b
    omega = np.arccos(np.clip(np.dot(u_a, u_b), -1.0, 1.0))
    if omega < 1e-6:
        direction = (1 - t) * u_a + t * u_b
    elif np.pi - omega < 1e-6:  # opposite: any great circle will do; take one through a fixed axis
        axis = np.eye(len(u_a))[np.argmin(np.abs(u_a))]
        ortho = axis - np.dot(axis, u_a) * u_a
        ortho /= np.linalg.norm(ortho)
        direction = np.cos(t * np.pi) * u_a + np.sin(t * np.pi) * ortho
    else:
        direction = (np.sin((1 - t) * omega) * u_a + np.sin(t * omega) * u_b) / np.sin(omega)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    return (direction * ((1 - t) * norm_a + t * norm_b)).astype(np.float32)


def contact_sheet(images, *, columns=None, padding=2):
    """Tile (n, S, S, C) uint8 images into one (H, W, C) uint8 grid with white padding."""
    images = np.asarray(images)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"expected a non-empty (n, S, S, C) batch of images, got shape {images.shape}")
    n, s, _, c = images.shape
    columns = columns or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / columns))
    sheet = np.full((rows * (s + padding) + padding, columns * (s + padding) + padding, c), 255, np.uint8)
    for i, img in enumerate(images):
        r, col = divmod(i, columns)
        y, x = padding + r * (s + padding), padding + col * (s + padding)
        sheet[y : y + s, x : x + s] = img
    return sheet
