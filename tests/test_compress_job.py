"""The compress job's plumbing: ``imageae.compress`` / ``imageae.decompress``, the folder jobs
and ``imageae compress`` / ``imageae decompress`` / ``imageae train codec``.

The codec here is a tiny model trained for 20 steps by ``imageae train codec`` on generated
images (a RANDOM-WEIGHT-CLASS STAND-IN: it barely compresses). These tests check formats,
modes, rate control, bad input and exit codes; picture quality belongs with the shipped codec
(tests/test_shipped_models.py, benchmarks/compress.py).
"""

import json

import numpy as np
import pytest
from conftest import run_cli, smooth_image
from PIL import Image

import imageae
from imageae.codec import IaeFormatError, UnknownModelError, unpack


@pytest.fixture(scope="module")
def codec_file(tmp_path_factory):
    """A 2-quality codec trained for 20 steps through the CLI (its card is checked too)."""
    root = tmp_path_factory.mktemp("codec")
    photos = root / "photos"
    photos.mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(96, 128, seed=20 + i)).save(photos / f"p{i}.png")
    model = root / "tiny-codec.keras"
    code, out, err = run_cli(
        "train", "codec", "--data", photos, "-o", model, "--filters", "8", "--latent", "12", "--lambdas",
        "0.004,0.04", "--steps", "20", "--steps-per-epoch", "10", "--patch-size", "64", "--batch-size", "4",
        "--warmup-steps", "5", "--min-learning-rate", "2e-6", "--checkpoint-dir", root / "ck",
        "--precision", "float32",
    )
    assert code == 0, err
    return model


def test_train_codec_writes_a_card_with_every_quality(codec_file):
    card = json.loads(codec_file.with_suffix(".json").read_text())
    assert card["rate_distortion"]["lambdas"] == [0.004, 0.04]
    rates = card["metrics"]["validation_bpp_estimate_by_quality"]
    assert len(rates) == 2 and rates[0] < rates[1]
    assert card["training"]["steps"] == 20 and codec_file.with_suffix(".curve.png").exists()
    assert card["training"]["config"]["quantization"] == "mixed"  # the default
    assert card["training"]["config"]["min_learning_rate"] == 2e-6
    assert "straight-through" in card["training"]["quantization_proxy"]


def test_train_codec_stores_the_integer_coding_tables_with_the_weights(codec_file):
    import keras

    from imageae.codec.session import z_coding_tables

    model = keras.saving.load_model(codec_file)
    assert model.coding_tables_frozen
    stored, offsets = z_coding_tables(model)
    # They are what the model's density quantizes to...
    model.z_table_lengths.assign(np.zeros_like(np.asarray(model.z_table_lengths)))
    computed, computed_offsets = z_coding_tables(model)
    assert all(np.array_equal(a, b) for a, b in zip(stored, computed)) and np.array_equal(offsets, computed_offsets)
    assert all(t.sum() == 2**16 for t in stored)


def test_train_codec_init_keeps_the_models_qualities_or_adds_new_ones(codec_file, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(smooth_image(96, 128, seed=30)).save(photos / "p.png")
    common = ("train", "codec", "--data", photos, "--init", codec_file, "--filters", "8", "--latent", "12",
              "--steps", "2", "--steps-per-epoch", "2", "--patch-size", "64", "--batch-size", "2",
              "--warmup-steps", "1", "--precision", "float32")
    cases = ((("--quantization", "noise"), [0.004, 0.04], "noise"),
             (("--lambdas", "0.001,0.004,0.04"), [0.001, 0.004, 0.04], "mixed"))
    for extra, lambdas, quantization in cases:
        out = tmp_path / f"m{len(lambdas)}.keras"
        code, _, err = run_cli(*common, *extra, "-o", out, "--checkpoint-dir", tmp_path / f"ck{len(lambdas)}")
        assert code == 0, err
        card = json.loads(out.with_suffix(".json").read_text())
        assert card["rate_distortion"]["lambdas"] == lambdas
        assert card["training"]["config"]["quantization"] == quantization
    code, _, err = run_cli(*common, "--lambdas", "0.001,0.04", "-o", tmp_path / "bad.keras")
    assert code == 2 and "drop [0.004]" in err


def test_train_codec_refuses_a_patch_size_off_the_stride(tmp_path):
    code, _, err = run_cli("train", "codec", "--data", tmp_path, "-o", tmp_path / "m.keras", "--patch-size", "100")
    assert code == 2 and "multiple of 64" in err


@pytest.mark.parametrize("job", ["codec", "denoiser"])
@pytest.mark.parametrize(("flags", "message"), [
    (("--learning-rate", "0"), "--learning-rate must be positive"),
    (("--learning-rate", "1e-4", "--min-learning-rate", "2e-4"), "--min-learning-rate must be between 0 and"),
    (("--min-learning-rate=-1e-6",), "--min-learning-rate must be between 0 and"),
])
def test_train_refuses_learning_rates_the_schedule_cannot_run(tmp_path, job, flags, message):
    code, _, err = run_cli("train", job, "--data", tmp_path, "-o", tmp_path / "m.keras", *flags)
    assert code == 2 and message in err


@pytest.mark.parametrize("shape", [(37, 51, 3), (64, 64, 3), (50, 70)], ids=["odd-rgb", "stride-rgb", "grey-2d"])
def test_compress_decompress_round_trip_keeps_size_and_mode(codec_file, shape):
    image = smooth_image(shape[0], shape[1], channels=3 if len(shape) == 3 else 1, seed=5)
    image = image.reshape(shape)
    data = imageae.compress(image, quality=2, model=str(codec_file))
    assert isinstance(data, bytes) and unpack(data)[0].quality == 2
    decoded = imageae.decompress(data, models=[str(codec_file)])
    assert decoded.dtype == np.uint8 and decoded.shape == shape
    # the same bytes again, and the same pixels again
    assert imageae.compress(image, quality=2, model=str(codec_file)) == data
    np.testing.assert_array_equal(imageae.decompress(data, models=[str(codec_file)]), decoded)


def test_compress_takes_pil_images_and_refuses_alpha_16_bit_and_floats(codec_file):
    rgb = smooth_image(40, 40, seed=3)
    model = str(codec_file)
    assert imageae.compress(Image.fromarray(rgb), quality=1, model=model) == imageae.compress(rgb, quality=1, model=model)
    with pytest.raises(ValueError, match="alpha"):
        imageae.compress(Image.fromarray(rgb).convert("RGBA"), model=model, quality=1)
    with pytest.raises(ValueError, match="alpha"):
        imageae.compress(np.dstack([rgb, rgb[..., :1]]), model=model, quality=1)
    with pytest.raises(ValueError, match="16-bit"):
        imageae.compress(rgb.astype(np.uint16) * 257, model=model, quality=1)
    with pytest.raises(ValueError, match="uint8"):
        imageae.compress(rgb / 255.0, model=model, quality=1)
    with pytest.raises(TypeError, match="numpy array or a PIL image"):
        imageae.compress(rgb.tolist(), model=model, quality=1)
    with pytest.raises(ValueError, match="not both"):
        imageae.compress(rgb, model=model, quality=1, target_bpp=1.0)
    with pytest.raises(ValueError, match="quality must be 1..2"):
        imageae.compress(rgb, model=model, quality=3)


def test_target_bpp_picks_the_best_quality_that_fits(codec_file):
    image = smooth_image(128, 128, seed=8)
    model = str(codec_file)
    sizes = [8 * len(imageae.compress(image, quality=q, model=model)) / image[..., 0].size for q in (1, 2)]
    assert sizes[0] < sizes[1]
    between = (sizes[0] + sizes[1]) / 2
    for target, quality in ((sizes[1] + 0.01, 2), (between, 1), (sizes[0] / 2, 1)):
        assert unpack(imageae.compress(image, target_bpp=target, model=model))[0].quality == quality
    with pytest.raises(ValueError, match="positive"):
        imageae.compress(image, target_bpp=0, model=model)


def test_decompress_names_bad_input(codec_file):
    data = imageae.compress(smooth_image(40, 40, seed=1), quality=1, model=str(codec_file))
    with pytest.raises(UnknownModelError, match="'tiny-codec', which is not installed.*pass its .keras file"):
        imageae.decompress(data)
    with pytest.raises(IaeFormatError, match="truncated"):
        imageae.decompress(data[:20], models=[str(codec_file)])
    with pytest.raises(TypeError, match="bytes"):
        imageae.decompress("file.iae")


def test_cli_compress_and_decompress_folders(codec_file, tmp_path):
    src = tmp_path / "in"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(smooth_image(60, 90, seed=1)).save(src / "a.png")
    Image.fromarray(smooth_image(33, 47, seed=2)[..., 0]).save(src / "sub" / "grey.JPG")
    Image.fromarray(smooth_image(20, 20, seed=3)).convert("RGBA").save(src / "alpha.png")
    (src / "broken.png").write_bytes(b"not a png")
    before = {p: p.read_bytes() for p in src.rglob("*") if p.is_file()}
    packed, restored = tmp_path / "packed", tmp_path / "restored"

    code, out, err = run_cli("compress", src, "-o", packed, "--model", codec_file, "--quality", "2")
    assert code == 1
    assert "compressed 2 file(s)" in err and "failed 2" in err
    assert "alpha.png: has an alpha channel" in err and "broken.png: cannot decode image" in err
    assert sorted(p.relative_to(packed).as_posix() for p in packed.rglob("*.iae")) == ["a.iae", "sub/grey.iae"]
    assert {p: p.read_bytes() for p in src.rglob("*") if p.is_file()} == before  # inputs untouched

    code, out, err = run_cli("decompress", packed, "-o", restored, "--model", codec_file)
    assert code == 0, err
    assert Image.open(restored / "a.png").size == (90, 60)
    grey = Image.open(restored / "sub" / "grey.png")
    assert (grey.size, grey.mode) == ((47, 33), "L")

    # a second run skips what exists; a damaged file is named, the rest still decoded
    (packed / "bad.iae").write_bytes((packed / "a.iae").read_bytes()[:-3])
    code, out, err = run_cli("decompress", packed, "-o", restored, "--model", codec_file)
    assert code == 1 and "skipped 2 existing" in err and "bad.iae" in err and "truncated" in err


def test_cli_compress_usage_errors(codec_file, tmp_path):
    Image.fromarray(smooth_image(20, 20, seed=3)).save(tmp_path / "a.png")
    code, _, err = run_cli("compress", tmp_path / "a.png", "-o", tmp_path / "o", "--model", codec_file, "--quality", "9")
    assert code == 2 and "quality must be 1..2" in err
    code, _, err = run_cli("compress", tmp_path / "a.png", "-o", tmp_path / "o", "--quality", "2", "--target-bpp", "1")
    assert code == 2 and "not allowed with" in err
    code, _, err = run_cli("compress", tmp_path / "a.png", "-o", tmp_path / "o", "--model", "no-such-codec")
    assert code == 2 and "unknown model 'no-such-codec'" in err


def _benchmark_module():
    import importlib
    import sys
    from pathlib import Path

    benchmarks = str(Path(__file__).resolve().parent.parent / "benchmarks")
    if benchmarks not in sys.path:
        sys.path.insert(0, benchmarks)
    return importlib.import_module("compress")


def test_compress_benchmark_draws_one_curve_per_model_and_compares_them(codec_file, tmp_path):
    """benchmarks/compress.py on two copies of one codec: a curve each, BD-rates against JPEG and
    between the two (identical weights, names of one length in the files: 0 %); --one-curve joins
    them; two models of one name are refused."""
    import shutil

    compress = _benchmark_module()
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(64, 96, seed=40 + i)).save(photos / f"p{i}.png")
    first, second = tmp_path / "one.keras", tmp_path / "two.keras"
    shutil.copy(codec_file, first)
    shutil.copy(codec_file, second)
    common = ["--data", str(photos), "--codecs", "jpeg", "--jpeg-qualities", "5,30,60,90", "--skip-ms-ssim"]

    assert compress.main(["--model", str(first), str(second), *common, "--out", str(tmp_path / "each")]) == 0
    result = json.loads((tmp_path / "each" / "compress.json").read_text())
    assert result["config"]["codecs"] == ["JPEG", "imageae one", "imageae two"]
    curves = {}
    for p in result["points"]:
        curves.setdefault(p["codec"], []).append((p["setting"].split()[-1], p["bpp"], p["psnr"]))
    assert [q for q, *_ in curves["imageae one"]] == ["q1", "q2"]
    assert curves["imageae one"] == curves["imageae two"]
    pairs = {(r["anchor"], r["test"]): r for r in result["bd_rate"]}
    assert set(pairs) == {("JPEG", "imageae one"), ("JPEG", "imageae two"), ("imageae one", "imageae two")}
    assert pairs[("imageae one", "imageae two")]["psnr"] == pytest.approx(0.0, abs=1e-9)
    assert "| imageae two |" in (tmp_path / "each" / "compress.md").read_text()

    assert compress.main(["--model", str(first), str(second), "--one-curve", *common,
                          "--out", str(tmp_path / "one")]) == 0
    result = json.loads((tmp_path / "one" / "compress.json").read_text())
    assert result["config"]["codecs"] == ["JPEG", "imageae"]
    assert sum(p["codec"] == "imageae" for p in result["points"]) == 4
    assert {(r["anchor"], r["test"]) for r in result["bd_rate"]} == {("JPEG", "imageae")}

    (tmp_path / "other").mkdir()
    shutil.copy(codec_file, tmp_path / "other" / "one.keras")
    with pytest.raises(SystemExit) as exit_info:
        compress.main(["--model", str(first), str(tmp_path / "other" / "one.keras"), *common,
                       "--out", str(tmp_path / "clash")])
    assert exit_info.value.code == 2


# --- encoder-side latent refinement (imageae.codec.refine) ------------------------------------


def _session(codec_file):
    from imageae.codec.api import codec_session

    return codec_session(str(codec_file))


@pytest.mark.parametrize("channels", [3, 1], ids=["rgb", "grey"])
def test_refinement_lowers_the_files_rate_distortion_cost_and_any_decoder_reads_it(codec_file, channels):
    from imageae.codec import compress_array, decompress_bytes, make_session_lookup, refine
    from imageae.codec.refine import file_cost
    from imageae.codec.session import analyze_image

    session = _session(codec_file)
    image = smooth_image(70, 90, channels=channels, seed=11).reshape(70, 90, channels)
    plain, refined = analyze_image(session, image, 2), refine.refine_latents(session, image, 2, 40)
    # the encoder of a codec trained for 20 steps is far from optimal: refinement must do better
    assert file_cost(session, image, refined, 2) < file_cost(session, image, plain, 2)
    lookup, lmbda = make_session_lookup(session), session.model.lambdas[1]

    def realised_cost(data):  # what the user gets: the file's real size and its decoded pixels
        decoded = decompress_bytes(lookup, data)
        assert decoded.shape == image.shape and decoded.dtype == np.uint8
        return 8 * len(data) / (70 * 90) + lmbda * float(np.mean((decoded.astype(float) - image) ** 2))

    data = compress_array(session, image, 2, refine_steps=40)
    assert realised_cost(data) < realised_cost(compress_array(session, image, 2))
    assert compress_array(session, image, 2, refine_steps=40) == data  # deterministic


def test_refinement_never_returns_worse_latents_than_the_encoders(codec_file, monkeypatch):
    """A step size that only makes things worse: the plain latents come back unchanged."""
    from imageae.codec import refine
    from imageae.codec.session import analyze_image

    session = _session(codec_file)
    image = smooth_image(64, 64, seed=12)
    got = refine.refine_latents(session, image, 1, 3, learning_rate=1e3)
    plain = analyze_image(session, image, 1)
    np.testing.assert_array_equal(got.y_symbols, plain.y_symbols)
    np.testing.assert_array_equal(got.z_symbols, plain.z_symbols)


def test_refinement_refuses_bad_step_counts_and_images_too_large(codec_file, monkeypatch):
    from imageae.codec import refine

    model, image = str(codec_file), smooth_image(64, 64, seed=13)
    for steps in (-1, 2.5, True):
        with pytest.raises(ValueError, match="refine_steps must be a whole number >= 0"):
            imageae.compress(image, quality=1, model=model, refine_steps=steps)
    monkeypatch.setattr(refine, "MAX_REFINE_PIXELS", 64 * 64)
    with pytest.raises(ValueError, match="up to 0 Mpixel.*65x64.*without refinement"):
        imageae.compress(smooth_image(65, 64, seed=13), quality=1, model=model, refine_steps=2)


def test_target_bpp_with_refinement_stays_within_the_budget(codec_file):
    image, model = smooth_image(128, 128, seed=8), str(codec_file)
    sizes = [8 * len(imageae.compress(image, quality=q, model=model)) / image[..., 0].size for q in (1, 2)]
    for target in (sizes[1] + 0.01, (sizes[0] + sizes[1]) / 2):
        data = imageae.compress(image, target_bpp=target, model=model, refine_steps=10)
        assert 8 * len(data) / image[..., 0].size <= target


def test_target_bpp_with_refinement_takes_the_next_quality_up_when_its_refined_file_fits(codec_file, monkeypatch):
    from imageae.codec import session as session_module
    from imageae.codec.session import _encoder_latents, _latents_from

    def shrinking(session, image, quality, steps, **kwargs):  # stands in for a refinement that saves bits
        y, z = _encoder_latents(session, image, quality)
        return _latents_from(session, np.zeros_like(y), z, quality)

    monkeypatch.setattr(session_module, "refine_latents", shrinking)
    image, model = smooth_image(128, 128, seed=8), str(codec_file)
    bpp = lambda data: 8 * len(data) / image[..., 0].size
    plain = {q: bpp(imageae.compress(image, quality=q, model=model)) for q in (1, 2)}
    small = imageae.compress(image, quality=2, model=model, refine_steps=1)
    budget = max(plain[1], bpp(small))
    assert budget < plain[2]  # the premise: only quality 2's refined file fits at quality 2
    assert unpack(imageae.compress(image, target_bpp=budget, model=model))[0].quality == 1
    assert imageae.compress(image, target_bpp=budget, model=model, refine_steps=1) == small


def test_cli_compress_refine_steps(codec_file, tmp_path):
    Image.fromarray(smooth_image(40, 56, seed=3)).save(tmp_path / "a.png")
    code, _, err = run_cli("compress", tmp_path / "a.png", "-o", tmp_path / "o", "--model", codec_file,
                           "--refine-steps", "-1")
    assert code == 2 and "expected a whole number >= 0, got -1" in err
    code, _, err = run_cli("compress", tmp_path / "a.png", "-o", tmp_path / "o", "--model", codec_file,
                           "--quality", "2", "--refine-steps", "5")
    assert code == 0, err
    data = (tmp_path / "o" / "a.iae").read_bytes()
    assert data == imageae.compress(smooth_image(40, 56, seed=3), quality=2, model=str(codec_file), refine_steps=5)
    assert imageae.decompress(data, models=[str(codec_file)]).shape == (40, 56, 3)


def test_compress_benchmark_measures_a_refined_curve_beside_the_plain_one(codec_file, tmp_path):
    compress = _benchmark_module()
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(smooth_image(64, 96, seed=40)).save(photos / "p0.png")
    assert compress.main(["--model", str(codec_file), "--refine-steps", "5", "--data", str(photos), "--codecs",
                          "jpeg", "--jpeg-qualities", "5,30,60,90", "--skip-ms-ssim", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "compress.json").read_text())
    assert result["config"]["codecs"] == ["JPEG", "imageae tiny-codec", "imageae tiny-codec refine5"]
    assert [c["ok"] for c in result["determinism"]] == [True] * 4
    refined = [p for p in result["points"] if p["codec"] == "imageae tiny-codec refine5"]
    assert [p["setting"] for p in sorted(refined, key=lambda p: p["value"])] == \
        ["tiny-codec q1 refine5", "tiny-codec q2 refine5"]
    assert "model_estimate_gap_pct" not in refined[0]
    assert "refine5: the same models and files" in (tmp_path / "compress.md").read_text()

    common = ["--model", str(codec_file), "--data", str(photos), "--codecs", "jpeg", "--skip-ms-ssim"]
    assert compress.main([*common, "--qualities", "2", "--out", str(tmp_path / "q2")]) == 0
    result = json.loads((tmp_path / "q2" / "compress.json").read_text())
    assert [p["setting"] for p in result["points"] if p["codec"].startswith("imageae")] == ["tiny-codec q2"]
    with pytest.raises(SystemExit) as exit_info:
        compress.main([*common, "--qualities", "1,3", "--out", str(tmp_path / "q3")])
    assert exit_info.value.code == 2


def test_annealed_rounding_tends_to_rounding_and_is_differentiable_and_seeded():
    import tensorflow as tf

    from imageae.codec.refine import annealed_round

    v = tf.constant(np.random.default_rng(5).uniform(-6, 6, 4000), tf.float32)
    seed = tf.constant([3, 4], tf.int64)
    hot = annealed_round(v, 0.5, seed).numpy()
    assert np.all(hot >= np.floor(v.numpy())) and np.all(hot <= np.floor(v.numpy()) + 1)
    assert np.mean(np.abs(hot - np.round(hot))) > 0.05  # relaxed: many values between integers
    np.testing.assert_array_equal(annealed_round(v, 0.5, seed).numpy(), hot)  # same seed, same draw
    assert not np.array_equal(annealed_round(v, 0.5, tf.constant([3, 5], tf.int64)).numpy(), hot)
    # cold: the draw is the nearest integer (away from the ties at .5)
    cold = annealed_round(v, 1e-3, seed).numpy()
    clear = np.abs(v.numpy() - np.floor(v.numpy()) - 0.5) > 0.05
    np.testing.assert_array_equal(cold[clear], np.round(v.numpy())[clear])
    with tf.GradientTape() as tape:
        tape.watch(v)
        total = tf.reduce_sum(annealed_round(v, 0.5, seed))
    gradient = tape.gradient(total, v).numpy()
    assert np.all(np.isfinite(gradient)) and np.mean(gradient > 0) > 0.9
