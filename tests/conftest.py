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


def build_tiny_denoiser(channels, seed=0):
    """An untrained :class:`DenoiserUNet` with reproducible random float32 weights."""
    import keras

    from imageae.models.denoiser import build_denoiser

    keras.utils.set_random_seed(seed)
    return build_denoiser(channels, filters=TINY_FILTERS)


@pytest.fixture(scope="session")
def tiny_grey_model():
    return build_tiny_denoiser(1, seed=1)


@pytest.fixture(scope="session")
def tiny_colour_model():
    return build_tiny_denoiser(3, seed=2)


@pytest.fixture(scope="session")
def random_weight_models_dir(tmp_path_factory):
    """A models folder holding RANDOM-WEIGHT STAND-INS for the shipped models.

    ``denoise-grey.keras`` and ``denoise-colour.keras`` here are untrained tiny U-Nets: they
    do not denoise. They exist only so that the registry, API, folder pipeline and CLI can be
    tested without the real weights. Quality tests belong with the shipped models.
    """
    folder = tmp_path_factory.mktemp("random_weight_models")
    for name, channels, seed in (("denoise-grey", 1, 11), ("denoise-colour", 3, 12)):
        build_tiny_denoiser(channels, seed=seed).save(folder / f"{name}.keras")
    return folder


@pytest.fixture
def random_weight_models(random_weight_models_dir, monkeypatch):
    """Point the registry (``$IMAGEAE_MODELS``) at the random-weight stand-ins.

    ``imageae.denoise`` keeps its loaded models in a module-level cache keyed by model name,
    not by weights file; it is swapped for an empty one here and restored afterwards, so the
    stand-ins never answer a later test that expects the shipped weights.
    """
    import imageae.api

    monkeypatch.setenv("IMAGEAE_MODELS", str(random_weight_models_dir))
    monkeypatch.setattr(imageae.api, "_default", {})
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
