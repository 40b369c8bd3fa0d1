"""Hostile and careless use of the learned codec (issue 19): resource bombs, trailing data in a
section, metadata that must survive, and the reports a newcomer needs.

The models here are tiny and UNTRAINED (RANDOM-WEIGHT STAND-INS): they test the plumbing and
the bounds, not picture quality. One test loads the shipped codec-v4 to pin its bytes.
"""

import csv
import hashlib
import struct
import tracemalloc
import zlib

import keras
import numpy as np
import pytest
from conftest import run_cli, smooth_image
from PIL import Image, ImageCms

import imageae
from imageae.codec import (
    DEFAULT_MAX_PIXELS,
    CodecSession,
    IaeFormatError,
    IaeHeader,
    ImageTooLargeError,
    compress_array,
    decode_factorized,
    decode_gaussian,
    decompress_bytes,
    encode_factorized,
    encode_gaussian,
    make_session_lookup,
    pack,
    pack_section,
    quantized_cdf_table,
    read_latents,
    scale_indexes,
    unpack,
)
from imageae.codec import transforms
from imageae.models.codec import build_codec

NAME = "codec-test-tiny"


def tiny_model():
    """RANDOM-WEIGHT STAND-IN: an untrained 2-quality codec, N=8, M=12 (deterministic weights)."""
    keras.utils.set_random_seed(3)
    return build_codec(num_filters=8, num_latent=12, lambdas=(0.003, 0.03))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def session(model):
    return CodecSession(model, NAME)


@pytest.fixture(scope="module")
def codec_path(tmp_path_factory, model):
    """The tiny codec as a .keras file, for the API and the command line."""
    path = tmp_path_factory.mktemp("codec") / "tiny-codec.keras"
    model.save(path)
    return path


def srgb_profile():
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def with_section(data, index, payload):
    header, sections = unpack(data)
    sections[index] = payload
    return pack(header, sections)


# ------------------------------------------------------------------ trailing data in a section


@pytest.mark.parametrize("word", [b"\x00\x00\x00\x00", b"\x01\x02\x03\x04", b"\xff\xff\xff\xff"])
@pytest.mark.parametrize("section", [0, 1], ids=["side", "main"])
def test_one_extra_word_after_a_section_is_refused(session, section, word):
    """docs/iae-format.md: a decoder refuses words left over after the last symbol. The range
    decoder reads a word past the end as zeros, so an appended word decoded to the same
    symbols and the file was accepted; now a stream must be the encoding of what it decodes to."""
    data = compress_array(session, smooth_image(70, 90, seed=1), 2)
    lookup = make_session_lookup(session)
    decompress_bytes(lookup, data)  # the file itself is fine
    damaged = with_section(data, section, unpack(data)[1][section] + word)
    with pytest.raises(IaeFormatError, match="not the encoding of the symbols it decodes to.*4 bytes of data after"):
        decompress_bytes(lookup, damaged)


def test_the_coders_refuse_any_stream_but_the_encoding_of_its_symbols():
    rng = np.random.default_rng(0)
    indexes = rng.integers(0, 64, (5, 7, 3))
    symbols = np.round(rng.normal(0, 1, indexes.shape) * 4).astype(np.int32)
    symbols[0, 0, 0] = 10**6  # an escape, so escape bits end the stream
    data = encode_gaussian(symbols, indexes)
    np.testing.assert_array_equal(decode_gaussian(data, indexes), symbols)
    table = quantized_cdf_table([0.1, 0.2, 0.4, 0.2, 0.1, 1e-6])
    z = np.array([[[0, 1], [-2, 9]]])
    side = encode_factorized(z, [table, table], [-2, -2])
    for extra in (b"\x00" * 4, b"\x00" * 8, b"abcd"):
        with pytest.raises(IaeFormatError, match="after the last symbol"):
            decode_gaussian(data + extra, indexes)
        with pytest.raises(IaeFormatError, match="after the last symbol"):
            decode_factorized(side + extra, [table, table], [-2, -2], z.shape)


def test_the_chunked_gaussian_coder_writes_the_same_bytes_as_one_pass(monkeypatch):
    """Large latents are coded in chunks of symbols (bounded memory); the bitstream is the one
    the whole-array coder wrote (a golden string, from before chunking)."""
    from imageae.codec import coder

    rng = np.random.default_rng(1)
    indexes = rng.integers(0, 64, 5000)
    symbols = np.round(rng.normal(0, 1, 5000) * coder.SCALE_TABLE[indexes] * rng.choice([1, 9], 5000))
    symbols = symbols.astype(np.int32)
    whole = encode_gaussian(symbols, indexes)
    monkeypatch.setattr(coder, "CHUNK_SYMBOLS", 7)
    assert encode_gaussian(symbols, indexes) == whole
    np.testing.assert_array_equal(decode_gaussian(whole, indexes), symbols)


# ------------------------------------------------------------------------------- resource bombs


def huge_file(height=65536, width=65536):
    """A well-formed, tiny .iae file whose header declares a huge image."""
    header = IaeHeader(NAME, 1, height, width, "rgb", 8)
    return pack(header, [pack_section((1, 1, 8), b""), pack_section((1, 1, 12), b"")])


def test_the_pixel_limit_is_checked_from_the_header_before_anything_else(session):
    def lookup(name):
        raise AssertionError("the model was looked up before the pixel limit was checked")

    with pytest.raises(ImageTooLargeError, match=r"65536x65536 = 4295.0 Mpixel, above the limit of 89.5 Mpixel"
                                                 r".*max_pixels=4294967296.*--max-pixels 4294967296"):
        decompress_bytes(lookup, huge_file())
    assert DEFAULT_MAX_PIXELS == Image.MAX_IMAGE_PIXELS == 89478485
    # A tiny limit on an ordinary file: refused before decoding, allowed when raised (or off).
    data = compress_array(session, smooth_image(20, 30, seed=2), 1)
    with pytest.raises(ImageTooLargeError, match="30x20 = 0.0 Mpixel"):
        read_latents(lookup, data, max_pixels=599)
    real = make_session_lookup(session)
    assert decompress_bytes(real, data, max_pixels=600).shape == (20, 30, 3)
    assert decompress_bytes(real, data, max_pixels=None).shape == (20, 30, 3)
    with pytest.raises(ValueError, match="image is 30x20.*above the limit"):
        compress_array(session, smooth_image(20, 30, seed=2), 1, max_pixels=599)
    with pytest.raises(ValueError, match="max_pixels must be a positive int or None, got 0"):
        decompress_bytes(real, data, max_pixels=0)


def test_the_api_and_the_command_line_take_a_pixel_limit(codec_path, tmp_path):
    image = smooth_image(20, 30, seed=3)
    data = imageae.compress(image, quality=1, model=str(codec_path))
    with pytest.raises(ImageTooLargeError, match="--max-pixels 600"):
        imageae.decompress(data, models=[str(codec_path)], max_pixels=100)
    assert imageae.decompress(data, models=[str(codec_path)], max_pixels=600).shape == (20, 30, 3)
    with pytest.raises(ValueError, match="above the limit"):
        imageae.compress(image, quality=1, model=str(codec_path), max_pixels=599)
    (tmp_path / "packed").mkdir()
    (tmp_path / "packed" / "a.iae").write_bytes(data)
    (tmp_path / "packed" / "bomb.iae").write_bytes(huge_file(20000, 20000))
    code, out, err = run_cli("decompress", tmp_path / "packed", "-o", tmp_path / "out", "--model", codec_path,
                             "--progress", "off")
    assert code == 1 and "bomb.iae" in err and "400.0 Mpixel, above the limit of 89.5 Mpixel" in err
    assert (tmp_path / "out" / "a.png").exists() and not (tmp_path / "out" / "bomb.png").exists()
    code, _, err = run_cli("decompress", tmp_path / "packed" / "a.iae", "-o", tmp_path / "out2", "--model",
                             codec_path, "--max-pixels", "100", "--progress", "off")
    assert code == 1 and "above the limit" in err
    Image.fromarray(image).save(tmp_path / "photo.png")
    code, _, err = run_cli("compress", tmp_path / "photo.png", "-o", tmp_path / "c", "--model", codec_path,
                             "--max-pixels", "100", "--progress", "off")
    assert code == 1 and "above the limit" in err


def test_tiled_hyper_synthesis_gives_the_whole_image_integers(session, monkeypatch):
    """h_s runs on windows of z in fixed point: exactly the whole-image scales and means."""
    rng = np.random.default_rng(4)
    z = rng.integers(-6, 7, (1, 9, 11, session.z_channels)).astype(np.int32)
    scales, means = transforms._scales_means(session, z, 2)
    monkeypatch.setattr(transforms, "HS_TILE", 2)
    indexes, tiled_means = transforms._indexes_means(session, z, 2)
    np.testing.assert_array_equal(indexes, scale_indexes(scales))
    np.testing.assert_array_equal(tiled_means, means)
    assert indexes.dtype == np.uint8


def _numpy_peak(fn):
    tracemalloc.start()
    try:
        result = fn()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_large_images_encode_and_decode_without_whole_image_float_copies(model):
    """Tiled coding keeps no float copy of the whole image: NumPy's peak (the model's latents
    are tiny here) stays near the uint8 output, where it used to hold the padded float32 image
    (12 bytes a pixel) and the float32 reconstruction. A flat 8192 x 8192 image, measured in a
    subprocess with codec-v4: 9.4 / 9.6 GB peak RSS before, see the issue 19 report for after."""
    tiled = CodecSession(model, NAME, tile=256)
    image = np.full((1024, 1536, 3), 117, np.uint8)
    pixels = image.shape[0] * image.shape[1]
    data, encode_peak = _numpy_peak(lambda: compress_array(tiled, image, 1))
    decoded, decode_peak = _numpy_peak(lambda: decompress_bytes(make_session_lookup(tiled), data))
    assert decoded.shape == image.shape
    # Before tiling from uint8: 13.5 and 48.5 bytes a pixel; now one window's floats and the
    # coder's per-chunk arrays on top of the latents (encode), plus the uint8 output (decode).
    assert encode_peak < 4 * pixels, encode_peak / pixels
    assert decode_peak < 6 * pixels, decode_peak / pixels


# --------------------------------------------------------------------------------- bytes pinned


TINY_V1_FILE = bytes.fromhex(
    "49414500010f636f6465632d746573742d74696e7902280000004600000003080219000000ad0100000301000000"
    "020000000800000095eabf89fea9b600c937d4f10304000000080000000c0000000200ffff58feeefe1df64d0520"
    "fb680080002d010204a2fd9bfd6cff6ffb0102f4fc540132fdfcfe60f93f02c103f5fd9b190df29cf5c605eff867"
    "05908a8f257917120900190df37a0f7fff723411d5d8ac9432a147014e5bff00e34202fe1df5d57a620078b169e1"
    "fd0200bc8f1477bf87c8d239ff00d1c75e7f3301cbc8cbcd6c6afe73775cc77154b6d5bbd1fff119ff0078e9d05f"
    "4928fe01b400b2ec9a80560aff0c6420150397e813188af0fbd5f7dfcbf2e541464e62b96b55588095d6dd588e83"
    "05b88701225860311e9ffdcdfe00702e71309133fe0173016d346e392a93fd39308d672e6d356801d920f488457a"
    "fd414a75b74ba4bb5e01544c559e5d62fda7fe00a25b130bb845fd014400405e7d59c1a0fe63bda34601386439f5"
    "9334fd7545530e01207621f4c60efd7bcd0935771f77197752146674f209f884fd01fcc504e20c9ec26182ceef99"
    "e7b720ed48b070974239d4abcbfe20eda0bb6008ca6e73dcb8367420c718b440b1a3bc1a66146a94ace46ae998d4"
    "db3372ee92535af85c0fa6e65bf351322aebc003fab22ea421be3cff72cbddd6efa0ff574309d9"
)


def sha(array_or_bytes):
    return hashlib.sha256(bytes(array_or_bytes) if isinstance(array_or_bytes, bytes)
                          else array_or_bytes.tobytes()).hexdigest()


def test_files_of_format_version_1_decode_and_files_without_a_profile_are_unchanged(session):
    """A version-1 file written before version 2 existed (by the code of commit af44166) decodes
    to the pixels it gave then, and the encoder still writes it byte for byte, tiled too."""
    image = smooth_image(40, 70, seed=5)
    assert TINY_V1_FILE[4] == 1 and unpack(TINY_V1_FILE)[0].icc_profile is None
    pixels = decompress_bytes(make_session_lookup(session), TINY_V1_FILE)
    assert sha(pixels) == "106a9f44303e104900010f33ec79226ca993fe12bed0e6fe4c5cb4a9a8026dc4"
    assert compress_array(session, image, 2) == TINY_V1_FILE
    tiled = CodecSession(session.model, NAME, tile=128)
    for shape, quality, file_sha, pixels_sha in (
        ((300, 430, 3), 2, "3ee730efe7b4e305197eb13d2363bd2bc42ea6756e0a3ccad7ae739c79caee77",
         "4ad5ceac892c331bcd5e033ad8ec978c527d871372663e61ff49ac9e15b2c12a"),
        ((300, 200, 1), 1, "14c9638c3c6aca14a01681d41761fe5b5ebcc94c10c70787b198e77d94d584ea",
         "b0f66e59318bf4d4fb10c78d251d23560b4f3c9749f77bc78a5695e278797cf1"),
    ):
        big = smooth_image(*shape[:2], channels=shape[2], seed=12 if shape[2] == 3 else 13)
        data = compress_array(tiled, big, quality)
        assert sha(data) == file_sha
        assert sha(decompress_bytes(make_session_lookup(tiled), data)) == pixels_sha


def test_the_shipped_codec_writes_the_same_bytes_as_before():
    data = imageae.compress(smooth_image(96, 144, seed=7), quality=6)
    assert sha(data) == "6c73d3ae2c83a83abc47b8c4ff4861ded097e9527318f4f7722c12fa18924b86"
    assert sha(imageae.decompress(data)) == "8f138f1d9e2cfe74f20217fb3303b7ee438b934b3620a8e144cb053a19a6808b"


# ------------------------------------------------------------------------------------- metadata


def test_the_icc_profile_travels_inside_the_file(session, codec_path):
    profile = srgb_profile()
    image = smooth_image(30, 40, seed=6)
    data = compress_array(session, image, 1, icc_profile=profile)
    plain = compress_array(session, image, 1)
    assert data[4] == 2 and plain[4] == 1
    header, sections = unpack(data)
    assert header.icc_profile == profile and sections == unpack(plain)[1]
    lookup = make_session_lookup(session)
    np.testing.assert_array_equal(decompress_bytes(lookup, data), decompress_bytes(lookup, plain))
    assert read_latents(lookup, data)[0].icc_profile == profile
    # The API: a PIL image's own profile is stored and comes back with return_icc.
    pil = Image.fromarray(image)
    pil.info["icc_profile"] = profile
    data = imageae.compress(pil, quality=1, model=str(codec_path))
    pixels, icc = imageae.decompress(data, models=[str(codec_path)], return_icc=True)
    assert icc == profile and pixels.shape == (30, 40, 3)
    assert imageae.decompress(imageae.compress(image, quality=1, model=str(codec_path)),
                              models=[str(codec_path)], return_icc=True)[1] is None
    assert unpack(imageae.compress(pil, quality=1, model=str(codec_path), icc_profile=b""))[0].icc_profile is None


def test_a_damaged_profile_length_is_refused():
    header = IaeHeader(NAME, 1, 4, 4, "rgb", 8, icc_profile=b"icc!")
    data = pack(header, [b"a", b"b"])
    assert unpack(data)[0].icc_profile == b"icc!"
    at = data.index(b"icc!") - 4
    for length, message in ((0, "bad ICC profile length 0"), (5, "truncated"), (2**30, "bad ICC profile length")):
        body = data[:at] + struct.pack("<I", length) + data[at + 4 : -4]
        with pytest.raises(IaeFormatError, match=message):
            unpack(body + struct.pack("<I", zlib.crc32(body)))
    with pytest.raises(ValueError, match="ICC profile must be 1 to"):
        pack(IaeHeader(NAME, 1, 4, 4, "rgb", 8, icc_profile=b""), [b"a"])


def test_compress_and_decompress_folders_keep_the_icc_profile(codec_path, tmp_path):
    profile = srgb_profile()
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.fromarray(smooth_image(30, 40, seed=8)).save(photos / "tagged.png", icc_profile=profile)
    Image.fromarray(smooth_image(30, 40, seed=9)).save(photos / "plain.png")
    assert imageae.compress_folder(photos, tmp_path / "packed", quality=1, model=str(codec_path)).ok
    assert unpack((tmp_path / "packed" / "tagged.iae").read_bytes())[0].icc_profile == profile
    assert unpack((tmp_path / "packed" / "plain.iae").read_bytes())[0].icc_profile is None
    report = imageae.decompress_folder(tmp_path / "packed", tmp_path / "out", models=[str(codec_path)])
    assert report.ok and len(report.written) == 2
    assert Image.open(tmp_path / "out" / "tagged.png").info.get("icc_profile") == profile
    assert not Image.open(tmp_path / "out" / "plain.png").info.get("icc_profile")


# ------------------------------------------------------------------------------ newcomer reports


def test_compress_reports_each_file_and_the_quality_target_bpp_chose(codec_path, tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(smooth_image(40, 50, seed=10 + i)).save(photos / f"p{i}.png")
    report = imageae.compress_folder(photos, tmp_path / "packed", quality=2, model=str(codec_path))
    assert [e["input"] for e in report.entries] == [str(photos / "p0.png"), str(photos / "p1.png")]
    for entry in report.entries:
        size = (tmp_path / "packed" / (entry["input"][-6:-4] + ".iae")).stat().st_size
        assert entry["bytes"] == size and entry["quality"] == 2 and entry["seconds"] > 0
        assert entry["bpp"] == pytest.approx(8 * size / (40 * 50), abs=1e-3)
    with open(tmp_path / "packed" / "compress-report.csv") as table:
        rows = list(csv.DictReader(table))
    assert [int(r["bytes"]) for r in rows] == [e["bytes"] for e in report.entries]
    code, out, err = run_cli("compress", photos, "-o", tmp_path / "target", "--model", codec_path,
                             "--target-bpp", "1000", "--progress", "off")
    assert code == 0, err
    assert "p0.png" in out and "quality 2" in out and "--target-bpp 1000 chose quality 2 (2 file(s))" in out
    assert "compress-report.csv" in out and "bpp overall" in out


def test_compress_reports_each_files_psnr_when_asked(codec_path, tmp_path):
    from imageae.metrics import psnr

    photos = tmp_path / "photos"
    photos.mkdir()
    image = smooth_image(40, 50, seed=3)
    Image.fromarray(image).save(photos / "p.png")
    code, out, err = run_cli("compress", photos, "-o", tmp_path / "packed", "--model", codec_path, "--quality", "2",
                             "--psnr", "--progress", "off")
    assert code == 0, err
    with open(tmp_path / "packed" / "compress-report.csv") as table:
        [row] = list(csv.DictReader(table))
    restored = imageae.decompress((tmp_path / "packed" / "p.iae").read_bytes(), models=[str(codec_path)])
    assert float(row["psnr"]) == pytest.approx(psnr(image, restored), abs=1e-3)
    assert f"{float(row['psnr']):.2f} dB" in out
    report = imageae.compress_folder(photos, tmp_path / "plain", quality=2, model=str(codec_path))
    assert "psnr" not in report.entries[0]  # decoding again only when asked


def test_the_progress_bar_moves_during_refinement(codec_path, tmp_path, monkeypatch):
    from imageae.pipelines import folder

    updates = []

    class Recorder:
        def update(self, n):
            updates.append(n)

        def close(self):
            pass

    monkeypatch.setattr(folder, "progress_bar", lambda total, **kwargs: Recorder())
    Image.fromarray(smooth_image(64, 64, seed=14)).save(tmp_path / "p.png")
    report = imageae.compress_folder(tmp_path / "p.png", tmp_path / "out", quality=1, model=str(codec_path),
                                     refine_steps=4)
    assert report.ok
    assert len(updates) == 5 and all(0 < n < 1 for n in updates[:4])  # once per step, then the rest
    assert sum(updates) == pytest.approx(1.0)


def test_decompress_with_no_iae_files_says_so(tmp_path):
    (tmp_path / "photos").mkdir()
    Image.fromarray(smooth_image(20, 20)).save(tmp_path / "photos" / "a.png")
    code, _, err = run_cli("decompress", tmp_path / "photos", "-o", tmp_path / "out")
    assert code == 2 and ".iae" in err and "nothing to do" in err
