"""The ELPV-era score terms: l2wide (the largest local mean of the squared error at a coarser
scale) and zmax (the error map standardised pixel by pixel on the training images). A stub
model with a known reconstruction makes their behaviour exact without training."""

import numpy as np

SIDE = 32


class _StubModel:
    """Reconstructs every image as the normal images' mean grey (so a defect is not
    reconstructed) and always gets one band of columns wrong (as an autoencoder always misses,
    say, a cell's busbar), with a little per-image noise."""

    image_size, channels, code_size = SIDE, 1, 2

    def __init__(self, seed=0):
        self.rng = np.random.default_rng(seed)

    def _imageae_forward(self, x):
        x = np.asarray(x, np.float32)
        x_hat = 0.5 + self.rng.normal(0, 0.01, x.shape).astype(np.float32)
        x_hat[:, :, 2:4] += 0.3 + self.rng.normal(0, 0.05, (len(x), SIDE, 2, 1)).astype(np.float32)
        return np.zeros((len(x), 2), np.float32), x_hat


def _normal(n, seed):
    return np.random.default_rng(seed).uniform(0.4, 0.6, (n, SIDE, SIDE, 1)).astype(np.float32)


def test_zmax_discounts_where_the_model_always_errs_and_finds_a_new_defect():
    from imageae.anomaly.scoring import auroc, calibrate, combine, raw_terms

    model = _StubModel()
    cal = calibrate(model, _normal(64, 0), _normal(32, 1), scoring="l2max+zmax")
    assert np.asarray(cal["pixel_error"]["mean"]).shape == (SIDE, SIDE)
    normal = _normal(20, 2)
    defective = normal.copy()
    defective[:, 20:23, 12:18] = 0.25  # a darker patch away from the band the model always misses
    given = {"terms": ("l2max", "zmax", "l2wide"), "calibration": {"pixel_error": cal["pixel_error"]}}
    raw_normal, _, _ = raw_terms(model, normal, **given)
    raw_defective, _, _ = raw_terms(model, defective, **given)
    # The band's error (about 0.09) matches the patch's (0.06 over a smaller area) for the plain
    # local maximum, so l2max cannot tell them apart; standardised per pixel, the band is
    # ordinary and the patch stands out.
    assert auroc(raw_normal["l2max"], raw_defective["l2max"]) < 0.75
    assert auroc(raw_normal["zmax"], raw_defective["zmax"]) == 1.0
    scores = combine({**raw_normal}, {"terms": {"zmax": cal["terms"]["zmax"]}})
    assert abs(float(np.mean(scores))) < 3  # standardised on held-out normals: near 0 for normal images


def test_l2wide_is_the_coarser_local_maximum():
    from imageae.anomaly.scoring import raw_terms

    model = _StubModel()
    x = _normal(4, 3)
    raw, maps, _ = raw_terms(model, x, terms=("l2", "l2max", "l2wide"))
    err = maps["l2"].reshape(4, -1)
    # Both lie between the mean and the largest pixel error; the coarser blur flattens more.
    assert np.all(0.99 * err.mean(axis=1) <= raw["l2wide"]) and np.all(raw["l2wide"] <= 1.01 * raw["l2max"])
    assert np.all(raw["l2max"] <= err.max(axis=1))


def test_a_zmax_detector_survives_save_and_load(tmp_path):
    from imageae.anomaly.api import AnomalyDetector

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:16, :16]
    images = [np.clip(0.8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 12.0) + rng.normal(0, 0.01, (16, 16)), 0, 1)
              .astype(np.float32) for cy, cx in rng.uniform(6, 10, (48, 2))]
    detector = AnomalyDetector().fit(images, scoring="l2wide+zmax", steps=20, steps_per_epoch=10, batch_size=16,
                                     code_size=4, filters=(8, 16))
    scores, _ = detector.score(images[:5])
    again, _ = AnomalyDetector.load(detector.save(tmp_path / "z.keras")).score(images[:5])
    np.testing.assert_allclose(again, scores, rtol=1e-4, atol=1e-4)
    assert AnomalyDetector.load(tmp_path / "z.keras").calibration["scoring"] == "l2wide+zmax"


def test_intensity_flags_an_image_dark_all_over_that_reconstructs_as_well_as_a_normal_one():
    from imageae.anomaly.scoring import auroc, calibrate, raw_terms

    class Echo(_StubModel):  # reconstructs every image perfectly: the pixel terms see nothing
        def _imageae_forward(self, x):
            x = np.asarray(x, np.float32)
            return np.zeros((len(x), 2), np.float32), x.copy()

    model = Echo()
    cal = calibrate(model, _normal(64, 0), _normal(32, 1), scoring="l2+intensity")
    assert abs(cal["intensity"]["mean"] - 0.5) < 0.01 and cal["intensity"]["std"] > 0
    normal, dark, bright = _normal(20, 2), _normal(20, 3) - 0.05, _normal(20, 4) + 0.05
    given = {"terms": ("l2", "intensity"), "calibration": {"intensity": cal["intensity"]}}
    raw_n, raw_d, raw_b = (raw_terms(model, x, **given)[0] for x in (normal, dark, bright))
    assert auroc(raw_n["l2"], raw_d["l2"]) == 0.5  # perfect reconstructions all score 0
    assert auroc(raw_n["intensity"], raw_d["intensity"]) == 1.0  # either way from the normal mean
    assert auroc(raw_n["intensity"], raw_b["intensity"]) == 1.0


def test_darker_and_l2dark_are_one_sided_towards_dark():
    from imageae.anomaly.scoring import auroc, calibrate, raw_terms

    class Grey(_StubModel):  # reconstructs every image as flat 0.5 grey
        def _imageae_forward(self, x):
            return np.zeros((len(x), 2), np.float32), np.full_like(np.asarray(x, np.float32), 0.5)

    model = Grey()
    cal = calibrate(model, _normal(64, 0), _normal(32, 1), scoring="l2dark+darker")
    normal = _normal(20, 2)
    dark, bright = normal.copy(), normal.copy()
    dark[:, 10:16, 10:16] = 0.1  # a dark spot (a crack, a dead region)
    bright[:, 10:16, 10:16] = 0.9  # a bright one of the same size and contrast
    given = {"terms": ("l2wide", "l2dark", "intensity", "darker"), "calibration": {"intensity": cal["intensity"]}}
    raw_n, raw_d, raw_b = (raw_terms(model, x, **given)[0] for x in (normal, dark, bright))
    # l2wide and intensity flag both spots; the one-sided terms only the dark one
    for term in ("l2wide", "intensity"):
        assert auroc(raw_n[term], raw_d[term]) == 1.0 and auroc(raw_n[term], raw_b[term]) == 1.0
    for term in ("l2dark", "darker"):
        assert auroc(raw_n[term], raw_d[term]) == 1.0 and auroc(raw_n[term], raw_b[term]) <= 0.5
    assert np.all(raw_b["l2dark"] <= raw_n["l2dark"] + 1e-6)  # the bright spot adds nothing
    assert raw_b["darker"].max() < 0 < raw_d["darker"].min()  # a z-score: negative when brighter
    # the heat map follows the score: only the dark spot lights up
    assert cal["map_terms"] == ["l2dark"]
    _, maps_b, _ = raw_terms(model, bright, **given)
    _, maps_d, _ = raw_terms(model, dark, **given)
    assert maps_b["l2dark"][:, 10:16, 10:16].max() == 0 < maps_d["l2dark"][:, 10:16, 10:16].min()


def test_auto_scoring_chooses_on_synthetic_defects_of_the_held_out_normals():
    from imageae.anomaly.scoring import AUTO_MAX_TERMS, TERMS, calibrate, parse_scoring

    class Grey(_StubModel):  # reconstructs every image as flat 0.5 grey: only drawn defects stand out
        def _imageae_forward(self, x):
            return np.zeros((len(x), 2), np.float32), np.full_like(np.asarray(x, np.float32), 0.5)

    cal = calibrate(Grey(), _normal(64, 0), _normal(40, 1), scoring="auto")
    choice = cal["scoring_choice"]
    table = choice["synthetic_auroc_top"]
    # turned copies of uniform noise are like the normal images: no orientation, drawn defects rank
    assert choice["ranked_on"] == "drawn" and choice["best_auroc_turned"] < 0.9 <= choice["best_auroc_drawn"]
    assert cal["scoring"] == choice["chosen"] == next(iter(table))
    assert list(table.values()) == sorted(table.values(), reverse=True)
    terms = parse_scoring(cal["scoring"])
    assert set(terms) <= set(TERMS) and len(terms) <= AUTO_MAX_TERMS and set(cal["terms"]) == set(terms)
    # the drawn defects are dark blots and lines on these bright images: a local error term wins,
    # not the code's distance (the stub's code is always 0)
    assert table[cal["scoring"]] > 0.9 and "latent" not in terms
    assert np.isfinite(cal["threshold"])
    assert parse_scoring("auto") == ("auto",)


def _ramp():
    """Bright at the top left, dark at the bottom right: turned or mirrored, it is another image."""
    steps = np.arange(SIDE, dtype=np.float32)
    return (0.7 - 0.4 * (steps[:, None] + steps[None, :]) / (2 * SIDE - 2))[None, :, :, None]


def _oriented(n, seed):
    """The ramp with noise: images that have an orientation."""
    return np.clip(_ramp() + np.random.default_rng(seed).normal(0, 0.03, (n, SIDE, SIDE, 1)), 0, 1).astype(np.float32)


class _Ramp(_StubModel):
    """Reconstructs every image as the normal images' ramp, its code the image's top-minus-bottom
    and left-minus-right brightness."""

    def _imageae_forward(self, x):
        x = np.asarray(x, np.float32)
        half = SIDE // 2
        code = np.stack([x[:, :half].mean((1, 2, 3)) - x[:, half:].mean((1, 2, 3)),
                         x[:, :, :half].mean((1, 2, 3)) - x[:, :, half:].mean((1, 2, 3))], axis=1)
        return code.astype(np.float32), np.broadcast_to(_ramp(), x.shape).copy()


def test_auto_ranks_on_turned_copies_when_the_images_have_an_orientation():
    from imageae.anomaly.scoring import TURNED_MIN_AUROC, calibrate

    cal = calibrate(_Ramp(), _oriented(64, 0), _oriented(40, 1), scoring="auto")
    choice = cal["scoring_choice"]
    assert choice["ranked_on"] == "turned" and choice["best_auroc_turned"] >= TURNED_MIN_AUROC
    # the table and the choice are the turned copies' ranking; a turned ramp is told apart fully
    assert choice["synthetic_auroc_top"][cal["scoring"]] == choice["best_auroc_turned"] == 1.0


def test_synthetic_turned_rotates_and_mirrors_each_image_in_turn():
    from imageae.anomaly.scoring import synthetic_turned

    x = np.random.default_rng(0).uniform(0, 1, (5, 6, 6, 2)).astype(np.float32)
    turned = synthetic_turned(x)
    assert turned.shape == x.shape and turned.dtype == np.float32
    assert np.array_equal(turned[0], np.rot90(x[0])) and np.array_equal(turned[1], x[1, ::-1, ::-1])
    assert np.array_equal(turned[2], x[2, :, ::-1]) and np.array_equal(turned[3], x[3, ::-1])
    assert np.array_equal(turned[4], np.rot90(x[4])) and synthetic_turned(x[:0]).shape == (0, 6, 6, 2)


def test_auto_with_few_held_out_images_keeps_the_default():
    from imageae.anomaly.scoring import AUTO_MIN_IMAGES, DEFAULT_SCORING, FALLBACK_SCORING, calibrate

    assert DEFAULT_SCORING == "auto"
    cal = calibrate(_Ramp(), _oriented(64, 0), _oriented(AUTO_MIN_IMAGES - 1, 1))
    assert cal["scoring"] == FALLBACK_SCORING and "fewer than" in cal["scoring_choice"]["method"]


def test_recalibrate_repeats_the_recipes_calibration_and_rescores_with_another_scoring(tmp_path):
    import json

    from imageae.anomaly.train import AnomalyTrainConfig, fit_autoencoder, recalibrate

    rng = np.random.default_rng(1)
    images = [np.clip(rng.normal(0.5, 0.05, (16, 16, 1)), 0, 1).astype(np.float32) for _ in range(40)]
    config = AnomalyTrainConfig(data=[], output="", size=16, channels=1, steps=10, steps_per_epoch=10, batch_size=16,
                                code_size=4, filters=(8, 16), scoring="l2wide+zmax")
    model, info = fit_autoencoder(images, config, checkpoint_dir=tmp_path / "ck")
    trained = json.dumps(model.calibration, sort_keys=True)
    assert json.dumps(recalibrate(model, images, info["config"]), sort_keys=True) == trained
    again = recalibrate(model, images, AnomalyTrainConfig(**{**info["config"].__dict__, "scoring": "l2+intensity"}))
    assert again["scoring"] == "l2+intensity" and "intensity" in again and model.calibration is again
