"""Layers and models: config round trips, .keras save/load, receptive field, precision copies."""

import keras
import numpy as np
import pytest

from conftest import TINY_FILTERS
from imageae.layers.blocks import ResidualBlock
from imageae.models.denoiser import DenoiserUNet
from imageae.runtime import with_precision


def images(shape, seed=0):
    """Float32 images on the 0..1 scale."""
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def run(model, x):
    return np.asarray(model(x, training=False))


# ----------------------------------------------------------------------------- ResidualBlock


def test_residual_block_config_round_trip():
    block = ResidualBlock(6, name="block")
    config = block.get_config()
    assert config["num_filters"] == 6
    assert ResidualBlock.from_config(config).get_config() == config


def test_residual_block_is_identity_plus_a_learned_residual():
    block = ResidualBlock(4)
    block.build((None, None, None, 4))
    x = images((2, 9, 11, 4))
    assert not np.allclose(run(block, x), x)
    # zero the second convolution: only the shortcut is left
    block.conv2.set_weights([np.zeros_like(w) for w in block.conv2.get_weights()])
    np.testing.assert_array_equal(run(block, x), x)


def test_residual_block_keras_save_load_gives_identical_outputs(tmp_path):
    keras.utils.set_random_seed(3)
    inputs = keras.Input((None, None, 4))
    model = keras.Model(inputs, ResidualBlock(4, name="block")(inputs))
    x = images((2, 9, 11, 4), seed=1)
    model.save(tmp_path / "block.keras")
    loaded = keras.saving.load_model(tmp_path / "block.keras")
    assert isinstance(loaded.get_layer("block"), ResidualBlock)
    np.testing.assert_array_equal(run(loaded, x), run(model, x))


# ------------------------------------------------------------------------------ DenoiserUNet


def test_denoiser_config_round_trip(tiny_colour_model):
    config = tiny_colour_model.get_config()
    assert (config["channels"], tuple(config["filters"]), config["blocks_per_level"]) == (3, TINY_FILTERS, 1)
    rebuilt = DenoiserUNet.from_config(config)
    assert rebuilt.get_config() == config
    rebuilt.build((None, None, None, 3))
    rebuilt.set_weights(tiny_colour_model.get_weights())
    x = images((1, 32, 24, 3))
    np.testing.assert_array_equal(run(rebuilt, x), run(tiny_colour_model, x))


@pytest.mark.parametrize("blocks_per_level", [1, 2])
def test_denoiser_keras_save_load_gives_identical_outputs(tmp_path, blocks_per_level):
    keras.utils.set_random_seed(4)
    model = DenoiserUNet(channels=1, filters=(4, 8), blocks_per_level=blocks_per_level)
    model.build((None, None, None, 1))
    x = images((2, 24, 16, 1), seed=2)
    model.save(tmp_path / "denoiser.keras")
    loaded = keras.saving.load_model(tmp_path / "denoiser.keras", compile=False)
    assert isinstance(loaded, DenoiserUNet)
    assert loaded.get_config() == model.get_config()
    np.testing.assert_array_equal(run(loaded, x), run(model, x))


def test_denoiser_output_is_float32_on_the_input_scale(tiny_grey_model):
    y = tiny_grey_model(images((1, 16, 16, 1)))
    assert y.dtype == "float32"


@pytest.mark.parametrize("filters, blocks_per_level", [(TINY_FILTERS, 1), ((4, 8), 2)])
def test_receptive_radius_bounds_how_far_one_pixel_influences_the_output(filters, blocks_per_level):
    keras.utils.set_random_seed(5)
    model = DenoiserUNet(channels=1, filters=filters, blocks_per_level=blocks_per_level)
    model.build((None, None, None, 1))
    assert model.stride == 2 ** len(filters)
    size = 2 * model.receptive_radius + 4 * model.stride
    x = images((1, size, size, 1), seed=6)
    cy, cx = size // 2 + 3, size // 2 - 2  # deliberately not aligned to the stride
    poked = x.copy()
    poked[0, cy, cx, 0] += 0.5
    changed = np.abs(run(model, poked) - run(model, x))[0, :, :, 0] > 0
    ys, xs = np.nonzero(changed)
    reach = max(np.abs(ys - cy).max(), np.abs(xs - cx).max())
    assert changed[cy, cx]
    assert model.stride < reach <= model.receptive_radius


def test_denoiser_is_shift_equivariant_by_its_stride_away_from_edges(tiny_grey_model):
    # the premise of tiling: a stride-aligned crop gives the same output far enough inside it
    model, s, r = tiny_grey_model, tiny_grey_model.stride, tiny_grey_model.receptive_radius
    x = images((1, 2 * r + 6 * s, 2 * r + 6 * s, 1), seed=7)
    whole = run(model, x)
    shifted = run(model, x[:, s:, 2 * s :])
    inner = np.s_[0, r:-r, r:-r]  # at least r from the crop's edges, in its coordinates
    np.testing.assert_allclose(shifted[inner], whole[0, r + s : -r, r + 2 * s : -r], atol=1e-5)


# ----------------------------------------------------------------------------------- runtime


def test_with_precision_bfloat16_copy_is_close_to_float32_and_keeps_float32_output(tiny_colour_model):
    before = keras.config.dtype_policy().name
    copy = with_precision(tiny_colour_model, "mixed_bfloat16")
    assert keras.config.dtype_policy().name == before  # the caller's global policy is untouched
    assert copy is not tiny_colour_model and copy.dtype_policy.name == "mixed_bfloat16"
    x = images((2, 32, 40, 3), seed=8)
    y32, y16 = run(tiny_colour_model, x), copy(x, training=False)
    assert y16.dtype == "float32"
    y16 = np.asarray(y16)
    np.testing.assert_allclose(y16, y32, atol=0.05)
    assert not np.array_equal(y16, y32)  # the copy really computes in bfloat16
    assert tiny_colour_model.dtype_policy.name == "float32"


def test_with_precision_float32_returns_the_model_itself(tiny_grey_model):
    assert with_precision(tiny_grey_model, "float32") is tiny_grey_model


def test_with_precision_rejects_unknown_policies(tiny_grey_model):
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        with_precision(tiny_grey_model, "bfloat8")

