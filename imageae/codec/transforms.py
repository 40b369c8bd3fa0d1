"""The codec's transforms on images of any size, shared by encoding (:mod:`imageae.codec.session`)
and latent refinement (:mod:`imageae.codec.refine`): g_a and g_s on overlapping tiles, the
fixed-point h_s on windows of the hyper-latents, the symbols and tables of a file's latents,
and the decoded image. Both of those modules import this one and it imports neither, so they
no longer import each other.
"""

import collections

import numpy as np

from imageae.codec.coder import (
    estimate_factorized_bits,
    estimate_gaussian_bits,
    scale_indexes,
)
from imageae.pipelines.tiling import pad_to_multiple, plan_tiles

# Images whose padded side is above a session's tile (imageae.codec.session.TILE) run through g_a
# and g_s in overlapping tiles whose cores are at most this many pixels a side: g_a's and g_s's activations on a 1024-pixel
# tile (plus margins) take about 1 GB in TensorFlow's eager mode, on a 512-pixel one a quarter.
# (Images up to TILE a side are not tiled, so their files are unchanged by this.)
TILE_CORE = 512
# Overlap of those tiles, in pixels: at least the transforms' receptive-field radius (g_a: four
# 5x5 stride-2 convolutions, 2 * (1 + 2 + 4 + 8) = 30 pixels; g_s: about 2 latents = 32 pixels)
# and a multiple of the model's stride (64), so every tile is a valid model input.
TILE_MARGIN = 64
# The fixed-point h_s runs on windows of the hyper-latents: cores of HS_TILE z pixels (64 x 64
# latents of y, 1024 x 1024 image pixels, for the /16 and /64 codecs) with HS_MARGIN z pixels on
# each side (its receptive field reaches 2.5: two 5x5 stride-2 transposed convolutions and a 3x3
# one; a margin of 1 measurably changes the result, 2 and 3 do not). Integer arithmetic is
# exact, so the tiles give the whole-image integers bit for bit. Its float64 convolutions take
# about 0.5 GB of TensorFlow's memory per window of 22 x 22 (a 64-pixel core: 2 GB).
HS_TILE = 16
HS_MARGIN = 3
_INT32_LIMIT = 2.0**31 - 1.0


CodecLatents = collections.namedtuple("CodecLatents",
                                      ["z_symbols", "y_symbols", "scale_indexes", "means", "quality"])
CodecLatents.__doc__ = """The integers a file stores, and what the decoder derives from them.

quality : int, the quality (1-based) they were coded at (in the file's header).
z_symbols : int32 (H_pad/64, W_pad/64, num_filters), the hyper-latents round(z) (section 0).
y_symbols : int32 (H_pad/16, W_pad/16, num_latent), the residuals round(y - means) (section 1).
scale_indexes : uint8 (0..63), y_symbols' shape: the Gaussian table of each residual.
means : float32, y_symbols' shape: y_hat = y_symbols + means (None where only the coding needed them).
"""


def _model_pixels(session, image):
    """The uint8 (H, W, C) image with the model's channels: grey replicated for an RGB model."""
    return image if image.shape[-1] == session.channels else np.repeat(image, session.channels, axis=-1)


def _model_input(session, image):
    """Float32 (1, H_pad, W_pad, model channels) on 0..1, grey replicated for an RGB model."""
    x = pad_to_multiple(_model_pixels(session, image), session.stride).astype(np.float32) / np.float32(255.0)
    return x[None]


def _mirrored(n, stride):
    """Row (or column) indexes of ``n`` pixels mirror-padded to a multiple of ``stride``:
    NumPy's "symmetric" padding (:func:`~imageae.pipelines.tiling.pad_to_multiple`), also when
    the padding is longer than the image."""
    i = np.arange(n + (-n) % stride) % (2 * n)
    return np.where(i < n, i, 2 * n - 1 - i)


class _PaddedPixels:
    """:func:`_model_input` of ``image`` as a lazily sliced (1, H_pad, W_pad, C) float32 array:
    ``x[:, rows, cols]`` builds only that window (the same values, pixel for pixel), so a large
    image never exists as floats all at once."""

    def __init__(self, session, image):
        self.image, self.channels = image, session.channels
        self.rows, self.cols = _mirrored(image.shape[0], session.stride), _mirrored(image.shape[1], session.stride)
        self.shape = (1, self.rows.size, self.cols.size, self.channels)

    def __getitem__(self, key):
        _, rows, cols = key
        window = self.image[self.rows[rows][:, None], self.cols[cols][None, :]]
        if window.shape[-1] != self.channels:
            window = np.repeat(window, self.channels, axis=-1)
        return (window.astype(np.float32) / np.float32(255.0))[None]


class _LatentWindows:
    """``dequantize_latents(y_symbols, means)`` as a lazily sliced (1, h, w, C) array."""

    def __init__(self, model, symbols, means):
        self.model, self.symbols, self.means = model, symbols, means
        self.shape = (1, *symbols.shape)

    def __getitem__(self, key):
        _, rows, cols = key
        return self.model.dequantize_latents(self.symbols[None, rows, cols], self.means[None, rows, cols])


def _encoder_latents(session, image, quality):
    """The analysis transforms' continuous (y, z) of ``image``: float32 (1, h, w, C) each."""
    model = session.model
    if max(image.shape[:2]) <= session.tile:  # one graph call, the export's
        pixels = _model_pixels(session, image)[None]
        y, z = (np.asarray(t, np.float32) for t in session.analysis(pixels, np.int32(quality)))
    else:
        y = _tiled(lambda x: model.analyze(x, quality), _PaddedPixels(session, image), _tile_core(session),
                   TILE_MARGIN, 1.0 / session.y_factor, whole=session.tile)
        z = np.asarray(model.hyper(y, quality), np.float32)
    return y, z


def _latents_from(session, y, z, quality, *, lean=False):
    """The integers a file stores for continuous latents (y, z) (1, h, w, C): z rounded, then y's
    residuals rounded against the means the decoder will derive from those integers.
    ``lean``: y is float32 and the caller's to lose: its memory receives the int32 symbols, and
    the means are not kept (``means`` is None)."""
    model = session.model
    y, z = np.asarray(y, np.float32), np.asarray(z, np.float32)
    if not (np.all(np.isfinite(y)) and np.all(np.isfinite(z))):
        raise ValueError(f"model {session.name!r} produced non-finite latents for this image")
    if np.abs(z).max() >= _INT32_LIMIT:
        raise ValueError(f"model {session.name!r} produced hyper-latents beyond int32")
    z_symbols = np.asarray(model.quantize_latents(z), np.int32)
    # From the integers, as the decoder will: the scale indexes must match bit for bit. The
    # residuals are rounded window by window as the means come (see _indexes_means).
    f = session.z_factor // session.y_factor
    shape = (z_symbols.shape[1] * f, z_symbols.shape[2] * f, session.y_channels)
    if y.shape != (1, *shape):
        raise ValueError(f"y has shape {y.shape}, z gives {(1, *shape)}")
    reuse = lean and y.flags.c_contiguous and y.flags.writeable
    y_symbols = y.reshape(shape).view(np.int32) if reuse else np.empty(shape, np.int32)

    def quantize(target, means):
        band = y[0][target]
        if not np.all(np.abs(band - means) < _INT32_LIMIT):
            raise ValueError(f"model {session.name!r} produced latents beyond int32")
        y_symbols[target] = np.asarray(model.quantize_latents(band[None], means[None]), np.int32)[0]

    indexes, means = _indexes_means(session, z_symbols, quality, ValueError, each=quantize, keep_means=not lean)
    return CodecLatents(z_symbols[0], y_symbols, indexes, means, quality)


def _tile_core(session):
    """Core size of the tiles of an image too large for one call: ``session.tile``, at most
    :data:`TILE_CORE` (a multiple of the stride either way)."""
    return min(session.tile, max(TILE_CORE // session.stride, 1) * session.stride)


def _tiled(fn, x, tile, margin, scale, store=None, whole=None):
    """``fn`` (a transform that scales height and width by ``scale``) on (1, H, W, C) ``x``
    (an array, or anything with ``shape`` that slices like one, such as :class:`_PaddedPixels`):
    float32 NumPy. Without tiling when both sides fit in ``whole`` (default ``tile``); else in the windows of
    :func:`imageae.pipelines.tiling.plan_tiles` (cores of ``tile``, ``margin`` on each side),
    each contributing its core. With ``store``, nothing is assembled: ``store(rows, cols, core)``
    receives each core (float32 (1, h, w, C)) and where it goes (slices of the output), and
    None is returned."""
    height, width = x.shape[1:3]
    whole = tile if whole is None else whole
    if height <= whole and width <= whole:
        boxes = [((0, height, 0, width), (0, height, 0, width))]
    else:
        boxes = plan_tiles(height, width, window=tile + 2 * margin, margin=margin)
    out = None
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in boxes:
        part = np.asarray(fn(x[:, y0:y1, x0:x1]), np.float32)
        rows, cols = (slice(round(a * scale), round(b * scale)) for a, b in ((cy0, cy1), (cx0, cx1)))
        inner = (slice(round((cy0 - y0) * scale), round((cy1 - y0) * scale)),
                 slice(round((cx0 - x0) * scale), round((cx1 - x0) * scale)))
        if store is not None:
            store(rows, cols, part[:, inner[0], inner[1]])
            continue
        if len(boxes) == 1:
            return part
        if out is None:
            out = np.empty((1, round(height * scale), round(width * scale), part.shape[-1]), np.float32)
        out[:, rows, cols] = part[:, inner[0], inner[1]]
    return out


def _scales_means(session, z_symbols, quality):
    """(float64 scales, float32 means) of y from int32 z symbols (1, h, w, C), batch axis
    dropped: the model's h_s in exact fixed point, so identical on every machine."""
    scales, means = session.hyper_synthesis(z_symbols, quality)
    return np.asarray(scales, np.float64)[0], np.asarray(means, np.float32)[0]


def _indexes_means(session, z_symbols, quality, error=ValueError, *, each=None, keep_means=True):
    """(uint8 scale indexes, float32 means) of y from int32 z symbols (1, h, w, C), batch axis
    dropped: :func:`_scales_means` run on windows of z (:data:`HS_TILE`, :data:`HS_MARGIN`),
    each window's scales turned into table indexes at once, so a large image never holds its
    float64 scales (or h_s's activations) whole. Exact integer arithmetic: the same integers as
    one whole-image call. ``error``: the exception class raised for a NaN scale.
    ``each(target, means)``: called with each window's part of y (a pair of slices) and its
    means; ``keep_means=False``: the means are not assembled (None is returned for them)."""
    _, height, width, _ = z_symbols.shape
    f = session.z_factor // session.y_factor
    indexes = np.empty((height * f, width * f, session.y_channels), np.uint8)
    means = np.empty(indexes.shape, np.float32) if keep_means else None
    for (y0, y1, x0, x1), (cy0, cy1, cx0, cx1) in plan_tiles(height, width, window=HS_TILE + 2 * HS_MARGIN,
                                                             margin=HS_MARGIN):
        scales, window_means = _scales_means(session, z_symbols[:, y0:y1, x0:x1], quality)
        inner = (slice((cy0 - y0) * f, (cy1 - y0) * f), slice((cx0 - x0) * f, (cx1 - x0) * f))
        scales = scales[inner]
        if np.isnan(scales).any():
            raise error(f"model {session.name!r} gives no valid scale for these hyper-latents (NaN)")
        target = (slice(cy0 * f, cy1 * f), slice(cx0 * f, cx1 * f))
        indexes[target] = scale_indexes(scales)
        if keep_means:
            means[target] = window_means[inner]
        if each is not None:
            each(target, window_means[inner])
    return indexes, means


def latent_table_bits(session, latents):
    """Information content of :class:`CodecLatents` under the coder's integer tables: the bits
    the two entropy-coded sections spend, to within their final flush (no container)."""
    return (estimate_factorized_bits(latents.z_symbols, session.z_tables, session.z_offsets)
            + estimate_gaussian_bits(latents.y_symbols, latents.scale_indexes))


def synthesize_image(session, latents, height, width, colour_mode):
    """uint8 (height, width, 1 or 3) image from decoded latents: crop(g_s(y_symbols + means)).

    Tile by tile (:func:`_tiled`): each tile's pixels go straight into the uint8 output, so
    memory holds the latents, the output and one tile's activations, whatever the image size."""
    model = session.model
    out = np.empty((int(height), int(width), 1 if colour_mode == "grey" else 3), np.uint8)

    def store(rows, cols, part):
        rows, cols = slice(rows.start, min(rows.stop, height)), slice(cols.start, min(cols.stop, width))
        if rows.start < rows.stop and cols.start < cols.stop:
            out[rows, cols] = to_uint8(part[0, : rows.stop - rows.start, : cols.stop - cols.start], colour_mode)

    _tiled(lambda y: model.synthesize(y, latents.quality), _LatentWindows(model, latents.y_symbols, latents.means),
           _tile_core(session) // session.y_factor, TILE_MARGIN // session.y_factor, float(session.y_factor),
           store=store, whole=session.tile // session.y_factor)
    return out


def to_uint8(x_hat, colour_mode):
    """A synthesized float image (h, w, C) on 0..1 as the uint8 image of ``colour_mode``."""
    # A damaged (but checksum-valid) file can drive g_s to NaN: such pixels become 0, not a cast warning.
    x_hat = np.nan_to_num(x_hat, nan=0.0, posinf=1.0, neginf=0.0)
    if colour_mode == "grey" and x_hat.shape[-1] != 1:
        x_hat = x_hat.mean(axis=-1, keepdims=True)
    return np.round(np.clip(x_hat, 0.0, 1.0) * np.float32(255.0)).astype(np.uint8)
