"""Exports load and run in a process that imports only TensorFlow, and match the Python API."""

import io
import json
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

import imageae
from imageae.export import export_saved_model

DATA = __import__("pathlib").Path(__file__).resolve().parent.parent / "data"

# Runs in a fresh interpreter: only tensorflow (and numpy) may be imported there.
_CLIENT = textwrap.dedent(
    """
    import json, sys
    # imageae is unimportable here: the export must serve with TensorFlow alone.
    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "imageae":
                raise ImportError(f"{name} is blocked in this test")
    sys.meta_path.insert(0, Block())
    import numpy as np
    import tensorflow as tf
    # `import tensorflow` may pull in keras for tf.keras by itself; loading and calling the
    # SavedModel must not import any further keras module.
    keras_before = {m for m in sys.modules if m.split(".")[0] == "keras"}
    request = json.load(sys.stdin)
    loaded = tf.saved_model.load(request["path"])
    out = {"signatures": sorted(loaded.signatures.keys())}
    if "images_bytes" in request:
        data = tf.constant([bytes.fromhex(h) for h in request["images_bytes"]])
        result = loaded.signatures["serving_default"](images_bytes=data)
        out["outputs"] = sorted(result.keys())
        out["pngs"] = [b.hex() for b in result["denoised_bytes"].numpy()]
        x = tf.constant(np.asarray(request["float"], np.float32))
        out["float"] = loaded.signatures["denoise"](images=x)["denoised"].numpy().tolist()
    if "seed" in request:
        args = dict(seed=tf.constant(request["seed"], tf.int64), count=tf.constant(3, tf.int32),
                    temperature=tf.constant(0.8, tf.float32))
        out["pngs"] = [b.hex() for b in loaded.signatures["generate"](**args)["images_bytes"].numpy()]
        z = loaded.signatures["encode"](images=tf.zeros([1] + request["shape"]))["z_mean"]
        out["decoded_shape"] = list(loaded.signatures["decode"](z=z)["images"].shape)
    out["modules"] = sorted(m for m in sys.modules if m.split(".")[0] in ("imageae", "keras") and m not in keras_before)
    print(json.dumps(out))
    """
)


def _run_client(request):
    proc = subprocess.run([sys.executable, "-c", _CLIENT], input=json.dumps(request), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _png(array):
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_denoiser_export_matches_python_api(random_weight_models, tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (37, 53), dtype=np.uint8), rng.integers(0, 256, (64, 40), dtype=np.uint8)]
    target = export_saved_model("denoise-grey", tmp_path, version=3)
    assert target == tmp_path / "denoise-grey" / "3"
    with pytest.raises(FileExistsError):
        export_saved_model("denoise-grey", tmp_path, version=3)
    x = rng.random((1, 16, 24, 1)).astype(np.float32)
    out = _run_client({"path": str(target), "images_bytes": [_png(a).hex() for a in images], "float": x.tolist()})
    assert out["modules"] == []
    assert {"serving_default", "denoise"} <= set(out["signatures"])
    assert out["outputs"] == ["denoised_bytes"]
    for array, png in zip(images, out["pngs"]):
        served = np.asarray(Image.open(io.BytesIO(bytes.fromhex(png))))
        expected = imageae.denoise(array, precision="float32")
        np.testing.assert_array_equal(served, expected)
    expected = imageae.denoise(x[0], precision="float32")
    np.testing.assert_allclose(np.clip(np.asarray(out["float"])[0], 0, 1), expected, atol=1e-5)


def test_export_refuses_bad_version_and_unknown_model(tmp_path):
    with pytest.raises(ValueError, match="version"):
        export_saved_model("denoise-grey", tmp_path, version=0)
    with pytest.raises(ValueError, match="unknown model"):
        export_saved_model("no-such-model", tmp_path)


@pytest.mark.skipif(shutil.which("saved_model_cli") is None, reason="saved_model_cli not on PATH")
@pytest.mark.slow
def test_saved_model_cli_lists_named_signatures(random_weight_models, tmp_path):
    target = export_saved_model("denoise-colour", tmp_path)
    shown = subprocess.run(["saved_model_cli", "show", "--all", "--dir", str(target)], capture_output=True, text=True)
    assert shown.returncode == 0
    for name in ("signature_def['serving_default']", "inputs['images_bytes']", "outputs['denoised_bytes']",
                 "signature_def['denoise']", "inputs['images']", "outputs['denoised']"):
        assert name in shown.stdout


@pytest.mark.skipif(shutil.which("tensorflow_model_server") is None, reason="tensorflow_model_server not installed")
def test_tensorflow_serving_rest_round_trip(random_weight_models, tmp_path):
    import base64
    import socket
    import time
    import urllib.request

    export_saved_model("denoise-grey", tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(["tensorflow_model_server", f"--rest_api_port={port}", "--model_name=denoise-grey",
                               f"--model_base_path={tmp_path / 'denoise-grey'}"])
    try:
        image = np.random.default_rng(0).integers(0, 256, (32, 32), dtype=np.uint8)
        body = json.dumps({"instances": [{"images_bytes": {"b64": base64.b64encode(_png(image)).decode()}}]}).encode()
        url = f"http://127.0.0.1:{port}/v1/models/denoise-grey:predict"
        for _ in range(60):
            try:
                reply = json.load(urllib.request.urlopen(urllib.request.Request(url, body), timeout=5))
                break
            except OSError:
                time.sleep(1)
        else:
            pytest.fail("TF Serving did not answer")
        png = base64.b64decode(reply["predictions"][0]["b64"])
        np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png))), imageae.denoise(image, precision="float32"))
    finally:
        server.terminate()
        server.wait(timeout=30)


def _shipped(job):
    from imageae import registry

    return [m.name for m in registry.list_models(job)]


@pytest.fixture
def shipped_models(monkeypatch):
    import imageae.api

    monkeypatch.delenv("IMAGEAE_MODELS", raising=False)
    monkeypatch.setattr(imageae.api, "_default", {})


@pytest.mark.slow
@pytest.mark.parametrize("name", _shipped("denoise"))
def test_shipped_denoiser_export_gives_the_same_pixels_as_the_api(name, shipped_models, tmp_path):
    from imageae.data.io import read_image

    clean = read_image(DATA / "clean" / ("camera.png" if name == "denoise-grey" else "coffee.png")).pixels[:96, :120]
    noisy = np.clip(clean + np.random.default_rng(1).normal(0, 25, clean.shape), 0, 255).astype(np.uint8)
    noisy = noisy[..., 0] if noisy.shape[-1] == 1 else noisy
    target = export_saved_model(name, tmp_path)
    x = np.zeros((1, 16, 16, 1 if name == "denoise-grey" else 3), np.float32)
    out = _run_client({"path": str(target), "images_bytes": [_png(noisy).hex()], "float": x.tolist()})
    assert out["modules"] == []
    served = np.asarray(Image.open(io.BytesIO(bytes.fromhex(out["pngs"][0]))))
    np.testing.assert_array_equal(served, imageae.denoise(noisy, model=name, precision="float32"))


@pytest.mark.slow
@pytest.mark.parametrize("name", _shipped("generate"))
def test_shipped_vae_export_generates_the_api_images_for_a_seed(name, shipped_models, tmp_path):
    from imageae import registry

    target = export_saved_model(name, tmp_path)
    vae = registry.load_model(name, job="generate")
    out = _run_client({"path": str(target), "seed": 11, "shape": [vae.image_size, vae.image_size, vae.channels]})
    assert out["modules"] == []
    assert {"generate", "generate_prior", "encode", "decode"} <= set(out["signatures"])
    served = np.stack([np.asarray(Image.open(io.BytesIO(bytes.fromhex(p)))) for p in out["pngs"]])
    expected = imageae.generate(3, model=name, seed=11, temperature=0.8, precision="float32")
    np.testing.assert_array_equal(served.reshape(expected.shape), expected)
    assert out["decoded_shape"] == [1, vae.image_size, vae.image_size, vae.channels]
