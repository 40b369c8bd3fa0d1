"""The shipped models do their jobs (real weights from saved_models/, not stand-ins)."""

import json

import numpy as np
import pytest

import imageae
from imageae import registry
from imageae.data.io import read_image
from imageae.metrics import psnr

DATA = registry.Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(autouse=True)
def shipped_models(monkeypatch):
    """Use the repo's own saved_models/, whatever IMAGEAE_MODELS says."""
    from imageae.denoise import api as denoise_api
    from imageae.generate import api as generate_api

    monkeypatch.delenv("IMAGEAE_MODELS", raising=False)
    monkeypatch.setattr(denoise_api, "_default", {})
    monkeypatch.setattr(generate_api, "_default", {})


@pytest.mark.parametrize("entry", registry.list_models(), ids=lambda e: e.name)
def test_every_registered_model_is_shipped_with_a_model_card(entry):
    assert entry.path.exists(), f"{entry.name}: weights missing at {entry.path}"
    card = json.loads(entry.card_path.read_text())
    assert card["name"] == entry.name
    for key in ("training", "hardware", "metrics"):
        assert card.get(key), f"{entry.name}: model card lacks {key!r}"
    assert card["training"].get("data") and card["training"].get("wall_time_seconds")


def test_saved_models_stay_within_the_size_budget():
    total = sum(p.stat().st_size for p in registry.saved_models_dir().glob("*") if p.is_file())
    assert total < 60_000_000  # the guide's 60 MB, read strictly (decimal megabytes)


@pytest.mark.parametrize(
    "clean_file, model, sigma, min_gain_db",
    [("camera.png", "denoise-grey", 25, 7.0), ("coffee.png", "denoise-colour", 25, 7.0),
     ("camera.png", "denoise-grey", 50, 10.0)],
)
def test_denoiser_raises_psnr_on_a_seeded_noisy_sample(clean_file, model, sigma, min_gain_db):
    clean = read_image(DATA / "clean" / clean_file).pixels[:256, :256]
    rng = np.random.default_rng(7)
    noisy = clean.astype(np.float64) + rng.normal(0, sigma, clean.shape)  # unclipped, as the protocol
    out = imageae.denoise((noisy / 255.0).astype(np.float32), model=model)
    before = psnr(clean, np.clip(np.round(noisy), 0, 255))
    after = psnr(clean, np.round(out * 255))
    assert after - before >= min_gain_db, f"{model}: {before:.2f} -> {after:.2f} dB"


def test_denoiser_leaves_a_clean_image_nearly_unchanged():
    clean = read_image(DATA / "clean" / "camera.png").pixels[:128, :128, 0]
    out = imageae.denoise(clean)
    assert out.dtype == np.uint8 and psnr(clean, out) > 33.0


@pytest.mark.skipif("vae-digits" not in registry.MODELS, reason="vae-digits not registered")
def test_generated_digits_are_recognised_by_the_digit_classifier():
    import keras

    import imageae.models.classifier  # noqa: F401

    classifier = keras.saving.load_model(registry.saved_models_dir() / "digit-classifier.keras", compile=False)
    samples = imageae.generate(200, model="vae-digits", seed=0).astype(np.float32) / 255.0
    noise = np.random.default_rng(0).random(samples.shape).astype(np.float32)

    def confidence(x):
        logits = np.asarray(classifier(x))
        p = np.exp(logits - logits.max(1, keepdims=True))
        return float((p / p.sum(1, keepdims=True)).max(1).mean())

    assert confidence(samples) > 0.85 > confidence(noise)
    # all ten digits appear
    assert len(set(np.asarray(classifier(samples)).argmax(1).tolist())) == 10


def test_shipped_codec_spends_more_bits_for_better_pictures_at_every_quality():
    from imageae.codec.api import codec_session
    from imageae.codec import estimate_bits

    clean = read_image(DATA / "clean" / "coffee.png").pixels[:256, :320]
    session = codec_session("codec-v4")
    rates, quality = [], []
    for q in range(1, session.num_qualities + 1):
        data = imageae.compress(clean, quality=q)
        decoded = imageae.decompress(data)
        assert decoded.shape == clean.shape and decoded.dtype == np.uint8
        rates.append(8 * len(data) / (256 * 320))
        quality.append(psnr(clean, decoded))
        # the bar of the codec issue: the real file within 3 % of the model's own estimate
        estimate = estimate_bits(session, clean, q)
        assert abs(estimate.model_bits + estimate.overhead_bits - 8 * len(data)) <= 0.03 * 8 * len(data)
    assert all(a < b for a, b in zip(rates, rates[1:])), rates
    assert all(a < b for a, b in zip(quality, quality[1:])), quality
    assert rates[0] < 0.5 and quality[-1] > 28.5, (rates, quality)


def test_shipped_codec_codes_grey_images_as_grey():
    clean = read_image(DATA / "clean" / "camera.png").pixels[:200, :200, 0]
    decoded = imageae.decompress(imageae.compress(clean, quality=4))
    assert decoded.shape == clean.shape and psnr(clean, decoded) > 30.0
