"""LiteRT (.tflite) export of the denoisers and their tiled runner (issue 23).

Random-weight tiny denoisers (conftest) are exported to full-integer int8 .tflite files on a
small fixed window, then run through ``imageae.denoise(model=PATH.tflite)`` and the CLI on
image sizes that are not multiples of the stride and that need several windows.
"""

import json

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


def test_tflite_export_refuses_a_non_denoiser_naming_what_is_supported(random_weight_models, tmp_path):
    with pytest.raises(ValueError, match=r"cannot export a HyperpriorCodec as tflite.*denoise-grey, denoise-colour"):
        export_tflite("codec-v4", tmp_path)
    assert not list(tmp_path.iterdir())
    with pytest.raises(ValueError, match="quantize must be one of int8, float16, none"):
        export_tflite("denoise-grey", tmp_path, quantize="int4")


def test_cli_exports_and_denoises_with_a_tflite(exported, calibration_dir, tmp_path, capsys):
    keras_path, _ = exported[1]
    out = tmp_path / "edge"
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
    capsys.readouterr()
    assert main(["export", str(keras_path), "--quantize", "int8", "-o", str(tmp_path / "sm")]) == 2
    assert "--format tflite only" in capsys.readouterr().err


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
