"""The anomaly job: the autoencoder and its regularisers, scoring, calibration, the API and
the CLI (train, score, errors and exit codes). Images are tiny generated blobs; the normal
class is "one soft blob", the anomalies carry a bright scratch the model has never seen."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

SIDE = 16


def _blob(rng, scratch=False, margin=2):
    """A soft blob (the normal class), or one with a bright scratch on a row at least ``margin``
    from the edges."""
    yy, xx = np.mgrid[:SIDE, :SIDE]
    cy, cx = rng.uniform(6, 10, 2)
    x = 0.8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 12.0)
    if scratch:
        row = int(rng.integers(margin, SIDE - margin))
        x[row, 1 : SIDE - 1] = 1.0
    return np.clip(x + rng.normal(0, 0.01, x.shape), 0, 1).astype(np.float32)


def _images(n, seed, scratch=False):
    rng = np.random.default_rng(seed)
    return [_blob(rng, scratch) for _ in range(n)]


TINY = {"steps": 120, "steps_per_epoch": 40, "batch_size": 32, "code_size": 4, "filters": (8, 16), "learning_rate": 3e-3}


@pytest.fixture(scope="module")
def detector():
    from imageae.anomaly.api import AnomalyDetector

    return AnomalyDetector().fit(_images(160, 0), **TINY)


def test_autoencoder_config_round_trip_and_save_load(tmp_path):
    import keras

    from imageae.models.autoencoder import ConvAutoencoder

    model = ConvAutoencoder(image_size=16, channels=1, code_size=5, filters=(4, 8), sparsity="kl",
                            sparsity_weight=0.1, contractive_weight=0.2, calibration={"threshold": 1.5})
    x = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    assert tuple(model.encode(x).shape) == (3, model.code_size)
    model(x)
    clone = ConvAutoencoder.from_config(model.get_config())
    assert clone.get_config() == model.get_config()
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(model(x)), atol=1e-6)
    assert loaded.calibration == {"threshold": 1.5}


def test_sizes_off_the_stride_and_unknown_options_are_refused():
    from imageae.models.autoencoder import ConvAutoencoder

    with pytest.raises(ValueError, match="multiple of 4"):
        ConvAutoencoder(image_size=18, filters=(4, 8))
    with pytest.raises(ValueError, match="sparsity must be one of"):
        ConvAutoencoder(image_size=16, filters=(4, 8), sparsity="l2")


def test_regularisers_add_their_losses_only_while_training():
    from imageae.models.autoencoder import ConvAutoencoder

    x = np.random.default_rng(1).random((4, 16, 16, 1)).astype(np.float32)
    plain = ConvAutoencoder(image_size=16, code_size=4, filters=(4, 8))
    plain(x, training=True)
    assert not plain.losses
    for kwargs in ({"sparsity": "l1", "sparsity_weight": 1.0}, {"sparsity": "kl", "sparsity_weight": 1.0},
                   {"contractive_weight": 1.0}):
        model = ConvAutoencoder(image_size=16, code_size=4, filters=(4, 8), **kwargs)
        model(x, training=True)
        assert len(model.losses) == 1 and float(model.losses[0]) > 0, kwargs
        model(x, training=False)
        assert not model.losses


def test_contractive_estimate_matches_the_jacobian_of_a_linear_encoder():
    """For a linear map f(x) = W x the finite-difference estimate averages to ||W||_F^2."""
    import keras

    from imageae.models.autoencoder import ConvAutoencoder

    model = ConvAutoencoder(image_size=8, code_size=3, filters=(2,), contractive_weight=1.0)
    for layer in model.encoder.layers:  # make the encoder linear: identity activations
        if isinstance(layer, keras.layers.LeakyReLU):
            layer.negative_slope = 1.0
    x = np.zeros((2000, 8, 8, 1), np.float32)
    model(x, training=True)
    estimate = float(model.losses[0])
    basis = np.eye(64, dtype=np.float32).reshape(64, 8, 8, 1)
    jacobian = np.asarray(model.encode(basis)) - np.asarray(model.encode(np.zeros((1, 8, 8, 1), np.float32)))
    exact = float(np.sum(jacobian**2))
    assert estimate == pytest.approx(exact, rel=0.1)


def test_ssim_map_is_one_for_equal_images_and_lower_where_they_differ():
    from imageae.anomaly.scoring import ssim_map

    rng = np.random.default_rng(0)
    a = rng.random((2, 16, 16, 1)).astype(np.float32)
    b = a.copy()
    b[1, 4:8, 4:8] = 1.0 - b[1, 4:8, 4:8]
    s = ssim_map(a, b)
    assert s.shape == (2, 16, 16)
    np.testing.assert_allclose(s[0], 1.0, atol=1e-4)
    assert s[1, 6, 6] < 0.5 and s[1, 14, 14] > 0.99


def test_scoring_names_are_checked():
    from imageae.anomaly.scoring import parse_scoring

    assert parse_scoring("ssim+latent") == ("ssim", "latent")
    assert parse_scoring("l2max + latent") == ("l2max", "latent")
    for bad in ("", "mse", "l2+l2"):
        with pytest.raises(ValueError, match="scoring must be"):
            parse_scoring(bad)


def test_detector_ranks_scratches_above_normal_images_and_calibrates_its_threshold(detector):
    normal, scratched = _images(40, 1), _images(40, 2, scratch=True)
    scores, maps = detector.score(normal + scratched)
    labels = np.r_[np.zeros(40), np.ones(40)]
    order = np.argsort(scores)
    ranks = np.empty(80)
    ranks[order] = np.arange(1, 81)
    auroc = (ranks[labels == 1].sum() - 40 * 41 / 2) / (40 * 40)
    assert auroc > 0.9
    flagged = scores > detector.threshold
    assert flagged[:40].mean() <= 0.2 and flagged[40:].mean() >= 0.5
    # The heat map is brightest along the scratch.
    for image, heat in zip(scratched[:5], maps[40:45]):
        row = int(np.argmax(image[:, 1:-1].mean(axis=1)))
        assert abs(int(np.argmax(heat.mean(axis=1))) - row) <= 1


def test_scores_survive_save_and_load_and_maps_take_each_images_size(detector, tmp_path):
    from imageae.anomaly.api import AnomalyDetector

    images = _images(3, 5, scratch=True) + [np.full((40, 24), 0.3, np.float32), np.zeros((16, 16, 3), np.uint8)]
    scores, maps = detector.score(images)
    path = detector.save(tmp_path / "det.keras")
    again, _ = AnomalyDetector.load(path).score(images)
    np.testing.assert_allclose(again, scores, rtol=1e-4, atol=1e-4)
    assert [m.shape for m in maps] == [(16, 16)] * 3 + [(40, 24), (16, 16)]
    assert AnomalyDetector.load(path).predict(images).dtype == bool


def test_api_errors_say_what_was_wrong(detector):
    from imageae.anomaly.api import AnomalyDetector

    with pytest.raises(ValueError, match="no model yet"):
        AnomalyDetector().score([np.zeros((8, 8))])
    with pytest.raises(ValueError, match="sequence of images"):
        detector.score(np.zeros((16, 16)))
    with pytest.raises(ValueError, match="at least 2 normal images"):
        AnomalyDetector().fit([np.zeros((16, 16))])
    with pytest.raises(ValueError, match="image 1"):
        detector.score([np.zeros((16, 16)), np.full((16, 16), np.nan)])
    with pytest.raises(ValueError, match="sparsity"):
        AnomalyDetector().fit(_images(4, 0), sparsity="l1", sparsity_weight=0.0, **TINY)


def _write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for k, x in enumerate(images):
        Image.fromarray(np.round(x * 255).astype(np.uint8)).save(folder / f"{k:03d}.png")


def test_cli_trains_a_detector_with_card_and_curve(tmp_path, capsys):
    from imageae.cli import main

    _write_pngs(tmp_path / "normal", _images(40, 0))
    model = tmp_path / "det.keras"
    rc = main(["train", "anomaly", "--data", str(tmp_path / "normal"), "-o", str(model), "--steps", "20",
               "--steps-per-epoch", "10", "--batch-size", "16", "--code-size", "4", "--filters", "8,16",
               "--checkpoint-dir", str(tmp_path / "ckpt"), "--false-positive-rate", "0.05"])
    assert rc == 0
    card = json.loads(model.with_suffix(".json").read_text())
    assert card["job"] == "anomaly" and card["training"]["image_size"] == SIDE
    assert card["calibration"]["false_positive_rate"] == 0.05 and model.with_suffix(".curve.png").exists()
    assert card["training"]["stopped"]["steps_done"] == 20
    # the default scoring is auto; 4 held-out images are too few to rank on, and it says so
    assert card["training"]["config"]["scoring"] == "auto" and card["calibration"]["scoring"] == "ssim+latent"
    assert "scoring auto chose ssim+latent (auto with 4 held-out images (fewer than 20)" in capsys.readouterr().out


def test_cli_scores_a_folder(detector, tmp_path, capsys):
    from imageae.cli import main

    model = detector.save(tmp_path / "det.keras")
    _write_pngs(tmp_path / "test" / "good", _images(4, 1))
    _write_pngs(tmp_path / "test" / "bad", _images(4, 2, scratch=True))
    (tmp_path / "test" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "report"
    rc = main(["anomaly", "score", str(tmp_path / "test"), "--model", str(model), "-o", str(out)])
    assert rc == 1  # the broken file, named
    err = capsys.readouterr().err
    assert "broken.png" in err
    rows = list(csv.DictReader((out / "scores.csv").read_text().splitlines()))
    assert len(rows) == 8 and set(rows[0]) == {"path", "score", "anomalous"}
    bad = [float(r["score"]) for r in rows if "bad" in r["path"]]
    good = [float(r["score"]) for r in rows if "good" in r["path"]]
    assert min(bad) > max(good)
    assert (out / "heatmaps" / "good" / "000.png.png").exists()
    heat = np.asarray(Image.open(out / "heatmaps" / "bad" / "000.png.png"))
    assert heat.shape == (SIDE, SIDE, 3)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 8 and summary["failed"] == 1
    # A second run into the same folder is refused without --overwrite (exit 2), then allowed.
    assert main(["anomaly", "score", str(tmp_path / "test" / "good"), "--model", str(model), "-o", str(out)]) == 2
    assert main(["anomaly", "score", str(tmp_path / "test" / "good"), "--model", str(model), "-o", str(out),
                 "--overwrite"]) == 0


def test_cli_usage_errors_exit_2_with_one_line(tmp_path, capsys):
    from imageae.cli import main

    _write_pngs(tmp_path / "one", _images(1, 0))
    assert main(["train", "anomaly", "--data", str(tmp_path / "one"), "-o", str(tmp_path / "m.keras")]) == 2
    assert "at least 2 normal images" in capsys.readouterr().err
    assert main(["anomaly", "score", str(tmp_path / "one"), "--model", "nope", "-o", str(tmp_path / "o")]) == 2
    assert "unknown model 'nope'" in capsys.readouterr().err
    assert main(["anomaly"]) == 2
    assert main(["train", "anomaly", "--data", str(tmp_path / "one"), "-o", str(tmp_path / "m.keras"),
                 "--false-positive-rate", "5"]) == 2
    _write_pngs(tmp_path / "two", _images(2, 0))
    assert main(["train", "anomaly", "--data", str(tmp_path / "two"), "-o", str(tmp_path / "m.keras"),
                 "--size", "18", "--filters", "8,16"]) == 2
    assert "--size must be a multiple of 4" in capsys.readouterr().err


def test_export_writes_a_savedmodel_with_reconstruction_error_map_and_code(tmp_path):
    import keras
    import tensorflow as tf

    from imageae.export import export_saved_model
    from imageae.models.autoencoder import ConvAutoencoder

    keras.utils.set_random_seed(3)
    model = ConvAutoencoder(image_size=16, channels=1, code_size=8, filters=(8, 16))
    model.build((None, 16, 16, 1))
    path = tmp_path / "tiny.keras"
    model.save(path)
    target = export_saved_model(str(path), tmp_path / "serving")
    served = tf.saved_model.load(str(target)).signatures["serving_default"]
    x = np.random.default_rng(0).random((3, 16, 16, 1)).astype(np.float32)
    out = {k: v.numpy() for k, v in served(images=tf.constant(x)).items()}
    expected = np.asarray(model.decode(model.encode(x)))
    np.testing.assert_allclose(out["reconstruction"], expected, atol=1e-5)
    np.testing.assert_allclose(out["error_map"], ((expected - x) ** 2).mean(-1), atol=1e-5)
    assert out["code"].shape == (3, 8) and out["mean_squared_error"].shape == (3,)
