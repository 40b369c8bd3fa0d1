"""Generating with a VAE: ``imageae generate / interpolate / reconstruct`` and their Python API.

The model is the tiny two-pattern VAE of conftest.py (``trained_tiny_vae``), saved as
``vae-digits.keras`` in a temporary models folder and passed by path. It knows two 8x8
patterns (left half white, top half white) and its mixture has one component on each, so a
sample should look like one of them and a reconstruction like its input.
"""


import numpy as np
import pytest

from PIL import Image

import imageae
from conftest import pattern_image, run_cli, save_text_as_png

pytestmark = pytest.mark.usefixtures("vae_models")

PATTERNS = np.stack([pattern_image(0), pattern_image(1)])  # (2, 8, 8, 1) uint8


def read_png(path):
    return np.asarray(Image.open(path))


def distance_to_patterns(images):
    """(n, 2) mean absolute difference, on the 0..255 scale, of each image to each pattern."""
    images = np.asarray(images, np.float64).reshape(len(images), 8, 8, 1)
    return np.stack([np.abs(images - p.astype(np.float64)).mean(axis=(1, 2, 3)) for p in PATTERNS], axis=1)


def save_pattern(path, kind, *, size=(8, 8), mode="L"):
    """Pattern ``kind`` resized to ``size`` (width, height) and saved in ``mode``."""
    img = Image.fromarray(pattern_image(kind)[..., 0]).resize(size, Image.NEAREST).convert(mode)
    img.save(path)
    return path


# ------------------------------------------------------------------------------------ generate


def test_generate_writes_n_samples_and_a_grid_of_them(tmp_path, vae_models):
    out = tmp_path / "out"
    code, stdout, _ = run_cli("generate", "-n", 5, "-o", out, "--model", vae_models, "--seed", 3, "--grid")
    assert code == 0, stdout
    assert sorted(p.name for p in out.iterdir()) == ["grid.png"] + [f"sample_{i:05d}.png" for i in range(5)]
    samples = np.stack([read_png(out / f"sample_{i:05d}.png") for i in range(5)])
    assert samples.shape == (5, 8, 8) and samples.dtype == np.uint8  # grey, the model's size
    # the default sampler draws from the mixture: every sample is one of the two patterns
    assert np.all(distance_to_patterns(samples).min(axis=1) < 32)
    grid = read_png(out / "grid.png")
    assert grid.shape == (2 * 10 + 2, 3 * 10 + 2)  # ceil(sqrt(5)) = 3 columns, 2-pixel padding
    for i, sample in enumerate(samples):
        row, col = divmod(i, 3)
        np.testing.assert_array_equal(grid[2 + 10 * row : 10 + 10 * row, 2 + 10 * col : 10 + 10 * col], sample)


def test_generate_is_byte_identical_for_a_seed_and_differs_for_another(tmp_path, vae_models):
    def pngs(seed, name):
        out = tmp_path / name
        assert run_cli("generate", "-n", 5, "-o", out, "--model", vae_models, "--seed", seed)[0] == 0
        return [(out / f"sample_{i:05d}.png").read_bytes() for i in range(5)]

    first, again, other = pngs(3, "a"), pngs(3, "b"), pngs(4, "c")
    assert first == again
    assert first != other


def test_generate_grid_only(tmp_path, vae_models):
    out = tmp_path / "out"
    assert run_cli("generate", "-n", 4, "-o", out, "--model", vae_models, "--grid", "--no-files")[0] == 0
    assert [p.name for p in out.iterdir()] == ["grid.png"]


@pytest.mark.parametrize("temperature", ["0", "-1", "nan", "inf", "-inf", "1e9"])
def test_generate_refuses_a_temperature_that_is_not_positive(tmp_path, vae_models, temperature):
    out = tmp_path / "out"
    code, _, stderr = run_cli("generate", "-n", 2, "-o", out, "--model", vae_models, f"--temperature={temperature}")
    assert code == 2
    assert "--temperature must be positive" in stderr
    assert not out.exists()


def test_generate_refuses_a_count_below_one(tmp_path, vae_models):
    code, _, stderr = run_cli("generate", "-n", 0, "-o", tmp_path / "out", "--model", vae_models)
    assert code == 2 and "expected a positive integer" in stderr


def test_generate_names_an_unknown_model(tmp_path):
    code, _, stderr = run_cli("generate", "-n", 2, "-o", tmp_path / "out", "--model", tmp_path / "missing.keras")
    assert code == 2 and "unknown model" in stderr and "missing.keras" in stderr


def test_generate_with_the_default_model_uses_the_registered_vae_digits(tmp_path):
    code, _, stderr = run_cli("generate", "-n", 2, "-o", tmp_path / "out")
    assert code == 0, stderr


def test_generate_with_a_model_that_is_not_a_vae_is_a_usage_error(tmp_path, random_weight_models_dir):
    not_a_vae = random_weight_models_dir / "denoise-grey.keras"
    code, _, stderr = run_cli("generate", "-n", 2, "-o", tmp_path / "out", "--model", not_a_vae)
    assert code == 2 and "denoise-grey.keras" in stderr


# ------------------------------------------------------------------------------ the Python API


def test_api_generate_gives_seeded_uint8_images(vae_models):
    images = imageae.generate(6, model=str(vae_models), seed=1, sampler="gmm")
    assert images.dtype == np.uint8 and images.shape == (6, 8, 8, 1)
    np.testing.assert_array_equal(imageae.generate(6, model=str(vae_models), seed=1, sampler="gmm"), images)
    assert not np.array_equal(imageae.generate(6, model=str(vae_models), seed=2, sampler="gmm"), images)
    assert np.all(distance_to_patterns(images).min(axis=1) < 32)


def test_api_generate_prior_sampler_is_seeded_too(vae_models):
    a = imageae.generate(4, model=str(vae_models), seed=5, sampler="normal")
    np.testing.assert_array_equal(imageae.generate(4, model=str(vae_models), seed=5, sampler="normal"), a)
    assert not np.array_equal(imageae.generate(4, model=str(vae_models), seed=5), a)  # the default is gmm
    assert imageae.generate(0, model=str(vae_models)).shape == (0, 8, 8, 1)


@pytest.mark.parametrize(
    "n, kwargs, error",
    [
        (2.0, {}, TypeError),
        (True, {}, TypeError),
        (2, {"temperature": 0}, ValueError),
        (2, {"sampler": "x"}, ValueError),
    ],
)
def test_api_generate_refuses_bad_arguments(vae_models, n, kwargs, error):
    with pytest.raises(error):
        imageae.generate(n, model=str(vae_models), **kwargs)


def test_api_reconstruct_gives_back_each_pattern(vae_models):
    centred = np.zeros((8, 14), np.uint8)  # non-square: the centre 8x8 is pattern 0, the sides noise
    centred[:, 3:11] = pattern_image(0)[..., 0]
    centred[:, :3] = centred[:, 11:] = 255
    colour = np.repeat(pattern_image(1), 3, axis=-1)  # RGB input, grey model
    as_float = pattern_image(1)[..., 0].astype(np.float32) / 255.0
    out = imageae.reconstruct([centred, colour, as_float], model=str(vae_models))
    assert out.dtype == np.uint8 and out.shape == (3, 8, 8, 1)
    nearest = distance_to_patterns(out)
    np.testing.assert_array_equal(nearest.argmin(axis=1), [0, 1, 1])
    assert np.all(nearest.min(axis=1) < 16)


def test_api_interpolate_runs_from_one_reconstruction_to_the_other(vae_models):
    a, b = pattern_image(0), pattern_image(1)
    path = imageae.interpolate(a, b, steps=4, model=str(vae_models))
    assert path.dtype == np.uint8 and path.shape == (4, 8, 8, 1)
    ends = imageae.reconstruct([a, b], model=str(vae_models))
    assert np.abs(path[0].astype(int) - ends[0]).max() <= 1
    assert np.abs(path[-1].astype(int) - ends[1]).max() <= 1
    np.testing.assert_array_equal(distance_to_patterns(path[[0, -1]]).argmin(axis=1), [0, 1])


def test_api_interpolate_needs_two_steps(vae_models):
    with pytest.raises(ValueError, match="steps must be at least 2, got 1"):
        imageae.interpolate(pattern_image(0), pattern_image(1), steps=1, model=str(vae_models))


# ------------------------------------------------------------------------ interpolate, reconstruct


def test_interpolate_writes_a_strip_of_steps_tiles(tmp_path, vae_models):
    a = save_pattern(tmp_path / "a.png", 0, size=(16, 16))
    b = save_pattern(tmp_path / "b.jpg", 1, size=(24, 16), mode="RGB")  # colour, not square
    strip = tmp_path / "strip.png"
    code, stdout, stderr = run_cli("interpolate", a, b, "-o", strip, "--steps", 4, "--model", vae_models)
    assert code == 0, stderr
    assert str(strip) in stdout
    sheet = read_png(strip)
    assert sheet.shape == (8 + 2 * 2, 4 * (8 + 2) + 2)  # one row of four 8x8 tiles, 2-pixel padding
    tiles = np.stack([sheet[2:10, 2 + 10 * i : 10 + 10 * i] for i in range(4)])
    np.testing.assert_array_equal(distance_to_patterns(tiles[[0, -1]]).argmin(axis=1), [0, 1])


def test_interpolate_with_one_step_is_a_usage_error(tmp_path, vae_models):
    a = save_pattern(tmp_path / "a.png", 0)
    code, _, stderr = run_cli("interpolate", a, a, "-o", tmp_path / "s.png", "--steps", 1, "--model", vae_models)
    assert code == 2 and "imageae interpolate: error: argument --steps: expected a whole number >= 2, got 1" in stderr
    assert not (tmp_path / "s.png").exists()


def test_reconstruct_a_folder_with_one_bad_file_writes_the_rest_and_exits_1(tmp_path, vae_models):
    src, out = tmp_path / "src", tmp_path / "out"
    (src / "sub").mkdir(parents=True)
    save_pattern(src / "left.png", 0, size=(16, 16))
    save_pattern(src / "sub" / "top.jpg", 1, size=(20, 16), mode="RGB")
    save_text_as_png(src / "broken.png")
    code, _, stderr = run_cli("reconstruct", src, "-o", out, "--model", vae_models)
    assert code == 1
    assert "broken.png" in stderr
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert written == ["left.png", "sub/top.png"]  # the tree mirrored, always PNG
    images = np.stack([read_png(out / name) for name in written])
    assert images.shape == (2, 8, 8)
    np.testing.assert_array_equal(distance_to_patterns(images).argmin(axis=1), [0, 1])


def test_reconstruct_a_good_folder_exits_0(tmp_path, vae_models):
    src = tmp_path / "src"
    src.mkdir()
    save_pattern(src / "a.png", 1)
    assert run_cli("reconstruct", src, "-o", tmp_path / "out", "--model", vae_models)[0] == 0
    assert (tmp_path / "out" / "a.png").is_file()


def test_reconstruct_a_missing_input_is_a_usage_error(tmp_path, vae_models):
    code, _, stderr = run_cli("reconstruct", tmp_path / "nowhere", "-o", tmp_path / "out", "--model", vae_models)
    assert code == 2 and "nowhere" in stderr
