"""Real camera noise: the degradation model, the noise-level input and the user's strength."""

import numpy as np
import pytest

from imageae.denoise.degrade import camera_noise, degrade, jpeg, linear_to_srgb, srgb_to_linear
from imageae.models.denoiser import DenoiserUNet, build_denoiser, with_noise_level_input


def _photo(size=64, seed=0):
    """A smooth colour test image (gradients and a disc), 0..1."""
    yy, xx = np.mgrid[:size, :size] / size
    disc = ((yy - 0.5) ** 2 + (xx - 0.5) ** 2 < 0.08).astype(np.float32)
    return np.stack([0.2 + 0.6 * xx, 0.3 + 0.4 * yy, 0.25 + 0.5 * disc], -1).astype(np.float32)


# ---------------------------------------------------------------------------------- degradation


def test_srgb_curve_round_trips():
    x = np.linspace(0, 1, 101, dtype=np.float32)
    assert np.allclose(linear_to_srgb(srgb_to_linear(x)), x, atol=1e-5)


def test_camera_noise_is_signal_dependent_and_spatially_correlated():
    rng = np.random.default_rng(0)
    dark, bright = np.full((96, 96, 3), 0.1, np.float32), np.full((96, 96, 3), 0.8, np.float32)
    seeds = np.random.default_rng(1).integers(1 << 30, size=40)
    # Same noise parameters for the dark and the bright patch: the bright one gets more
    # (Poisson) noise in linear light, so its sRGB-scale noise differs from the dark one's.
    dark_std = np.mean([np.std(camera_noise(dark, np.random.default_rng(s)) - dark) for s in seeds])
    bright_std = np.mean([np.std(camera_noise(bright, np.random.default_rng(s)) - bright) for s in seeds])
    assert abs(np.log(bright_std / dark_std)) > 0.1
    # Demosaicing correlates neighbours: white noise would have a lag-1 correlation near 0.
    flat = np.full((128, 128, 3), 0.5, np.float32)
    n = camera_noise(flat, rng) - flat
    g = n[..., 1] - n[..., 1].mean()
    corr = np.sum(g[:, 1:] * g[:, :-1]) / np.sum(g * g)
    assert corr > 0.3


def test_degrade_returns_the_level_of_what_it_added():
    clean = _photo(96)
    rng = np.random.default_rng(3)
    for _ in range(20):
        noisy, level = degrade(clean, rng)
        assert noisy.shape == clean.shape and noisy.dtype == np.float32
        assert 0 <= level < 1
        assert np.std(noisy - clean) == pytest.approx(level, rel=0.25, abs=2 / 255)
    # Gaussian only: sigma itself, unclipped input as the benchmarks use it
    noisy, level = degrade(clean, np.random.default_rng(4), gaussian_probability=1.0, sigma_max=50)
    assert np.std(noisy - clean) == pytest.approx(level, rel=0.1)
    assert noisy.min() < 0 or noisy.max() > 1 or level < 0.05


def test_degrade_refuses_grey_patches():
    with pytest.raises(ValueError, match="RGB"):
        degrade(np.zeros((8, 8, 1), np.float32), np.random.default_rng(0))


def test_jpeg_changes_the_image_and_keeps_its_shape():
    x = _photo(64) + np.random.default_rng(0).normal(0, 0.05, (64, 64, 3)).astype(np.float32)
    y = jpeg(x, 60)
    assert y.shape == x.shape and 0 < np.abs(y - np.clip(x, 0, 1)).mean() < 0.1


# ------------------------------------------------------------------------------- the level input


def _blind():
    return build_denoiser(3, (8, 16), 1)


def test_a_blind_model_given_a_level_input_starts_out_unchanged():
    blind = _blind()
    x = np.random.default_rng(0).random((2, 32, 32, 3)).astype(np.float32)
    model = with_noise_level_input(blind)
    assert model.noise_level and not blind.noise_level
    expected = np.asarray(blind(x))
    for level in (0.0, 0.02, 0.3):
        assert np.allclose(np.asarray(model((x, np.full(2, level, np.float32)))), expected, atol=1e-6)


def test_the_level_changes_the_output_once_the_model_uses_it():
    model = with_noise_level_input(_blind())
    kernel, bias = model.head.get_weights()
    kernel[:, :, -1] = 1.0  # as if trained to use the level plane
    model.head.set_weights([kernel, bias])
    x = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)
    low, high = (np.asarray(model((x, np.array([v], np.float32)))) for v in (0.01, 0.2))
    assert np.abs(low - high).mean() > 1e-4


def test_a_model_with_a_level_input_saves_and_loads(tmp_path):
    import keras

    model = with_noise_level_input(_blind())
    x = np.random.default_rng(0).random((1, 32, 32, 3)).astype(np.float32)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded, DenoiserUNet) and loaded.noise_level
    assert np.allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert np.asarray(loaded.estimate_level(x)).shape == (1,)


# ------------------------------------------------------------------------------------ strength


@pytest.fixture
def level_model(tmp_path):
    """A small model that uses its level plane (a hand-set head weight), saved as .keras."""
    model = with_noise_level_input(_blind())
    kernel, bias = model.head.get_weights()
    kernel[:, :, -1] = 2.0
    model.head.set_weights([kernel, bias])
    path = tmp_path / "level.keras"
    model.save(path)
    return str(path)


def test_strength_is_checked_with_a_clear_error():
    from imageae.denoise.api import Denoiser

    for bad in ("strong", -1, 300, float("nan"), None):
        with pytest.raises(ValueError, match="strength"):
            Denoiser(strength=bad)
    assert Denoiser(strength="AUTO").strength == "auto" and Denoiser(strength="7.5").strength == 7.5


def test_a_number_strength_on_a_blind_model_says_which_model_takes_one(tmp_path):
    import imageae

    blind = tmp_path / "blind.keras"
    _blind().save(blind)
    x = _photo(32)
    with pytest.raises(ValueError, match="blind denoiser.*denoise-colour"):
        imageae.denoise(x, model=str(blind), strength=10, precision="float32")
    imageae.denoise(x, model=str(blind), strength="auto", precision="float32")  # auto is fine


def test_strength_reaches_the_model_and_auto_uses_the_estimate(level_model):
    import imageae
    from imageae.denoise.api import Denoiser, estimate_noise_level

    x = _photo(48)
    outs = {s: imageae.denoise(x, model=level_model, strength=s, precision="float32") for s in (2, 40)}
    assert np.abs(outs[2] - outs[40]).mean() > 1e-4
    runner = Denoiser(level_model, precision="float32").runner(3)
    level = estimate_noise_level(runner.model, x)
    auto = imageae.denoise(x, model=level_model, strength="auto", precision="float32")
    assert np.allclose(auto, imageae.denoise(x, model=level_model, strength=level * 255, precision="float32"),
                       atol=1e-5)


def test_a_fixed_strength_gives_the_same_result_tiled_and_whole(level_model):
    from imageae.denoise.api import Denoiser

    x = np.random.default_rng(0).random((150, 170, 3)).astype(np.float32)
    whole = Denoiser(level_model, precision="float32", strength=12, tile=1024)
    tiled = Denoiser(level_model, precision="float32", strength=12, tile=64)
    [(_, a)] = list(whole.run([(0, x)]))
    [(_, b)] = list(tiled.run([(0, x)]))
    assert tiled.runner(3).tile < 150 and np.allclose(a, b, atol=1e-5)


def test_auto_strength_on_a_large_image_estimates_from_a_bounded_sample(level_model, monkeypatch):
    from imageae.denoise import api

    seen = []
    runner = api.Denoiser(level_model, precision="float32").runner(3)
    original = runner.model.estimate_log_level

    def spy(z):
        seen.append(tuple(z.shape))
        return original(z)

    monkeypatch.setattr(runner.model, "estimate_log_level", spy)
    level = api.estimate_noise_level(runner.model, np.zeros((900, 1300, 3), np.float32))
    assert seen and seen[0][0] <= 16 and seen[0][1:3] == (256, 256) and level >= DenoiserUNet.MIN_LEVEL


def test_cli_strength_flag(level_model, tmp_path, capsys):
    from PIL import Image

    from imageae.cli import main

    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((_photo(40) * 255).astype(np.uint8)).save(src / "a.png")
    assert main(["denoise", str(src), "-o", str(tmp_path / "o3"), "--model", level_model, "--strength", "3",
                 "--precision", "float32", "--progress", "off"]) == 0
    assert main(["denoise", str(src), "-o", str(tmp_path / "o40"), "--model", level_model, "--strength", "40",
                 "--precision", "float32", "--progress", "off"]) == 0
    a = np.asarray(Image.open(tmp_path / "o3" / "a.png"), np.float32)
    b = np.asarray(Image.open(tmp_path / "o40" / "a.png"), np.float32)
    assert np.abs(a - b).mean() > 0.1
    assert main(["denoise", str(src), "-o", str(tmp_path / "bad"), "--strength", "lots"]) == 2
    assert "strength must be 'auto' or a noise level" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- training


def test_camera_recipe_trains_a_level_model_from_a_blind_one(tmp_path):
    from PIL import Image

    from imageae.denoise.train import DenoiserTrainConfig, train_denoiser

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(data / f"{i}.png")
    init = tmp_path / "blind.keras"
    _blind().save(init)
    config = DenoiserTrainConfig(data=[str(data)], output=str(tmp_path / "out.keras"), channels=3, init=str(init),
                                 noise="camera", steps=2, steps_per_epoch=1, batch_size=2, patch_size=32,
                                 validation_fraction=0.25, precision="float32",
                                 checkpoint_dir=str(tmp_path / "ck"))
    path = train_denoiser(config, progress=False)
    import json

    import keras

    model = keras.saving.load_model(path)
    assert model.noise_level
    card = json.loads(path.with_suffix(".json").read_text())
    assert "camera noise" in card["training"]["noise"]
    assert set(card["metrics"]["validation_camera_noise_psnr_db"]) == {"noisy", "true_level", "auto_level"}


def test_fine_tuning_keeps_the_calibrated_floor_gain_and_highpass(level_model, tmp_path):
    import keras
    from PIL import Image

    from imageae.denoise.train import DenoiserTrainConfig, train_denoiser

    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(data / f"{i}.png")
    init = keras.saving.load_model(level_model)
    init.auto_level_floor, init.grey_level_gain, init.noise_highpass = 6 / 255, 1.4, 4.0
    init.save(tmp_path / "calibrated.keras")
    config = DenoiserTrainConfig(data=[str(data)], output=str(tmp_path / "tuned.keras"), channels=3,
                                 init=str(tmp_path / "calibrated.keras"), noise="camera", steps=2, steps_per_epoch=1,
                                 batch_size=2, patch_size=32, validation_fraction=0.25, precision="float32",
                                 checkpoint_dir=str(tmp_path / "ck"))
    tuned = keras.saving.load_model(train_denoiser(config, progress=False))
    assert (tuned.auto_level_floor, tuned.grey_level_gain, tuned.noise_highpass) == (6 / 255, 1.4, 4.0)


def test_camera_recipe_refuses_grey(tmp_path):
    from imageae.denoise.train import DenoiserTrainConfig, train_denoiser

    config = DenoiserTrainConfig(data=[str(tmp_path)], output=str(tmp_path / "o.keras"), channels=1, noise="camera",
                                 checkpoint_dir=str(tmp_path / "ck"))
    with pytest.raises(ValueError, match="colour"):
        train_denoiser(config, progress=False)


def test_self_ensemble_gives_all_eight_views_the_image_level(level_model, monkeypatch):
    from imageae.denoise import api

    x = np.random.default_rng(5).random((24, 40, 3)).astype(np.float32)
    calls = []
    original = api.estimate_noise_level

    def counting(model, image):
        calls.append(image.shape)
        return original(model, image)

    monkeypatch.setattr(api, "estimate_noise_level", counting)
    out = api.Denoiser(level_model, precision="float32", self_ensemble=True).run([(0, x)])
    [(_, y)] = list(out)
    assert calls == [x.shape]  # estimated once, on the image as given
    level = original(api.Denoiser(level_model, precision="float32").runner(3).model, x) * 255
    fixed = api.Denoiser(level_model, precision="float32", strength=level)
    views = [api._undo_dihedral(list(fixed.run([(0, np.ascontiguousarray(api._dihedral(x, k)))]))[0][1], k)
             for k in range(8)]
    assert np.allclose(y, np.mean(views, axis=0), atol=1e-4)


def test_a_set_strength_sends_grey_images_through_the_colour_model(random_weight_models):
    """denoise-grey takes no level: with a number and model auto, grey images go through
    denoise-colour (grey in, grey out) instead of failing; with auto they keep the grey model."""
    import imageae
    from imageae import registry
    from imageae.denoise.api import Denoiser

    x = np.random.default_rng(2).random((40, 48)).astype(np.float32)
    y = imageae.denoise(x, strength=10, precision="float32")
    assert y.shape == x.shape
    colour = Denoiser(str(random_weight_models / "denoise-colour.keras"), strength=10, precision="float32")
    [(_, expected)] = list(colour.run([(0, x[..., None])]))
    assert np.allclose(y, np.clip(expected[..., 0], 0, 1), atol=1e-5)
    auto = Denoiser(precision="float32")
    assert auto.runner(1).model is not auto.runner(3).model
    assert registry.load_model("denoise-grey", job="denoise").noise_level is False


def test_tiny_images_are_padded_before_the_level_is_estimated(level_model, monkeypatch):
    from imageae.denoise import api

    seen = []
    runner = api.Denoiser(level_model, precision="float32").runner(3)
    original = runner.model.estimate_log_level
    monkeypatch.setattr(runner.model, "estimate_log_level", lambda z: seen.append(tuple(z.shape)) or original(z))
    api.estimate_noise_level(runner.model, np.full((16, 40, 3), 0.5, np.float32))
    assert seen == [(1, 64, 64, 3)]


# ----------------------------------------------------------------------------- auto floor


def test_auto_uses_at_least_the_models_floor_and_the_floor_is_saved(level_model, tmp_path):
    import keras

    import imageae
    from imageae.denoise.api import Denoiser, estimate_noise_level

    x = _photo(48)
    raw = 255 * estimate_noise_level(keras.saving.load_model(level_model), x)
    model = keras.saving.load_model(level_model)
    model.level_calibration = 5 / raw  # the untrained estimator's reading made 5
    estimate = 255 * estimate_noise_level(model, x)
    assert estimate < 30  # (the raw reading may be clipped at 255, so not exactly 5)
    model.auto_level_floor = (estimate + 20) / 255  # above the estimate: the floor decides
    floored = tmp_path / "floored.keras"
    model.save(floored)
    assert keras.saving.load_model(floored).auto_level_floor == pytest.approx((estimate + 20) / 255)
    auto = imageae.denoise(x, model=str(floored), strength="auto", precision="float32")
    fixed = imageae.denoise(x, model=str(floored), strength=estimate + 20, precision="float32")
    model.auto_level_floor = DenoiserUNet.MIN_LEVEL
    unfloored = tmp_path / "unfloored.keras"
    model.save(unfloored)
    plain = imageae.denoise(x, model=str(unfloored), strength="auto", precision="float32")
    assert np.allclose(auto, fixed, atol=1e-5) and np.abs(auto - plain).mean() > 1e-4
    # the model's own "auto" (the exported graphs' path) applies the same floor
    runner = Denoiser(str(floored), precision="float32").runner(3)
    whole = np.asarray(runner.model(x[None]))[0]
    at_floor = np.asarray(runner.model((x[None], np.float32([(estimate + 20) / 255]))))[0]
    assert np.allclose(whole, at_floor, atol=1e-5)
    # the unfloored model's own "auto" is its estimate on the whole input
    at_estimate = np.asarray(model((x[None], model.estimate_level(x[None]))))[0]
    assert np.allclose(np.asarray(model(x[None]))[0], at_estimate, atol=1e-4)


@pytest.mark.parametrize("width", [6.0, 16.0])  # full resolution; on 4x4 block sums
def test_the_noise_highpass_keeps_the_local_mean_and_tiles_exactly(level_model, tmp_path, width):
    import keras

    from imageae.models.denoiser import gaussian_lowpass, gaussian_radius
    from imageae.pipelines.engine import TiledRunner

    rng = np.random.default_rng(3)
    noisy = np.clip(_photo(96) + rng.normal(0, 0.08, (96, 96, 3)), 0, 1).astype(np.float32)
    model = keras.saving.load_model(level_model)
    plain = next(iter(TiledRunner(model).run([(0, noisy, 20 / 255)])))[1]
    model.noise_highpass = width
    assert model.receptive_radius == keras.saving.load_model(level_model).receptive_radius + gaussian_radius(width)
    out = next(iter(TiledRunner(model).run([(0, noisy, 20 / 255)])))[1]
    # what the model removes is the plain model's noise less its Gaussian average, so the removed
    # part has (almost) no low frequencies left, where the plain model's had
    def smooth(x):
        return np.asarray(gaussian_lowpass(x[None], width))[0]

    removed, removed_plain = noisy - out, noisy - plain
    assert np.allclose(removed, removed_plain - smooth(removed_plain), atol=1e-4)
    assert np.abs(smooth(removed)).mean() < 0.3 * np.abs(smooth(removed_plain)).mean()
    # tiled (windows with the larger margin) equals whole; the setting is saved
    tiled = next(iter(TiledRunner(model, tile=64).run([(0, noisy, 20 / 255)])))[1]
    assert np.allclose(tiled, out, atol=1e-5)
    model.save(tmp_path / "hp.keras")
    assert keras.saving.load_model(tmp_path / "hp.keras").noise_highpass == width
    with pytest.raises(ValueError, match="noise_highpass"):
        type(model)(channels=3, noise_level=True, noise_highpass=-1)


@pytest.mark.parametrize("width", [3.0, 8.0, 16.0, 32.0])
def test_gaussian_lowpass_is_a_gaussian_blur_that_treats_outside_as_missing(width):
    import cv2

    from imageae.models.denoiser import gaussian_lowpass

    rng = np.random.default_rng(1)
    field = cv2.GaussianBlur(rng.normal(0, 1, (203, 317)).astype(np.float32), (0, 0), 3.0)  # structure at all scales
    x = np.stack([field, -field, np.full_like(field, 0.3)], -1)
    ours = np.asarray(gaussian_lowpass(x[None], width))[0]
    assert ours.shape == x.shape
    reference = cv2.GaussianBlur(x, (0, 0), width, borderType=cv2.BORDER_REFLECT)
    r = int(3 * width)  # away from the borders (reflecting and leaving out differ there)
    inner = (slice(r, -r), slice(r, -r), slice(0, 2))
    error = np.sqrt(np.mean((ours[inner] - reference[inner]) ** 2)) / np.sqrt(np.mean(reference[inner] ** 2))
    assert error < 0.1
    assert np.abs(ours[..., 2] - 0.3).max() < 1e-5  # a constant stays constant up to the borders


def _pairs(folder, count=3, sigma=12.0):
    """``count`` noisy/clean pairs in PolyU's naming, correlated noise so the floor matters."""
    import cv2
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(5)
    for i in range(count):
        clean = _photo(64, seed=i)
        noise = cv2.GaussianBlur(rng.normal(0, 1, clean.shape).astype(np.float32), (0, 0), 1.5)
        noisy = np.clip(clean + noise / noise.std() * sigma / 255, 0, 1)
        Image.fromarray(np.round(noisy * 255).astype(np.uint8)).save(folder / f"cam_{i}_real.png")
        Image.fromarray(np.round(clean * 255).astype(np.uint8)).save(folder / f"cam_{i}_mean.png")


def test_calibrate_auto_floor_picks_the_floor_with_the_best_mean_psnr(level_model, tmp_path):
    import keras

    from imageae.data.io import read_image
    from imageae.denoise.train import _uint8_psnr, calibrate_auto_floor, find_pairs

    _pairs(tmp_path / "pairs")
    found = find_pairs(tmp_path / "pairs")
    assert [name for name, *_ in found] == ["cam_0", "cam_1", "cam_2"]
    pairs = [(n, read_image(a).to_float(), read_image(b).to_float()) for n, a, b in found]
    model = keras.saving.load_model(level_model)
    model.noise_highpass = 3.0
    floor, highpass, table, rows = calibrate_auto_floor(model, pairs, floors=(0, 5, 30), highpasses=(0, 4))
    assert set(table) == {(f, h) for f in (0, 5, 30) for h in (0, 4)} and len(rows) == 3
    best = max(table.values())
    assert table[floor, highpass] >= best - 0.01 and floor == max(table, key=table.get)[0]
    assert highpass == min(h for (f, h), v in table.items() if f == floor and v >= best - 0.01)
    # the table's numbers are what the model gives at max(estimate, floor)
    from imageae.denoise.api import estimate_noise_level
    from imageae.pipelines.engine import TiledRunner

    _, noisy, clean = pairs[0]
    level = max(estimate_noise_level(model, noisy), 30 / 255)
    for highpass in (0.0, 4.0):  # and what the model itself gives with that noise highpass
        model.noise_highpass = highpass
        out = next(iter(TiledRunner(model).run([(0, noisy, level)])))[1]
        assert rows[0][f"floor_30_highpass_{highpass:g}"] == pytest.approx(_uint8_psnr(out, clean), abs=1e-3)
    model.noise_highpass = 3.0
    floor, highpass, table, rows = calibrate_auto_floor(model, pairs, floors=(0, 5, 30), highpasses=(0, 4))
    assert model.auto_level_floor == DenoiserUNet.MIN_LEVEL and model.noise_highpass == 3.0  # left unchanged


def test_find_pairs_names_a_noisy_file_without_its_clean_one(tmp_path):
    from imageae.denoise.train import find_pairs

    (tmp_path / "a_real.png").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="a_real.png"):
        find_pairs(tmp_path)
    with pytest.raises(FileNotFoundError, match="pairs"):
        find_pairs(tmp_path / "missing")


def test_a_set_strength_on_a_grey_image_is_scaled_by_the_models_grey_gain(level_model, tmp_path):
    import keras

    import imageae

    grey = _photo(40)[..., :1]
    model = keras.saving.load_model(level_model)
    model.grey_level_gain = 1.5
    gained = tmp_path / "gained.keras"
    model.save(gained)
    assert keras.saving.load_model(gained).grey_level_gain == 1.5
    # a grey image at strength 10 through the gained model = at 15 through the plain one
    a = imageae.denoise(grey, model=str(gained), strength=10, precision="float32")
    b = imageae.denoise(grey, model=level_model, strength=15, precision="float32")
    assert a.shape == grey.shape and np.allclose(a, b, atol=1e-5)
    # colour images are not scaled
    colour = _photo(40)
    assert np.allclose(imageae.denoise(colour, model=str(gained), strength=10, precision="float32"),
                       imageae.denoise(colour, model=level_model, strength=10, precision="float32"), atol=1e-5)


def test_calibrate_grey_gain_scores_every_gain_and_picks_the_best(level_model):
    import keras

    from imageae.denoise.train import calibrate_grey_gain

    model = keras.saving.load_model(level_model)
    images = [_photo(48)[..., :1], _photo(48)[..., 1:2]]
    gain, table = calibrate_grey_gain(model, images, gains=(1.0, 2.0), sigmas=(20.0,))
    assert set(table) == {1.0, 2.0} and gain == max(table, key=table.get)
    assert model.grey_level_gain == 1.0  # left unchanged
    with pytest.raises(ValueError, match="colour model"):
        calibrate_grey_gain(_blind(), images)


def test_cli_auto_strength_writes_a_calibrated_model_and_its_card(level_model, tmp_path, capsys):
    import json

    import keras

    from imageae.cli import main

    _pairs(tmp_path / "pairs", count=2)
    out = tmp_path / "cal" / "mine.keras"
    assert main(["train", "auto-strength", level_model, "--pairs", str(tmp_path / "pairs"), "-o", str(out)]) == 0
    card = json.loads(out.with_suffix(".json").read_text())["auto_strength"]
    assert card["pair_count"] == 2 and len(card["per_pair"]) == 2
    best = max(card["mean_psnr_db"].values())
    chosen = card["mean_psnr_db"][f"floor {card['floor']:g}, highpass {card['noise_highpass']:g}"]
    assert chosen >= best - 0.01 and len(card["mean_psnr_db"]) == 12 * 5
    calibrated = keras.saving.load_model(out)
    assert calibrated.auto_level_floor == pytest.approx(max(card["floor"], 0.5) / 255)
    assert calibrated.noise_highpass == card["noise_highpass"]
    assert "chosen floor" in capsys.readouterr().out
    # a blind model and the model itself as output are clear errors
    blind = tmp_path / "blind.keras"
    _blind().save(blind)
    assert main(["train", "auto-strength", str(blind), "--pairs", str(tmp_path / "pairs"), "-o",
                 str(tmp_path / "x.keras")]) == 2
    assert "blind denoiser" in capsys.readouterr().err
    assert main(["train", "auto-strength", level_model, "--pairs", str(tmp_path / "pairs"), "-o", level_model]) == 2
    assert "is the model being calibrated" in capsys.readouterr().err
    assert main(["train", "auto-strength", level_model, "-o", str(tmp_path / "y.keras")]) == 2
    assert "--grey-data" in capsys.readouterr().err
    # --grey-data alone: the gain section, the floor left as it was
    greys = tmp_path / "greys"
    greys.mkdir()
    from PIL import Image

    Image.fromarray((_photo(40)[..., 0] * 255).astype(np.uint8), "L").save(greys / "g.png")
    out2 = tmp_path / "cal" / "grey.keras"
    assert main(["train", "auto-strength", level_model, "--grey-data", str(greys), "-o", str(out2)]) == 0
    card2 = json.loads(out2.with_suffix(".json").read_text())
    assert "auto_strength" not in card2 and card2["grey_strength"]["gain"] == keras.saving.load_model(out2).grey_level_gain
    assert "chosen grey gain" in capsys.readouterr().out
