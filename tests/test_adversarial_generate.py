"""Hostile and careless use of the generate family (generate, interpolate, reconstruct, export).

Issue 19's classes, for the VAE jobs: resource bombs (a huge -n), validation (temperatures and
seeds TensorFlow cannot use), silent data loss (existing files replaced), silent garbage (a
photo given to the digit model), tracebacks (an output folder that cannot be made), and
usage errors that do not name their command. Fast: the tiny two-pattern VAE of conftest.py
stands in for vae-digits unless a test needs the shipped one.
"""

import math
import re
import tracemalloc
import warnings

import numpy as np
import pytest
from conftest import pattern_image, run_cli
from PIL import Image

import imageae
from imageae.generate import cli as generate_cli
from imageae.generate.api import generate_batches
from imageae.generate.sampling import InputFitWarning


def read_png(path):
    return np.asarray(Image.open(path))


def save(path, array):
    Image.fromarray(array).save(path)
    return path


def photo(height=48, width=64, seed=0):
    """A colour 'photo': smooth RGB gradients plus noise, nothing like a digit."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgb = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    return np.clip(rgb + rng.normal(0, 10, rgb.shape), 0, 255).astype(np.uint8)


@pytest.fixture
def tiny(vae_models):
    return str(vae_models)


# --------------------------------------------------------------------------- resource bombs


def test_api_generate_refuses_a_result_that_would_not_fit_and_names_the_bytes_and_the_iterator(shipped_vae):
    # -n 10000000 of vae-digits is 7.84 GB; it used to start allocating and sampling
    with pytest.raises(ValueError) as error:
        imageae.generate(10_000_000, model="vae-digits")
    message = str(error.value)
    assert "7,840,000,000 bytes" in message and "28x28x1" in message
    assert "generate_batches" in message and "imageae generate -n 10000000 -o FOLDER" in message


def test_generate_batches_streams_the_same_images_as_generate_for_every_batch_size(tiny):
    whole = imageae.generate(100, model=tiny, seed=5, temperature=0.9)
    np.testing.assert_array_equal(imageae.generate(7, model=tiny, seed=5, temperature=0.9), whole[:7])
    for batch_size in (1, 33, 100, 1000):
        batches = list(generate_batches(100, batch_size=batch_size, model=tiny, seed=5, temperature=0.9))
        assert max(len(b) for b in batches) <= batch_size
        np.testing.assert_array_equal(np.concatenate(batches), whole)


def test_generate_batches_checks_its_arguments_before_the_first_batch(tiny):
    for kwargs in ({"batch_size": 0}, {"seed": -1}, {"temperature": math.inf}, {"sampler": "x"}):
        with pytest.raises(ValueError):
            generate_batches(10, model=tiny, **kwargs)  # not iterated: raised at the call


def test_the_api_is_the_served_reference_at_the_default_precision(tiny):
    # bfloat16 by default moved API pixels by up to 4 grey levels from the float32 export
    np.testing.assert_array_equal(imageae.generate(20, model=tiny, seed=3),
                                  imageae.generate(20, model=tiny, seed=3, precision="float32"))


def test_cli_generate_streams_in_bounded_memory(tmp_path, shipped_vae):
    # 3,000 digits are 2.35 MB as one array; streaming holds a 256-image batch at a time
    run_cli("generate", "-n", 10, "-o", tmp_path / "warm")  # load the model and trace outside the measurement
    tracemalloc.start()
    try:
        code, _, stderr = run_cli("generate", "-n", 3000, "-o", tmp_path / "out", "--progress", "on")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert code == 0, stderr
    assert len(list((tmp_path / "out").iterdir())) == 3000
    assert peak < 1_500_000, f"peak {peak:,} bytes of Python/NumPy memory"
    assert "generate" in stderr and "3000/3000" in stderr  # the progress bar
    first = np.stack([read_png(tmp_path / "out" / f"sample_{i:05d}.png") for i in range(10)])
    np.testing.assert_array_equal(first, imageae.generate(10)[..., 0])


def test_a_huge_grid_only_run_stops_after_the_grid_and_says_so(tmp_path, tiny, monkeypatch):
    # -n 10000000 --grid --no-files used to sample 10 million images into one array and a sheet
    monkeypatch.setattr(generate_cli, "GRID_LIMIT", 16)
    out = tmp_path / "out"
    code, stdout, stderr = run_cli("generate", "-n", 10_000_000, "-o", out, "--model", tiny, "--grid", "--no-files")
    assert code == 0, stderr
    assert [p.name for p in out.iterdir()] == ["grid.png"]
    assert read_png(out / "grid.png").shape == (4 * 10 + 2, 4 * 10 + 2)  # 16 tiles of 8 px, 2 px padding
    assert "wrote only" in stdout and "first 16 of 10000000 samples" in stdout and "--no-files" in stdout


def test_the_grid_of_a_large_run_is_capped_but_every_sample_is_written(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(generate_cli, "GRID_LIMIT", 4)
    out = tmp_path / "out"
    code, stdout, _ = run_cli("generate", "-n", 10, "-o", out, "--model", tiny, "--grid")
    assert code == 0
    assert len(list(out.glob("sample_*.png"))) == 10
    grid = read_png(out / "grid.png")
    assert grid.shape == (2 * 10 + 2, 2 * 10 + 2)
    np.testing.assert_array_equal(grid[2:10, 12:20], read_png(out / "sample_00001.png"))
    assert "first 4 of 10 samples" in stdout


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("temperature", [math.inf, -math.inf, math.nan, 0.0, -0.5, 1e9])
def test_api_refuses_temperatures_that_give_black_images(tiny, temperature):
    with pytest.raises(ValueError, match="temperature must be positive and at most 100"):
        imageae.generate(2, model=tiny, temperature=temperature)


@pytest.mark.parametrize("seed, error", [(2**63, ValueError), (2**64 + 5, ValueError), (-1, ValueError),
                                         (None, TypeError), (1.5, TypeError), ("7", TypeError)])
def test_api_refuses_seeds_it_cannot_honour_and_says_the_range(tiny, seed, error):
    with pytest.raises(error, match=r"seed must be a whole number in 0\.\.2\*\*63-1"):
        imageae.generate(2, model=tiny, seed=seed)


def test_the_largest_seed_works_in_the_api_and_the_cli(tmp_path, tiny):
    top = 2**63 - 1
    images = imageae.generate(2, model=tiny, seed=top)
    assert run_cli("generate", "-n", 2, "-o", tmp_path, "--model", tiny, "--seed", top)[0] == 0
    np.testing.assert_array_equal(read_png(tmp_path / "sample_00001.png"), images[1, ..., 0])


@pytest.mark.parametrize("seed", [str(2**63), "-1", "1.5", "seven"])
def test_cli_refuses_bad_seeds_naming_the_range_and_creates_nothing(tmp_path, tiny, seed):
    code, _, stderr = run_cli("generate", "-n", 2, "-o", tmp_path / "out", "--model", tiny, "--seed", seed)
    assert code == 2
    assert "imageae generate: error: argument --seed: expected a whole number in 0..2**63-1" in stderr
    assert "Traceback" not in stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize("temperature", ["inf", "nan", "0", "-2", "1e300"])
def test_cli_refuses_bad_temperatures_and_creates_nothing(tmp_path, tiny, temperature):
    code, _, stderr = run_cli("generate", "-n", 2, "-o", tmp_path / "out", "--model", tiny,
                              "--temperature", temperature)
    assert code == 2 and "--temperature must be positive and at most 100" in stderr
    assert not (tmp_path / "out").exists()


def test_no_files_without_grid_is_a_usage_error_not_a_silent_ignore(tmp_path, tiny):
    code, _, stderr = run_cli("generate", "-n", 2, "-o", tmp_path / "out", "--model", tiny, "--no-files")
    assert code == 2 and "--no-files" in stderr and "--grid" in stderr
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------- no silent data loss


def test_generate_keeps_existing_files_unless_overwrite(tmp_path, tiny):
    out = tmp_path / "out"
    out.mkdir()
    mine = save(out / "sample_00001.png", np.full((8, 8), 77, np.uint8))
    code, stdout, _ = run_cli("generate", "-n", 3, "-o", out, "--model", tiny)
    assert code == 0
    assert np.all(read_png(mine) == 77)  # was silently replaced
    assert "wrote 2 sample(s)" in stdout and "kept 1 existing" in stdout and "--overwrite" in stdout
    assert run_cli("generate", "-n", 3, "-o", out, "--model", tiny, "--skip-existing")[0] == 0
    assert np.all(read_png(mine) == 77)
    code, stdout, _ = run_cli("generate", "-n", 3, "-o", out, "--model", tiny, "--overwrite")
    assert code == 0 and "wrote 3 sample(s)" in stdout
    np.testing.assert_array_equal(read_png(mine), imageae.generate(3, model=tiny)[1, ..., 0])


def test_generate_keeps_an_existing_grid_unless_overwrite(tmp_path, tiny):
    out = tmp_path / "out"
    out.mkdir()
    save(out / "grid.png", np.full((5, 5), 9, np.uint8))
    code, stdout, _ = run_cli("generate", "-n", 2, "-o", out, "--model", tiny, "--grid", "--no-files")
    assert code == 0 and "kept the existing" in stdout
    assert read_png(out / "grid.png").shape == (5, 5)
    assert run_cli("generate", "-n", 2, "-o", out, "--model", tiny, "--grid", "--no-files", "--overwrite")[0] == 0
    assert read_png(out / "grid.png").shape != (5, 5)


def test_generate_leaves_no_temporary_files(tmp_path, tiny):
    out = tmp_path / "out"
    assert run_cli("generate", "-n", 5, "-o", out, "--model", tiny, "--grid")[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["grid.png"] + [f"sample_{i:05d}.png" for i in range(5)]


def test_reconstruct_keeps_existing_outputs_unless_overwrite_and_prints_a_summary(tmp_path, tiny):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    save(src / "a.png", pattern_image(0)[..., 0])
    save(src / "b.png", pattern_image(1)[..., 0])
    save(out / "a.png", np.full((3, 3), 5, np.uint8))
    code, stdout, _ = run_cli("reconstruct", src, "-o", out, "--model", tiny)
    assert code == 0
    assert read_png(out / "a.png").shape == (3, 3)
    assert "reconstructed 1 file(s), skipped 1 existing, failed 0" in stdout and str(out) in stdout
    code, stdout, _ = run_cli("reconstruct", src, "-o", out, "--model", tiny, "--overwrite")
    assert code == 0 and "reconstructed 2 file(s)" in stdout
    assert read_png(out / "a.png").shape == (8, 8)


def test_reconstruct_refuses_to_write_over_its_inputs(tmp_path, tiny):
    src = tmp_path / "src"
    src.mkdir()
    original = save(src / "a.png", pattern_image(0)[..., 0]).read_bytes()
    code, stdout, stderr = run_cli("reconstruct", src, "-o", src, "--model", tiny, "--overwrite")
    assert code != 0 and "a.png" in stdout + stderr
    assert (src / "a.png").read_bytes() == original


def test_interpolate_keeps_an_existing_output_unless_overwrite(tmp_path, tiny):
    a = save(tmp_path / "a.png", pattern_image(0)[..., 0])
    b = save(tmp_path / "b.png", pattern_image(1)[..., 0])
    strip = save(tmp_path / "strip.png", np.full((4, 4), 1, np.uint8))
    code, stdout, _ = run_cli("interpolate", a, b, "-o", strip, "--model", tiny)
    assert code == 0 and "kept the existing" in stdout and read_png(strip).shape == (4, 4)
    assert run_cli("interpolate", a, b, "-o", strip, "--model", tiny, "--overwrite")[0] == 0
    assert read_png(strip).shape == (12, 8 * 10 + 2)


def test_interpolate_writes_the_format_its_extension_names_and_refuses_a_folder(tmp_path, tiny):
    a = save(tmp_path / "a.png", pattern_image(0)[..., 0])
    assert run_cli("interpolate", a, a, "-o", tmp_path / "s.jpg", "--model", tiny)[0] == 0
    assert Image.open(tmp_path / "s.jpg").format == "JPEG"  # was a PNG named .jpg
    code, _, stderr = run_cli("interpolate", a, a, "-o", tmp_path, "--model", tiny)
    assert code == 2 and "is a folder" in stderr
    code, _, stderr = run_cli("interpolate", a, a, "-o", tmp_path / "s.xyz", "--model", tiny)
    assert code == 2 and "cannot write '.xyz' files" in stderr


# ------------------------------------------------------------------------------ silent garbage


def test_reconstruct_warns_when_a_colour_photo_meets_a_grey_model(tmp_path, tiny):
    src = tmp_path / "src"
    src.mkdir()
    save(src / "holiday.jpg", photo())
    save(src / "digit.png", pattern_image(1)[..., 0])
    code, _, stderr = run_cli("reconstruct", src, "-o", tmp_path / "out", "--model", tiny)
    assert code == 0  # still done: the user may want the blob; but never silently
    [line] = [line for line in stderr.splitlines() if "warning" in line]
    assert line.startswith("imageae reconstruct: warning: ") and "holiday.jpg" in line
    assert "colour image and the model is grey" in line and "vae-digits" in line and "vae-faces64" in line


def test_reconstruct_with_the_default_model_warns_about_a_photo_far_from_28x28(tmp_path, shipped_vae):
    src = tmp_path / "src"
    src.mkdir()
    save(src / "big.png", np.full((400, 300), 128, np.uint8))  # grey, but 300 px is > 8 x 28
    code, _, stderr = run_cli("reconstruct", src, "-o", tmp_path / "out")
    assert code == 0
    assert "big.png" in stderr and "300x400, far from the model's 28x28" in stderr
    assert "VAE for 28x28 handwritten digits" in stderr


def test_interpolate_warns_about_each_input_that_does_not_fit(tmp_path, tiny):
    a = save(tmp_path / "a.jpg", photo())
    b = save(tmp_path / "b.png", pattern_image(1)[..., 0])
    code, _, stderr = run_cli("interpolate", a, b, "-o", tmp_path / "s.png", "--model", tiny)
    assert code == 0
    warned = [line for line in stderr.splitlines() if "warning" in line]
    assert len(warned) == 1 and "a.jpg" in warned[0] and "imageae interpolate" in warned[0]


def test_api_reconstruct_and_interpolate_warn_on_inputs_that_do_not_fit(tiny):
    with pytest.warns(InputFitWarning, match=r"image 1: it is a colour image and the model is grey"):
        imageae.reconstruct([pattern_image(0), photo()], model=tiny)
    with pytest.warns(InputFitWarning, match="image 0"):
        imageae.interpolate(photo(), pattern_image(0), steps=2, model=tiny)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InputFitWarning)
        grey_as_rgb = np.repeat(pattern_image(0), 3, axis=-1)  # colour layout, grey content: fits
        imageae.reconstruct([pattern_image(0), grey_as_rgb], model=tiny)


def test_reconstruct_of_an_rgba_image_uses_its_colour_channels(tiny):
    rgba = np.concatenate([np.repeat(pattern_image(0), 3, -1), np.full((8, 8, 1), 255, np.uint8)], -1)
    np.testing.assert_array_equal(imageae.reconstruct([rgba], model=tiny),
                                  imageae.reconstruct([pattern_image(0)], model=tiny))


# ---------------------------------------------------------------------------------- tracebacks


def test_generate_into_a_path_below_a_file_is_one_clear_line(tmp_path, tiny):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    code, _, stderr = run_cli("generate", "-n", 2, "-o", blocker / "sub", "--model", tiny)
    assert code == 2
    assert "Traceback" not in stderr and str(blocker / "sub") in stderr
    assert stderr.startswith("imageae generate: error:")
    code, _, stderr = run_cli("generate", "-n", 2, "-o", blocker, "--model", tiny)
    assert code == 2 and "is not a folder" in stderr and str(blocker) in stderr


def test_generate_on_a_read_only_filesystem_is_one_clear_line(tmp_path, tiny, monkeypatch):
    import errno
    import os

    import imageae.pipelines.folder

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(imageae.pipelines.folder.os, "makedirs", read_only)
    code, _, stderr = run_cli("generate", "-n", 2, "-o", tmp_path / "ro", "--model", tiny)
    assert code == 2 and "Traceback" not in stderr
    assert str(tmp_path / "ro") in stderr and "Read-only file system" in stderr


def test_generate_that_cannot_write_a_sample_stops_with_what_it_wrote(tmp_path, tiny, monkeypatch):
    import errno
    import os

    import imageae.data.io

    real, calls = imageae.data.io.write_bytes_atomic, []

    def disk_full_after_two(path, data):
        calls.append(path)
        if len(calls) > 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        real(path, data)

    monkeypatch.setattr(imageae.data.io, "write_bytes_atomic", disk_full_after_two)
    code, _, stderr = run_cli("generate", "-n", 5, "-o", tmp_path / "out", "--model", tiny)
    assert code == 1 and "Traceback" not in stderr
    assert "sample_00002.png" in stderr and "No space left on device" in stderr and "after writing 2 sample(s)" in stderr
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["sample_00000.png", "sample_00001.png"]


def test_api_reconstruct_of_no_images_is_an_empty_batch(tiny):
    assert imageae.reconstruct([], model=tiny).shape == (0, 8, 8, 1)


# -------------------------------------------------------------------------------- usage and help


@pytest.mark.parametrize("command", ["generate", "interpolate", "reconstruct"])
def test_every_generate_family_help_states_the_default_model_and_gives_examples(command):
    code, stdout, _ = run_cli(command, "--help")
    assert code == 0
    stdout = re.sub(r"-\s+", "-", " ".join(stdout.split()))  # argparse wraps the option help, at hyphens too
    assert "default: vae-digits" in stdout and "examples:" in stdout and f"imageae {command} " in stdout
    assert "auto = float32" in stdout  # not the denoiser's bfloat16
    assert "vae-faces64" in stdout


@pytest.mark.parametrize("argv", [["generate", "-n", "2", "-o", "x", "--bogus"],
                                  ["reconstruct", "a", "-o", "x", "--bogus"],
                                  ["interpolate", "a", "b", "-o", "x", "--bogus"]])
def test_an_unknown_option_names_its_subcommand(argv):
    code, _, stderr = run_cli(*argv)
    assert code == 2 and f"imageae {argv[0]}" in stderr and "--bogus" in stderr


def test_models_lists_only_models_that_export_accepts():
    from imageae import registry

    code, stdout, _ = run_cli("models")
    assert code == 0 and "digit-classifier" in stdout
    from imageae.generate.export import _classifier_archive  # noqa: F401  (digit-classifier has signatures now)

    assert {m.job for m in registry.list_models()} <= {"denoise", "compress", "generate", "features", "anomaly"}


@pytest.fixture
def shipped_vae(monkeypatch):
    """The shipped models folder and an empty model cache (vae-digits itself, 28x28)."""
    from imageae.denoise import api as denoise_api
    from imageae.generate import api as generate_api

    monkeypatch.delenv("IMAGEAE_MODELS", raising=False)
    monkeypatch.setattr(denoise_api, "_default", {})
    monkeypatch.setattr(generate_api, "_default", {})


@pytest.mark.filterwarnings("ignore::imageae.generate.sampling.InputFitWarning")  # LAB's round trip tints the grey
@pytest.mark.parametrize("mode", ["1", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "La", "RGBa"])
def test_reconstruct_reads_pil_images_of_every_convertible_mode(tiny, mode):
    # These modes are refused by denoise (it must give the same mode back); a VAE re-quantises
    # anyway, so reconstruct converts them instead of failing with a message about denoising.
    base = Image.fromarray(pattern_image(0)[..., 0]).convert("RGB")
    image = base.convert(mode) if mode not in ("PA", "La", "RGBa") else base.convert("RGBA").convert(mode)
    [out] = imageae.reconstruct([image], model=str(tiny))
    reference = imageae.reconstruct([base.convert("RGB")], model=str(tiny))[0]
    assert out.shape == reference.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - reference.astype(int)).mean() < 40  # the same picture, not garbage
