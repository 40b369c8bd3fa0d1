"""Overlapping tiles that make tiled inference equal to whole-image inference.

A fully convolutional model whose output pixel sees at most ``radius`` input pixels gives,
on a window of the image, the same values as on the whole image everywhere at least
``radius`` pixels from the window's edges, provided the window is aligned to the model's
stride. So an image is cut into windows of a fixed size that overlap by twice a margin; each
window contributes only its core, and windows at the image's edges are pushed inwards
rather than padded, so their outer edges see exactly what whole-image inference sees.
"""

import numpy as np


def round_up(value, multiple):
    return -(-int(value) // multiple) * multiple


def pad_to_multiple(x, stride):
    """Pad an (H, W, C) array at the bottom and right to multiples of ``stride``.

    Mirror padding (``symmetric``) continues the image's texture and noise, so the model sees
    no artificial edge; it works for images smaller than the padding too.
    """
    h, w = x.shape[:2]
    ph, pw = round_up(h, stride) - h, round_up(w, stride) - w
    if ph == 0 and pw == 0:
        return x
    return np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="symmetric")


def spans(length, window, margin):
    """Windows along one axis of a padded image of ``length`` pixels.

    Returns a list of ``(window_start, window_stop, core_start, core_stop)``: the cores
    partition ``[0, length)``; each core lies at least ``margin`` pixels inside its window
    except where the window meets the image's edge.
    """
    if length <= window:
        return [(0, length, 0, length)]
    core = window - 2 * margin
    if core <= 0:
        raise ValueError(f"tile size {window} must exceed twice the margin ({margin})")
    result = []
    start = 0
    while start < length:
        stop = min(start + core, length)
        window_start = min(max(start - margin, 0), length - window)
        result.append((window_start, window_start + window, start, stop))
        start = stop
    return result


def plan_tiles(height, width, *, window, margin):
    """All windows of a padded ``height`` x ``width`` image.

    Returns a list of ``((y0, y1, x0, x1), (cy0, cy1, cx0, cx1))`` window and core boxes.
    """
    return [
        ((wy0, wy1, wx0, wx1), (cy0, cy1, cx0, cx1))
        for wy0, wy1, cy0, cy1 in spans(height, window, margin)
        for wx0, wx1, cx0, cx1 in spans(width, window, margin)
    ]
