"""benchmarks/realnoise.py (issue 25) on tiny generated pairs, with stand-in denoisers.

The stand-ins make the tests fast and let them check the script both before and after
``imageae.denoise`` takes ``strength=``: the sweep, the blind/auto rows, the tuning split and the
bar must follow from the per-crop numbers.
"""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

BENCHMARKS = str(Path(__file__).resolve().parent.parent / "benchmarks")
if BENCHMARKS not in sys.path:
    sys.path.insert(0, BENCHMARKS)

realnoise = pytest.importorskip("realnoise")
pytest.importorskip("skimage")


def _pairs(folder, count=8, size=48):
    """``count`` pairs: a smooth clean image (``_mean``) and it plus seeded noise (``_real``), PNG."""
    folder.mkdir()
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(count):
        clean = np.stack([90 + 80 * xx, 60 + 100 * yy, 120 + 40 * np.sin(6 * xx + i)], axis=-1)
        noisy = clean + np.random.default_rng(i).normal(0, 4 + i, clean.shape)
        camera = "CamA" if i % 2 else "CamB"
        Image.fromarray(np.clip(clean, 0, 255).round().astype(np.uint8)).save(folder / f"{camera}_{i}_mean.png")
        Image.fromarray(np.clip(noisy, 0, 255).round().astype(np.uint8)).save(folder / f"{camera}_{i}_real.png")
    return folder


def _blur(image, amount):
    import cv2

    return image if amount <= 0 else cv2.GaussianBlur(image, (0, 0), amount)


def _with_strength(image, *, model="auto", strength=None, **_):
    """Blind: nothing; a float: a Gaussian blur that grows with it; "auto": a fixed mild blur; 8: refused."""
    if strength == 8:
        raise ValueError("strength 8 is refused by this stand-in")
    amount = 0.0 if strength is None else 0.8 if strength == "auto" else strength / 4.0
    return _blur(np.asarray(image, np.float32), amount)


def _without_strength(image, *, model="auto", **_):
    return _blur(np.asarray(image, np.float32), 0.8)


def _run(tmp_path, monkeypatch, denoise, *extra):
    import imageae

    monkeypatch.setattr(imageae, "denoise", denoise)
    monkeypatch.setattr(realnoise, "noise_level_estimator", lambda model: None)  # no real model needed
    data = _pairs(tmp_path / "pairs")
    out = tmp_path / "out"
    assert realnoise.main(["--data", str(data), "--out", str(out), "--bm3d-limit", "0", "--nlm-h", "3", "6",
                           "--strengths", "1", "2", "4", "8", "--models", "denoise-colour", *extra]) == 0
    return json.loads((out / "realnoise-pairs.json").read_text()), out


def test_with_strength_sweeps_and_scores_the_bar_from_the_crops(tmp_path, monkeypatch):
    result, out = _run(tmp_path, monkeypatch, _with_strength)
    run, summary = result["run"], result["summary"]
    assert run["supported"] and run["default"] is None
    assert len(run["tuning"]) == 5 and sorted(run["tuning"] + run["test"]) == list(range(8))
    methods = {r["method"] for r in run["records"]}
    assert methods == {"input", "imageae", "imageae auto", "imageae fixed", "NLM"}  # default None: blind = defaults
    # a strength the API refuses is left out with its reason, the rest of the sweep runs
    assert [(k["method"], k["strength"]) for k in run["skipped"]] == [("imageae fixed", 8.0)]
    assert "refused by this stand-in" in run["skipped"][0]["reason"]
    assert not any(r.get("strength") == 8.0 for r in run["records"])
    curve = summary["sweeps"]["denoise-colour"]
    assert sorted(curve, key=float) == ["1.0", "2.0", "4.0"]
    # the best fixed strength is the tuning pairs' best, from their per-crop records
    tuning_means = {s: np.mean([r["psnr"] for r in run["records"] if r["method"] == "imageae fixed"
                                and r["strength"] == s and r["index"] in run["tuning"]]) for s in (1.0, 2.0, 4.0)}
    assert summary["best_strength"]["denoise-colour"]["chosen_on_tuning"] == max(tuning_means, key=tuning_means.get)
    # blind does nothing here, so the defaults score exactly the input; the bar must say so
    psnr = {(r["method"], r["index"]): r["psnr"] for r in run["records"] if r["method"] in ("input", "imageae", "NLM")}
    assert all(psnr["imageae", i] == psnr["input", i] for i in range(8))
    bar = summary["bar"]
    ahead = sum(psnr["imageae", i] > psnr["NLM", i] for i in run["test"])
    assert bar["ahead_of_nlm"] == ahead and bar["test_pairs"] == 3
    assert bar["margin_over_nlm"] == pytest.approx(np.mean([psnr["imageae", i] - psnr["NLM", i] for i in run["test"]]))
    assert bar["met"] is (bar["margin_over_best_baseline"] >= 0.5 and ahead / 3 >= 0.9)
    assert {c["camera"] for c in run["crops"]} == {"CamA", "CamB"}
    assert all(c["true_sigma"] > 3 for c in run["crops"])
    assert (out / "realnoise-pairs.md").read_text().count("strength") > 4
    assert (out / "realnoise-pairs.png").stat().st_size > 0 and (out / "realnoise-pairs_example.png").stat().st_size > 0


def test_without_strength_runs_blind_only(tmp_path, monkeypatch):
    result, out = _run(tmp_path, monkeypatch, _without_strength, "--no-example")
    run = result["run"]
    assert not run["supported"] and result["summary"]["sweeps"] == {}
    assert {r["method"] for r in run["records"]} == {"input", "imageae", "NLM"}
    assert run["nlm_h"] in (3.0, 6.0)
    assert not (out / "realnoise-pairs_example.png").exists()
    assert "takes no `strength` yet" in (out / "realnoise-pairs.md").read_text()


def test_a_noisy_shot_without_its_mean_is_named(tmp_path):
    folder = _pairs(tmp_path / "pairs", count=2)
    (folder / "CamA_1_mean.png").unlink()
    with pytest.raises(FileNotFoundError, match="CamA_1_real.png"):
        realnoise.find_pairs(folder)


def test_grey_reads_the_pairs_as_grey_and_names_the_outputs_so(tmp_path, monkeypatch):
    import imageae

    shapes = []

    def spy(image, **kwargs):
        shapes.append(np.asarray(image).shape)
        return _with_strength(image, **kwargs)

    monkeypatch.setattr(imageae, "denoise", spy)
    monkeypatch.setattr(realnoise, "noise_level_estimator", lambda model: None)
    data, out = _pairs(tmp_path / "pairs"), tmp_path / "out"
    assert realnoise.main(["--grey", "--data", str(data), "--out", str(out), "--bm3d-limit", "0", "--nlm-h", "3",
                           "--strengths", "2", "--models", "denoise-colour"]) == 0
    assert shapes and all(len(s) == 2 for s in shapes)  # grey images, as a scan would be read
    run = json.loads((out / "realnoise-grey-pairs.json").read_text())["run"]
    assert {r["method"] for r in run["records"]} >= {"input", "imageae", "NLM"}
    assert (out / "realnoise-grey-pairs_example.png").stat().st_size > 0
    assert realnoise.main(["--data", str(data), "--out", str(out), "--bm3d-limit", "0", "--nlm-h", "3",
                           "--strengths", "2", "--models", "denoise-colour", "--no-example"]) == 0
    assert len(shapes[-1]) == 3  # the next run without --grey reads colour again
