"""Tiled, batched inference equals whole-image inference, for any image size."""

import numpy as np
import pytest

from imageae.pipelines.engine import TiledRunner
from imageae.pipelines.tiling import pad_to_multiple, plan_tiles, spans


def images(shape, seed=0):
    return np.random.default_rng(seed).random(shape, dtype=np.float32)


def run_one(runner, x):
    [(key, y)] = list(runner.run([("only", x)]))
    assert key == "only"
    return y


def small_tile(model, cores=2):
    """The smallest windows whose cores are ``cores`` strides: many windows on a small image."""
    margin = -(-model.receptive_radius // model.stride) * model.stride
    return 2 * margin + cores * model.stride


# ------------------------------------------------------------------------------ tile planning


def check_spans(length, window, margin):
    result = spans(length, window, margin)
    covered = np.zeros(length, int)
    for window_start, window_stop, core_start, core_stop in result:
        assert 0 <= window_start <= core_start < core_stop <= window_stop <= length
        assert window_stop - window_start == min(window, length)
        # the core sees `margin` pixels of context on each side, unless that side is the image's edge
        assert core_start - window_start >= margin or window_start == 0
        assert window_stop - core_stop >= margin or window_stop == length
        covered[core_start:core_stop] += 1
    assert (covered == 1).all(), f"cores do not partition [0, {length}) for window {window}, margin {margin}"


def test_span_cores_partition_the_axis_and_keep_their_margin():
    for margin in (0, 1, 3, 8):
        for window in range(2 * margin + 1, 2 * margin + 12):
            for length in range(1, 4 * window + 3):
                check_spans(length, window, margin)


def test_spans_with_stride_aligned_sizes_keep_windows_aligned():
    # what TiledRunner relies on: windows start on multiples of the model's stride
    stride, margin = 8, 48
    for length in range(stride, 400, stride):
        for start, _, _, _ in spans(length, 2 * margin + 2 * stride, margin):
            assert start % stride == 0


def test_spans_refuse_a_window_without_a_core():
    with pytest.raises(ValueError, match="must exceed twice the margin"):
        spans(100, 16, 8)


def test_plan_tiles_cores_cover_every_pixel_exactly_once():
    height, width, window, margin = 61, 47, 20, 6
    covered = np.zeros((height, width), int)
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in plan_tiles(height, width, window=window, margin=margin):
        assert (y1 - y0, x1 - x0) == (window, window)
        assert y0 <= cy0 and cy1 <= y1 and x0 <= cx0 and cx1 <= x1
        covered[cy0:cy1, cx0:cx1] += 1
    assert (covered == 1).all()


def test_pad_to_multiple_mirrors_the_image_and_keeps_it_top_left():
    x = images((5, 9, 2))
    padded = pad_to_multiple(x, 8)
    assert padded.shape == (8, 16, 2)
    np.testing.assert_array_equal(padded[:5, :9], x)
    np.testing.assert_array_equal(padded[5:8, :9], x[::-1][:3])  # symmetric: the edge row repeats
    assert pad_to_multiple(padded, 8) is padded


def test_pad_to_multiple_handles_images_smaller_than_the_padding():
    x = images((1, 1, 1))
    padded = pad_to_multiple(x, 8)
    assert padded.shape == (8, 8, 1) and (padded == x[0, 0, 0]).all()


# ------------------------------------------------------------------------------ TiledRunner


@pytest.mark.parametrize("channels", [1, 3])
def test_tiled_inference_equals_whole_image_inference(tiny_grey_model, tiny_colour_model, channels):
    model = tiny_grey_model if channels == 1 else tiny_colour_model
    x = images((200, 150, channels), seed=1)
    tiled_runner = TiledRunner(model, tile=small_tile(model), batch_size=8)
    plan = plan_tiles(200, 152, window=tiled_runner.tile, margin=tiled_runner.margin)
    assert len(plan) > 50  # really tiled, including windows pushed inwards at the edges
    whole = run_one(TiledRunner(model, tile=1024), x)
    tiled = run_one(tiled_runner, x)
    assert tiled.shape == x.shape
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_whole_image_inference_equals_the_model_on_the_padded_image(tiny_grey_model):
    x = images((37, 53, 1), seed=2)
    y = run_one(TiledRunner(tiny_grey_model), x)
    expected = np.asarray(tiny_grey_model(pad_to_multiple(x, 8)[None]))[0, :37, :53]
    np.testing.assert_allclose(y, expected, atol=1e-6)


@pytest.mark.parametrize("height, width", [(37, 53), (1, 1), (200, 9), (9, 130)])
def test_odd_sizes_come_back_at_their_size_and_tiling_does_not_change_them(tiny_grey_model, height, width):
    x = images((height, width, 1), seed=height * 1000 + width)
    whole = run_one(TiledRunner(tiny_grey_model, tile=1024), x)
    tiled = run_one(TiledRunner(tiny_grey_model, tile=small_tile(tiny_grey_model)), x)
    assert whole.shape == tiled.shape == (height, width, 1)
    assert np.isfinite(whole).all()
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_batching_several_images_equals_one_at_a_time(tiny_colour_model):
    sizes = [(120, 90), (37, 53), (120, 90), (16, 16), (64, 130)]
    items = [(f"image{i}", images((h, w, 3), seed=i)) for i, (h, w) in enumerate(sizes)]
    tile = small_tile(tiny_colour_model, cores=4)
    alone = {key: run_one(TiledRunner(tiny_colour_model, tile=tile, batch_size=1), x) for key, x in items}
    for batch_size, max_pending in ((3, None), (4, 1), (16, 100)):
        runner = TiledRunner(tiny_colour_model, tile=tile, batch_size=batch_size)
        results = list(runner.run(iter(items), max_pending=max_pending))
        assert sorted(key for key, _ in results) == sorted(alone)  # each image exactly once
        for key, y in results:
            np.testing.assert_allclose(y, alone[key], atol=1e-5, err_msg=f"{key}, batch size {batch_size}")


def test_grey_model_runs_a_colour_image_channel_by_channel(tiny_grey_model):
    x = images((24, 40, 3), seed=3)
    runner = TiledRunner(tiny_grey_model)
    y = run_one(runner, x)
    for c in range(3):
        np.testing.assert_allclose(y[..., c], run_one(runner, x[..., c : c + 1])[..., 0], atol=1e-6)


def test_colour_model_runs_a_grey_image_as_three_equal_channels(tiny_colour_model):
    x = images((24, 40, 1), seed=4)
    y = run_one(TiledRunner(tiny_colour_model), x)
    expected = np.asarray(tiny_colour_model(np.repeat(x, 3, axis=-1)[None]))[0].mean(axis=-1, keepdims=True)
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_runner_refuses_a_layout_it_cannot_map(tiny_colour_model):
    with pytest.raises(ValueError, match="3-channel model cannot process a 2-channel image"):
        run_one(TiledRunner(tiny_colour_model), images((8, 8, 2)))
