"""The .iae container: documented layout, round trips, one clear error per kind of damage."""

import struct
import time
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from imageae.codec.container import (
    FORMAT_VERSION,
    MAGIC,
    MAX_SECTIONS,
    IaeFormatError,
    IaeHeader,
    pack,
    pack_section,
    unpack,
    unpack_section,
)

HEADER = IaeHeader("codec-hyperprior", 3, 480, 640, "rgb", 8)
SECTIONS = [b"side bits", b"main latent bits"]

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def layout(
    *,
    magic=MAGIC,
    version=None,
    name=b"codec-hyperprior",
    name_length=None,
    quality=3,
    height=480,
    width=640,
    colour=3,
    bit_depth=8,
    sections=(b"side bits", b"main latent bits"),
    count=None,
    lengths=None,
    crc=None,
    icc=None,
    icc_length=None,
):
    """An .iae file built field by field from docs/iae-format.md, independently of pack():
    version 1, or version 2 with an ICC profile when ``icc`` is given."""
    lengths = [len(s) for s in sections] if lengths is None else lengths
    version = (1 if icc is None else 2) if version is None else version
    icc_field = b"" if icc is None else struct.pack("<I", len(icc) if icc_length is None else icc_length) + icc
    body = (
        magic
        + struct.pack("<BB", version, len(name) if name_length is None else name_length)
        + name
        + struct.pack("<BIIBBB", quality, height, width, colour, bit_depth, len(sections) if count is None else count)
        + struct.pack(f"<{len(lengths)}I", *lengths)
        + icc_field
        + b"".join(sections)
    )
    return body + struct.pack("<I", zlib.crc32(body) if crc is None else crc)


# ------------------------------------------------------------------------------ round trips


def test_pack_writes_the_documented_layout():
    assert pack(HEADER, SECTIONS) == layout()


def test_a_profile_makes_a_version_2_file_with_the_documented_layout():
    """docs/iae-format.md, version 2: the ICC profile's length and bytes between the section
    lengths and the payloads; files without one stay version 1 (the reader takes both)."""
    import dataclasses

    header = dataclasses.replace(HEADER, icc_profile=b"ICC profile bytes")
    data = pack(header, SECTIONS)
    assert data == layout(icc=b"ICC profile bytes") and data[4] == 2 == header.format_version
    assert unpack(data) == (header, SECTIONS) and unpack(layout()) == (HEADER, SECTIONS)
    assert HEADER.format_version == 1 and FORMAT_VERSION == 2
    assert pack(HEADER, SECTIONS).hex() == (
        "494145000110636f6465632d68797065727072696f7203e001000080020000030802"
        "09000000100000007369646520626974736d61696e206c6174656e742062697473409992ed"
    )


def test_unpack_returns_what_was_packed():
    header, sections = unpack(pack(HEADER, SECTIONS))
    assert header == HEADER
    assert sections == SECTIONS


printable = st.characters(codec="utf-8", categories=("L", "N", "P", "S"), include_characters=" ")
names = st.text(printable, min_size=1, max_size=16)  # at most 64 bytes of UTF-8
headers = st.builds(
    IaeHeader,
    model_name=names,
    quality=st.integers(0, 255),
    height=st.integers(1, 2**16),
    width=st.integers(1, 2**16),
    colour_mode=st.sampled_from(["grey", "rgb"]),
    bit_depth=st.sampled_from([8, 16]),
)
section_lists = st.lists(st.binary(max_size=64), min_size=1, max_size=MAX_SECTIONS)


@FAST
@given(headers, section_lists)
def test_round_trip_of_random_headers_and_sections(header, sections):
    data = pack(header, sections)
    assert unpack(data) == (header, sections)
    assert unpack(bytearray(data)) == (header, sections)
    assert pack(header, sections) == data  # deterministic


def test_model_name_of_64_utf8_bytes_round_trips():
    header = IaeHeader("é" * 32, 0, 1, 1, "grey", 16)
    assert unpack(pack(header, [b""]))[0] == header


def test_larger_images_need_an_explicit_max_size():
    header = IaeHeader("m", 0, 2**16 + 1, 5, "grey", 8)
    with pytest.raises(ValueError, match="height must be an int in 1..65536"):
        pack(header, [b""])
    data = pack(header, [b""], max_size=2**20)
    with pytest.raises(IaeFormatError, match="height must be an int in 1..65536, got 65537"):
        unpack(data)
    assert unpack(data, max_size=2**20)[0] == header


# ------------------------------------------------------------------------------ pack errors


@pytest.mark.parametrize(
    "header, sections, message",
    [
        (IaeHeader("", 3, 8, 8, "rgb", 8), [b""], "model name must be 1 to 64 bytes"),
        (IaeHeader("x" * 65, 3, 8, 8, "rgb", 8), [b""], "got 65 bytes"),
        (IaeHeader("bad\nname", 3, 8, 8, "rgb", 8), [b""], "printable"),
        (IaeHeader("m", 256, 8, 8, "rgb", 8), [b""], "quality must be an int in 0..255"),
        (IaeHeader("m", True, 8, 8, "rgb", 8), [b""], "quality"),
        (IaeHeader("m", 3, 0, 8, "rgb", 8), [b""], "height must be an int in 1..65536, got 0"),
        (IaeHeader("m", 3, 8, 8.0, "rgb", 8), [b""], "width"),
        (IaeHeader("m", 3, 8, 8, "colour", 8), [b""], "colour mode must be one of"),
        (IaeHeader("m", 3, 8, 8, "rgb", 12), [b""], "bit depth must be 8 or 16, got 12"),
        (HEADER, [], "1 to 16 sections, got 0"),
        (HEADER, [b""] * 17, "1 to 16 sections, got 17"),
        (HEADER, ["text"], "section 0 must be bytes, got str"),
    ],
)
def test_pack_rejects_what_it_cannot_write(header, sections, message):
    with pytest.raises(ValueError, match=message):
        pack(header, sections)


def test_pack_lists_every_problem_at_once():
    with pytest.raises(ValueError, match="quality.*height.*bit depth"):
        pack(IaeHeader("m", -1, 0, 8, "rgb", 7), [b""])


# ---------------------------------------------------------------------------- unpack errors


def fix_crc(data):
    return data[:-4] + struct.pack("<I", zlib.crc32(data[:-4]))


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty data: not an .iae file"),
        (b"IA", r"truncated .iae file: the file prefix .* needs at least 6 bytes, got 2"),
        (b"\x89PNG\r\n\x1a\n" + bytes(40), r"not an .iae file: it starts with b'\\x89PNG'"),
        (b"GIF89a", "not an .iae file"),
        (layout(version=3), "unsupported .iae format version 3; this imageae reads versions 1, 2 .*upgrade"),
        (layout(version=0), "unsupported .iae format version 0; this imageae reads versions 1, 2"),
        (layout()[:10], "truncated .iae file: the header needs at least 34 bytes, got 10"),
        (layout()[:40], r"truncated .iae file: the header with 2 section lengths needs at least 42 bytes, got 40"),
        (layout()[:-1], r"truncated .iae file: its header declares 71 bytes \(section lengths \[9, 16\]\), got 70"),
        (layout() + b"\x00" * 3, "3 bytes of trailing garbage after the end of the .iae file"),
        (layout(crc=0), "checksum mismatch: the file stores CRC32 00000000 but its contents give"),
        (layout(name_length=0, name=b""), "bad model name length 0: must be 1 to 64 bytes"),
        (layout(name_length=65, name=b"x" * 65), "bad model name length 65"),
        (layout(name=b"\xff\xfe"), "model name is not valid UTF-8"),
        (layout(name=b"a\x00b"), "model name must be printable"),
        (layout(count=0, sections=(), lengths=[]), "bad section count 0: must be 1 to 16"),
        (layout(count=17, sections=(), lengths=[0] * 17), "bad section count 17"),
        (layout(lengths=[9, 2**32 - 1]), r"declares 4294967350 bytes .*got 71"),
        (layout(height=0), r"bad .iae header: image height must be an int in 1..65536, got 0"),
        (layout(width=2**16 + 1), r"image width must be an int in 1..65536, got 65537"),
        (layout(quality=3, colour=2), r"bad colour mode code 2: must be 1 \(grey\) or 3 \(rgb\)"),
        (layout(bit_depth=12), "bit depth must be 8 or 16, got 12"),
    ],
)
def test_unpack_names_the_problem(data, message):
    with pytest.raises(IaeFormatError, match=message):
        unpack(data)


def test_a_flipped_payload_bit_fails_the_checksum():
    data = bytearray(layout())
    data[45] ^= 0x10
    with pytest.raises(IaeFormatError, match="checksum mismatch"):
        unpack(bytes(data))


def test_iae_format_error_is_a_value_error_and_non_bytes_are_a_type_error():
    assert issubclass(IaeFormatError, ValueError)
    with pytest.raises(TypeError, match="data must be bytes, got str"):
        unpack("IAE")


def test_checks_run_before_allocation():
    # A header that claims ~4 GiB of sections costs nothing: it is refused on its length.
    start = time.perf_counter()
    with pytest.raises(IaeFormatError, match="truncated"):
        unpack(fix_crc(layout(lengths=[2**32 - 1] * 16, count=16, sections=())))
    assert time.perf_counter() - start < 0.1


# ------------------------------------------------------------------------------------- fuzz


@st.composite
def damaged_files(draw):
    data = bytearray(pack(draw(headers), draw(section_lists)))
    for _ in range(draw(st.integers(1, 4))):
        action = draw(st.sampled_from(["flip", "set", "truncate", "extend", "insert", "delete"]))
        at = draw(st.integers(0, len(data)))
        if action == "flip" and at < len(data):
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif action == "set" and at < len(data):
            data[at] = draw(st.sampled_from([0, 1, 2, 17, 64, 65, 127, 128, 255]))
        elif action == "truncate":
            del data[at:]
        elif action == "extend":
            data += draw(st.binary(min_size=1, max_size=32))
        elif action == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[at : at + draw(st.integers(1, 8))]
    if draw(st.booleans()) and len(data) > 4:
        data = bytearray(fix_crc(bytes(data)))  # damage behind a valid checksum reaches the field checks
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(damaged_files())
def test_damaged_files_raise_iae_format_error_or_parse(data):
    start = time.perf_counter()
    try:
        header, sections = unpack(data)
    except IaeFormatError as error:
        assert str(error)
    else:
        assert isinstance(header, IaeHeader) and all(isinstance(s, bytes) for s in sections)
        assert pack(header, sections) == data  # whatever parses is a valid file, byte for byte
    assert time.perf_counter() - start < 0.5


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_raise_iae_format_error_or_parse(data):
    for candidate in (data, MAGIC + data, MAGIC + b"\x01" + data):
        try:
            unpack(candidate)
        except IaeFormatError:
            pass


# --------------------------------------------------------------------------------- sections


@FAST
@given(st.lists(st.integers(1, 2**7), min_size=1, max_size=4), st.binary(max_size=40))
def test_section_round_trip(shape, payload):
    assert unpack_section(pack_section(shape, payload)) == (tuple(shape), payload)


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty section"),
        (b"\x00", "bad section rank 0"),
        (b"\x05" + bytes(20), "bad section rank 5"),
        (b"\x02\x01\x00\x00", "truncated section: its shape needs 9 bytes, got 4"),
        (pack_section((4, 4), b"")[:5] + bytes(4), r"bad section shape \(4, 0\)"),
        (b"\x03" + struct.pack("<3I", 2**16, 2**16, 192), "needs 1 to 268435456 elements"),
    ],
)
def test_unpack_section_errors(data, message):
    with pytest.raises(IaeFormatError, match=message):
        unpack_section(data)


def test_pack_section_rejects_bad_shapes():
    for shape in [(), (1, 2, 3, 4, 5), (0, 3), (2**32, 1), (2.0,), (2**16, 2**16, 192)]:
        with pytest.raises(ValueError, match="section"):
            pack_section(shape, b"")
    assert unpack_section(pack_section((2**20, 2**10), b"", max_elements=2**30), max_elements=2**30)[0] == (
        2**20,
        2**10,
    )
