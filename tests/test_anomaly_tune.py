"""``imageae train anomaly --tune``: the KerasTuner search, what it writes into the model card,
and that the final model is trained with the values it chose. Tiny generated images and a
handful of steps: the test checks the plumbing and the honesty of the card, not the quality."""

import json
import sys

import numpy as np
from PIL import Image

SIDE = 16


def _write_blobs(folder, n, seed=0):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    for k in range(n):
        cy, cx = rng.uniform(6, 10, 2)
        x = 0.8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 12.0) + rng.normal(0, 0.01, (SIDE, SIDE))
        Image.fromarray(np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)).save(folder / f"{k:03d}.png")


def test_tune_writes_its_table_into_the_card_and_trains_with_the_chosen_values(tmp_path, capsys):
    from imageae.anomaly.train import TUNE_SPACE
    from imageae.cli import main

    _write_blobs(tmp_path / "normal", 40)
    model = tmp_path / "det.keras"
    rc = main(["train", "anomaly", "--data", str(tmp_path / "normal"), "-o", str(model), "--tune", "2",
               "--steps", "8", "--steps-per-epoch", "4", "--batch-size", "16",
               "--checkpoint-dir", str(tmp_path / "ckpt")])
    assert rc == 0, capsys.readouterr().err
    card = json.loads(model.with_suffix(".json").read_text())
    tuning = card["tuning"]
    assert tuning["trials"] == 2 and len(tuning["table"]) == 2
    for row in tuning["table"]:
        assert all(row[name] in choices for name, choices in TUNE_SPACE.items())
        assert 0.0 <= row["val_auroc_synthetic"] <= 1.0 and row["val_mse"] >= 0 and row["steps"] == 2
    best = max(tuning["table"], key=lambda r: (r["val_auroc_synthetic"], -r["val_mse"]))
    chosen = tuning["chosen"]
    assert chosen == {name: best[name] for name in TUNE_SPACE}
    # The final model is built and trained with the chosen values, for the full step count.
    arch, config = card["architecture"], card["training"]["config"]
    assert arch["code_size"] == chosen["code_size"]
    assert arch["filters"] == [chosen["base_filters"], 2 * chosen["base_filters"]]
    assert arch["sparsity_weight"] == chosen["sparsity_weight"]
    assert arch["contractive_weight"] == chosen["contractive_weight"]
    assert config["learning_rate"] == chosen["learning_rate"]
    assert card["training"]["stopped"]["steps_done"] == 8


def test_tune_without_keras_tuner_names_the_extra(tmp_path, capsys, monkeypatch):
    from imageae.cli import main

    _write_blobs(tmp_path / "normal", 4)
    monkeypatch.setitem(sys.modules, "keras_tuner", None)  # import keras_tuner now raises ImportError
    rc = main(["train", "anomaly", "--data", str(tmp_path / "normal"), "-o", str(tmp_path / "m.keras"),
               "--tune", "2", "--steps", "2"])
    err = capsys.readouterr().err
    assert rc == 2 and "imageae[tune]" in err and "Traceback" not in err
    assert not (tmp_path / "m.keras").exists()


def test_synthetic_defects_mark_every_image_and_auroc_matches_its_definition():
    from imageae.anomaly.scoring import auroc, synthetic_defects

    rng = np.random.default_rng(0)
    bright = rng.uniform(0.6, 0.9, (6, 32, 32, 1)).astype(np.float32)
    dark = np.zeros((2, 32, 32, 1), np.float32)
    marked = synthetic_defects(np.concatenate([bright, dark]), seed=3)
    changed = (marked != np.concatenate([bright, dark])).reshape(8, -1)
    assert changed.any(axis=1).all()  # one defect on every image
    bright_marks = changed[:6].reshape(6, 32, 32, 1)
    assert np.all(marked[:6][bright_marks] < bright[bright_marks])  # darker on bright images
    assert np.all(marked[6:][changed[6:].reshape(2, 32, 32, 1)] > 0.1)  # brighter on dark ones
    assert auroc([0, 1, 2], [3, 4]) == 1.0 and auroc([3, 4], [0, 1]) == 0.0 and auroc([1, 1], [1]) == 0.5
