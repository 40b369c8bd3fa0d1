"""LiteRT (.tflite) export of the denoisers and the VAE decoders, and their runners (issue 23).

Random-weight tiny denoisers (conftest) are exported to full-integer int8 .tflite files on a
small fixed window, then run through ``imageae.denoise(model=PATH.tflite)`` and the CLI on
image sizes that are not multiples of the stride and that need several windows. The trained
tiny two-pattern VAE (conftest) stands in for vae-digits: its decoder is exported and sampled
through ``imageae.generate(model=PATH.tflite)`` and ``imageae generate --model PATH.tflite``.
"""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import build_tiny_denoiser, smooth_image
from PIL import Image

import imageae
from imageae.cli import main
from imageae.export import export_tflite
from imageae.pipelines.tiling import pad_to_multiple

pytest.importorskip("ai_edge_litert", reason="the LiteRT interpreter (pip install 'imageae[litert]')")

TILE = 128  # the tiny U-Net's margin is 48: a 128 window has a 32-pixel core


@pytest.fixture(scope="module")
def calibration_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibration")
    rng = np.random.default_rng(5)
    for i in range(3):
        clean = smooth_image(150, 170, channels=3, seed=i).astype(np.float32)
        noisy = np.clip(clean + rng.normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
        Image.fromarray(noisy).save(folder / f"noisy{i}.png")
    return folder


@pytest.fixture(scope="module")
def exported(tmp_path_factory, calibration_dir):
    """(keras path, int8 tflite path) for a grey and a colour tiny denoiser."""
    folder = tmp_path_factory.mktemp("litert")
    result = {}
    for channels, seed in ((1, 21), (3, 22)):
        keras_path = folder / f"tiny{channels}.keras"
        build_tiny_denoiser(channels, seed=seed).save(keras_path)
        result[channels] = keras_path, export_tflite(keras_path, folder, calibration=calibration_dir, tile=TILE)
    return result


def _noisy(shape, seed):
    h, w = shape[:2]
    clean = smooth_image(h, w, channels=shape[2] if len(shape) == 3 else 1, seed=seed).astype(np.float32) / 255
    clean = clean.reshape(shape)
    return (clean + np.random.default_rng(seed).normal(0, 25 / 255, shape)).astype(np.float32)


def test_int8_export_writes_the_tflite_and_its_window_sidecar(exported):
    keras_path, path = exported[1]
    assert path.name == "tiny1-int8.tflite" and path.stat().st_size > 0
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["tile"] == TILE and meta["stride"] == 8 and meta["margin"] == 48 and meta["channels"] == 1
    assert meta["quantize"] == "int8" and meta["job"] == "denoise" and meta["output"] == "noise"
    # Full-integer: the convolutions' weights are int8 inside a float32-in, float32-out graph.
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    types = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in types
    assert interpreter.get_input_details()[0]["dtype"] == np.float32
    assert list(interpreter.get_input_details()[0]["shape"]) == [1, TILE, TILE, 1]
    assert path.stat().st_size < keras_path.stat().st_size / 2


@pytest.mark.parametrize("channels, shape", [(1, (37, 53)), (3, (300, 301, 3)), (1, (131, 250))])
def test_tflite_denoises_any_size_close_to_the_keras_model(exported, channels, shape):
    keras_path, path = exported[channels]
    x = _noisy(shape, seed=shape[0])
    y = imageae.denoise(x, model=str(path))
    assert y.shape == x.shape and y.dtype == np.float32
    if max(shape[:2]) < TILE:  # a small image is mirror-padded to the fixed window; Keras runs it whole
        padded = pad_to_multiple(x.reshape(shape[0], shape[1], -1), 8)  # first to the stride, as the runner
        pad = ((0, TILE - padded.shape[0]), (0, TILE - padded.shape[1]), (0, 0))
        expected = imageae.denoise(np.pad(padded, pad, mode="symmetric"), model=str(keras_path), precision="float32")
        expected = expected.reshape(TILE, TILE, *shape[2:])
        expected = expected[: shape[0], : shape[1]]
    else:  # several windows: the tiling equals whole-image inference
        expected = imageae.denoise(x, model=str(keras_path), precision="float32")
    # The untrained model's 'noise' spans about -0.7..1, so int8 steps are coarse: the tflite
    # stays within a small fraction of what the model changes (a trained denoiser's PSNR cost
    # is measured by benchmarks/litert.py).
    change = np.abs(x - expected).mean()
    error = np.abs(y - expected).mean()
    print(f"{shape}: mean change {change:.4f}, mean error {error:.4f} ({error / change:.3f})")
    assert change > 0.05
    assert error < 0.1 * change


def test_tflite_keeps_uint8_and_runs_a_grey_model_on_colour(exported):
    _, path = exported[1]
    x = (np.clip(_noisy((40, 41, 3), seed=3), 0, 1) * 255).astype(np.uint8)
    y = imageae.denoise(x, model=str(path))
    assert y.shape == x.shape and y.dtype == np.uint8


def test_tflite_without_its_sidecar_is_refused_clearly(exported, tmp_path):
    _, path = exported[1]
    lone = tmp_path / "lone.tflite"
    lone.write_bytes(path.read_bytes())
    with pytest.raises(ValueError, match=r"sidecar lone\.json .*missing.*--format tflite"):
        imageae.denoise(np.zeros((16, 16), np.float32), model=str(lone))


def test_tflite_export_refuses_a_codec_naming_what_is_supported(random_weight_models, tmp_path):
    with pytest.raises(ValueError, match=r"cannot export a HyperpriorCodec as tflite.*denoise-grey, denoise-colour"
                                         r".*vae-digits, vae-faces64"):
        export_tflite("codec-v4", tmp_path)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="quantize must be one of int8, float16, none"):
        export_tflite("denoise-grey", tmp_path, quantize="int4")


def test_cli_exports_and_denoises_with_a_tflite(exported, calibration_dir, tmp_path, capfd):
    keras_path, _ = exported[1]
    out = tmp_path / "edge"
    capfd.readouterr()
    assert main(["export", str(keras_path), "--format", "tflite", "--quantize", "float16", "--tile", "120",
                 "-o", str(out)]) == 0
    path = out / "tiny1-float16.tflite"
    assert path.is_file() and json.loads(path.with_suffix(".json").read_text())["tile"] == 120
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray((np.clip(_noisy((45, 70), seed=9), 0, 1) * 255).astype(np.uint8)).save(src / "a.png")
    assert main(["denoise", str(src), "-o", str(tmp_path / "clean"), "--model", str(path)]) == 0
    result = np.asarray(Image.open(tmp_path / "clean" / "a.png"))
    assert result.shape == (45, 70) and result.dtype == np.uint8
    err = capfd.readouterr().err  # the converter's and the interpreter's C++ log lines are kept off it
    assert "Ignored output_format" not in err and "Estimated count" not in err and "XNNPACK" not in err
    assert main(["export", str(keras_path), "--quantize", "int8", "-o", str(tmp_path / "sm")]) == 2
    assert "--format tflite only" in capfd.readouterr().err


def test_without_the_litert_package_a_tflite_is_refused_with_the_install_line(exported, monkeypatch, tmp_path, capsys):
    import sys

    _, path = exported[1]
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)  # import fails as if not installed
    with pytest.raises(RuntimeError, match=r"pip install 'imageae\[litert\]'"):
        imageae.Denoiser(str(path)).runner(1)
    src = tmp_path / "a.png"
    Image.fromarray(np.zeros((20, 20), np.uint8)).save(src)
    assert main(["denoise", str(src), "-o", str(tmp_path / "out"), "--model", str(path)]) == 2
    assert "imageae[litert]" in capsys.readouterr().err


# ----------------------------------------------------------------------------- VAE decoders


@pytest.fixture(scope="module")
def vae_exports(vae_models_dir, tmp_path_factory):
    """{quantize: .tflite path} of the tiny VAE standing in for vae-digits (int8 and none), and
    {"keras": its .keras path}."""
    keras_path = vae_models_dir / "vae-digits.keras"
    folder = tmp_path_factory.mktemp("vae_edge")
    return {"keras": keras_path, **{q: export_tflite(keras_path, folder, quantize=q) for q in ("int8", "none")}}


def test_vae_decoder_export_records_the_sampler_and_shapes(vae_exports, trained_tiny_vae):
    model = trained_tiny_vae[0]
    path = vae_exports["int8"]
    assert path.name == "vae-digits-int8.tflite"
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["job"] == "generate" and meta["quantize"] == "int8"
    assert meta["latent_dim"] == 2 and meta["output_shape"] == [8, 8, 1] and meta["batch"] == 64
    # The mixture reads back as the model's own float32 numbers, bit for bit.
    for key, weight in (("log_weights", model.mixture_log_weights), ("means", model.mixture_means),
                        ("log_vars", model.mixture_log_vars)):
        assert np.array_equal(np.asarray(meta["mixture"][key], np.float32), np.asarray(weight))
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    assert list(interpreter.get_input_details()[0]["shape"]) == [64, 2]
    assert np.int8 in {d["dtype"] for d in interpreter.get_tensor_details()}


def test_generate_with_a_tflite_decoder_samples_the_keras_models_latents(vae_exports):
    keras = str(vae_exports["keras"])
    keras_images = imageae.generate(150, model=keras, seed=3)
    # float32 tflite: the same latents through the same decoder, so the same images (a float32
    # sum may round differently in LiteRT's kernels: one grey level at most).
    exact = imageae.generate(150, model=str(vae_exports["none"]), seed=3)
    assert exact.shape == keras_images.shape == (150, 8, 8, 1) and exact.dtype == np.uint8
    assert np.abs(exact.astype(int) - keras_images).max() <= 1
    # int8: each sample is the same one of the two patterns as the Keras model's for that seed
    # and index (the tiny model's logits are steep, so int8 moves edge pixels a lot), and
    # another seed gives other samples.
    int8 = imageae.generate(150, model=str(vae_exports["int8"]), seed=3)
    other_seed = imageae.generate(150, model=str(vae_exports["int8"]), seed=4)

    def kinds(images):  # 0: left half bright (pattern 0), 1: top half bright (pattern 1)
        x = images[..., 0].astype(float)
        return (x[:, :4].mean((1, 2)) - x[:, 4:].mean((1, 2)) < x[:, :, :4].mean((1, 2)) - x[:, :, 4:].mean((1, 2)))

    agree, chance = (kinds(int8) == kinds(keras_images)).mean(), (kinds(other_seed) == kinds(keras_images)).mean()
    print(f"int8: {agree:.0%} of samples the Keras model's pattern (another seed: {chance:.0%}); mean error "
          f"{np.abs(int8.astype(int) - keras_images).mean():.1f} grey levels")
    assert agree >= 0.95 and chance < 0.75
    prior = imageae.generate(150, model=str(vae_exports["none"]), seed=3, sampler="normal")
    assert np.abs(prior.astype(int) - imageae.generate(150, model=keras, seed=3, sampler="normal")).max() <= 1
    assert np.abs(prior.astype(int) - exact).mean() > 5  # the prior is not the mixture
    # Streaming in batches gives the same images.
    streamed = np.concatenate(list(imageae.generate_batches(150, batch_size=7, model=str(vae_exports["int8"]), seed=3)))
    assert np.array_equal(streamed, int8)


def test_cli_exports_a_vae_decoder_and_generates_with_it_quietly(vae_models, tmp_path, capfd):
    """Also the regression for the converter's and the interpreter's log lines, which they print
    from C++ onto fd 2: ``fully_quantize: 0, inference_type: 6, ...`` (int8 conversion), the
    SavedModel reader's progress and "Created TensorFlow Lite XNNPACK delegate for CPU"."""
    from conftest import run_cli

    capfd.readouterr()
    code, _out, err = run_cli("export", "vae-digits", "--format", "tflite", "-o", str(tmp_path / "edge"))
    assert code == 0, err
    path = tmp_path / "edge" / "vae-digits-int8.tflite"
    code, _out, err = run_cli("generate", "-n", "5", "-o", str(tmp_path / "gen"), "--model", str(path), "--seed", "2")
    assert code == 0, err
    captured = capfd.readouterr()
    for chatter in ("fully_quantize", "inference_type", "XNNPACK", "Estimated count", "SavedModel"):
        assert chatter not in captured.err and chatter not in captured.out
    written = sorted((tmp_path / "gen").glob("sample_*.png"))
    assert len(written) == 5
    first = np.asarray(Image.open(written[0]))
    assert first.shape == (8, 8) and np.array_equal(first, imageae.generate(1, model=str(path), seed=2)[0, ..., 0])
    # What a decoder cannot do, and options that do not apply, are one line and exit 2.
    Image.fromarray(first).save(tmp_path / "a.png")
    code, _out, err = run_cli("reconstruct", str(tmp_path / "a.png"), "-o", str(tmp_path / "rec"), "--model", str(path))
    assert code == 2 and "holds only the VAE's decoder" in err and not (tmp_path / "rec").exists()
    for flag in (["--tile", "64"], ["--calibration", str(tmp_path / "gen")]):
        code, _out, err = run_cli("export", "vae-digits", "--format", "tflite", *flag, "-o", str(tmp_path / "x"))
        assert code == 2 and f"{flag[0]} applies to the denoisers" in err
    assert not (tmp_path / "x").exists() or not list((tmp_path / "x").iterdir())


def test_a_tflite_of_one_job_is_refused_by_the_other(vae_exports, exported):
    with pytest.raises(ValueError, match=r"is a generate model, not a denoise model.*imageae generate --model"):
        imageae.denoise(np.zeros((16, 16), np.float32), model=str(vae_exports["int8"]))
    with pytest.raises(ValueError, match=r"is a denoise model, not a generate model.*imageae denoise --model"):
        imageae.generate(2, model=str(exported[1][1]))


# ----------------------------------------------------------------------------- regressions


def test_quiet_native_logs_still_shows_other_lines(capfd):
    from imageae.pipelines.litert import quiet_native_logs

    with quiet_native_logs():
        os.write(2, b"fully_quantize: 0, inference_type: 6\nsomething real went wrong\n")
    err = capfd.readouterr().err
    assert "something real went wrong" in err and "fully_quantize" not in err


def _replace(source, target):
    """Copy an export (.tflite and .json) over another, as a re-export would; the new mtime is
    set a second later so that even a coarse filesystem clock sees the change."""
    mtime = target.stat().st_mtime_ns + 1_000_000_000 if target.exists() else None
    for suffix in (".tflite", ".json"):
        shutil.copyfile(source.with_suffix(suffix), target.with_suffix(suffix))
        if mtime:
            os.utime(target.with_suffix(suffix), ns=(mtime, mtime))


def test_a_reexported_denoiser_tflite_is_loaded_again(exported, tmp_path):
    other = export_tflite(_other_denoiser(tmp_path), tmp_path / "other", quantize="float16", tile=TILE)
    live = tmp_path / "live.tflite"
    _replace(exported[1][1], live)
    x = _noisy((40, 50), seed=1)
    before = imageae.denoise(x, model=str(live))
    assert np.array_equal(before, imageae.denoise(x, model=str(exported[1][1])))
    _replace(other, live)
    after = imageae.denoise(x, model=str(live))
    assert np.array_equal(after, imageae.denoise(x, model=str(other)))
    assert np.abs(after - before).mean() > 0.01


def _other_denoiser(tmp_path):
    path = tmp_path / "other.keras"
    build_tiny_denoiser(1, seed=99).save(path)
    return path


def test_a_reexported_vae_tflite_is_loaded_again(vae_exports, tmp_path):
    from conftest import build_tiny_vae

    other_keras = tmp_path / "other-vae.keras"
    build_tiny_vae(seed=7).save(other_keras)
    other = export_tflite(other_keras, tmp_path / "other", quantize="none")
    live = tmp_path / "live.tflite"
    _replace(vae_exports["none"], live)
    before = imageae.generate(20, model=str(live), seed=1)
    _replace(other, live)
    after = imageae.generate(20, model=str(live), seed=1)
    assert np.array_equal(after, imageae.generate(20, model=str(other), seed=1))
    assert not np.array_equal(after, before)


def test_a_denoiser_with_a_level_input_exports_with_its_estimator(tmp_path):
    """The shipped colour model takes a noise level; as .tflite it estimates the level itself
    in the graph (per window), so it runs through the same runner and stays close to Keras."""
    import imageae

    keras_path = tmp_path / "level.keras"
    build_tiny_denoiser(3, seed=23, noise_level=True).save(keras_path)
    path = export_tflite(keras_path, tmp_path, quantize="none", tile=TILE)
    x = _noisy((TILE - 16, TILE - 24, 3), seed=9)
    out = imageae.denoise(x, model=str(path))
    expected = imageae.denoise(x, model=str(keras_path), precision="float32")
    assert out.shape == x.shape
    assert np.abs(out - expected).mean() < 0.02


def test_a_denoiser_with_a_noise_highpass_exports_with_the_wider_margin(tmp_path):
    """The highpass is part of the graph (predict_noise) and widens the margin, so the windows
    of the .tflite give what the Keras model gives on the whole image."""
    import keras

    import imageae

    model = build_tiny_denoiser(3, seed=24, noise_level=True)
    model.save(tmp_path / "plain.keras")
    model.noise_highpass = 4.0
    keras_path = tmp_path / "highpass.keras"
    model.save(keras_path)
    assert keras.saving.load_model(keras_path).receptive_radius == 48 + 12
    path = export_tflite(keras_path, tmp_path, quantize="none", tile=160)
    assert json.loads(path.with_suffix(".json").read_text())["margin"] == 64  # 60 up to the stride
    x = _noisy((200, 230, 3), seed=10)
    out = imageae.denoise(x, model=str(path), batch_size=2)
    expected = imageae.denoise(x, model=str(keras_path), precision="float32")
    plain = imageae.denoise(x, model=str(tmp_path / "plain.keras"), precision="float32")
    assert out.shape == x.shape and np.abs(out - expected).mean() < 0.02
    assert np.abs(out - plain).mean() > 0.05  # the highpass is in the graph
