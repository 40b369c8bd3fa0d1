"""Entropy coding of integer symbol arrays with integer probability tables.

Two entropy models, after Ballé et al., "Variational image compression with a scale
hyperprior" (ICLR 2018), as implemented by tensorflow-compression and CompressAI:

* **Gaussian conditional** (main latents ``y``): each symbol is a zero-mean integer residual
  ``round(y - mu)`` coded with one of 64 fixed tables, one per scale of a log-spaced scale
  table; the hyperprior chooses the table by an integer index (:func:`scale_indexes`).
* **Factorized** (hyper-latents ``z``): each channel has its own integer table, quantized once
  from the learned density (:func:`quantized_cdf_table`) and given to the coder as integers.

Why integer tables: the range coder reads its probabilities as integers, and a decoder that
disagrees with the encoder about a single probability decodes garbage from then on. A network
evaluated on two machines (CPU/GPU, different BLAS) may differ in the last bits, so nothing that
decides how a bitstream decodes is computed from floats at coding time: the Gaussian tables are
a pure function of constants, computed once at import and checked against a SHA-256 stored
here, and the caller chooses tables by integer index. Only the *choice* of index remains the
caller's responsibility (see :func:`scale_indexes`).

Every table is a vector of integer frequencies, each at least 1, summing to ``2**precision``
(16 bits for the Gaussian tables); ``numpy.cumsum`` of it is the CDF. Its last entry is the
*escape* symbol: a value outside the table's support is coded as the escape symbol, and its
distance beyond the support follows at the end of the stream as an Elias-gamma code of
bypass bits (exactly 1 bit each), so any int32 value can be coded and rare outliers cost about
``-log2 p(escape) + 2 * log2(distance) + 2`` bits.

The range coder is constriction's (``constriction.stream.queue.RangeEncoder``, 32-bit words,
64-bit state, 24-bit probabilities). A table of frequencies ``f`` summing to ``2**p`` is given
to it as the floats ``f * 2**(24 - p) - 1`` with ``perfect=False``; constriction's fast
quantization (one count per symbol plus ``floor(cumulative * scale)`` with a scale of exactly
1.0 here) then reproduces ``f * 2**(24 - p)`` exactly, so the coded probabilities are the
integer table and nothing else. Bitstreams are the coder's 32-bit words, little-endian.
"""

import contextlib
import hashlib
import math

import constriction
import numpy as np

from imageae.codec.container import IaeFormatError

CDF_PRECISION = 16
_CODER_PRECISION = 24  # constriction's default models: probabilities in units of 2**-24
_MAX_TABLE_SIZE = 2**24 - 2  # constriction needs fewer than 2**24 - 1 symbols per table

# The Gaussian scale table: 64 log-spaced scales from 0.11 to 256 (CompressAI's defaults),
# rounded to float32 so that a last-bit difference in a platform's exp/log cannot change them.
SCALE_MIN = 0.11
SCALE_MAX = 256.0
SCALE_LEVELS = 64
SCALE_TABLE = np.exp(np.linspace(np.log(SCALE_MIN), np.log(SCALE_MAX), SCALE_LEVELS)).astype(np.float32)
SCALE_TABLE = SCALE_TABLE.astype(np.float64)
SCALE_TABLE.flags.writeable = False
# Support of table k: -R..R with R = ceil(TAIL_FACTOR * scale_k); the mass beyond it (about
# 2e-9 for a Gaussian) goes to the escape symbol, which gets the minimum count of 1.
TAIL_FACTOR = 6.0

# SHA-256 of the Gaussian tables (see _tables_digest). The tables use only IEEE-754 basic
# arithmetic and the C library's erfc, which platforms compute to within an ulp or so; rounding
# to 16-bit integers absorbs such differences unless a value lies within an ulp of a rounding
# boundary. If this check fails at import, that happened: this platform computes different
# tables, files it wrote would not decode elsewhere (nor others' here). Do not silence it.
GAUSSIAN_TABLES_SHA256 = "57f51378d4025e7c602bc47db3d89630f325f9ba3d4e824190121d4aee307058"

_BIT = constriction.stream.model.Uniform(2)  # bypass bits: probability exactly 1/2
_MAX_ESCAPE_PREFIX = 32  # Elias-gamma prefix of any int32 distance is at most 32 zeros
_INFORMATION_SLACK = 96  # bits; see _check_information


# --------------------------------------------------------------------------- integer tables


def quantized_cdf_table(pmf, precision=CDF_PRECISION):
    """Turn float probabilities into integer frequencies that sum exactly to ``2**precision``.

    Every symbol gets at least one count, so nothing is impossible to code. The result is a
    deterministic function of the float input: it uses only IEEE-754 arithmetic that every
    platform rounds alike (a correctly rounded sum, products, quotients, floors) and a stable
    sort, never a transcendental function. Symbols below one count are raised to one and the
    counts this needs are taken where they cost the least cross-entropy (mostly from the most
    probable symbols); the rest is largest-remainder rounding. It is *not* robust to the input itself differing in
    its last bits between machines, which is why such tables should be computed once (at model
    export) and then stored or shipped as integers.

    Parameters
    ----------
    pmf : array_like of float, shape (n,)
        Non-negative, finite, not all zero; need not be normalised. For a coding table, append
        the escape (tail) mass as the last entry.
    precision : int
        1 to 24 bits; ``n`` must not exceed ``2**precision``.

    Returns
    -------
    numpy.ndarray of int32, shape (n,)
        Frequencies, each >= 1, summing to ``2**precision``.

    Examples
    --------
    >>> quantized_cdf_table([0.5, 0.25, 0.25, 0.0], precision=4)
    array([7, 4, 4, 1], dtype=int32)
    """
    if not (isinstance(precision, int) and 1 <= precision <= _CODER_PRECISION):
        raise ValueError(f"precision must be an int in 1..{_CODER_PRECISION}, got {precision!r}")
    pmf = np.asarray(pmf, dtype=np.float64)
    total_count = 2**precision
    if pmf.ndim != 1 or not 2 <= pmf.size <= min(total_count, _MAX_TABLE_SIZE):
        raise ValueError(
            f"pmf must be 1-D with 2 to {min(total_count, _MAX_TABLE_SIZE)} entries at precision {precision}, "
            f"got shape {pmf.shape}"
        )
    if not np.all(np.isfinite(pmf)) or np.any(pmf < 0):
        raise ValueError("pmf must be finite and non-negative")
    if not pmf.max() > 0:
        raise ValueError("pmf must not be all zero")
    pmf = pmf / pmf.max()  # so that the sum below cannot overflow
    total = math.fsum(pmf.tolist())  # correctly rounded, so independent of summation order
    scaled = pmf / total * total_count
    counts = np.maximum(np.floor(scaled), 1.0).astype(np.int64)
    positions = np.arange(pmf.size)
    deficit = total_count - int(counts.sum())
    # Too few counts (the floors): one more each to the largest remainders, ties to the lower index.
    while deficit > 0:
        chosen = np.lexsort((positions, counts - scaled))[:deficit]
        counts[chosen] += 1
        deficit -= chosen.size
    # Too many (symbols raised to the minimum of 1): one fewer each where that costs least,
    # p * log(c / (c - 1)) ~ scaled / (c - 1), i.e. mostly from the largest counts.
    while deficit < 0:
        candidates = np.flatnonzero(counts > 1)
        cost = scaled[candidates] / (counts[candidates] - 1)
        chosen = candidates[np.lexsort((candidates, cost))][:-deficit]
        counts[chosen] -= 1
        deficit += chosen.size
    return counts.astype(np.int32)


def quantize_pmf_tables(pmf, lengths, *, precision=CDF_PRECISION):
    """Integer coding tables for :func:`encode_factorized` from per-channel float pmfs.

    Row ``c`` of ``pmf`` holds the probabilities of ``lengths[c]`` consecutive integers (from
    the channel's offset on; entries after them are ignored); the mass they leave out of 1 is
    the tail, which becomes the escape symbol appended to each table. Call this once, when the
    model is exported, and keep the integer tables: float pmfs recomputed on another machine
    may differ in their last bits, and so could tables quantized from them.

    Parameters
    ----------
    pmf : array_like of float, shape (C, L)
    lengths : array_like of int, shape (C,)
        1 to L entries per row.
    precision : int, keyword-only
        Bits of each table, as in :func:`quantized_cdf_table`.

    Returns
    -------
    list of C numpy.ndarray of int32
        Table ``c`` has ``lengths[c] + 1`` frequencies summing to ``2**precision``.

    Examples
    --------
    >>> [t.tolist() for t in quantize_pmf_tables([[0.25, 0.5, 0.25], [0.9, 0.0, 0.0]], [3, 1], precision=8)]
    [[64, 127, 64, 1], [230, 26]]
    """
    pmf = np.asarray(pmf, dtype=np.float64)
    lengths = np.asarray(lengths)
    if pmf.ndim != 2 or lengths.shape != (pmf.shape[0],) or not np.issubdtype(lengths.dtype, np.integer):
        raise ValueError(f"need a (C, L) pmf and C integer lengths, got shapes {pmf.shape} and {lengths.shape}")
    if lengths.size and (lengths.min() < 1 or lengths.max() > pmf.shape[1]):
        raise ValueError(f"lengths must be in 1..{pmf.shape[1]}, got [{lengths.min()}, {lengths.max()}]")
    tables = []
    for row, length in zip(pmf, lengths.tolist()):
        support = row[:length]
        tail = max(0.0, 1.0 - math.fsum(support.tolist())) if np.all(np.isfinite(support)) else 0.0
        tables.append(quantized_cdf_table(np.append(support, tail), precision))
    return tables


def _standard_normal_cdf(x):
    return 0.5 * math.erfc(-x / math.sqrt(2.0))


def _gaussian_table(scale):
    """Frequencies of round(N(0, scale**2)) over -R..R, then the escape symbol."""
    radius = math.ceil(scale * TAIL_FACTOR)
    pmf = []
    for value in range(-radius, radius + 1):
        # Computed on the side of zero where both CDF values are small, so no cancellation.
        magnitude = abs(value)
        pmf.append(_standard_normal_cdf((0.5 - magnitude) / scale) - _standard_normal_cdf((-0.5 - magnitude) / scale))
    pmf.append(2.0 * _standard_normal_cdf((-radius - 0.5) / scale))
    return radius, quantized_cdf_table(pmf, CDF_PRECISION)


def _tables_digest(scales, radii, tables):
    digest = hashlib.sha256(b"imageae gaussian tables v1")
    digest.update(np.asarray(scales, dtype="<f8").tobytes())
    for radius, table in zip(radii, tables):
        digest.update(np.asarray([radius, table.size], dtype="<i4").tobytes())
        digest.update(np.asarray(table, dtype="<i4").tobytes())
    return digest.hexdigest()


def _build_gaussian_tables():
    pairs = [_gaussian_table(float(scale)) for scale in SCALE_TABLE]
    radii = tuple(radius for radius, _ in pairs)
    tables = tuple(table for _, table in pairs)
    for table in tables:
        table.flags.writeable = False
    return radii, tables


GAUSSIAN_RADII, GAUSSIAN_TABLES = _build_gaussian_tables()
_RADII = np.asarray(GAUSSIAN_RADII, dtype=np.int64)
_RADII32 = _RADII.astype(np.int32)
_digest = _tables_digest(SCALE_TABLE, GAUSSIAN_RADII, GAUSSIAN_TABLES)
if _digest != GAUSSIAN_TABLES_SHA256:
    raise RuntimeError(
        "imageae.codec: the Gaussian entropy-coding tables computed on this platform differ from "
        f"the reference (SHA-256 {_digest}, expected {GAUSSIAN_TABLES_SHA256}); .iae files written "
        "here would not decode elsewhere. Please report this with your platform, Python and numpy versions."
    )


def scale_indexes(scales):
    """Index of the Gaussian table to code each symbol with, from the hyperprior's scales.

    Index ``k`` is the smallest with ``scale <= SCALE_TABLE[k]`` (the table of the next larger
    scale, so a table is never narrower than asked), clipped to 0..63. Encoder and decoder must
    get identical indexes: compute them from bit-identical scales (the same decoded
    hyper-latents through the same deterministic computation). A scale within a rounding error
    of a table bound may otherwise land in a different table on another machine.

    Parameters
    ----------
    scales : array_like of float
        Standard deviations, any shape; must not be NaN.

    Returns
    -------
    numpy.ndarray of int32, same shape

    Examples
    --------
    >>> scale_indexes([0.0, 0.1, 0.12, 1e9]).tolist()
    [0, 0, 1, 63]
    """
    scales = np.asarray(scales)
    if not np.issubdtype(scales.dtype, np.floating) and not np.issubdtype(scales.dtype, np.integer):
        raise TypeError(f"scales must be a float array, got dtype {scales.dtype}")
    if np.issubdtype(scales.dtype, np.floating) and np.isnan(scales).any():
        raise ValueError("scales contain NaN; the hyperprior produced no valid scale")
    indexes = np.searchsorted(SCALE_TABLE, scales.astype(np.float64), side="left")
    return np.minimum(indexes, SCALE_LEVELS - 1).astype(np.int32)


# ------------------------------------------------------------------------- argument checks


def _as_symbols(symbols, name="symbols"):
    array = np.asarray(symbols)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array (round the latents first), got dtype {array.dtype}")
    if array.size and (array.min() < -(2**31) or array.max() > 2**31 - 1):
        raise ValueError(f"{name} must fit in int32, got values in [{array.min()}, {array.max()}]")
    return array.astype(np.int32, copy=False)  # no copy of an int32 array: large images stay cheap


def _as_scale_indexes(indexes, shape=None):
    array = np.asarray(indexes)
    if array.dtype == bool or not np.issubdtype(array.dtype, np.integer):
        raise TypeError(f"scale_indexes must be integers (see scale_indexes()), got dtype {array.dtype}")
    if shape is not None and array.shape != shape:
        raise ValueError(f"scale_indexes must have the symbols' shape {shape}, got {array.shape}")
    if array.size and (array.min() < 0 or array.max() >= SCALE_LEVELS):
        raise ValueError(f"scale_indexes must be in 0..{SCALE_LEVELS - 1}, got [{array.min()}, {array.max()}]")
    return array.astype(np.uint8, copy=False)  # 0..63: one byte a symbol, and numpy radix-sorts it


def _table_precision(table, name):
    """Validate a frequency table; return its precision in bits."""
    if table.ndim != 1 or not 2 <= table.size <= _MAX_TABLE_SIZE:
        raise ValueError(f"{name} must be 1-D with 2 to {_MAX_TABLE_SIZE} entries, got shape {table.shape}")
    if table.min() < 1:
        raise ValueError(f"{name} has a frequency below 1 (every symbol, escape included, needs one)")
    total = int(table.sum())
    precision = total.bit_length() - 1
    if total != 2**precision or not 1 <= precision <= _CODER_PRECISION or table.size > total:
        raise ValueError(f"{name} must sum to a power of two 2**p with p in 1..24 and p >= log2(size), got {total}")
    return precision


def _as_factorized_tables(tables, offsets):
    tables = [np.asarray(table) for table in tables]
    for c, table in enumerate(tables):
        if not np.issubdtype(table.dtype, np.integer):
            raise TypeError(f"table {c} must hold integer frequencies (see quantized_cdf_table), got {table.dtype}")
    precisions = [_table_precision(table.astype(np.int64), f"table {c}") for c, table in enumerate(tables)]
    offsets = np.asarray(offsets)
    if not np.issubdtype(offsets.dtype, np.integer) or offsets.shape != (len(tables),):
        raise ValueError(f"offsets must be {len(tables)} integers, one per table, got {offsets.dtype} {offsets.shape}")
    offsets = offsets.astype(np.int64)
    sizes = np.asarray([table.size for table in tables], dtype=np.int64)
    highs = offsets + sizes - 2  # largest value each table codes directly
    if len(tables) and (offsets.min() < -(2**31) or highs.max() > 2**31 - 1):
        raise ValueError("each table's support offset..offset+len-2 must fit in int32")
    return [table.astype(np.int64) for table in tables], precisions, offsets, highs


@contextlib.contextmanager
def _coding_errors(action):
    """Report anything the range coder raises (including Rust panics) as IaeFormatError."""
    try:
        yield
    except IaeFormatError:
        raise
    except (KeyboardInterrupt, SystemExit, GeneratorExit):
        raise
    except BaseException as error:  # noqa: BLE001 (pyo3 panics derive from BaseException)
        raise IaeFormatError(f"corrupt bitstream: {action} failed ({type(error).__name__}: {error})") from None


def _model(table, precision):
    """constriction model whose integer probabilities are exactly ``table * 2**(24 - precision)``."""
    weights = (table << (_CODER_PRECISION - precision)) - 1
    return constriction.stream.model.Categorical(weights.astype(np.float64), perfect=False)


_gaussian_models = {}


def _gaussian_model(k):
    if k not in _gaussian_models:
        _gaussian_models[k] = _model(GAUSSIAN_TABLES[k].astype(np.int64), CDF_PRECISION)
    return _gaussian_models[k]


_GAUSSIAN_COSTS = tuple(CDF_PRECISION - np.log2(table.astype(np.float64)) for table in GAUSSIAN_TABLES)


def _gaussian_costs(k):
    return _GAUSSIAN_COSTS[k]


# ------------------------------------------------------------------- shared encode / decode


def _escape_bits(distance, negative):
    """Elias-gamma codes of ``distance + 1``, each followed by a sign bit, concatenated.

    ``n = distance + 1 >= 1`` with ``L = floor(log2 n)`` is written as L zeros, then the L + 1
    binary digits of n (most significant, always 1, first), then 1 if the value lies below
    the support and 0 if above.
    """
    n = distance + 1
    prefix = np.searchsorted(np.left_shift(1, np.arange(40, dtype=np.int64)), n, side="right") - 1
    lengths = 2 * prefix + 2
    starts = np.cumsum(lengths) - lengths
    bits = np.zeros(int(lengths.sum()), dtype=np.int32)
    digits = prefix + 1
    owner = np.repeat(np.arange(n.size), digits)
    digit = np.arange(owner.size) - np.repeat(np.cumsum(digits) - digits, digits)
    bits[starts[owner] + prefix[owner] + digit] = (n[owner] >> (prefix[owner] - digit)) & 1
    bits[starts + lengths - 1] = negative
    return bits


def _group_counts(group, num_groups):
    """Positions sorted by group (raster order within each group) and the size of each group."""
    return np.argsort(group, kind="stable"), np.bincount(group, minlength=num_groups)


def _encode(table_index, group, num_groups, model_of, escape_bits):
    """Range-code table indexes one group (one table) at a time, then the escape bits."""
    order, counts = _group_counts(group, num_groups)
    sorted_index = table_index[order].astype(np.int32)
    encoder = constriction.stream.queue.RangeEncoder()
    start = 0
    for g in np.flatnonzero(counts):
        stop = start + int(counts[g])
        encoder.encode(sorted_index[start:stop], model_of(int(g)))
        start = stop
    if escape_bits.size:
        encoder.encode(escape_bits, _BIT)
    return encoder.get_compressed().astype("<u4").tobytes()


def _bits_of(data):
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    return 8 * len(data)


def _check_information(needed, available, what):
    """Refuse a stream shorter than the information content of what it decodes to.

    A range coder cannot write fewer bits than the information content of its message minus
    the size of its state (64 bits); valid streams have measured between 0 and ~0.01% + 40
    bits more. So a decode that needs more than ``available + _INFORMATION_SLACK`` bits read
    past a truncation or decoded garbage. (This check only rejects: the slack is many orders of
    magnitude above the float rounding of the sum, so it never fails a valid stream.)
    """
    if needed > available + _INFORMATION_SLACK:
        raise IaeFormatError(
            f"corrupt bitstream: {what} cannot fit in its {available} bits (they need at least "
            f"{needed:.0f}); it is truncated, or decoded with the wrong tables or shape"
        )


def _decode(data, group, num_groups, model_of, log2_tables):
    """Decode the table indexes of every position; returns (decoder, indexes in raster order).

    ``log2_tables(g)`` gives ``precision - log2(table)`` of group ``g``: the cost in bits of
    each table entry, used to refuse streams too short for what they are asked to decode.
    """
    available = _bits_of(data)
    data = bytes(data)
    if len(data) % 4:
        raise IaeFormatError(f"corrupt bitstream: {len(data)} bytes is not a whole number of 32-bit words")
    words = np.frombuffer(data, dtype="<u4").astype(np.uint32)
    order, counts = _group_counts(group, num_groups)
    present = np.flatnonzero(counts)
    cheapest = sum(float(counts[g]) * float(log2_tables(int(g)).min()) for g in present)
    _check_information(cheapest, available, f"{group.size} symbols with these tables")
    sorted_index = np.empty(group.size, dtype=np.int64)
    with _coding_errors("decoding"):
        decoder = constriction.stream.queue.RangeDecoder(words)
        start = 0
        for g in np.flatnonzero(counts):
            stop = start + int(counts[g])
            decoded = np.asarray(decoder.decode(model_of(int(g)), stop - start))
            if decoded.shape != (stop - start,):
                raise IaeFormatError(f"corrupt bitstream: decoded {decoded.size} symbols, expected {stop - start}")
            sorted_index[start:stop] = decoded
            start = stop
    start, spent = 0, 0.0
    for g in present:
        stop = start + int(counts[g])
        spent += float(np.sum(log2_tables(int(g))[sorted_index[start:stop]]))
        start = stop
    _check_information(spent, available, "the decoded symbols")
    table_index = np.empty_like(sorted_index)
    table_index[order] = sorted_index
    return decoder, table_index, spent


def _decode_escapes(decoder, count):
    """Read ``count`` escape codes; returns (distance, negative) int64/bool arrays."""
    distance = np.empty(count, dtype=np.int64)
    negative = np.empty(count, dtype=bool)
    with _coding_errors("decoding escaped values"):
        for e in range(count):
            prefix = 0
            while int(decoder.decode(_BIT)) == 0:
                prefix += 1
                if prefix > _MAX_ESCAPE_PREFIX:
                    raise IaeFormatError("corrupt bitstream: an escaped value is longer than 32 bits")
            n = 1
            if prefix:
                for bit in np.asarray(decoder.decode(_BIT, prefix)).tolist():
                    n = (n << 1) | int(bit)
            distance[e] = n - 1
            negative[e] = int(decoder.decode(_BIT)) == 1
    return distance, negative


def _check_exhausted(decoder, spent, distance, data):
    _check_information(spent + _escape_cost(distance), _bits_of(data), "the decoded symbols and escapes")
    with _coding_errors("finishing"):
        exhausted = decoder.maybe_exhausted()
    if not exhausted:
        raise IaeFormatError(
            "corrupt bitstream: data left after the last symbol (wrong tables, wrong shape or corrupt data)"
        )


def _to_int32(values, what):
    if values.size and (values.min() < -(2**31) or values.max() > 2**31 - 1):
        raise IaeFormatError(f"corrupt bitstream: {what} decodes to a value outside int32")
    return values.astype(np.int32)


def _words(data):
    """The 32-bit words of a bitstream; IaeFormatError unless it is a whole number of them."""
    data = bytes(data)
    if len(data) % 4:
        raise IaeFormatError(f"corrupt bitstream: {len(data)} bytes is not a whole number of 32-bit words")
    return np.frombuffer(data, dtype="<u4").astype(np.uint32)


def _check_canonical(data, canonical):
    """Refuse a stream that decodes to symbols whose encoding is not exactly this stream.

    The range coder's decoder cannot tell where a stream ends: it reads one word past the last
    one the encoder wrote, as zeros, so a word appended to a valid stream (or a different last
    word) decodes to the same symbols. The encoder is deterministic, so a stream is valid only
    if it is the encoding of what it decodes to: anything else is damage or added data.
    """
    if bytes(data) != canonical:
        extra = len(bytes(data)) - len(canonical)
        raise IaeFormatError(
            "corrupt bitstream: it is not the encoding of the symbols it decodes to ("
            + (f"{extra} bytes of data after the last symbol" if extra > 0 else
               f"{-extra} bytes shorter than their encoding" if extra < 0 else "its last words differ")
            + "): damaged, or data was added"
        )


# Symbols coded per pass: the per-symbol work arrays of the Gaussian coder are this long, so a
# large image's latents cost their own int32 arrays plus a few tens of MB, not several copies.
CHUNK_SYMBOLS = 2**20


def _chunks(size):
    return [(a, min(a + CHUNK_SYMBOLS, size)) for a in range(0, size, CHUNK_SYMBOLS)]


def _gaussian_entries(flat, indexes):
    """Per chunk of :data:`CHUNK_SYMBOLS` positions: each symbol's entry in its table (the
    escape entry outside the radius), sorted by table (stable), as one int32 array; the count of
    each table in each chunk (n_chunks, 64); the escapes' distances and signs in raster order."""
    entries = np.empty(flat.size, np.int32)
    counts, distances, negatives = [], [], []
    for a, b in _chunks(flat.size):
        k = indexes[a:b]
        values = flat[a:b].astype(np.int64)
        radius = _RADII[k]
        inside = np.abs(values) <= radius
        entries[a:b] = np.where(inside, values + radius, 2 * radius + 1)[np.argsort(k, kind="stable")]
        counts.append(np.bincount(k, minlength=SCALE_LEVELS))
        outside = ~inside
        distances.append(np.abs(values[outside]) - radius[outside] - 1)
        negatives.append(values[outside] < 0)
    if not counts:
        return entries, np.zeros((1, SCALE_LEVELS), np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
    return entries, np.stack(counts), np.concatenate(distances), np.concatenate(negatives)


def _code_groups(entries, counts, code):
    """Call ``code(table, start, stop)`` for each run of ``entries`` (sorted by table within
    each chunk) in coding order: by table ascending, then chunk by chunk (raster order)."""
    starts = np.asarray([a for a, _ in _chunks(entries.size)] or [0], np.int64)[:, None]
    starts = starts + np.cumsum(counts, axis=1) - counts
    for k in np.flatnonzero(counts.sum(axis=0)):
        for chunk in np.flatnonzero(counts[:, k]):
            start = int(starts[chunk, k])
            code(int(k), start, start + int(counts[chunk, k]))


# ----------------------------------------------------------------------- Gaussian conditional


def _gaussian_index(symbols, scale_indexes):
    """Flat (table of each symbol, its entry in that table (the escape entry when outside the
    table's radius), escape distances and signs of the escaped symbols)."""
    symbols = _as_symbols(symbols)
    indexes = _as_scale_indexes(scale_indexes, symbols.shape).ravel()
    flat = symbols.ravel().astype(np.int64)  # |int32 min| does not fit int32
    radius = _RADII[indexes]
    inside = np.abs(flat) <= radius
    table_index = np.where(inside, flat + radius, 2 * radius + 1)
    outside = ~inside
    return indexes, table_index, np.abs(flat[outside]) - radius[outside] - 1, flat[outside] < 0


def encode_gaussian(symbols, scale_indexes):
    """Range-code zero-mean integer residuals with the fixed Gaussian tables.

    Parameters
    ----------
    symbols : array_like of int
        Integer residuals ``round(y - mu)``, any shape, values in int32. The mean is the
        caller's: subtract it (rounded or not) before rounding and add it back after decoding,
        ``y_hat = decode_gaussian(...) + mu``. The coder itself only sees zero-mean integers, so
        ``mu`` may differ in its last bits between machines without breaking decoding.
    scale_indexes : array_like of int
        Same shape: which of the 64 tables codes each symbol (see :func:`scale_indexes`).

    Returns
    -------
    bytes
        The bitstream (a whole number of 32-bit words; empty when there are no symbols).

    Examples
    --------
    >>> y = np.array([[0, -3], [7, 1000]])
    >>> k = scale_indexes(np.array([[0.2, 2.0], [5.0, 1.0]]))
    >>> data = encode_gaussian(y, k)
    >>> decode_gaussian(data, k).tolist()
    [[0, -3], [7, 1000]]
    """
    symbols = _as_symbols(symbols)
    indexes = _as_scale_indexes(scale_indexes, symbols.shape).ravel()
    entries, counts, distance, negative = _gaussian_entries(symbols.ravel(), indexes)
    encoder = constriction.stream.queue.RangeEncoder()
    _code_groups(entries, counts, lambda k, start, stop: encoder.encode(entries[start:stop], _gaussian_model(k)))
    if distance.size:
        encoder.encode(_escape_bits(distance, negative), _BIT)
    return encoder.get_compressed().astype("<u4").tobytes()


def decode_gaussian(data, scale_indexes):
    """Decode what :func:`encode_gaussian` wrote with the same ``scale_indexes``.

    Parameters
    ----------
    data : bytes
    scale_indexes : array_like of int
        Exactly the indexes the encoder used; their shape is the output's shape.

    Returns
    -------
    numpy.ndarray of int32
        The integer residuals.

    Raises
    ------
    IaeFormatError
        If the bitstream is corrupt, truncated or has data left over.
    """
    indexes = _as_scale_indexes(scale_indexes)
    shape = indexes.shape
    indexes = indexes.ravel()
    available = _bits_of(data)
    words = _words(data)
    counts = np.stack([np.bincount(indexes[a:b], minlength=SCALE_LEVELS) for a, b in _chunks(indexes.size)]
                      or [np.zeros(SCALE_LEVELS, np.int64)])
    totals = counts.sum(axis=0)
    cheapest = sum(float(totals[k]) * float(_GAUSSIAN_COSTS[k].min()) for k in np.flatnonzero(totals))
    _check_information(cheapest, available, f"{indexes.size} symbols with these tables")
    # Decoded group by group (as coded) into each chunk's table-sorted order, then each chunk
    # is put back into raster order in place: one int32 per symbol, whatever the image size.
    entries = np.empty(indexes.size, np.int32)
    spent = [0.0]
    with _coding_errors("decoding"):
        decoder = constriction.stream.queue.RangeDecoder(words)

        def decode(k, start, stop):
            decoded = np.asarray(decoder.decode(_gaussian_model(k), stop - start))
            if decoded.shape != (stop - start,):
                raise IaeFormatError(f"corrupt bitstream: decoded {decoded.size} symbols, expected {stop - start}")
            entries[start:stop] = decoded
            spent[0] += float(np.sum(_GAUSSIAN_COSTS[k][decoded]))

        _code_groups(entries, counts, decode)
    _check_information(spent[0], available, "the decoded symbols")
    escaped = []
    for a, b in _chunks(indexes.size):
        order = np.argsort(indexes[a:b], kind="stable")
        entries[a:b][order] = entries[a:b].copy()
        escaped.append(a + np.flatnonzero(entries[a:b] == 2 * _RADII32[indexes[a:b]] + 1))
    escaped = np.concatenate(escaped) if escaped else np.zeros(0, np.int64)
    _check_information(spent[0] + 2 * escaped.size, available, "the decoded symbols and their escapes")
    distance, negative = _decode_escapes(decoder, escaped.size)
    _check_exhausted(decoder, spent[0], distance, data)
    for a, b in _chunks(indexes.size):
        entries[a:b] -= _RADII32[indexes[a:b]]
    magnitude = _RADII[indexes[escaped]] + 1 + distance
    entries[escaped] = _to_int32(np.where(negative, -magnitude, magnitude), "an escaped symbol")
    values = entries.reshape(shape)
    _check_canonical(data, encode_gaussian(values, indexes.reshape(shape)))
    return values


def estimate_gaussian_bits(symbols, scale_indexes):
    """Information content in bits of ``symbols`` under the integer Gaussian tables.

    This is what :func:`encode_gaussian` spends, escapes included, up to the coder's final
    flush (at most a few 32-bit words): use it for rate estimates that match real files.
    """
    indexes, table_index, distance, _ = _gaussian_index(symbols, scale_indexes)
    bits = 0.0
    for k in np.unique(indexes):
        bits += float(np.sum(_GAUSSIAN_COSTS[k][table_index[indexes == k]]))
    return bits + _escape_cost(distance)


def _escape_cost(distance):
    prefix = np.searchsorted(np.left_shift(1, np.arange(40, dtype=np.int64)), distance + 1, side="right") - 1
    return float(np.sum(2 * prefix + 2))


# ------------------------------------------------------------------------------- factorized


def _factorized_index(symbols, tables, offsets):
    """The checked tables and their precisions, then flat (channel of each symbol, its entry in
    its table (the escape entry when outside), escape distances and whether each escaped symbol
    lies below its table)."""
    symbols = _as_symbols(symbols)
    tables, precisions, offsets, highs = _as_factorized_tables(tables, offsets)
    if symbols.ndim < 1 or symbols.shape[-1] != len(tables):
        raise ValueError(f"symbols must have {len(tables)} channels on the last axis, got shape {symbols.shape}")
    sizes = np.asarray([table.size for table in tables], dtype=np.int64)
    channel = np.broadcast_to(np.arange(offsets.size), symbols.shape).ravel()
    flat = symbols.ravel()
    low, high = offsets[channel], highs[channel]
    inside = (flat >= low) & (flat <= high)
    table_index = np.where(inside, flat - low, sizes[channel] - 1)
    outside = ~inside
    below = flat[outside] < low[outside]
    distance = np.where(below, low[outside] - 1 - flat[outside], flat[outside] - high[outside] - 1)
    return tables, precisions, channel, table_index, distance, below


def encode_factorized(symbols, tables, offsets):
    """Range-code integer symbols with one integer table per channel (last axis).

    Parameters
    ----------
    symbols : array_like of int, shape (..., C)
        Hyper-latents ``round(z)`` (channels last), values in int32.
    tables : sequence of C integer arrays
        Frequency tables from :func:`quantized_cdf_table`, each summing to ``2**p``
        (p <= 24), the last entry of each being the escape symbol. Table ``c`` codes the values
        ``offsets[c] .. offsets[c] + len(tables[c]) - 2`` directly; other values escape.
    offsets : array_like of int, shape (C,)
        The value coded by entry 0 of each table.

    Returns
    -------
    bytes

    Examples
    --------
    >>> table = quantized_cdf_table([0.1, 0.2, 0.4, 0.2, 0.1, 1e-6])  # values -2..2, escape
    >>> z = np.array([[[0, 1], [-2, 9]]])
    >>> data = encode_factorized(z, [table, table], [-2, -2])
    >>> decode_factorized(data, [table, table], [-2, -2], z.shape).tolist()
    [[[0, 1], [-2, 9]]]
    """
    tables, precisions, channel, table_index, distance, below = _factorized_index(symbols, tables, offsets)
    models = {}

    def model_of(c):
        return models.setdefault(c, _model(tables[c], precisions[c]))

    return _encode(table_index, channel, len(tables), model_of, _escape_bits(distance, below))


def decode_factorized(data, tables, offsets, shape):
    """Decode what :func:`encode_factorized` wrote with the same tables and offsets.

    Parameters
    ----------
    data : bytes
    tables, offsets
        Exactly as given to the encoder.
    shape : tuple of int
        Shape of the encoded array; its last entry must equal the number of tables.

    Returns
    -------
    numpy.ndarray of int32, shape ``shape``

    Raises
    ------
    IaeFormatError
        If the bitstream is corrupt, truncated or has data left over.
    """
    tables, precisions, offsets, highs = _as_factorized_tables(tables, offsets)
    shape = tuple(int(d) for d in shape)
    if not shape or shape[-1] != len(tables) or min(shape) < 0:
        raise ValueError(f"shape must end in the number of tables ({len(tables)}), got {shape}")
    sizes = np.asarray([table.size for table in tables], dtype=np.int64)
    channel = np.broadcast_to(np.arange(len(tables)), shape).ravel()
    models = {}

    def model_of(c):
        return models.setdefault(c, _model(tables[c], precisions[c]))

    costs = [precision - np.log2(table.astype(np.float64)) for table, precision in zip(tables, precisions)]
    decoder, table_index, spent = _decode(data, channel, len(tables), model_of, costs.__getitem__)
    escaped = np.flatnonzero(table_index == sizes[channel] - 1)
    _check_information(spent + 2 * escaped.size, _bits_of(data), "the decoded symbols and their escapes")
    distance, below = _decode_escapes(decoder, escaped.size)
    _check_exhausted(decoder, spent, distance, data)
    values = table_index + offsets[channel]
    low, high = offsets[channel[escaped]], highs[channel[escaped]]
    values[escaped] = np.where(below, low - 1 - distance, high + 1 + distance)
    values = _to_int32(values, "an escaped symbol").reshape(shape)
    _check_canonical(data, encode_factorized(values, tables, offsets))
    return values


def estimate_factorized_bits(symbols, tables, offsets):
    """Information content in bits of ``symbols`` under the factorized tables, escapes included."""
    tables, precisions, channel, table_index, distance, _ = _factorized_index(symbols, tables, offsets)
    bits = 0.0
    for c, (table, precision) in enumerate(zip(tables, precisions)):
        frequencies = table[table_index[channel == c]].astype(np.float64)
        bits += float(np.sum(precision - np.log2(frequencies)))
    return bits + _escape_cost(distance)
