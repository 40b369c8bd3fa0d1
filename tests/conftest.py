"""Shared fixtures and helpers for the imageae tests.

Nothing here needs ../shared or the shipped weights: images are generated into tmp folders
and the models are tiny, untrained U-Nets (see :func:`random_weight_models`).
"""

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Tiny enough to run in milliseconds on a CPU, deep enough (three levels, stride 8) to have
# the real model's structure: strided folds, skips, a receptive radius of 48 pixels.
TINY_FILTERS = (8, 16, 32)


def build_tiny_denoiser(channels, seed=0, noise_level=False):
    """An untrained :class:`DenoiserUNet` with reproducible random float32 weights (with a
    noise-level input and estimator when ``noise_level``)."""
    import keras

    from imageae.models.denoiser import build_denoiser

    keras.utils.set_random_seed(seed)
    return build_denoiser(channels, filters=TINY_FILTERS, noise_level=noise_level)


@pytest.fixture(scope="session")
def tiny_grey_model():
    return build_tiny_denoiser(1, seed=1)


@pytest.fixture(scope="session")
def tiny_colour_model():
    return build_tiny_denoiser(3, seed=2)


@pytest.fixture(scope="session")
def random_weight_models_dir(tmp_path_factory):
    """A models folder holding RANDOM-WEIGHT STAND-INS for the shipped models.

    ``denoise-grey.keras`` and ``denoise-colour.keras`` (with a noise-level input, as the
    shipped one) here are untrained tiny U-Nets: they do not denoise; ``codec-v4.keras`` is an untrained tiny two-quality codec. They exist only
    so that the registry, API, folder pipeline and CLI can be tested without the real weights.
    Quality tests belong with the shipped models.
    """
    import json

    import keras

    from imageae.models.codec import build_codec

    folder = tmp_path_factory.mktemp("random_weight_models")
    build_tiny_denoiser(1, seed=11).save(folder / "denoise-grey.keras")
    build_tiny_denoiser(3, seed=12, noise_level=True).save(folder / "denoise-colour.keras")
    keras.utils.set_random_seed(13)  # an untrained two-quality codec under the shipped codec's name
    build_codec(num_filters=8, num_latent=12, lambdas=(0.004, 0.04)).save(folder / "codec-v4.keras")
    (folder / "codec-v4.json").write_text(json.dumps({"name": "codec-v4", "rate_distortion": {"qualities": 2}}))
    return folder


@pytest.fixture
def random_weight_models(random_weight_models_dir, monkeypatch):
    """Point the registry (``$IMAGEAE_MODELS``) at the random-weight stand-ins.

    ``imageae.denoise`` keeps its loaded models in a module-level cache keyed by model name,
    not by weights file; it is swapped for an empty one here and restored afterwards, so the
    stand-ins never answer a later test that expects the shipped weights.
    """
    from imageae.denoise import api as denoise_api
    from imageae.generate import api as generate_api

    monkeypatch.setenv("IMAGEAE_MODELS", str(random_weight_models_dir))
    monkeypatch.setattr(denoise_api, "_default", {})
    monkeypatch.setattr(generate_api, "_default", {})
    return random_weight_models_dir


# ----------------------------------------------------------------------------- image helpers


def noise_image(shape, dtype=np.uint8, seed=0):
    """Uniform random pixels over the whole range of ``dtype``."""
    rng = np.random.default_rng(seed)
    high = np.iinfo(dtype).max
    return rng.integers(0, high + 1, size=shape, dtype=dtype)


def smooth_image(height, width, channels=3, seed=0):
    """A smooth 8-bit colour/grey image (gradients plus mild noise): JPEG keeps it recognisable."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    planes = [
        128 + 100 * np.sin(x / (5 + 3 * c) + c) * np.cos(y / (7 + 2 * c)) + rng.normal(0, 8, (height, width))
        for c in range(channels)
    ]
    array = np.clip(np.stack(planes, axis=-1), 0, 255).astype(np.uint8)
    return array[..., 0] if channels == 1 else array


def exif_orientation_bytes(orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def marked_corner_image(height, width, block=8):
    """Black RGB image with a white ``block`` x ``block`` square in its top-left corner."""
    array = np.zeros((height, width, 3), np.uint8)
    array[:block, :block] = 255
    return array


def bright_corner(array, block=8):
    """Which corner ("tl", "tr", "bl", "br") of an (H, W[, C]) image holds the bright block."""
    grey = array if array.ndim == 2 else array[..., 0]
    grey = grey.astype(np.float32)
    corners = {
        "tl": grey[:block, :block].mean(),
        "tr": grey[:block, -block:].mean(),
        "bl": grey[-block:, :block].mean(),
        "br": grey[-block:, -block:].mean(),
    }
    return max(corners, key=corners.get)


def save_truncated_jpeg(path, seed=0):
    """A JPEG cut in half: the header parses, the pixel data ends early."""
    import io

    buffer = io.BytesIO()
    Image.fromarray(smooth_image(64, 64, seed=seed)).save(buffer, format="JPEG", quality=95)
    data = buffer.getvalue()
    Path(path).write_bytes(data[: len(data) // 2])


def save_text_as_png(path):
    Path(path).write_text("this is a text file that only pretends to be a PNG\n")


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def tree_hashes(folder):
    """{relative path: sha256} of every file below ``folder``."""
    folder = Path(folder)
    return {str(p.relative_to(folder)): sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def part_files(folder):
    """Leftover temporary files of :func:`imageae.data.io.write_bytes_atomic`."""
    return sorted(str(p) for p in Path(folder).rglob("*.part"))


# ------------------------------------------------------------------------------ VAE helpers

# Tiny enough to train for a hundred steps in about two seconds on one CPU thread; two stride-2
# levels like the digits model (8 -> 4 -> 2).
TINY_VAE = dict(image_size=8, channels=1, latent_dim=2, filters=(4, 8))


def build_tiny_vae(seed=0, **overrides):
    """An untrained :class:`ConvVAE` (8x8 grey, 2-d latent) with reproducible random weights."""
    import keras

    from imageae.models.vae import build_vae

    keras.utils.set_random_seed(seed)
    return build_vae(**{**TINY_VAE, "seed": seed, **overrides})


def pattern_image(kind):
    """An 8x8 grey uint8 pattern, (8, 8, 1): kind 0 has its left half white, kind 1 its top half."""
    x = np.zeros((8, 8, 1), np.uint8)
    if kind == 0:
        x[:, :4] = 255
    else:
        x[:4, :] = 255
    return x


def two_pattern_images(n, seed=0):
    """(uint8 (n, 8, 8, 1) images, their kinds): a random mix of the two :func:`pattern_image`."""
    kinds = np.random.default_rng(seed).integers(0, 2, n)
    return np.stack([pattern_image(k) for k in kinds]), kinds


@pytest.fixture(scope="session")
def trained_tiny_vae():
    """A tiny VAE trained (120 steps, ~2 s) on the two patterns, with a two-component mixture.

    The KL warm-up is long, so in 120 steps the KL weight stays small and the posterior does not
    collapse: the latent tells the two patterns apart and reconstructions are near exact. The
    mixture is set by hand, one component (std 0.25) on each pattern's posterior mean, rather
    than by ``fit_mixture``: the training set holds only two distinct images, which EM started
    from random points often cannot split (see test_generation.py). Samples from the mixture
    decode to one pattern or the other. Returns ``(model, history dict)``; shared by the
    session, so tests must not change it.
    """
    import keras

    from imageae.generate.sampling import encode_images

    x, _ = two_pattern_images(128)
    model = build_tiny_vae(seed=0, kl_warmup_steps=1000, mixture_components=2)
    model.compile(optimizer=keras.optimizers.Adam(1e-2))
    history = model.fit(x.astype(np.float32) / 255.0, epochs=15, batch_size=16, shuffle=True, verbose=0)
    model.mixture_log_weights.assign(np.log([0.5, 0.5]).astype(np.float32))
    model.mixture_means.assign(encode_images(model, np.stack([pattern_image(0), pattern_image(1)])))
    model.mixture_log_vars.assign(np.full((2, 2), np.log(0.25**2), np.float32))
    return model, history.history


@pytest.fixture(scope="session")
def vae_models_dir(tmp_path_factory, trained_tiny_vae):
    """A models folder holding ``vae-digits.keras``: the trained TINY two-pattern VAE standing
    in for the shipped digits model (it knows two 8x8 patterns, not digits)."""
    folder = tmp_path_factory.mktemp("vae_models")
    trained_tiny_vae[0].save(folder / "vae-digits.keras")
    return folder


@pytest.fixture
def vae_models(vae_models_dir, monkeypatch):
    """Point the registry at the VAE stand-in and give the jobs' APIs empty model caches
    (it caches loaded VAEs by name or path, not by file contents). Returns the .keras path."""
    from imageae.denoise import api as denoise_api
    from imageae.generate import api as generate_api

    monkeypatch.setenv("IMAGEAE_MODELS", str(vae_models_dir))
    monkeypatch.setattr(denoise_api, "_default", {})
    monkeypatch.setattr(generate_api, "_default", {})
    return vae_models_dir / "vae-digits.keras"


def run_cli(*argv):
    """(exit code, stdout, stderr) of ``imageae ARGV``, run in-process through ``main``."""
    import contextlib
    import io

    from imageae.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()
