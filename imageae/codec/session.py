"""A learned codec model joined to the ``.iae`` bitstream: uint8 image <-> bytes.

One codec contract (``STYLE.md``): :func:`compress_array` turns a uint8 image into the bytes
of an ``.iae`` file (``docs/iae-format.md``) and :func:`decompress_bytes` turns them back
into a uint8 image of the original size and colour mode. Both go through a
:class:`CodecSession`, which holds what is prepared once per loaded model: a float32 copy of
the model (so the scales that choose the coding tables never depend on the caller's dtype
policy) and the integer coding tables of the hyper-latents.

Encoding (Balle et al. 2018, Minnen et al. 2018; the model is
:class:`imageae.models.codec.HyperpriorCodec` or anything with its methods)::

    x      = pad(image / 255)                   bottom/right mirror padding to model.stride
    y      = g_a(x, q),  z = h_a(y, q)          q: the quality (its gains; 1 for a single-rate model)
    z_sym  = round(z),  z_hat = z_sym            section 0: encode_factorized(z_sym, tables)
    scales, means = h_s(z_hat, q)                computed from z_hat exactly as the decoder does
    k      = scale_indexes(scales)
    y_sym  = round(y - means)                    section 1: encode_gaussian(y_sym, k)

and decoding reads q from the header and ``z_sym``, recomputes ``scales, means`` and ``k``
from them, reads ``y_sym`` and returns ``crop(g_s(y_sym + means, q))`` as uint8. Grey images go through a 3-channel model by
replicating the grey channel and come back as the mean of the three decoded channels.

Nothing here touches the filesystem or imports TensorFlow at import time; the model's own
methods do the tensor work.

What decoding relies on: the scale indexes ``k`` must come out bit-identical on the decoding
machine. They are computed from integers (``z_sym``) by ``h_s`` evaluated in exact fixed-point
arithmetic (:mod:`imageae.codec.fixed_point`), so no platform, BLAS, thread count or serving
graph can round them differently. The hyper-latent tables are integers stored with the model's
weights (:func:`freeze_coding_tables`, run by the training command); a model without them
(saved before they were stored) gets them quantized from its float64 density at load time.
"""

import collections

import numpy as np

from imageae.codec.coder import (
    decode_factorized,
    decode_gaussian,
    encode_factorized,
    encode_gaussian,
    estimate_factorized_bits,
    estimate_gaussian_bits,
    quantize_pmf_tables,
    scale_indexes,
)
from imageae.codec.container import (
    DEFAULT_MAX_PIXELS,
    IaeFormatError,
    IaeHeader,
    check_pixels,
    pack,
    pack_section,
    unpack,
    unpack_section,
)
from imageae.codec.fixed_point import FixedPointHyperSynthesis
from imageae.codec.refine import check_refine_steps, refine_latents
from imageae.pipelines.tiling import pad_to_multiple, plan_tiles

BIT_DEPTH = 8  # the only depth the codec stores; 16-bit input is refused, not silently reduced
# Integers per hyper-latent table (values outside are escape-coded), for a model that does not
# say (a HyperpriorCodec's stored tables fix it: imageae.models.codec.Z_TABLE_SUPPORT).
Z_MAX_SUPPORT = 256
TILE = 1024  # padded images with a side above this run through g_a and g_s in overlapping tiles
# ... whose cores are at most this many pixels a side: g_a's and g_s's activations on a 1024-pixel
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


class UnknownModelError(LookupError):
    """An ``.iae`` file names a model that is not installed (or not offered to the decoder)."""

    def __str__(self):  # LookupError's KeyError-style quoting is not wanted here
        return str(self.args[0]) if self.args else ""


CodecLatents = collections.namedtuple("CodecLatents",
                                      ["z_symbols", "y_symbols", "scale_indexes", "means", "quality"])
CodecLatents.__doc__ = """The integers a file stores, and what the decoder derives from them.

quality : int, the quality (1-based) they were coded at (in the file's header).
z_symbols : int32 (H_pad/64, W_pad/64, num_filters), the hyper-latents round(z) (section 0).
y_symbols : int32 (H_pad/16, W_pad/16, num_latent), the residuals round(y - means) (section 1).
scale_indexes : uint8 (0..63), y_symbols' shape: the Gaussian table of each residual.
means : float32, y_symbols' shape: y_hat = y_symbols + means (None where only the coding needed them).
"""

RateEstimate = collections.namedtuple("RateEstimate", ["model_bits", "table_bits", "overhead_bits"])
RateEstimate.__doc__ = """Predicted size of an image's ``.iae`` file, in bits.

model_bits : float
    The model's own estimate, ``estimate_bpp`` x pixels: float likelihoods of each symbol at
    its exact predicted scale (what training minimises).
table_bits : float
    Information content of the same symbols under the integer tables the coder actually uses
    (each scale rounded up to one of the 64 table scales, 16-bit frequencies, escapes).
    The range coder spends this plus at most a few 32-bit words per section.
overhead_bits : int
    Header, section lengths, section shape prefixes and checksum: exact.
"""


# ------------------------------------------------------------------------------- session


class CodecSession:
    """What encoding and decoding need from one model, prepared once per loaded model.

    Parameters
    ----------
    model : HyperpriorCodec
        A built codec model (any dtype policy; a float32 copy is made and used).
    name : str
        The name the model is registered under: it is written into every file, and a decoder
        finds the model by it. 1 to 64 bytes of printable UTF-8.

    A file records the quality (1 .. ``model.num_qualities``) it was coded at; a single-rate
    model has one, quality 1.

    Attributes
    ----------
    model : the float32 copy.
    z_tables : list of int32 arrays, one integer frequency table per channel of z (16 bits,
        escape last), from ``model.z_pmf_tables``; ``z_offsets`` (int32) the value of each
        table's first entry.
    stride : int, image sides are padded to multiples of it.
    tile : int, padded images with a side above this (pixels, a multiple of the stride) run
        through the transforms in overlapping tiles of at most :data:`TILE_CORE` pixels, so
        memory stays bounded (default :data:`TILE`); the tiles overlap by more than the
        receptive field, so the result is the whole-image one up to float rounding.
    y_factor, z_factor : int, downsampling of y and z relative to the padded image.

    Examples
    --------
    >>> from imageae.models.codec import build_codec
    >>> session = CodecSession(build_codec(num_filters=8, num_latent=12, lambdas=(0.003, 0.03)), "demo")
    >>> image = np.zeros((20, 30, 3), np.uint8)
    >>> decompress_bytes(make_session_lookup(session), compress_array(session, image, quality=2)).shape
    (20, 30, 3)
    """

    def __init__(self, model, name, *, tile=TILE):
        from imageae.runtime import with_precision

        try:  # the container's own check of what a header may hold
            pack(IaeHeader(name, 1, 1, 1, "rgb", BIT_DEPTH), [b""])
        except ValueError as error:
            raise ValueError(f"cannot make a codec session: {error}") from None
        self.name = name
        self.model = with_precision(model, "float32", copy=True)
        self.num_qualities = int(self.model.num_qualities)
        self.channels = int(self.model.channels)
        self.stride = int(self.model.stride)
        if int(tile) < self.stride or int(tile) % self.stride:
            raise ValueError(f"tile must be a positive multiple of the model's stride {self.stride}, got {tile}")
        self.tile = int(tile)
        self.z_tables, self.z_offsets = z_coding_tables(self.model)
        self.hyper_synthesis = FixedPointHyperSynthesis(self.model)
        self.analysis = analysis_graph(self.model)
        for table in (*self.z_tables, self.z_offsets):
            table.flags.writeable = False
        # Latent sizes measured once on a stride x stride image, rather than assumed.
        probe = np.zeros((1, self.stride, self.stride, self.channels), np.float32)
        y = self.model.analyze(probe, 1)
        z = self.model.hyper(y, 1)
        self.y_factor = self.stride // int(y.shape[1])
        self.z_factor = self.stride // int(z.shape[1])
        self.y_channels = int(y.shape[-1])
        self.z_channels = int(z.shape[-1])
        if len(self.z_tables) != self.z_channels:
            raise ValueError(f"model has {self.z_channels} hyper-latent channels but {len(self.z_tables)} tables")

    def __repr__(self):
        return (f"CodecSession(name={self.name!r}, qualities=1..{self.num_qualities}, channels={self.channels}, "
                f"stride={self.stride})")

    def check_quality(self, quality):
        """``quality`` as an int; ValueError unless it is 1..num_qualities (None: a single-rate
        model's only quality)."""
        if quality is None:
            if self.num_qualities == 1:
                return 1
            raise ValueError(f"model {self.name!r} codes at qualities 1..{self.num_qualities}: give a quality")
        return self.model.check_quality(quality)

    def latent_shapes(self, height, width):
        """Shapes of (z_symbols, y_symbols) for an image of ``height`` x ``width`` pixels."""
        padded_h = -(-int(height) // self.stride) * self.stride
        padded_w = -(-int(width) // self.stride) * self.stride
        return (
            (padded_h // self.z_factor, padded_w // self.z_factor, self.z_channels),
            (padded_h // self.y_factor, padded_w // self.y_factor, self.y_channels),
        )


def z_coding_tables(model):
    """The integer coding tables of a codec's hyper-latents: (list of int32 frequency tables,
    16 bits, escape last, one per channel of z; int32 offsets, the value of each table's first
    entry). Those stored with the model's weights when it has them (:func:`freeze_coding_tables`),
    else quantized from its float64 density (``model.z_pmf_tables``)."""
    if getattr(model, "coding_tables_frozen", False):
        tables = np.asarray(model.z_cdf_tables, np.int32)
        lengths = np.asarray(model.z_table_lengths)
        return [tables[c, :n].copy() for c, n in enumerate(lengths)], np.asarray(model.z_table_offsets, np.int32)
    pmf, offsets, lengths = model.z_pmf_tables(_z_support(model))
    return quantize_pmf_tables(pmf, lengths), np.asarray(offsets, np.int32)


def _z_support(model):
    tables = getattr(model, "z_cdf_tables", None)
    return Z_MAX_SUPPORT if tables is None else int(tables.shape[-1]) - 1


def freeze_coding_tables(model):
    """Quantize the hyper-latent tables from ``model``'s current density and store them in its
    weights (they are saved with it), so that every machine that loads the model codes with
    these integers instead of re-deriving them from floats. Call it once training is done (the
    training command does); training afterwards leaves the stored tables stale. Returns ``model``."""
    pmf, offsets, lengths = model.z_pmf_tables(_z_support(model))
    padded, lengths = padded_tables(quantize_pmf_tables(pmf, lengths), int(model.z_cdf_tables.shape[-1]))
    model.z_cdf_tables.assign(padded)
    model.z_table_lengths.assign(lengths)
    model.z_table_offsets.assign(np.asarray(offsets, np.int32))
    return model


def padded_tables(tables, width=None):
    """Variable-length int32 tables as one zero-padded (C, width) array (width: the longest
    table by default) and their int32 lengths: how the model and the export store them."""
    lengths = np.asarray([len(t) for t in tables], np.int32)
    padded = np.zeros((len(tables), int(lengths.max()) if width is None else width), np.int32)
    for row, table in zip(padded, tables):
        row[: len(table)] = table
    return padded, lengths


def make_session_lookup(*sessions):
    """A callable ``model name -> CodecSession`` over ``sessions``, for :func:`decompress_bytes`.

    An unknown name raises :class:`UnknownModelError` naming the model and the installed ones.
    """
    by_name = {}
    for session in sessions:
        if not isinstance(session, CodecSession):
            raise TypeError(f"expected CodecSession objects, got {type(session).__name__}")
        if session.name in by_name:
            raise ValueError(f"two sessions are named {session.name!r}")
        by_name[session.name] = session

    def lookup(name):
        try:
            return by_name[name]
        except KeyError:
            installed = ", ".join(sorted(by_name)) or "none"
            raise UnknownModelError(
                f"file was written by model {name!r}, which is not installed (installed codec models: {installed})"
            ) from None

    return lookup


# ------------------------------------------------------------------------------- encoding


def _check_image(session, image):
    """(H, W, C) uint8 view of ``image`` and its colour mode; ValueError saying what is wrong."""
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array (H, W) or (H, W, C), got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    elif image.ndim != 3:
        raise ValueError(f"image must have shape (H, W) or (H, W, C), got {image.ndim} dimensions {image.shape}")
    channels = image.shape[-1]
    if channels in (2, 4):
        raise ValueError(
            f"image has {channels} channels (colour plus alpha): alpha is not stored by the codec; "
            "drop it (image[..., :-1]) or use PNG"
        )
    if channels not in (1, 3):
        raise ValueError(f"image must have 1 (grey) or 3 (RGB) channels, got shape {image.shape}")
    if image.dtype != np.uint8:
        advice = (
            "16-bit images are not stored by the codec; reduce to 8 bits first (image >> 8)"
            if image.dtype == np.uint16
            else "convert to uint8 first, e.g. np.round(x * 255).astype(np.uint8) for floats in 0..1"
        )
        raise ValueError(f"image must be uint8, got dtype {image.dtype}: {advice}")
    height, width = image.shape[:2]
    if height < 1 or width < 1:
        raise ValueError(f"image is empty: shape {image.shape}")
    if channels == 3 and session.channels == 1:
        raise ValueError(f"model {session.name!r} codes grey images only, got an RGB image {image.shape}")
    if session.channels not in (1, 3):
        raise ValueError(f"model {session.name!r} has {session.channels} channels; the codec needs 1 or 3")
    return image, ("grey" if channels == 1 else "rgb")


def analyze_image(session, image, quality=None):
    """The latents :func:`compress_array` stores for ``image`` (see :class:`CodecLatents`).

    ``image`` and ``quality`` are validated as by :func:`compress_array`.
    """
    image, _ = _check_image(session, image)
    return _analyze(session, image, session.check_quality(quality))


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


def analysis_graph(model):
    """The analysis transforms as one ``tf.function``: uint8 images (1, H, W, C) and an int32
    quality -> float32 (y, z), the image mirror-padded to the model's stride inside the graph.

    The session (for images that fit one tile) and the SavedModel export (``imageae.export``)
    both run this function, so the graph TensorFlow optimizes, and thus y's last bits, are the
    same: an eager computation can round differently from a graph, and a y at a rounding tie
    would then become another symbol.
    """
    import tensorflow as tf

    stride, channels = int(model.stride), int(model.channels)

    def mirrored(n):
        # Indexes of n rows mirror-padded to a multiple of the stride: NumPy's "symmetric"
        # (pad_to_multiple), also when the padding is longer than the image (tf.pad cannot).
        i = tf.range(n + (-n) % stride) % (2 * n)
        return tf.where(i < n, i, 2 * n - 1 - i)

    @tf.function(input_signature=[tf.TensorSpec([1, None, None, channels], tf.uint8),
                                  tf.TensorSpec([], tf.int32)], autograph=False)
    def analysis(images, quality):
        x = tf.cast(images, tf.float32) / 255.0
        x = tf.gather(tf.gather(x, mirrored(tf.shape(x)[1]), axis=1), mirrored(tf.shape(x)[2]), axis=2)
        q = tf.reshape(quality, [1])
        y = model.analyze(x, q)
        return y, model.hyper(y, q)

    return analysis


def _analyze(session, image, quality, *, lean=False):
    """:class:`CodecLatents` of ``image``; ``lean``: for coding only, in the least memory (y's
    memory becomes the symbols, and the means are not kept: ``means`` is None)."""
    return _latents_from(session, *_encoder_latents(session, image, quality), quality, lean=lean)


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


def _header(session, image, colour_mode, quality, icc_profile=None):
    return IaeHeader(session.name, quality, int(image.shape[0]), int(image.shape[1]), colour_mode, BIT_DEPTH,
                     icc_profile=icc_profile)


def compress_array(session, image, quality=None, *, refine_steps=0, icc_profile=None,
                   max_pixels=DEFAULT_MAX_PIXELS, progress=None):
    """Compress a uint8 image into the bytes of an ``.iae`` file.

    Parameters
    ----------
    session : CodecSession
    image : numpy.ndarray of uint8, shape (H, W), (H, W, 1) or (H, W, 3)
        Grey or RGB, any size from 1 x 1 up to 65536 x 65536.
    quality : int
        1 .. ``session.num_qualities`` (higher: more bits, better pictures); may be left out
        for a single-rate model.
    refine_steps : int
        0 (default): the analysis transform's latents, in one pass. N > 0: N steps of
        encoder-side rate-distortion descent on the latents first
        (:func:`imageae.codec.refine.refine_latents`): slower encoding (about 1.2 s per Mpixel
        per step on 2 CPU cores, 0.18 s a step for a 481x321 photo), smaller or better files (codec-v4, 100 steps: 24 %
        fewer bits at equal PSNR), the same decoder.
    icc_profile : bytes, optional
        The image's ICC colour profile, stored in the file as it is (format version 2) and
        given back by the decoder; None (default): none, and the file is format version 1.
    max_pixels : int or None
        Images of more pixels are refused (:class:`~imageae.codec.ImageTooLargeError`) before
        any work; default :data:`~imageae.codec.container.DEFAULT_MAX_PIXELS` (Pillow's limit,
        about 89.5 Mpixel); None: no limit but the format's 65536 x 65536. Encoding runs in
        tiles (g_a, h_s) in memory that grows with the image (its latents, y and the symbols
        share one buffer), about 23 bytes per pixel: codec-v4 peaks at 2.2 GB for the whole
        process on 8192 x 8192 pixels, 2.7 GB at the default limit.
    progress : callable, optional
        With ``refine_steps``: called as ``progress(done, refine_steps)`` after each step.

    Returns
    -------
    bytes
        A complete ``.iae`` file (format version, model name, quality, size, colour mode,
        8 bits, the two latent sections, CRC-32).

    Raises
    ------
    ValueError
        For a dtype other than uint8 (16-bit images are refused, not reduced), an alpha channel,
        a shape that is not an image, an image too large for the format, or a quality the
        model does not have (or, with ``refine_steps``, too large to refine).
    TypeError
        If ``image`` is not a numpy array.
    """
    image, colour_mode = _check_image(session, image)
    quality = session.check_quality(quality)
    header = _header(session, image, colour_mode, quality, None if icc_profile is None else bytes(icc_profile))
    pack(header, [b""])  # refuses sizes the format cannot hold before any model work
    check_pixels(header.height, header.width, max_pixels, what="the image")
    if check_refine_steps(refine_steps):
        latents = refine_latents(session, image, quality, refine_steps, progress=progress)
    else:
        latents = _analyze(session, image, quality, lean=True)
    return pack_latents(header, latents.z_symbols, latents.y_symbols, latents.scale_indexes,
                        session.z_tables, session.z_offsets)


def pack_latents(header, z_symbols, y_symbols, scale_indexes, z_tables, z_offsets):
    """The bytes of an ``.iae`` file: ``header`` and the two entropy-coded sections, the side
    (z with the factorized tables) and the main (y with the Gaussian table of each symbol)."""
    return pack(header, [
        pack_section(z_symbols.shape, encode_factorized(z_symbols, z_tables, z_offsets)),
        pack_section(y_symbols.shape, encode_gaussian(y_symbols, scale_indexes)),
    ])


def estimate_bits(session, image, quality=None):
    """Predicted file size of ``image`` in bits, as :class:`RateEstimate`.

    ``model_bits`` is ``model.estimate_bpp`` (on the padded image, per original pixel) times
    the pixels; ``table_bits`` the information content under the coder's integer tables, which
    the written streams match to within their final flush; ``overhead_bits`` the container.
    ``table_bits + overhead_bits`` predicts ``8 * len(compress_array(...))`` to within a few
    32-bit words; ``model_bits`` is what training optimises and may differ by a few percent
    (the scale of every symbol is rounded up to one of 64 table scales).
    """
    image, colour_mode = _check_image(session, image)
    quality = session.check_quality(quality)
    height, width = image.shape[:2]
    model_bpp = session.model.estimate_bpp(_model_input(session, image), quality, num_pixels=height * width)
    latents = _analyze(session, image, quality)
    empty = pack(_header(session, image, colour_mode, quality), [
        pack_section(latents.z_symbols.shape, b""),
        pack_section(latents.y_symbols.shape, b""),
    ])
    return RateEstimate(float(np.asarray(model_bpp)[0]) * height * width, latent_table_bits(session, latents),
                        8 * len(empty))


def latent_table_bits(session, latents):
    """Information content of :class:`CodecLatents` under the coder's integer tables: the bits
    the two entropy-coded sections spend, to within their final flush (no container)."""
    return (estimate_factorized_bits(latents.z_symbols, session.z_tables, session.z_offsets)
            + estimate_gaussian_bits(latents.y_symbols, latents.scale_indexes))


# ------------------------------------------------------------------------------- decoding


def read_latents(session_lookup, data, *, max_pixels=DEFAULT_MAX_PIXELS):
    """Parse and entropy-decode an ``.iae`` file without synthesizing the image.

    Returns
    -------
    (IaeHeader, CodecSession, CodecLatents)

    Raises
    ------
    IaeFormatError, UnknownModelError, ImageTooLargeError
        As :func:`decompress_bytes`.
    """
    header, sections = unpack(data)
    # Before the model is looked up or any latent array exists: a small file can declare a huge image.
    check_pixels(header.height, header.width, max_pixels, what="the .iae file's image")
    session = session_lookup(header.model_name)
    if not isinstance(session, CodecSession):
        raise TypeError(f"session_lookup must return a CodecSession, got {type(session).__name__}")
    if session.name != header.model_name:
        raise UnknownModelError(
            f"file was written by model {header.model_name!r}; session_lookup gave model {session.name!r}"
        )
    problems = []
    if not 1 <= header.quality <= session.num_qualities:
        problems.append(
            f"it says quality {header.quality}, but the installed {session.name!r} has qualities "
            f"1..{session.num_qualities} (a different model under the same name)"
        )
    if header.bit_depth != BIT_DEPTH:
        problems.append(f"it says {header.bit_depth} bits per sample; {session.name!r} writes only {BIT_DEPTH}")
    if header.colour_mode == "rgb" and session.channels == 1:
        problems.append(f"it says RGB, but {session.name!r} codes grey images only")
    if len(sections) != 2:
        problems.append(f"it has {len(sections)} sections; {session.name!r} writes 2 (side, main)")
    if problems:
        raise IaeFormatError(f"bad .iae file for model {session.name!r}: " + "; ".join(problems))
    z_shape, y_shape = session.latent_shapes(header.height, header.width)
    (z_declared, side), (y_declared, main) = (unpack_section(s) for s in sections)
    for what, declared, expected in (("side", z_declared, z_shape), ("main", y_declared, y_shape)):
        if tuple(declared) != expected:
            raise IaeFormatError(
                f"bad .iae file: the {what} section declares latent shape {tuple(declared)}, but a "
                f"{header.height}x{header.width} image needs {expected} with model {session.name!r}"
            )
    z_symbols = decode_factorized(side, session.z_tables, session.z_offsets, z_shape)
    indexes, means = _indexes_means(session, z_symbols[None], header.quality, IaeFormatError)
    y_symbols = decode_gaussian(main, indexes)
    return header, session, CodecLatents(z_symbols, y_symbols, indexes, means, header.quality)


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


def decompress_bytes(session_lookup, data, *, max_pixels=DEFAULT_MAX_PIXELS):
    """Decode the bytes of an ``.iae`` file to the image it was made from.

    Parameters
    ----------
    session_lookup : callable
        ``model name -> CodecSession``, e.g. ``make_session_lookup(session, ...)``; it should raise
        :class:`UnknownModelError` for a model it does not have.
    data : bytes-like
        A whole ``.iae`` file.
    max_pixels : int or None
        Files whose header declares an image of more pixels are refused before anything is
        allocated (:class:`~imageae.codec.ImageTooLargeError`): a 200 KB file can declare a
        flat 8192 x 8192 image. Default :data:`~imageae.codec.container.DEFAULT_MAX_PIXELS`
        (Pillow's limit, about 89.5 Mpixel); None: no limit but the format's 65536 x 65536.
        Decoding runs in tiles (h_s, range coder, g_s) in memory that grows with the latents
        and the uint8 output: codec-v4 peaks at 1.9 GB for the whole process on 8192 x 8192
        pixels, 2.1 GB at the default limit.

    Returns
    -------
    numpy.ndarray of uint8, shape (H, W, 1) for grey or (H, W, 3) for RGB
        The original size and colour mode. (The file does not record whether a grey input
        was (H, W) or (H, W, 1); grey comes back as (H, W, 1), the layout of
        :class:`imageae.data.io.DecodedImage`.)

    Raises
    ------
    IaeFormatError
        Anything wrong with the bytes: not an ``.iae`` file, another format version,
        truncation, a checksum mismatch, a header the model cannot have written, latent shapes
        that do not match the image size, a corrupt bitstream.
    UnknownModelError
        The file names a model ``session_lookup`` does not have.
    ImageTooLargeError
        The file declares more than ``max_pixels`` pixels (a ``ValueError``, not an
        ``IaeFormatError``: the file may be fine).

    The file's ICC colour profile, if any, is ``read_latents(...)[0].icc_profile``
    (:func:`imageae.decompress` with ``return_icc=True`` gives both).
    """
    header, session, latents = read_latents(session_lookup, data, max_pixels=max_pixels)
    return synthesize_image(session, latents, header.height, header.width, header.colour_mode)


__all__ = [
    "BIT_DEPTH",
    "CodecLatents",
    "CodecSession",
    "RateEstimate",
    "UnknownModelError",
    "analyze_image",
    "compress_array",
    "decompress_bytes",
    "estimate_bits",
    "make_session_lookup",
    "read_latents",
    "synthesize_image",
]
