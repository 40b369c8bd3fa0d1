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


def sample_latents_tf(n, latent_dim, seed, temperature, mixture=None):
    """The sampling graph shared by the Python API and the exported ``generate`` signature.

    TensorFlow's stateless Philox generators make the draws a pure function of (seed, shape),
    so a seed gives the same latents here, in a SavedModel on a server, and on other
    machines. ``mixture`` is ``(log_weights, means, log_vars)`` or None for N(0, I).
    """
    import tensorflow as tf

    seed = tf.cast(seed, tf.int64)
    eps = tf.random.stateless_normal(tf.stack([n, latent_dim]), seed=tf.stack([seed, tf.constant(0, tf.int64)]))
    eps = eps * tf.cast(temperature, tf.float32)
    if mixture is None:
        return eps
    log_weights, means, log_vars = mixture
    component = tf.random.stateless_categorical(
        log_weights[None], n, seed=tf.stack([seed, tf.constant(1, tf.int64)])
    )[0]
    return tf.gather(means, component) + tf.exp(0.5 * tf.gather(log_vars, component)) * eps


def mixture_of(model):
    return (model.mixture_log_weights, model.mixture_means, model.mixture_log_vars)


def sample_latents(model, n, *, seed=0, temperature=1.0, sampler="gmm"):
    """``n`` latent vectors (n, latent_dim) float32 from the fitted mixture or the prior."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {', '.join(SAMPLERS)}, got {sampler!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    mixture = mixture_of(model) if sampler == "gmm" else None
    return np.asarray(sample_latents_tf(int(n), model.latent_dim, int(seed), float(temperature), mixture))


def to_uint8(images):
    return np.clip(np.round(np.asarray(images) * 255.0), 0, 255).astype(np.uint8)


def decode_latents(model, z, *, batch_size=500):
    """Decode latents to uint8 images (n, S, S, C) in batches."""
    outputs = [to_uint8(model.decode(z[i : i + batch_size])) for i in range(0, len(z), batch_size)]
    if not outputs:
        return np.zeros((0, model.image_size, model.image_size, model.channels), np.uint8)
    return np.concatenate(outputs)


def encode_images(model, images, *, batch_size=500):
    """Posterior means (n, latent_dim) of uint8 or 0..1 float images (n, S, S, C)."""
    x = np.asarray(images)
    x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
    return np.concatenate(
        [np.asarray(model.encode(x[i : i + batch_size])[0]) for i in range(0, len(x), batch_size)]
    )


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
