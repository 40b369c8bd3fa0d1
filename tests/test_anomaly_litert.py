"""The anomaly detector as LiteRT (.tflite): export (int8 and float), scoring through
``AnomalyDetector("x.tflite")`` and ``imageae anomaly score --model x.tflite`` (issue 23).

A tiny detector is trained for a few steps on generated blobs (the normal class: one soft
blob) and exported with the blobs as its calibration folder; anomalies carry a bright scratch.
"""

import csv
import json

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ai_edge_litert", reason="the LiteRT interpreter (pip install 'imageae[litert]')")

from imageae.anomaly.api import AnomalyDetector
from imageae.cli import main
from imageae.export import export_tflite

SIDE = 16
TINY = {"steps": 120, "steps_per_epoch": 40, "batch_size": 32, "code_size": 4, "filters": (8, 16), "learning_rate": 3e-3}


def _images(n, seed, scratch=False):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:SIDE, :SIDE]
    out = []
    for _ in range(n):
        cy, cx = rng.uniform(6, 10, 2)
        x = 0.8 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / 12.0)
        if scratch:
            x[int(rng.integers(2, SIDE - 2)), 1 : SIDE - 1] = 1.0
        out.append(np.clip(x + rng.normal(0, 0.01, x.shape), 0, 1).astype(np.float32))
    return out


def _write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images):
        Image.fromarray(np.round(x * 255).astype(np.uint8)).save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(keras detector, its .keras path, {quantize: .tflite path}, calibration folder)."""
    root = tmp_path_factory.mktemp("anomaly-litert")
    detector = AnomalyDetector().fit(_images(160, 0), scoring="ssim+latent", **TINY)
    keras_path = detector.save(root / "det.keras")
    calibration = root / "normal"
    _write_pngs(calibration, _images(24, 7))
    paths = {q: export_tflite(str(keras_path), root / "edge", quantize=q, **({"calibration": calibration}
                                                                          if q == "int8" else {}))
             for q in ("int8", "none")}
    return detector, keras_path, paths, calibration


def test_sidecar_carries_the_detector_and_the_graph_is_fixed(exported):
    detector, _, paths, calibration = exported
    for q, path in paths.items():
        meta = json.loads(path.with_suffix(".json").read_text())
        assert meta["job"] == "anomaly" and meta["quantize"] == q
        assert (meta["image_size"], meta["channels"], meta["code_size"]) == (SIDE, 1, 4)
        assert meta["detector"] == json.loads(json.dumps(detector.calibration))
        assert (str(calibration) in meta["calibration"]) if q == "int8" else meta["calibration"] is None
    assert paths["int8"].stat().st_size < paths["none"].stat().st_size  # tiny: the flatbuffer's own bytes dominate


def test_tflite_scores_match_the_keras_detector(exported):
    detector, _, paths, _ = exported
    images = _images(12, 1) + _images(12, 2, scratch=True)
    keras_scores, keras_maps = detector.score(images)
    float_detector = AnomalyDetector(str(paths["none"]))
    assert float_detector.threshold == detector.threshold  # read from the sidecar
    scores, maps = float_detector.score(images)
    np.testing.assert_allclose(scores, keras_scores, atol=1e-3)
    np.testing.assert_allclose(np.stack(maps), np.stack(keras_maps), atol=1e-3)
    assert (float_detector.predict(images) == detector.predict(images)).all()

    int8 = AnomalyDetector.load(paths["int8"])
    scores8, maps8 = int8.score(images)
    assert len(maps8) == len(images) and maps8[0].shape == (SIDE, SIDE)
    # int8 reconstructs the normal blobs within a fraction of a grey level of the Keras model
    # (measured 0.002 on 0..1) and keeps every scratched blob above every normal one. The scores
    # move more: this detector's latent term (Mahalanobis distance of a 4-d code with a small
    # spread) magnifies the code's int8 rounding, up to 3.7 held-out standard deviations on a
    # normal blob here (the README's LiteRT section gives the ELPV detector's numbers).
    from imageae.anomaly.scoring import _forward

    normal = np.stack(images[:12])[..., None]
    assert np.abs(_forward(int8.model, normal)[1] - _forward(detector.model, normal)[1]).mean() < 0.01
    assert scores8[12:].min() > scores8[:12].max() and keras_scores[12:].min() > keras_scores[:12].max()
    assert np.abs(scores8[:12] - keras_scores[:12]).max() < 5.0


def test_images_of_other_sizes_and_colour_are_scored_as_by_keras(exported):
    detector, _, paths, _ = exported
    rng = np.random.default_rng(3)
    images = [rng.random((40, 23, 3)).astype(np.float32), (rng.random((9, 9)) * 255).astype(np.uint8)]
    ref, _ = detector.score(images)
    scores, maps = AnomalyDetector(paths["none"]).score(images)
    np.testing.assert_allclose(scores, ref, rtol=1e-5, atol=1e-3)  # noise images: scores in the 10,000s
    assert [m.shape for m in maps] == [(40, 23), (9, 9)]


def test_cli_scores_a_folder_with_a_tflite_and_names_the_corrupt_file(exported, tmp_path, capsys):
    _, _, paths, _ = exported
    _write_pngs(tmp_path / "test" / "good", _images(4, 1))
    _write_pngs(tmp_path / "test" / "bad", _images(4, 2, scratch=True))
    (tmp_path / "test" / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "report"
    rc = main(["anomaly", "score", str(tmp_path / "test"), "--model", str(paths["int8"]), "-o", str(out)])
    assert rc == 1
    assert "broken.png" in capsys.readouterr().err
    rows = list(csv.DictReader((out / "scores.csv").read_text().splitlines()))
    assert len(rows) == 8
    bad = [float(r["score"]) for r in rows if "bad" in r["path"]]
    good = [float(r["score"]) for r in rows if "good" in r["path"]]
    assert min(bad) > max(good)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["scored"] == 8 and summary["failed"] == 1
    assert summary["threshold"] == json.loads(paths["int8"].with_suffix(".json").read_text())["detector"]["threshold"]
    assert (out / "heatmaps" / "bad" / "000.png.png").exists()


def test_cli_export_and_its_errors(exported, tmp_path, capsys):
    _, keras_path, _, calibration = exported
    out = tmp_path / "edge"
    assert main(["export", str(keras_path), "--format", "tflite", "--quantize", "float16", "-o", str(out)]) == 0
    assert (out / "det-float16.tflite").is_file() and (out / "det-float16.json").is_file()
    capsys.readouterr()
    # int8 needs images like the training ones: this detector is not anomaly-elpv, so no default.
    assert main(["export", str(keras_path), "--format", "tflite", "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--calibration DIR" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main(["export", str(keras_path), "--format", "tflite", "--tile", "64", "--calibration", str(calibration),
                 "-o", str(out)]) == 2
    assert "--tile applies to the denoisers" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["export", str(keras_path), "--format", "tflite", "--calibration", str(empty), "-o", str(out)]) == 2
    assert "no images found" in capsys.readouterr().err
    assert not (out / "det-int8.tflite").exists()


def test_a_tflite_of_another_job_is_refused_clearly(exported):
    import imageae

    _, _, paths, _ = exported
    with pytest.raises(ValueError, match=r"is a anomaly model, not a denoise model.*imageae anomaly score"):
        imageae.denoise(np.zeros((16, 16), np.float32), model=str(paths["none"]))
    with pytest.raises(ValueError, match=r"LiteRT export: it cannot be saved as a \.keras file"):
        AnomalyDetector(paths["none"]).save(paths["none"].parent / "d.keras")


def test_the_shipped_elpv_detector_calibrates_on_its_training_cells():
    pytest.importorskip("elpv_dataset", reason="the ELPV cells (pip install elpv-dataset)")
    from imageae import registry
    from imageae.anomaly.litert import calibration_images

    if not registry.MODELS["anomaly-elpv"].path.is_file():
        pytest.skip("anomaly-elpv's weights are not in this checkout")
    model = registry.load_model("anomaly-elpv", job="anomaly")
    x, source = calibration_images(model, count=3)
    assert x.shape == (3, model.image_size, model.image_size, 1) and x.dtype == np.float32
    assert "ELPV" in source and 0.0 <= x.min() and x.max() <= 1.0 and x.std() > 0.01


def test_litert_benchmark_keeps_other_models_rows_and_says_which_run_measured_each(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from litert import merge_runs, write_results

    def info(commit):
        return {"commit": commit, "tensorflow": "2.21", "machine": "x86_64", "argv": [], "repeats": 5,
                "load_average_at_end": [1.0]}

    def denoiser(model, psnr):
        return {"model": model, "variant": "Keras float32", "bytes": 9e6, "latency_s_512": 0.3, "psnr": psnr,
                "psnr_set": "BSD68", "psnr_images": 68}

    # A result written before runs were recorded: one info, rows without a run.
    old = {"info": info("aaa"), "rows": [denoiser("denoise-grey", 28.8), denoiser("denoise-colour", 30.7)],
           "vae_rows": []}
    merged = merge_runs(old, info("bbb"), {"rows": [denoiser("denoise-colour", 30.69)], "vae_rows": [],
                                           "anomaly_rows": []})
    assert [r["commit"] for r in merged["runs"]] == ["aaa", "bbb"]
    assert [(r["model"], r["psnr"], r["run"]) for r in merged["rows"]] == [("denoise-grey", 28.8, 0),
                                                                          ("denoise-colour", 30.69, 1)]
    # Measuring every model of the first run again drops that run.
    again = merge_runs(merged, info("ccc"), {"rows": [denoiser("denoise-grey", 28.7)], "vae_rows": [],
                                             "anomaly_rows": []})
    assert [r["commit"] for r in again["runs"]] == ["bbb", "ccc"]
    assert [(r["model"], r["run"]) for r in again["rows"]] == [("denoise-colour", 0), ("denoise-grey", 1)]
    write_results(tmp_path, old)  # the old layout still renders
    text = (tmp_path / "litert.md").read_text()
    assert "Run 1 (denoise-grey, denoise-colour): commit aaa" in text and "| 30.70 (BSD68, 68 images) |" in text
