"""The features job: ``imageae.embed`` and ``imageae embed`` (issue 21).

Every encoder here is tiny and untrained (built in the test): the checks are that the features
are the encoder's own output on the image as the encoder takes it (VAE mean, autoencoder code,
resized and grey/colour-converted input), that rows and paths line up in every file format,
and that bad inputs, unreadable files, existing outputs and a missing Parquet writer each give
one clear message and the documented exit code.
"""

import csv
import sys

import keras
import numpy as np
import pytest
from PIL import Image

import imageae
from imageae.cli import main
from imageae.features import api


@keras.saving.register_keras_serializable(package="tests_features")
class TinyEncoder(keras.Model):
    """The protocol in its smallest form: ``encode(x) -> (batch, code_size)`` and ``code_size``."""

    def __init__(self, code_size=3, image_size=8, channels=1, **kwargs):
        super().__init__(**kwargs)
        self.code_size, self.image_size, self.channels = code_size, image_size, channels
        self.flatten = keras.layers.Flatten()
        self.dense = keras.layers.Dense(code_size)

    def build(self, input_shape=None):
        self.dense.build((None, self.image_size * self.image_size * self.channels))
        self.built = True

    def encode(self, x):
        return self.dense(self.flatten(keras.ops.convert_to_tensor(x, "float32")))

    def call(self, x):
        return self.encode(x)

    def get_config(self):
        return {**super().get_config(), "code_size": self.code_size, "image_size": self.image_size,
                "channels": self.channels}


@pytest.fixture(scope="module")
def tiny():
    keras.utils.set_random_seed(3)
    model = TinyEncoder()
    model.build()
    return model


@pytest.fixture(scope="module")
def tiny_path(tiny, tmp_path_factory):
    path = tmp_path_factory.mktemp("models") / "tiny-encoder.keras"
    tiny.save(path)
    return path


def _digits(n, size=8, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size), dtype=np.uint8)


def _direct(model, images_u8):
    """What the encoder itself says for uint8 (N, S, S) images, without imageae.embed."""
    x = images_u8.astype(np.float32)[..., None] / 255.0
    return np.asarray(keras.ops.convert_to_numpy(model.encode(x)))


# --- imageae.embed ---------------------------------------------------------------------------
def test_embed_is_the_encoders_code_in_batches_of_any_size(tiny):
    images = _digits(7)
    expected = _direct(tiny, images)
    for batch_size in (1, 3, 256):
        features = imageae.embed(images, model=tiny, batch_size=batch_size)
        assert features.dtype == np.float32 and features.shape == (7, 3)
        np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    # a list of (H, W, 1) arrays, float input on 0..1 and uint16 input give the same rows
    np.testing.assert_allclose(imageae.embed(list(images[..., None]), model=tiny), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(imageae.embed(images.astype(np.float32) / 255, model=tiny), expected, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_allclose(imageae.embed(images.astype(np.uint16) * 257, model=tiny), expected, rtol=1e-5,
                               atol=1e-6)
    assert imageae.embed(np.zeros((0, 8, 8), np.uint8), model=tiny).shape == (0, 3)


def test_embed_fits_images_to_the_encoders_input(tiny):
    """A larger colour PIL image is converted to grey and resized as data.arrays._fit does."""
    from imageae.data.arrays import _fit

    rgb = np.random.default_rng(1).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    fitted = _fit(rgb[None], 8, 1, None)[..., 0]
    features = imageae.embed([Image.fromarray(rgb), Image.fromarray(rgb).convert("P")], model=tiny)
    np.testing.assert_allclose(features[0], _direct(tiny, fitted)[0], rtol=1e-5, atol=1e-6)
    assert np.abs(features[1] - features[0]).max() < 0.5  # a palette image is read, not refused


def test_vae_features_are_the_posterior_mean(tmp_path):
    from imageae.models.vae import build_vae

    keras.utils.set_random_seed(5)
    vae = build_vae(image_size=8, channels=1, latent_dim=4, filters=(4,), mixture_components=2)
    path = tmp_path / "tiny-vae.keras"
    vae.save(path)
    images = _digits(5)
    mean, logvar = vae.encode(images.astype(np.float32)[..., None] / 255.0)
    features = imageae.embed(images, model=str(path))
    assert features.shape == (5, 4)
    np.testing.assert_allclose(features, keras.ops.convert_to_numpy(mean), rtol=1e-4, atol=1e-5)
    assert not np.allclose(features, keras.ops.convert_to_numpy(logvar))


def test_a_tuple_from_encode_gives_its_first_element(tiny):
    class Wrapped:
        code_size, image_size, channels = 3, 8, 1

        def encode(self, x):
            return tiny.encode(x), "ignored"

    images = _digits(2)
    np.testing.assert_allclose(imageae.embed(images, model=Wrapped()), _direct(tiny, images), rtol=1e-5, atol=1e-6)


def test_a_wrapper_holding_its_model_is_unwrapped(tiny):
    class Detector:  # as imageae.AnomalyDetector holds its autoencoder
        model = tiny

    images = _digits(2)
    np.testing.assert_allclose(imageae.embed(images, model=Detector()), _direct(tiny, images), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("images, error, words", [
    (np.zeros((8, 8), np.uint8), ValueError, "[image]"),
    (np.zeros((8, 8, 3), np.uint8), ValueError, "single image"),
    (np.zeros((2, 8, 8, 3, 1), np.uint8), ValueError, "(N, H, W)"),
    ("digits/", TypeError, "embed_folder"),
    ([np.zeros((8, 8), np.float64) + 200.0], ValueError, "0..1"),
])
def test_embed_refuses_what_it_would_have_to_guess(tiny, images, error, words):
    with pytest.raises(error, match=None) as info:
        imageae.embed(images, model=tiny)
    assert words in str(info.value)


def test_models_that_are_not_encoders_are_named(tiny):
    with pytest.raises(TypeError, match="encode.*code_size"):
        imageae.embed(_digits(1), model=object())

    class Liar:
        code_size, image_size, channels = 5, 8, 1

        def encode(self, x):
            return tiny.encode(x)  # 3 features, not 5

    with pytest.raises(ValueError, match=r"returned features of shape \(1, 3\).*\(1, 5\)"):
        imageae.embed(_digits(1), model=Liar())
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        imageae.embed(_digits(1), model="nope")
    with pytest.raises(ValueError, match="batch_size"):
        imageae.embed(_digits(1), model=tiny, batch_size=0)


# --- files and folders -----------------------------------------------------------------------
@pytest.fixture
def digit_folder(tmp_path):
    folder = tmp_path / "digits"
    (folder / "sub").mkdir(parents=True)
    images = _digits(4, seed=9)
    names = ["a.png", "b.png", "sub/c.png", "sub/d.png"]
    for name, image in zip(names, images):
        Image.fromarray(image).save(folder / name)
    return folder, [str(folder / n) for n in names], images


def test_csv_rows_are_the_images_features_with_their_paths(tiny, tiny_path, digit_folder, tmp_path):
    folder, paths, images = digit_folder
    out = tmp_path / "out" / "features.csv"
    assert main(["embed", str(folder), "--model", str(tiny_path), "-o", str(out), "--progress", "off"]) == 0
    with open(out, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "z0", "z1", "z2"]
    assert [r[0] for r in rows[1:]] == paths
    np.testing.assert_allclose(np.array([r[1:] for r in rows[1:]], np.float32), _direct(tiny, images), rtol=1e-5,
                               atol=1e-6)


def test_npy_with_paths_beside_it(tiny, digit_folder, tmp_path):
    folder, paths, images = digit_folder
    out = tmp_path / "features.npy"
    report = api.embed_folder([folder], out, model=tiny)
    assert report.ok and report.written == paths
    features = np.load(out)
    assert features.dtype == np.float32
    np.testing.assert_allclose(features, _direct(tiny, images), rtol=1e-5, atol=1e-6)
    assert (tmp_path / "features.paths.txt").read_text().splitlines() == paths


def test_unreadable_files_are_named_and_the_rest_embedded(tiny_path, digit_folder, tmp_path, capsys):
    folder, paths, _ = digit_folder
    (folder / "broken.png").write_bytes(b"not a png")
    out = tmp_path / "features.csv"
    assert main(["embed", str(folder), "--model", str(tiny_path), "-o", str(out)]) == 1
    printed = capsys.readouterr().out
    assert "FAILED" in printed and "broken.png" in printed and "embedded 4 file(s)" in printed
    with open(out, newline="") as f:
        assert [r[0] for r in list(csv.reader(f))[1:]] == paths


def test_an_existing_output_is_kept_unless_overwrite(tiny_path, digit_folder, tmp_path, capsys):
    folder, _, _ = digit_folder
    out = tmp_path / "features.csv"
    out.write_text("precious")
    assert main(["embed", str(folder), "--model", str(tiny_path), "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "precious"
    assert main(["embed", str(folder), "--model", str(tiny_path), "-o", str(out), "--overwrite"]) == 0
    assert out.read_text().startswith("path,z0")


@pytest.mark.parametrize("output, words", [("features.txt", ".npy, .csv, .parquet"), ("", "empty")])
def test_bad_outputs_are_usage_errors(tiny_path, digit_folder, tmp_path, capsys, output, words, monkeypatch):
    folder, _, _ = digit_folder
    monkeypatch.chdir(tmp_path)
    assert main(["embed", str(folder), "--model", str(tiny_path), "-o", output]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_an_input_is_never_overwritten(tiny_path, digit_folder, tmp_path, capsys):
    folder, _, _ = digit_folder
    named = tmp_path / "x.npy"
    np.save(named, np.zeros(3))
    before = named.read_bytes()
    assert main(["embed", str(folder), str(named), "--model", str(tiny_path), "-o", str(named), "--overwrite"]) == 2
    assert "overwrite an input" in capsys.readouterr().err and named.read_bytes() == before


def test_parquet_without_a_writer_says_what_to_install(tiny_path, digit_folder, tmp_path, capsys, monkeypatch):
    folder, _, _ = digit_folder
    for module in ("pyarrow", "pandas", "fastparquet"):
        monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    out = tmp_path / "features.parquet"
    assert main(["embed", str(folder), "--model", str(tiny_path), "-o", str(out)]) == 2
    assert "pip install pyarrow" in capsys.readouterr().err and not out.exists()


def test_parquet_round_trip(tiny, digit_folder, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (optional: .parquet output)")
    folder, paths, images = digit_folder
    out = tmp_path / "features.parquet"
    assert api.embed_folder(folder, out, model=tiny).ok
    table = pq.read_table(out).to_pydict()
    assert table["path"] == paths
    np.testing.assert_allclose(np.array([table[f"z{j}"] for j in range(3)]).T, _direct(tiny, images), rtol=1e-6)


def test_an_interrupted_run_leaves_no_file(tiny, digit_folder, tmp_path):
    folder, _, _ = digit_folder
    calls = []

    class Interrupted:
        code_size, image_size, channels = 3, 8, 1

        def encode(self, x):
            calls.append(len(x))
            if len(calls) == 2:
                raise KeyboardInterrupt
            return tiny.encode(x)

    with pytest.raises(KeyboardInterrupt):
        api.embed_folder(folder, tmp_path / "features.npy", model=Interrupted(), batch_size=2)
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]


def test_missing_inputs_and_empty_folders_are_usage_errors(tiny_path, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["embed", str(tmp_path / "missing"), "--model", str(tiny_path), "-o", str(tmp_path / "f.npy")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["embed", str(tmp_path / "empty"), "--model", str(tiny_path), "-o", str(tmp_path / "f.npy")]) == 2
    assert "nothing to embed" in capsys.readouterr().err
    assert not (tmp_path / "f.npy").exists()


def test_help_teaches(capsys):
    assert main(["embed", "--help"]) == 0
    text = capsys.readouterr().out
    assert "examples:" in text and "imageae embed digits/ --model vae-digits -o features.csv" in text
