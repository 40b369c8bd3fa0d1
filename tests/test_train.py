"""Training recipes end to end on tiny generated data: ``imageae train vae`` and
``imageae train digit-classifier``, plus the DigitClassifier's config and .keras round trips."""

import json
import shutil
import struct

import keras
import numpy as np
import pytest

from PIL import Image

from conftest import run_cli, two_pattern_images
from imageae.models.classifier import DigitClassifier


def idx_bytes(array):
    array = np.asarray(array, np.uint8)
    return bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape) + array.tobytes()


@pytest.fixture(autouse=True)
def keep_global_dtype_policy():
    # the training recipes set the process-wide Keras dtype policy and do not restore it
    before = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(before)


# ------------------------------------------------------------------------------ DigitClassifier


def test_digit_classifier_config_and_keras_round_trip(tmp_path):
    keras.utils.set_random_seed(0)
    model = DigitClassifier(feature_dim=16, dropout=0.25)
    model.build((None, 28, 28, 1))
    config = model.get_config()
    assert (config["feature_dim"], config["dropout"]) == (16, 0.25)
    assert DigitClassifier.from_config(config).get_config() == config
    x = np.random.default_rng(0).random((3, 28, 28, 1), dtype=np.float32)
    model.save(tmp_path / "classifier.keras")
    loaded = keras.saving.load_model(tmp_path / "classifier.keras", compile=False)
    assert isinstance(loaded, DigitClassifier) and loaded.get_config() == config
    np.testing.assert_array_equal(np.asarray(loaded.features(x)), np.asarray(model.features(x)))
    np.testing.assert_array_equal(np.asarray(loaded(x)), np.asarray(model(x)))
    # the logits are a linear read-out of the features (dropout is off at inference)
    np.testing.assert_allclose(np.asarray(model(x)), np.asarray(model.logits(model.features(x))), atol=1e-6)


def bar_digits(n):
    """(28x28 uint8 images, labels): digit d is a white bar at rows 2d..2d+5, an easy toy task."""
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        images[i, 2 * label : 2 * label + 6, 4:24] = 255
    return images, labels


def test_train_digit_classifier_from_idx_files(tmp_path):
    images, labels = bar_digits(60)
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(images))
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels))
    output = tmp_path / "models" / "classifier.keras"
    code, stdout, stderr = run_cli(
        "train", "digit-classifier", "--images", tmp_path / "train-images-idx3-ubyte",
        "--labels", tmp_path / "train-labels-idx1-ubyte", "-o", output, "--epochs", 3, "--validation", 20,
    )
    assert code == 0, stderr
    card = json.loads(output.with_suffix(".json").read_text())
    assert card["training"]["train_images"] == 40 and card["training"]["validation_images"] == 20
    # the card's accuracy is that of the saved model on the held-out last 20 images
    model = keras.saving.load_model(output, compile=False)
    predicted = np.asarray(model(images[-20:, :, :, None].astype(np.float32) / 255.0)).argmax(axis=1)
    assert card["metrics"]["validation_accuracy"] == pytest.approx(np.mean(predicted == labels[-20:]), abs=1e-4)
    assert f"validation accuracy {card['metrics']['validation_accuracy']:.4f}" in stdout


def test_train_digit_classifier_refuses_mismatched_counts(tmp_path):
    images, labels = bar_digits(12)
    (tmp_path / "x-idx3-ubyte").write_bytes(idx_bytes(images))
    np.savez(tmp_path / "y.npz", labels[:10])
    code, _, stderr = run_cli(
        "train", "digit-classifier", "--images", tmp_path / "x-idx3-ubyte", "--labels", tmp_path / "y.npz",
        "-o", tmp_path / "c.keras", "--validation", 2,
    )
    assert code == 2 and "12 images but 10 labels" in stderr


# ------------------------------------------------------------------------------------ train vae

TRAIN_VAE = [
    "--size", 8, "--channels", 1, "--latent-dim", 2, "--filters", "4,8", "--likelihood", "bernoulli",
    "--batch-size", 16, "--mixture-components", 2, "--learning-rate", 0.01, "--precision", "float32",
]


@pytest.fixture(scope="module")
def trained_vae_run(tmp_path_factory):
    """``imageae train vae`` for 2 epochs on 80 generated 8x8 two-pattern images (about 4 s)."""
    root = tmp_path_factory.mktemp("train_vae")
    images, _ = two_pattern_images(80, seed=3)
    np.savez(root / "patterns.npz", images[..., 0])
    argv = ["train", "vae", "--data", root / "patterns.npz", "-o", root / "out" / "tiny-vae.keras",
            "--checkpoint-dir", root / "ckpt", *TRAIN_VAE]
    before = keras.config.dtype_policy()
    try:
        code, stdout, stderr = run_cli(*argv, "--epochs", 2)
    finally:
        keras.config.set_dtype_policy(before)
    assert code == 0, stderr
    return root, argv


def test_train_vae_writes_model_card_history_sample_grids_and_a_fitted_mixture(trained_vae_run, tmp_path):
    root, _ = trained_vae_run
    output = root / "out" / "tiny-vae.keras"
    card = json.loads(output.with_suffix(".json").read_text())
    assert card["job"] == "generate"
    assert card["architecture"]["class"] == "ConvVAE" and card["architecture"]["latent_dim"] == 2
    assert (card["training"]["images"], card["training"]["validation_images"]) == (76, 4)  # 5 % held out
    assert card["training"]["epochs_run"] == 2
    assert output.with_suffix(".curve.png").is_file()
    for epoch in (1, 2):
        grid = np.asarray(Image.open(root / "ckpt" / f"samples_epoch{epoch:03d}.png"))
        assert grid.shape == (8 * 10 + 2, 8 * 10 + 2)  # 64 samples, 8 columns of 8x8 tiles

    model = keras.saving.load_model(output, compile=False)
    assert float(model.step.numpy()) == 2 * (76 // 16)  # one count per optimiser step
    weights = np.exp(model.mixture_log_weights.numpy())
    assert weights.sum() == pytest.approx(1.0, abs=1e-5)
    assert np.any(model.mixture_means.numpy() != 0) and np.any(model.mixture_log_vars.numpy() != 0)  # fitted

    code, _, stderr = run_cli("generate", "-n", 3, "-o", tmp_path / "gen", "--model", output, "--sampler", "gmm")
    assert code == 0, stderr
    assert len(list((tmp_path / "gen").glob("sample_*.png"))) == 3


def test_resume_keeps_the_best_checkpoint_from_before_the_resume(trained_vae_run, tmp_path):
    root, argv = trained_vae_run
    shutil.copytree(root / "ckpt", tmp_path / "ckpt")
    best_before = json.loads((root / "out" / "tiny-vae.json").read_text())["metrics"]
    # spoil the state a resumed run starts from: every pixel logit +20, so black pixels cost ~20 nats
    last = keras.saving.load_model(tmp_path / "ckpt" / "last.keras")
    kernel, bias = last.decoder_out.get_weights()
    last.decoder_out.set_weights([kernel, bias + 20.0])
    last.save(tmp_path / "ckpt" / "last.keras")
    output = tmp_path / "out" / "tiny-vae.keras"
    argv = list(argv)
    argv[argv.index(root / "out" / "tiny-vae.keras")] = output
    argv[argv.index(root / "ckpt")] = tmp_path / "ckpt"
    code, _, stderr = run_cli(*argv, "--epochs", 3, "--resume")
    assert code == 0, stderr
    after = json.loads(output.with_suffix(".json").read_text())["metrics"]
    assert after["validation_negative_elbo_nats"] < 2 * best_before["validation_negative_elbo_nats"]


def test_init_fine_tunes_the_model_with_its_own_settings_and_refuses_another_shape(trained_vae_run, tmp_path):
    root, _ = trained_vae_run
    source = keras.saving.load_model(root / "out" / "tiny-vae.keras", compile=False)
    output = tmp_path / "ft.keras"
    # No shape or likelihood options: they come from the --init model (bernoulli, 8x8 grey, 4,8).
    # A learning rate of 1e-9 leaves the weights where they were, so the result shows what was loaded.
    code, _, stderr = run_cli("train", "vae", "--data", root / "patterns.npz", "--init", root / "out" / "tiny-vae.keras",
                              "-o", output, "--checkpoint-dir", tmp_path / "ckpt", "--batch-size", 16, "--epochs", 1,
                              "--learning-rate", 1e-9, "--precision", "float32")
    assert code == 0, stderr
    tuned = keras.saving.load_model(output, compile=False)
    assert (tuned.image_size, tuned.channels, tuned.latent_dim, tuned.filters, tuned.likelihood,
            tuned.mixture_components) == (8, 1, 2, (4, 8), "bernoulli", 2)
    assert float(tuned.step.numpy()) == float(source.step.numpy()) + 76 // 16  # counting on: no second warm-up
    for a, b in zip(source.encoder_convs + [source.decoder_out], tuned.encoder_convs + [tuned.decoder_out]):
        np.testing.assert_allclose(a.get_weights()[0], b.get_weights()[0], atol=1e-6)
    assert json.loads(output.with_suffix(".json").read_text())["training"]["config"]["init"].endswith("tiny-vae.keras")

    # refused before any image is read (this data file does not even exist)
    code, _, stderr = run_cli("train", "vae", "--data", tmp_path / "none.npz", "--init", root / "out" / "tiny-vae.keras",
                              "--filters", "4,16", "-o", tmp_path / "bad.keras", "--checkpoint-dir", tmp_path / "bad")
    assert code == 2 and "--init model has filters=(4, 8), the config says (4, 16)" in stderr
    assert not (tmp_path / "bad.keras").exists()


def test_mixture_components_auto_keeps_the_size_the_validation_latents_like_best(trained_vae_run, tmp_path):
    root, _ = trained_vae_run
    output = tmp_path / "auto.keras"
    code, _, stderr = run_cli("train", "vae", "--data", root / "patterns.npz", "--init", root / "out" / "tiny-vae.keras",
                              "--mixture-components", "auto", "-o", output, "--checkpoint-dir", tmp_path / "ckpt",
                              "--batch-size", 16, "--epochs", 1, "--precision", "float32")
    assert code == 0, stderr
    selection = json.loads(output.with_suffix(".json").read_text())["training"]["mixture_selection"]
    scores = {int(k): v for k, v in selection["validation_latent_log_likelihood_nats_by_components"].items()}
    assert list(scores) == [5, 10, 20, 40, 80, 160]
    model = keras.saving.load_model(output, compile=False)
    # 76 training latents: sizes past 76 give one component per point
    assert model.mixture_components == selection["components"] == min(max(scores, key=scores.get), 76)
    assert model.mixture_means.shape == (model.mixture_components, 2)
    assert np.exp(model.mixture_log_weights.numpy()).sum() == pytest.approx(1.0, abs=1e-5)
    code, _, stderr = run_cli("generate", "-n", 2, "-o", tmp_path / "gen", "--model", output)
    assert code == 0, stderr


def test_train_denoiser_learns_to_denoise_and_ships_a_float32_model(tmp_path):
    """A few dozen steps on smooth images already beat the identity; the shipped file is a
    plain float32 DenoiserUNet with a card, history and curve, and no optimizer state."""
    from conftest import smooth_image
    from imageae.models.denoiser import DenoiserUNet
    from imageae.denoise.train import DenoiserTrainConfig, train_denoiser

    data = tmp_path / "clean"
    data.mkdir()
    for i in range(12):
        Image.fromarray(smooth_image(128, 128, channels=1, seed=i)).save(data / f"{i}.png")
    config = DenoiserTrainConfig(
        data=[str(data)], output=str(tmp_path / "out" / "den.keras"), channels=1, filters=(8, 16, 32),
        steps=60, steps_per_epoch=30, warmup_steps=5, patch_size=32, batch_size=8, learning_rate=3e-3,
        checkpoint_dir=str(tmp_path / "ck"), validation_fraction=0.25,
    )
    path = train_denoiser(config, progress=False)
    history = (tmp_path / "ck" / "history.csv").read_text().splitlines()
    val_psnr = [float(row.split(",")[-1]) for row in history[1:]]
    assert val_psnr[-1] > val_psnr[0]
    model = keras.saving.load_model(path)
    assert isinstance(model, DenoiserUNet) and model.dtype_policy.name == "float32"
    assert getattr(model, "optimizer", None) is None
    card = json.loads(path.with_suffix(".json").read_text())
    assert card["training"]["steps_run_this_run"] == 60 and card["architecture"]["filters"] == [8, 16, 32]
    assert path.with_suffix(".curve.png").exists()
    # noisy validation crops at sigma 25: the trained model beats doing nothing
    rng = np.random.default_rng(0)
    clean = smooth_image(64, 64, channels=1, seed=99).astype(np.float32)[None, :, :, None] / 255.0
    noisy = clean + rng.normal(0, 25 / 255.0, clean.shape).astype(np.float32)
    assert np.mean((np.asarray(model(noisy)) - clean) ** 2) < np.mean((noisy - clean) ** 2)


def test_adversarial_weight_trains_only_the_decoder_and_keeps_the_mixture(trained_vae_run, tmp_path):
    root, _ = trained_vae_run
    source = keras.saving.load_model(root / "out" / "tiny-vae.keras", compile=False)
    output = tmp_path / "sharp.keras"
    code, _, stderr = run_cli("train", "vae", "--data", root / "patterns.npz", "--init", root / "out" / "tiny-vae.keras",
                              "--adversarial-weight", 0.5, "-o", output, "--checkpoint-dir", tmp_path / "ckpt",
                              "--batch-size", 16, "--epochs", 2, "--learning-rate", 1e-3, "--precision", "float32")
    assert code == 0, stderr
    tuned = keras.saving.load_model(output, compile=False)
    for a, b in zip(source.encoder_convs + [source.z_mean, source.z_logvar],
                    tuned.encoder_convs + [tuned.z_mean, tuned.z_logvar]):
        for wa, wb in zip(a.get_weights(), b.get_weights()):
            np.testing.assert_array_equal(wa, wb)  # the encoder is not trained
    for name in ("mixture_log_weights", "mixture_means", "mixture_log_vars"):
        np.testing.assert_array_equal(getattr(source, name).numpy(), getattr(tuned, name).numpy())
    assert not np.allclose(source.decoder_out.get_weights()[0], tuned.decoder_out.get_weights()[0])
    # still a decoder: reconstructions of the training patterns stay close to what they were
    images = np.load(root / "patterns.npz")["arr_0"][..., None].astype(np.float32) / 255.0
    error = lambda m: float(np.mean(np.abs(np.asarray(m(images)) - images)))
    assert error(tuned) < 2 * error(source) + 0.05
    card = json.loads(output.with_suffix(".json").read_text())
    assert card["training"]["config"]["adversarial_weight"] == 0.5 and card["training"]["epochs_run"] == 2
    assert (tmp_path / "ckpt" / "discriminator.weights.h5").is_file()
    assert (tmp_path / "ckpt" / "samples_epoch002.png").is_file()
    history = (tmp_path / "ckpt" / "history.csv").read_text().splitlines()
    assert history[0].startswith("epoch,loss,adversarial,critic") and len(history) == 3

    # it sharpens a trained decoder: without --init there is nothing to sharpen
    code, _, stderr = run_cli("train", "vae", "--data", root / "patterns.npz", "--adversarial-weight", 0.5,
                              "-o", tmp_path / "bad.keras", "--checkpoint-dir", tmp_path / "bad")
    assert code == 2 and "give it with --init" in stderr
    code, _, stderr = run_cli("train", "vae", "--data", root / "patterns.npz", "--init", root / "out" / "tiny-vae.keras",
                              "--adversarial-weight", -1, "-o", tmp_path / "bad.keras")
    assert code == 2 and "--adversarial-weight must be 0 (off) or positive, got -1.0" in stderr
