"""Tiled scoring: an image much larger than the training images is scored in windows of the
training images' size, so a small defect keeps the scale the model learned."""

import numpy as np
import pytest

from tests.test_anomaly import SIDE
from tests.test_anomaly import _blob as _any_blob


def _blob(rng, scratch=False):
    return _any_blob(rng, scratch, margin=3)  # scratches away from the cell edges, where windows meet


@pytest.fixture(scope="module")
def detector():
    from imageae.anomaly.api import AnomalyDetector

    rng = np.random.default_rng(0)
    return AnomalyDetector().fit([_blob(rng) for _ in range(160)], steps=120, steps_per_epoch=40, batch_size=32,
                                 code_size=4, filters=(8, 16), learning_rate=3e-3)


def _mosaic(rng, bad=None):
    """A 3 x 3 grid of normal 16 x 16 blobs (48 x 48), the ``bad`` (row, column) one scratched."""
    rows = [[_blob(rng, scratch=(r, c) == bad) for c in range(3)] for r in range(3)]
    return np.block(rows).astype(np.float32)


def test_tile_windows_cover_the_image_side_by_side():
    from imageae.anomaly.api import tile_windows

    assert tile_windows((16, 16), 16) == [(0, 0)]
    corners = tile_windows((40, 24), 16)
    assert sorted({t for t, _ in corners}) == [0, 16, 24] and sorted({c for _, c in corners}) == [0, 8]
    assert tile_windows((48, 48), 16) == [(t, c) for t in (0, 16, 32) for c in (0, 16, 32)]  # a grid of cells
    covered = np.zeros((40, 24), bool)
    for t, c in corners:
        covered[t : t + 16, c : c + 16] = True
    assert covered.all()


def test_a_large_image_is_scored_in_windows_and_its_map_points_at_the_defect(detector):
    assert detector.calibration["source_side"] == SIDE
    rng = np.random.default_rng(7)
    clean = [_mosaic(rng) for _ in range(6)]
    scratched = [_mosaic(rng, bad=(2, 1)) for _ in range(6)]
    scores, maps = detector.score(clean + scratched)
    assert min(scores[6:]) > max(scores[:6])  # the scratch is found at its own scale
    for heat in maps[6:]:
        assert heat.shape == (48, 48)
        row, col = np.unravel_index(np.argmax(heat), heat.shape)
        assert row // SIDE == 2 and 12 <= col < 36  # in (or at the edge of) the scratched cell
    # Resized whole, the 16-pixel scratch shrinks to a third and the mosaic no longer looks
    # like one blob: the windows are what make the scores comparable with the threshold.
    whole, _ = detector.score(clean, tile=False)
    tiled, _ = detector.score(clean)
    assert np.median(tiled) < np.median(whole)


def test_images_of_the_training_size_take_the_same_path_either_way(detector):
    images = [_blob(np.random.default_rng(k)) for k in range(4)] + [np.zeros((20, 20), np.float32)]
    a, maps_a = detector.score(images)
    b, maps_b = detector.score(images, tile=False)
    np.testing.assert_array_equal(a, b)
    for x, y in zip(maps_a, maps_b):
        np.testing.assert_array_equal(x, y)
    with pytest.raises(ValueError, match="tile must be"):
        detector.score(images, tile="yes")
