"""Training recipes used carelessly (issue 19): a run says what it trains on and why it
stopped, a cut or interrupted run resumes to the steps asked for, every card carries its
validation metrics and the epoch it kept, and bad data gives an error that says what to do.

Everything trains tiny models for a few steps on generated 40x40 images (a few seconds each).
"""

import json

import keras
import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, smooth_image, two_pattern_images


@pytest.fixture(autouse=True)
def keep_global_dtype_policy():
    # the CLI's training runs set the process-wide Keras dtype policy
    before = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(before)


@pytest.fixture(scope="module")
def grey_folder(tmp_path_factory):
    """Five usable 40x40 grey images, one too small for 16-pixel patches and one unreadable."""
    root = tmp_path_factory.mktemp("grey")
    for i in range(5):
        Image.fromarray(smooth_image(40, 40, channels=1, seed=i)).save(root / f"{i}.png")
    Image.fromarray(smooth_image(12, 30, channels=1, seed=9)).save(root / "small.png")
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    return root


def denoiser_argv(data, tmp_path, *extra, steps=3, steps_per_epoch=3):
    return ["train", "denoiser", "--data", data, "-o", tmp_path / "out" / "den.keras",
            "--checkpoint-dir", tmp_path / "ck", "--filters", "4", "--steps", steps,
            "--steps-per-epoch", steps_per_epoch, "--batch-size", 2, "--patch-size", 16, "--warmup-steps", 1,
            "--precision", "float32", *extra]


def card_of(path):
    return json.loads(path.with_suffix(".json").read_text())


def optimizer_steps(checkpoint):
    model = keras.saving.load_model(checkpoint)
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def test_denoiser_says_its_split_first_names_what_it_left_out_and_cards_its_metrics(grey_folder, tmp_path):
    code, out, err = run_cli(*denoiser_argv(grey_folder, tmp_path))
    assert code == 0, err
    # the split comes before the first epoch's report, and the files left out are named with the reason
    assert "training on 4 images, validating on 1 (20 %)" in out
    assert out.index("training on 4 images") < out.index("val_psnr_metric")
    assert "left out 2 of 7 images" in out and "small.png (30x12, under 16 pixels)" in out
    assert "broken.png (" in out
    assert "training stopped: all 3 steps done; kept epoch 1 of 1" in out

    card = card_of(tmp_path / "out" / "den.keras")
    training, metrics = card["training"], card["metrics"]
    assert (training["images"], training["validation_images"], training["steps_done"]) == (4, 1, 3)
    assert training["stopped"]["reason"] == "all steps done"
    assert training["kept_epoch"]["epoch"] == 1 and training["kept_epoch"]["metric"] == "val_psnr_metric"
    # measured on the shipped model: the mean over the sigmas is the kept epoch's validation PSNR
    by_sigma = metrics["validation_psnr_db_by_sigma"]
    assert list(by_sigma) == ["15", "25", "50"]
    assert np.mean(list(by_sigma.values())) == pytest.approx(training["kept_epoch"]["value"], abs=2e-3)
    assert list(metrics["validation_noisy_psnr_db_by_sigma"]) == ["15", "25", "50"]


def test_resume_after_a_time_cut_trains_the_remaining_steps_and_only_those(grey_folder, tmp_path):
    # The time budget is checked after each step: a budget of almost nothing stops after one.
    # Both of the 3 asked-for steps left to do are in the one epoch the cut run already began
    # (the old --resume trained 0 steps here and rewrote the model).
    argv = denoiser_argv(grey_folder, tmp_path)
    code, out, err = run_cli(*argv, "--max-minutes", 1e-9)
    assert code == 0, err
    assert "time budget of 1e-09 min reached after 1 of 3 steps" in out and "--resume" in out
    stopped = card_of(tmp_path / "out" / "den.keras")["training"]["stopped"]
    assert (stopped["reason"], stopped["steps_done"], stopped["steps_requested"]) == ("time budget", 1, 3)

    code, out, err = run_cli(*argv, "--resume")
    assert code == 0, err
    assert "resuming from" in out and "(1 of 3 steps)" in out and "all 3 steps done" in out
    assert optimizer_steps(tmp_path / "ck" / "last.keras") == 3
    training = card_of(tmp_path / "out" / "den.keras")["training"]
    assert (training["steps_done"], training["steps_run_this_run"]) == (3, 2)
    assert training["stopped"]["reason"] == "all steps done"

    # a finished run has nothing left to resume: said, and the model is left as it is
    before = (tmp_path / "out" / "den.keras").read_bytes()
    code, _, err = run_cli(*argv, "--resume")
    assert code == 2 and "nothing to resume" in err and "already trained 3 of the 3 steps" in err
    assert (tmp_path / "out" / "den.keras").read_bytes() == before


def test_resume_after_a_cut_in_an_earlier_epoch_stops_at_the_steps_asked_for(grey_folder, tmp_path):
    argv = denoiser_argv(grey_folder, tmp_path, steps=5, steps_per_epoch=2)
    code, _, err = run_cli(*argv, "--max-minutes", 1e-9)
    assert code == 0, err
    code, out, err = run_cli(*argv, "--resume")
    assert code == 0, err
    assert optimizer_steps(tmp_path / "ck" / "last.keras") == 5  # 1 + 2 + 2, not whole epochs past the end
    assert card_of(tmp_path / "out" / "den.keras")["training"]["steps_run_this_run"] == 4


def test_an_interrupted_run_writes_its_best_epoch_says_so_and_resumes(grey_folder, tmp_path, monkeypatch):
    import imageae.training

    original = imageae.training.StepBudget.on_train_batch_end

    def interrupt_at(step):
        def on_train_batch_end(self, batch, logs=None):
            original(self, batch, logs)
            if self.total == step:
                raise KeyboardInterrupt

        monkeypatch.setattr(imageae.training.StepBudget, "on_train_batch_end", on_train_batch_end)

    argv = denoiser_argv(grey_folder, tmp_path, steps=6, steps_per_epoch=2)
    output = tmp_path / "out" / "den.keras"
    interrupt_at(1)  # before the first epoch ended: nothing to keep, nothing written
    code, out, err = run_cli(*argv)
    assert code == 130 and "before its first epoch ended: no model written" in out
    assert not output.exists()

    interrupt_at(3)  # in the second epoch: the first is kept and written, exit 130 all the same
    code, out, err = run_cli(*argv)
    assert code == 130 and "interrupted (Ctrl-C) after 3 of 6 steps" in out and "kept epoch 1 of 1" in out
    training = card_of(output)["training"]
    assert training["stopped"]["reason"] == "interrupted" and training["kept_epoch"]["epoch"] == 1
    assert keras.saving.load_model(output).count_params() > 0
    assert not list(output.parent.glob(".*partial*"))

    monkeypatch.undo()
    code, out, err = run_cli(*argv, "--resume")
    assert code == 0, err
    assert optimizer_steps(tmp_path / "ck" / "last.keras") == 6
    assert card_of(output)["training"]["stopped"]["reason"] == "all steps done"


def test_early_stop_is_named_and_the_first_of_equal_epochs_is_kept(grey_folder, tmp_path):
    from imageae.denoise.train import DenoiserTrainConfig, train_denoiser

    # a learning rate too small to move a float32 weight: every epoch validates the same
    config = DenoiserTrainConfig(
        data=[str(grey_folder)], output=str(tmp_path / "den.keras"), filters=(4,), steps=8, steps_per_epoch=1,
        warmup_steps=0, patch_size=16, batch_size=2, learning_rate=1e-30, min_learning_rate=0.0,
        patience_epochs=2, checkpoint_dir=str(tmp_path / "ck"), precision="float32",
    )
    path = train_denoiser(config, progress=False)
    training = card_of(path)["training"]
    assert training["stopped"]["reason"] == "early stop"
    assert "early stop after 2 epochs without improvement of val_psnr_metric, after 3 of 8 steps" in (
        training["stopped"]["message"])
    assert training["kept_epoch"]["epoch"] == 1 and training["kept_epoch"]["epochs"] == 3


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: root / "missing", "no such file or folder"),
    (lambda root: root, "no images found in"),
])
def test_every_recipe_refuses_missing_or_empty_data_clearly(tmp_path, make, message):
    data = make(tmp_path / "data")
    (tmp_path / "data").mkdir()
    for family in ("denoiser", "codec", "vae"):
        code, out, err = run_cli("train", family, "--data", data, "-o", tmp_path / f"{family}.keras",
                                 "--checkpoint-dir", tmp_path / f"ck-{family}")
        assert code == 2 and message in err and "Traceback" not in err + out, (family, err)
        assert not (tmp_path / f"{family}.keras").exists()


def test_denoiser_refuses_images_all_smaller_than_a_patch_and_a_patch_off_the_stride(tmp_path):
    (tmp_path / "data").mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(24, 24, channels=1, seed=i)).save(tmp_path / "data" / f"{i}.png")
    code, _, err = run_cli(*denoiser_argv(tmp_path / "data", tmp_path, "--patch-size", 32))
    assert code == 2 and "none of the 3 images" in err and "lower --patch-size" in err
    code, _, err = run_cli(*denoiser_argv(tmp_path / "data", tmp_path, "--patch-size", 17))
    assert code == 2 and "--patch-size must be a multiple of 2" in err and "got 17" in err
    code, _, err = run_cli(*denoiser_argv(tmp_path / "data", tmp_path)[:4], "-o", tmp_path / "den.h5")
    assert code == 2 and "--output must name a .keras file" in err


def test_a_single_image_trains_and_says_it_validates_on_the_same_image(tmp_path):
    (tmp_path / "data").mkdir()
    Image.fromarray(smooth_image(40, 40, channels=1, seed=1)).save(tmp_path / "data" / "only.png")
    code, out, err = run_cli(*denoiser_argv(tmp_path / "data", tmp_path, steps=1, steps_per_epoch=1))
    assert code == 0, err
    assert "training on 1 image and validating on that same image" in out
    assert card_of(tmp_path / "out" / "den.keras")["training"]["validation_images"].startswith("the training image")


def test_codec_card_says_the_split_why_it_stopped_and_its_metrics(tmp_path):
    (tmp_path / "data").mkdir()
    for i in range(3):
        Image.fromarray(smooth_image(40, 56, seed=i)).save(tmp_path / "data" / f"{i}.png")  # padded to 64
    output = tmp_path / "codec.keras"
    code, out, err = run_cli("train", "codec", "--data", tmp_path / "data", "-o", output, "--filters", 4,
                             "--latent", 4, "--lambdas", "0.01", "--steps", 2, "--steps-per-epoch", 2,
                             "--patch-size", 64, "--batch-size", 1, "--warmup-steps", 1,
                             "--checkpoint-dir", tmp_path / "ck", "--precision", "float32")
    assert code == 0, err
    assert "training on 2 images, validating on 1 (33.3 %)" in out and "all 2 steps done; kept epoch 1" in out
    card = card_of(output)
    assert card["training"]["stopped"]["reason"] == "all steps done" and card["training"]["kept_epoch"]["epoch"] == 1
    assert card["training"]["kept_epoch"]["metric"] == "val_loss"
    assert len(card["metrics"]["validation_psnr_db_by_quality"]) == 1


# ------------------------------------------------------------------------------------ train vae

TRAIN_VAE = ["--size", 8, "--channels", 1, "--latent-dim", 2, "--filters", "4,8", "--likelihood", "bernoulli",
             "--mixture-components", 2, "--learning-rate", 0.01, "--precision", "float32"]


@pytest.fixture(scope="module")
def patterns(tmp_path_factory):
    root = tmp_path_factory.mktemp("patterns")
    images, _ = two_pattern_images(40, seed=3)
    np.savez(root / "patterns.npz", images[..., 0])
    return root / "patterns.npz"


def test_vae_with_fewer_images_than_a_batch_says_what_to_do(patterns, tmp_path):
    code, out, err = run_cli("train", "vae", "--data", patterns, "-o", tmp_path / "v.keras", *TRAIN_VAE,
                             "--batch-size", 64, "--checkpoint-dir", tmp_path / "ck")
    assert code == 2, err
    assert "38 training image(s) (40 found, 2 held out for validation) are fewer than one batch of 64" in err
    assert "lower --batch-size to at most 38" in err and "PyDataset" not in err
    assert not (tmp_path / "v.keras").exists()


def test_vae_time_cut_resumes_to_the_requested_epochs_and_cards_its_stop(patterns, tmp_path):
    argv = ["train", "vae", "--data", patterns, "-o", tmp_path / "v.keras", *TRAIN_VAE, "--batch-size", 8,
            "--checkpoint-dir", tmp_path / "ck", "--epochs", 2]
    code, first, err = run_cli(*argv, "--max-minutes", 1e-9)
    assert code == 0, err
    training = card_of(tmp_path / "v.keras")["training"]
    code, out, err = run_cli(*argv, "--resume")
    assert code == 0, err
    model = keras.saving.load_model(tmp_path / "v.keras", compile=False)
    assert float(model.step.numpy()) == 2 * (38 // 8)  # both epochs' steps, the cut one's included
    assert "training on 38 images, validating on 2 (5 %)" in first
    assert training["stopped"]["reason"] == "time budget" and training["steps_done"] == 1
    card = card_of(tmp_path / "v.keras")
    assert card["training"]["stopped"]["reason"] == "all steps done" and card["training"]["steps_done"] == 8
    assert card["training"]["kept_epoch"]["metric"] == "val_neg_elbo"
    assert "validation_negative_elbo_nats" in card["metrics"]


def test_settings_no_run_can_follow_are_refused_before_training(grey_folder, tmp_path):
    from imageae.denoise.train import DenoiserTrainConfig, train_denoiser

    code, _, err = run_cli(*denoiser_argv(grey_folder, tmp_path, "--max-minutes", -1))
    assert code == 2 and "--max-minutes must be 0 (no limit) or positive, got -1" in err
    with pytest.raises(ValueError, match="--steps must be a positive integer, got 0"):
        train_denoiser(DenoiserTrainConfig(data=[str(grey_folder)], output=str(tmp_path / "d.keras"), steps=0))
    assert not (tmp_path / "out").exists() and not (tmp_path / "d.keras").exists()

    # the digit classifier must keep images to train on
    images = np.zeros((12, 28, 28), np.uint8)
    np.savez(tmp_path / "x.npz", images)
    np.savez(tmp_path / "y.npz", np.arange(12) % 10)
    code, _, err = run_cli("train", "digit-classifier", "--images", tmp_path / "x.npz", "--labels", tmp_path / "y.npz",
                           "-o", tmp_path / "c.keras", "--validation", 12)
    assert code == 2 and "--validation must hold out between 1 and 11 of the 12 images, got 12" in err


def test_adversarial_sharpening_cut_by_time_resumes_to_the_requested_steps(patterns, tmp_path):
    from imageae.models.vae import build_vae

    vae = tmp_path / "v.keras"  # an untrained VAE is enough to sharpen
    build_vae(image_size=8, channels=1, latent_dim=2, filters=(4, 8), likelihood="bernoulli",
              mixture_components=2).save(vae)
    argv = ["train", "vae", "--data", patterns, "--init", vae, "--adversarial-weight", 0.5, "-o", tmp_path / "s.keras",
            "--batch-size", 8, "--epochs", 2, "--checkpoint-dir", tmp_path / "ck", "--precision", "float32"]
    code, out, err = run_cli(*argv, "--max-minutes", 1e-9)
    assert code == 0, err
    assert "time budget of 1e-09 min reached after 1 of 8 steps" in out
    code, out, err = run_cli(*argv, "--resume")
    assert code == 0, err
    # 38 training images in batches of 8: 4 steps an epoch, 8 in all (the old resume stopped at 5)
    assert json.loads((tmp_path / "ck" / "state.json").read_text())["steps"] == 8
    training = card_of(tmp_path / "s.keras")["training"]
    assert training["stopped"]["reason"] == "all steps done" and training["steps_done"] == 8
    assert "moving average" in training["kept_epoch"]["rule"]
    assert len((tmp_path / "ck" / "history.csv").read_text().splitlines()) == 1 + 3  # cut epoch, then 4 + 3 steps
