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
    quantize_pmf_tables,
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
from imageae.codec.transforms import (
    CodecLatents,
    _encoder_latents,
    _indexes_means,
    _latents_from,
    _model_input,
    latent_table_bits,
    synthesize_image,
)

BIT_DEPTH = 8  # the only depth the codec stores; 16-bit input is refused, not silently reduced
# Integers per hyper-latent table (values outside are escape-coded), for a model that does not
# say (a HyperpriorCodec's stored tables fix it: imageae.models.codec.Z_TABLE_SUPPORT).
Z_MAX_SUPPORT = 256
# Padded images with a side above this run through g_a and g_s in overlapping tiles (their size
# and overlap: imageae.codec.transforms.TILE_CORE and TILE_MARGIN).
TILE = 1024


class UnknownModelError(LookupError):
    """An ``.iae`` file names a model that is not installed (or not offered to the decoder)."""

    def __str__(self):  # LookupError's KeyError-style quoting is not wanted here
        return str(self.args[0]) if self.args else ""

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
