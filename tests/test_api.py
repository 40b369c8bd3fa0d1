"""imageae.denoise: the same kind of image comes back, computed by the right model; bad input
is refused with a clear error.

The models are the random-weight stand-ins of conftest.py: these tests check plumbing
(scaling, model choice, alpha, dtypes, modes), not denoising quality.
"""

import numpy as np
import pytest
from PIL import Image

import imageae
from conftest import noise_image
from imageae import registry
from imageae.pipelines.tiling import pad_to_multiple

pytestmark = pytest.mark.usefixtures("random_weight_models")


def model_output(name, x):
    """What the registered model computes on a float (H, W, C) image, clipped to 0..1 (a model
    that takes a noise level gets the one its estimator finds in the image, as "auto" does)."""
    from imageae.denoise.api import estimate_noise_level

    model = registry.load_model(name, job="denoise")
    h, w = x.shape[:2]
    padded = pad_to_multiple(np.asarray(x, np.float32), model.stride)[None]
    if model.noise_level:
        level = np.array([estimate_noise_level(model, np.asarray(x, np.float32))], np.float32)
        y = np.asarray(model((padded, level)))[0, :h, :w]
    else:
        y = np.asarray(model(padded))[0, :h, :w]
    return np.clip(y, 0.0, 1.0)


def float_image(shape, seed=0, low=0.0, high=1.0):
    return np.random.default_rng(seed).uniform(low, high, shape).astype(np.float32)


def denoise32(image, **kwargs):
    return imageae.denoise(image, precision="float32", **kwargs)


# ----------------------------------------------------------------------------- what comes back


def test_unclipped_float_grey_image_gives_float32_in_unit_range_from_the_grey_model():
    x = float_image((30, 45), low=-0.1, high=1.1)  # noisy data strays outside 0..1
    y = denoise32(x)
    assert y.dtype == np.float32 and y.shape == x.shape
    assert 0.0 <= y.min() and y.max() <= 1.0
    np.testing.assert_allclose(y, model_output("denoise-grey", x[..., None])[..., 0], atol=1e-5)


def test_float64_input_gives_float32_output():
    x = float_image((20, 20, 3), seed=1).astype(np.float64)
    y = denoise32(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, model_output("denoise-colour", x), atol=1e-5)


def test_uint8_grey_image_gives_uint8_at_the_same_scale():
    x = noise_image((30, 45), seed=2)
    y = denoise32(x)
    assert y.dtype == np.uint8 and y.shape == x.shape
    expected = np.round(model_output("denoise-grey", x[..., None] / 255.0)[..., 0] * 255)
    assert np.abs(y.astype(int) - expected).max() <= 1


def test_uint8_grey_image_with_a_channel_axis_keeps_it():
    x = noise_image((30, 45, 1), seed=2)
    y = denoise32(x)
    assert y.shape == (30, 45, 1)
    np.testing.assert_array_equal(y[..., 0], denoise32(x[..., 0]))


def test_uint8_rgb_image_goes_through_the_colour_model():
    x = noise_image((30, 45, 3), seed=3)
    y = denoise32(x)
    assert y.dtype == np.uint8 and y.shape == x.shape
    expected = np.round(model_output("denoise-colour", x / 255.0) * 255)
    assert np.abs(y.astype(int) - expected).max() <= 1


@pytest.mark.parametrize("channels", [2, 4])
def test_alpha_is_passed_through_exactly(channels):
    x = noise_image((30, 45, channels), seed=4)
    y = denoise32(x)
    assert y.dtype == np.uint8 and y.shape == x.shape
    np.testing.assert_array_equal(y[..., -1], x[..., -1])
    np.testing.assert_array_equal(y[..., :-1], denoise32(np.ascontiguousarray(x[..., :-1])))


def test_uint16_image_is_denoised_at_sixteen_bits():
    x = noise_image((30, 45), np.uint16, seed=5)
    y = denoise32(x)
    assert y.dtype == np.uint16 and y.shape == x.shape
    expected = np.round(model_output("denoise-grey", x[..., None] / 65535.0)[..., 0] * 65535)
    assert np.abs(y.astype(np.int64) - expected).max() <= 2
    assert len(np.unique(y)) > 256  # not squeezed through 8 bits


def test_forcing_the_grey_model_on_a_colour_image_runs_it_per_channel():
    x = noise_image((30, 45, 3), seed=6)
    y = denoise32(x, model="denoise-grey")
    for c in range(3):
        np.testing.assert_array_equal(y[..., c], denoise32(np.ascontiguousarray(x[..., c])))


def test_a_keras_file_path_can_name_the_model(random_weight_models):
    x = noise_image((30, 45, 3), seed=7)
    y = denoise32(x, model=str(random_weight_models / "denoise-colour.keras"))
    np.testing.assert_array_equal(y, denoise32(x))


def test_self_ensemble_averages_the_eight_flips_and_rotations_turned_back():
    # The blind grey model (a model that takes a noise level: tests/test_realnoise.py)
    x = float_image((30, 45, 1), seed=4)  # not square: rotations swap height and width
    views = []
    for k in range(8):
        view = np.rot90(x, k % 4, axes=(0, 1))
        view = view[:, ::-1] if k >= 4 else view
        model = registry.load_model("denoise-grey", job="denoise")
        h, w = view.shape[:2]
        y = np.asarray(model(pad_to_multiple(np.ascontiguousarray(view), model.stride)[None]))[0, :h, :w]
        y = y[:, ::-1] if k >= 4 else y
        views.append(np.rot90(y, -(k % 4), axes=(0, 1)))
    expected = np.clip(np.mean(views, axis=0), 0.0, 1.0)  # the views are averaged unclipped
    out = denoise32(x, self_ensemble=True)
    assert out.shape == x.shape
    np.testing.assert_allclose(out, expected, atol=1e-5)
    assert np.abs(out - denoise32(x)).max() > 1e-3  # the views differ: it is not the plain result


def test_default_precision_is_close_to_float32():
    # "auto" may compute in bfloat16 (CPUs with AVX512-BF16); the result must stay close
    x = float_image((40, 56, 3), seed=8)
    np.testing.assert_allclose(imageae.denoise(x), denoise32(x), atol=0.05)


def test_tiling_does_not_change_the_result():
    x = float_image((150, 130, 3), seed=9)
    np.testing.assert_allclose(denoise32(x, tile=128), denoise32(x), atol=1e-5)


# ------------------------------------------------------------------------------------- PIL


@pytest.mark.parametrize(
    "mode, shape", [("L", (30, 45)), ("RGB", (30, 45, 3)), ("LA", (30, 45, 2)), ("RGBA", (30, 45, 4))]
)
def test_pil_image_in_gives_pil_image_of_the_same_mode_and_size(mode, shape):
    array = noise_image(shape, seed=10)
    out = denoise32(Image.fromarray(array, mode))
    assert isinstance(out, Image.Image)
    assert out.mode == mode and out.size == (45, 30)
    np.testing.assert_array_equal(np.asarray(out), denoise32(array))
    if "A" in mode:
        np.testing.assert_array_equal(np.asarray(out)[..., -1], array[..., -1])


def _pillow_rejects_uint16_with_mode_i16():
    try:
        Image.fromarray(np.zeros((1, 1), np.uint16), mode="I;16")
    except ValueError:
        return True
    return False


def test_sixteen_bit_pil_image_gives_sixteen_bit_pil_image():
    array = noise_image((30, 45), np.uint16, seed=11)
    image = Image.fromarray(array)
    assert image.mode == "I;16"
    out = denoise32(image)
    assert out.mode == "I;16" and out.size == (45, 30)
    np.testing.assert_array_equal(np.asarray(out), denoise32(array))


# ------------------------------------------------------------------------------------ errors


@pytest.mark.parametrize("shape", [(30,), (2, 30, 45, 3)])
def test_wrong_number_of_dimensions_is_refused(shape):
    with pytest.raises(ValueError, match=r"expected an image of shape \(H, W\)"):
        imageae.denoise(np.zeros(shape, np.uint8))


def test_five_channels_are_refused():
    with pytest.raises(ValueError, match=r"got \(30, 45, 5\)"):
        imageae.denoise(np.zeros((30, 45, 5), np.uint8))


def test_empty_image_is_refused():
    with pytest.raises(ValueError, match="empty"):
        imageae.denoise(np.zeros((0, 45), np.uint8))


@pytest.mark.parametrize("dtype", [bool, np.int64, np.int8])
def test_unsupported_dtypes_raise_type_error_naming_the_dtype(dtype):
    with pytest.raises(TypeError, match=np.dtype(dtype).name):
        imageae.denoise(np.zeros((30, 45), dtype))


def test_a_list_is_not_an_image():
    with pytest.raises(TypeError, match="numpy array or a PIL image"):
        imageae.denoise([[0.5, 0.5], [0.5, 0.5]])


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_non_finite_floats_are_refused(bad):
    x = float_image((30, 45))
    x[3, 4] = bad
    with pytest.raises(ValueError, match="NaN or infinite"):
        imageae.denoise(x)


def test_floats_on_the_0_to_255_scale_are_refused_with_the_fix():
    x = float_image((30, 45), high=255.0)
    with pytest.raises(ValueError, match="[Dd]ivide 0..255 data by 255"):
        imageae.denoise(x)


def test_unknown_model_name_lists_the_choices():
    with pytest.raises(ValueError, match="unknown model 'denoise-gray'.*denoise-grey.*denoise-colour"):
        imageae.denoise(noise_image((30, 45)), model="denoise-gray")


def test_missing_weights_name_the_missing_file(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEAE_MODELS", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="denoise-grey.keras"):
        # a tile size no other test uses, so no cached Denoiser answers instead
        imageae.denoise(noise_image((30, 45)), tile=4321)
