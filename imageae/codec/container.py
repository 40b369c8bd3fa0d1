"""The ``.iae`` file: a small header, length-prefixed sections, a CRC32.

The byte layout is specified in ``docs/iae-format.md``; this module is its reference reader and
writer. The container knows nothing about models or entropy coding: it carries a header saying
which model wrote the file and what image to rebuild, and an ordered list of opaque sections
(for the hyperprior codecs: section 0 = side information, section 1 = main latents, each
prefixed by its latent shape, see :func:`pack_section`).

Reading is defensive: every length is checked against the bytes actually present before
anything is sliced or allocated, so a damaged or hostile file costs at most a pass over its own
bytes, and every problem is reported as one exception class, :class:`IaeFormatError`, whose
message names the problem.
"""

import dataclasses
import math
import struct
import zlib

MAGIC = b"IAE\x00"
# Version 1: no metadata. Version 2: version 1 plus an ICC colour profile (docs/iae-format.md).
# A writer writes the lowest version that holds the file (1 without a profile), so files without
# one stay readable by older readers and byte-identical to what they were.
FORMAT_VERSION = 2
SUPPORTED_VERSIONS = (1, 2)
MAX_ICC_PROFILE_BYTES = 2**24  # 16 MiB; real profiles are a few hundred bytes to a few MB
# Pillow's Image.MAX_IMAGE_PIXELS (about 89.5 Mpixel): the default largest image a decoder
# rebuilds from a header (a 200 KB file can declare a flat 8192 x 8192 image) or an encoder takes.
DEFAULT_MAX_PIXELS = 1024 * 1024 * 1024 // 4 // 3
MAX_MODEL_NAME_BYTES = 64
MAX_SECTIONS = 16
MAX_IMAGE_SIZE = 2**16
MAX_SECTION_RANK = 4
MAX_SECTION_ELEMENTS = 2**28
COLOUR_MODES = {"grey": 1, "rgb": 3}  # stored as the number of colour channels
_COLOUR_NAMES = {code: name for name, code in COLOUR_MODES.items()}
BIT_DEPTHS = (8, 16)

_U32_MAX = 2**32 - 1
# magic(4) version(1) name_length(1): enough to know the rest of the fixed header's size.
_PREFIX_SIZE = 6
# quality(1) height(4) width(4) colour(1) bit_depth(1) section_count(1)
_FIELDS = struct.Struct("<BIIBBB")
_CRC_SIZE = 4


class IaeFormatError(ValueError):
    """Bytes that are not a valid ``.iae`` file (or bitstream section); the message says why."""


class ImageTooLargeError(ValueError):
    """An image (or the image an ``.iae`` header declares) above the caller's pixel limit.

    Not an :class:`IaeFormatError`: the file may be valid; the message says how to allow it."""


def check_pixels(height, width, max_pixels, *, what="the image", error=ImageTooLargeError):
    """Refuse ``height x width`` above ``max_pixels`` (None: no limit) with ``error`` naming the
    size, the limit and how to raise it."""
    if max_pixels is None:
        return
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1:
        raise ValueError(f"max_pixels must be a positive int or None, got {max_pixels!r}")
    if height * width > max_pixels:
        raise error(
            f"{what} is {width}x{height} = {height * width / 1e6:.1f} Mpixel, above the limit of "
            f"{max_pixels / 1e6:.1f} Mpixel (a guard against decompression bombs); to allow it, pass "
            f"max_pixels={height * width} or more (command line: --max-pixels {height * width})"
        )


@dataclasses.dataclass(frozen=True)
class IaeHeader:
    """What an ``.iae`` file says about itself.

    Attributes
    ----------
    model_name : str
        Registered name of the model that wrote the file (1 to 64 bytes of printable UTF-8).
    quality : int
        Quality level of that model, 0 to 255.
    height, width : int
        Size of the original image in pixels, 1 to ``max_size`` (65536 by default).
    colour_mode : str
        ``"grey"`` or ``"rgb"``: the colour mode of the original image.
    bit_depth : int
        8 or 16: the bit depth of the original image.
    icc_profile : bytes or None
        The original image's ICC colour profile (1 byte to 16 MiB, stored as it is, not
        interpreted), or None. A file with one is format version 2, one without version 1.
    """

    model_name: str
    quality: int
    height: int
    width: int
    colour_mode: str
    bit_depth: int
    icc_profile: bytes | None = dataclasses.field(default=None, repr=False)

    @property
    def format_version(self):
        """The version a file with this header has: 2 with an ICC profile, else 1."""
        return 1 if self.icc_profile is None else 2


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _header_problems(header, max_size):
    """Everything wrong with a header's values but its colour mode, as messages (empty when valid)."""
    problems = []
    name = header.model_name
    if not isinstance(name, str):
        problems.append(f"model name must be a str, got {type(name).__name__}")
    else:
        size = len(name.encode("utf-8", errors="surrogatepass"))
        if not 1 <= size <= MAX_MODEL_NAME_BYTES:
            problems.append(f"model name must be 1 to {MAX_MODEL_NAME_BYTES} bytes of UTF-8, got {size} bytes")
        elif not name.isprintable():
            problems.append(f"model name must be printable, got {name!r}")
    if not (_is_int(header.quality) and 0 <= header.quality <= 255):
        problems.append(f"quality must be an int in 0..255, got {header.quality!r}")
    for field in ("height", "width"):
        value = getattr(header, field)
        if not (_is_int(value) and 1 <= value <= max_size):
            problems.append(f"image {field} must be an int in 1..{max_size}, got {value!r}")
    if not (_is_int(header.bit_depth) and header.bit_depth in BIT_DEPTHS):
        problems.append(f"bit depth must be 8 or 16, got {header.bit_depth!r}")
    icc = header.icc_profile
    if icc is not None:
        if not isinstance(icc, bytes):
            problems.append(f"ICC profile must be bytes or None, got {type(icc).__name__}")
        elif not 1 <= len(icc) <= MAX_ICC_PROFILE_BYTES:
            problems.append(f"ICC profile must be 1 to {MAX_ICC_PROFILE_BYTES} bytes (None for no profile), "
                            f"got {len(icc)} bytes")
    return problems


def pack(header, sections, *, max_size=MAX_IMAGE_SIZE):
    """Serialise a header and its sections as an ``.iae`` file.

    Parameters
    ----------
    header : IaeHeader
    sections : sequence of bytes-like
        1 to 16 opaque payloads, each shorter than 4 GiB, stored in order.
    max_size : int, keyword-only
        Largest image height or width accepted (65536 by default, as :func:`unpack`).

    Returns
    -------
    bytes

    Raises
    ------
    ValueError
        If a header field or the sections are out of range; the message lists every problem.

    Examples
    --------
    >>> header = IaeHeader("codec-hyperprior", 3, 480, 640, "rgb", 8)
    >>> data = pack(header, [b"side", b"main"])
    >>> unpack(data) == (header, [b"side", b"main"])
    True
    """
    if not isinstance(header, IaeHeader):
        raise TypeError(f"header must be an IaeHeader, got {type(header).__name__}")
    problems = _header_problems(header, max_size)
    if header.colour_mode not in COLOUR_MODES:
        problems.append(f"colour mode must be one of {sorted(COLOUR_MODES)}, got {header.colour_mode!r}")
    sections = list(sections)
    if not 1 <= len(sections) <= MAX_SECTIONS:
        problems.append(f"an .iae file holds 1 to {MAX_SECTIONS} sections, got {len(sections)}")
    payloads = []
    for index, section in enumerate(sections):
        if not isinstance(section, (bytes, bytearray, memoryview)):
            problems.append(f"section {index} must be bytes, got {type(section).__name__}")
            continue
        payload = bytes(section)
        if len(payload) > _U32_MAX:
            problems.append(f"section {index} is {len(payload)} bytes; at most {_U32_MAX} fit")
        payloads.append(payload)
    if problems:
        raise ValueError("cannot write .iae file: " + "; ".join(problems))
    name = header.model_name.encode("utf-8")
    icc = [] if header.icc_profile is None else [struct.pack("<I", len(header.icc_profile)), header.icc_profile]
    parts = [
        MAGIC,
        struct.pack("<BB", header.format_version, len(name)),
        name,
        _FIELDS.pack(
            header.quality,
            header.height,
            header.width,
            COLOUR_MODES[header.colour_mode],
            header.bit_depth,
            len(payloads),
        ),
        struct.pack(f"<{len(payloads)}I", *(len(p) for p in payloads)),
        *icc,
        *payloads,
    ]
    body = b"".join(parts)
    return body + struct.pack("<I", zlib.crc32(body))


def _need(data, end, what):
    if len(data) < end:
        raise IaeFormatError(f"truncated .iae file: {what} needs at least {end} bytes, got {len(data)}")


def unpack(data, *, max_size=MAX_IMAGE_SIZE):
    """Parse and verify an ``.iae`` file.

    Parameters
    ----------
    data : bytes-like
        The whole file.
    max_size : int, keyword-only
        Largest image height or width accepted (65536 by default); larger claims are rejected
        before anything is decoded.

    Returns
    -------
    (IaeHeader, list of bytes)
        The header and the sections, in the order they were packed.

    Raises
    ------
    IaeFormatError
        For empty or short data, a wrong magic number, an unsupported version, truncation,
        trailing bytes, a CRC32 mismatch or an out-of-range field; the message names which.
    TypeError
        If ``data`` is not bytes-like.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes, got {type(data).__name__}")
    data = bytes(data)
    if not data:
        raise IaeFormatError("empty data: not an .iae file")
    if data[:4] != MAGIC[: len(data)]:
        raise IaeFormatError(f"not an .iae file: it starts with {data[:4]!r}, not {MAGIC!r}")
    _need(data, _PREFIX_SIZE, "the file prefix (magic, version, name length)")
    version, name_size = data[4], data[5]
    if version not in SUPPORTED_VERSIONS:
        supported = ", ".join(str(v) for v in SUPPORTED_VERSIONS)
        raise IaeFormatError(
            f"unsupported .iae format version {version}; this imageae reads versions {supported}"
            + (" (the file is newer: upgrade imageae)" if version > max(SUPPORTED_VERSIONS) else "")
        )
    if not 1 <= name_size <= MAX_MODEL_NAME_BYTES:
        raise IaeFormatError(f"bad model name length {name_size}: must be 1 to {MAX_MODEL_NAME_BYTES} bytes")
    fields_at = _PREFIX_SIZE + name_size
    _need(data, fields_at + _FIELDS.size, "the header")
    quality, height, width, channels, bit_depth, count = _FIELDS.unpack_from(data, fields_at)
    if not 1 <= count <= MAX_SECTIONS:
        raise IaeFormatError(f"bad section count {count}: must be 1 to {MAX_SECTIONS}")
    lengths_at = fields_at + _FIELDS.size
    payload_at = lengths_at + 4 * count
    _need(data, payload_at, f"the header with {count} section lengths")
    lengths = struct.unpack_from(f"<{count}I", data, lengths_at)
    icc_size = 0
    if version >= 2:  # the ICC profile's length and bytes come before the payloads
        _need(data, payload_at + 4, "the header with the ICC profile length")
        icc_size = struct.unpack_from("<I", data, payload_at)[0]
        if not 1 <= icc_size <= MAX_ICC_PROFILE_BYTES:
            raise IaeFormatError(f"bad ICC profile length {icc_size}: must be 1 to {MAX_ICC_PROFILE_BYTES} bytes")
        payload_at += 4 + icc_size
    expected = payload_at + sum(lengths) + _CRC_SIZE
    if len(data) < expected:
        raise IaeFormatError(
            f"truncated .iae file: its header declares {expected} bytes (section lengths "
            f"{list(lengths)}" + (f", ICC profile {icc_size}" if icc_size else "") + f"), got {len(data)}"
        )
    if len(data) > expected:
        raise IaeFormatError(
            f"{len(data) - expected} bytes of trailing garbage after the end of the .iae file "
            f"(the header declares {expected} bytes, got {len(data)})"
        )
    stored_crc = struct.unpack_from("<I", data, expected - _CRC_SIZE)[0]
    actual_crc = zlib.crc32(memoryview(data)[: expected - _CRC_SIZE])
    if stored_crc != actual_crc:
        raise IaeFormatError(
            f"checksum mismatch: the file stores CRC32 {stored_crc:08x} but its contents give "
            f"{actual_crc:08x}; the file is corrupt"
        )
    try:
        model_name = data[_PREFIX_SIZE:fields_at].decode("utf-8")
    except UnicodeDecodeError:
        raise IaeFormatError(
            f"bad .iae header: model name is not valid UTF-8: {data[_PREFIX_SIZE:fields_at]!r}"
        ) from None
    colour_mode = _COLOUR_NAMES.get(channels)
    icc_profile = data[payload_at - icc_size : payload_at] if icc_size else None
    header = IaeHeader(model_name, quality, height, width, colour_mode, bit_depth, icc_profile)
    problems = _header_problems(header, max_size)
    if colour_mode is None:
        problems.append(f"bad colour mode code {channels}: must be 1 (grey) or 3 (rgb)")
    if problems:
        raise IaeFormatError("bad .iae header: " + "; ".join(problems))
    sections = []
    at = payload_at
    for length in lengths:
        sections.append(data[at : at + length])
        at += length
    return header, sections


_RANK = struct.Struct("<B")


def pack_section(shape, payload, *, max_elements=MAX_SECTION_ELEMENTS):
    """Prefix a bitstream with the shape of the array it encodes.

    Layout: rank (u8, 1..4), then each dimension (u32 little-endian, >= 1), then ``payload``.

    Parameters
    ----------
    shape : sequence of int
    payload : bytes-like
    max_elements : int, keyword-only
        Largest number of elements accepted, as in :func:`unpack_section`.

    Returns
    -------
    bytes

    Examples
    --------
    >>> unpack_section(pack_section((4, 6, 192), b"\\x01\\x02"))
    ((4, 6, 192), b'\\x01\\x02')
    """
    shape = tuple(shape)
    if not 1 <= len(shape) <= MAX_SECTION_RANK:
        raise ValueError(f"a section shape has 1 to {MAX_SECTION_RANK} dimensions, got {shape}")
    if not all(_is_int(d) and 1 <= d <= _U32_MAX for d in shape):
        raise ValueError(f"section dimensions must be ints in 1..{_U32_MAX}, got {shape}")
    if math.prod(shape) > max_elements:
        raise ValueError(f"section shape {shape} has more than max_elements={max_elements} elements")
    return _RANK.pack(len(shape)) + struct.pack(f"<{len(shape)}I", *shape) + bytes(payload)


def unpack_section(data, *, max_elements=MAX_SECTION_ELEMENTS):
    """Split a section into the shape it declares and its bitstream.

    Parameters
    ----------
    data : bytes-like
    max_elements : int, keyword-only
        Largest number of elements (product of the dimensions) accepted. Callers that know the
        exact shape to expect (from the image size and the model's downsampling factor) should
        still compare it; this bound only keeps a damaged file from asking for huge arrays.

    Returns
    -------
    (tuple of int, bytes)

    Raises
    ------
    IaeFormatError
        If the section is too short for its shape, or the shape is out of range.
    """
    data = bytes(data)
    if not data:
        raise IaeFormatError("empty section: expected a shape prefix")
    rank = data[0]
    if not 1 <= rank <= MAX_SECTION_RANK:
        raise IaeFormatError(f"bad section rank {rank}: must be 1 to {MAX_SECTION_RANK}")
    end = 1 + 4 * rank
    if len(data) < end:
        raise IaeFormatError(f"truncated section: its shape needs {end} bytes, got {len(data)}")
    shape = struct.unpack_from(f"<{rank}I", data, 1)
    if 0 in shape or math.prod(shape) > max_elements:
        raise IaeFormatError(f"bad section shape {shape}: needs 1 to {max_elements} elements, each dimension >= 1")
    return shape, data[end:]
