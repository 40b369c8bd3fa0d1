"""The learned codec end to end: uint8 image -> .iae bytes -> uint8 image.

Properties, not shapes: decoding a file gives back exactly the model's quantized latents and
exactly ``crop(synthesize(dequantized latents))``; images keep their size and colour mode; the
file is as large as the rate estimates say; two processes write the same bytes; anything that
is not a valid file is refused with IaeFormatError; bad images with ValueError.

The models are tiny and UNTRAINED (see the fixtures): they reconstruct nothing recognisable.
Image quality belongs with the shipped weights.
"""

import dataclasses
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import keras
import numpy as np
import pytest
from conftest import smooth_image
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import imageae
from imageae.codec import (
    FORMAT_VERSION,
    GAUSSIAN_RADII,
    CodecSession,
    IaeFormatError,
    UnknownModelError,
    analyze_image,
    compress_array,
    decompress_bytes,
    estimate_bits,
    make_session_lookup,
    pack,
    pack_section,
    read_latents,
    scale_indexes,
    synthesize_image,
    unpack,
    unpack_section,
)
from imageae.codec.fixed_point import FixedPointHyperSynthesis
from imageae.models.codec import build_codec
from imageae.runtime import with_precision

NAME = "codec-test-tiny"
QUALITY = 1  # the fixtures are single-rate models (see the variable-rate tests at the end)
SHAPES = [(64, 64, 3), (70, 93, 3), (50, 60, 1)]  # a multiple of the stride, odd sizes, grey
FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def tiny_model(mean_scale=True, seed=3, gain=10.0):
    """An UNTRAINED codec model, N=8, M=12, with g_a's last kernel scaled by ``gain``.

    Random weights make y almost all zeros; scaled by 10 (as in test_codec_model.py) y spreads
    over several units while the untrained hyperprior still predicts the smallest scale, so
    the main section is full of escape codes: good for testing the plumbing, useless as a codec.
    """
    keras.utils.set_random_seed(seed)
    model = build_codec(num_filters=8, num_latent=12, mean_scale=mean_scale)
    kernel, bias = model.g_a[-1].get_weights()
    model.g_a[-1].set_weights([kernel * gain, bias])
    return model


@pytest.fixture(scope="module", params=[True, False], ids=["mean_scale", "scale_only"])
def model(request):
    """RANDOM-WEIGHT STAND-IN for a shipped codec: untrained, for exactness and plumbing only."""
    return tiny_model(mean_scale=request.param)


@pytest.fixture(scope="module")
def session(model):
    return CodecSession(model, NAME)


@pytest.fixture(scope="module")
def lookup(session):
    return make_session_lookup(session)


@pytest.fixture(scope="module")
def calibrated_session():
    """An untrained stand-in whose hyperprior is CALIBRATED BY HAND, for rate measurements.

    An untrained model predicts scales of 0.11 for latents that spread over several units, so
    its likelihoods hit their lower bound (1e-9, 30 bits) and ``estimate_bpp`` says nothing
    about what a coder spends. Here h_s's last layer is set to predict, per channel, the mean
    and standard deviation of y on a calibration image (kernel shrunk to 5%, so the prediction
    still depends a little on z): then the Gaussian model roughly fits the latents, as a
    trained model's does, and estimate_bpp is a rate a real coder can approach.
    """
    model = tiny_model(mean_scale=True)
    y = np.asarray(model.analyze(smooth_image(128, 128, seed=100)[None].astype(np.float32) / 255.0))
    kernel, _ = model.h_s[-1].get_weights()
    bias = np.concatenate([y.std(axis=(0, 1, 2)), y.mean(axis=(0, 1, 2))]).astype(np.float32)
    model.h_s[-1].set_weights([kernel * 0.05, bias])
    return CodecSession(model, NAME)


def test_image(shape, seed=1):
    image = smooth_image(shape[0], shape[1], channels=shape[2], seed=seed)
    return image[..., None] if shape[2] == 1 else image


test_image.__test__ = False  # a helper, not a test


def expected_decoding(model, image):
    """(z symbols, y symbols, decoded image) computed directly from the model's methods."""
    height, width, channels = image.shape
    x = np.repeat(image, 3 // channels, axis=-1)
    x = np.pad(x, ((0, -height % 64), (0, -width % 64), (0, 0)), mode="symmetric").astype(np.float32) / 255.0
    y = model.analyze(x[None])
    z_symbols = np.round(np.asarray(model.hyper(y))).astype(np.int32)
    _, means = FixedPointHyperSynthesis(model)(z_symbols)  # the coder's h_s: exact fixed point
    y_symbols = np.asarray(model.quantize_latents(y, means))
    x_hat = np.asarray(model.synthesize(model.dequantize_latents(y_symbols, means)))[0, :height, :width]
    if channels == 1:
        x_hat = x_hat.mean(axis=-1, keepdims=True)
    return z_symbols[0], y_symbols[0], np.round(np.clip(x_hat, 0.0, 1.0) * 255.0).astype(np.uint8)


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_decoding_gives_exactly_the_quantized_latents_and_their_synthesis(model, session, lookup, shape):
    image = test_image(shape)
    z_symbols, y_symbols, expected = expected_decoding(model, image)
    data = compress_array(session, image)

    _, used, latents = read_latents(lookup, data)
    assert used is session
    np.testing.assert_array_equal(latents.z_symbols, z_symbols)
    np.testing.assert_array_equal(latents.y_symbols, y_symbols)
    decoded = decompress_bytes(lookup, data)
    np.testing.assert_array_equal(decoded, expected)
    assert decoded.shape == image.shape and decoded.dtype == np.uint8

    # The test means something: latents are not all zero, and some need escape codes.
    assert np.count_nonzero(y_symbols) > y_symbols.size // 4
    radius = np.asarray(GAUSSIAN_RADII)[latents.scale_indexes]
    assert np.any(np.abs(latents.y_symbols) > radius)


def test_the_encoder_stores_what_analyze_image_computes(session, lookup):
    image = test_image((70, 93, 3), seed=5)
    stored = read_latents(lookup, compress_array(session, image))[2]
    computed = analyze_image(session, image)
    for got, want in zip(stored, computed):
        np.testing.assert_array_equal(got, want)


def test_sizes_and_modes_survive(session, lookup):
    for shape in [(1, 1, 3), (1, 130, 3), (65, 64, 1), (70, 93, 3)]:
        image = test_image(shape, seed=2)
        decoded = decompress_bytes(lookup, compress_array(session, image))
        assert decoded.shape == shape and decoded.dtype == np.uint8


def test_grey_stays_grey_and_a_two_dimensional_image_comes_back_with_one_channel(session, lookup):
    grey = smooth_image(50, 60, channels=1, seed=4)  # (H, W)
    data = compress_array(session, grey)
    assert unpack(data)[0].colour_mode == "grey"
    decoded = decompress_bytes(lookup, data)
    # The file records grey, not whether the input was (H, W) or (H, W, 1).
    assert decoded.shape == (50, 60, 1)
    np.testing.assert_array_equal(decoded, decompress_bytes(lookup, compress_array(session, grey[..., None])))


def test_a_grey_model_codes_grey_images_and_refuses_colour():
    keras.utils.set_random_seed(4)
    grey_session = CodecSession(build_codec(num_filters=8, num_latent=12, channels=1), "codec-test-grey")
    image = test_image((50, 60, 1))
    data = compress_array(grey_session, image)
    assert unpack(data)[0].colour_mode == "grey"
    assert decompress_bytes(make_session_lookup(grey_session), data).shape == (50, 60, 1)
    with pytest.raises(ValueError, match="grey images only"):
        compress_array(grey_session, test_image((50, 60, 3)))


def test_the_file_states_format_model_quality_and_the_original_image(session):
    data = compress_array(session, test_image((70, 93, 3)))
    assert data[:4] == b"IAE\x00" and data[4] == 1  # no ICC profile: version 1, as before version 2 existed
    header, sections = unpack(data)
    assert (header.model_name, header.quality, header.height, header.width) == (NAME, QUALITY, 70, 93)
    assert (header.colour_mode, header.bit_depth) == ("rgb", 8)
    # padded to 128 x 128: y is 8 x 8 x 12, z is 2 x 2 x 8
    assert [unpack_section(s)[0] for s in sections] == [(2, 2, 8), (8, 8, 12)]


def test_the_session_codes_in_float32_whatever_the_models_policy(model, session):
    image = test_image((64, 64, 3))
    mixed = with_precision(model, "mixed_bfloat16", copy=True)
    mixed_session = CodecSession(mixed, NAME)
    assert mixed_session.model.dtype_policy.name == "float32"
    assert compress_array(mixed_session, image) == compress_array(session, image)
    assert all(t.dtype == np.int32 and int(t.sum()) == 2**16 for t in session.z_tables)


# ----------------------------------------------------------------------------------- rate


def test_file_size_matches_the_models_rate_estimate(calibrated_session):
    """Real size within 3 % of estimate_bpp x pixels, plus the container's exact overhead.

    The bits under the integer tables (``table_bits``) must match the streams to within the
    range coder's final flush; the model's estimate differs from them by the rounding of each
    scale up to one of the 64 table scales and by the 16-bit tables (measured: +0.1 .. +0.6 %).
    """
    image = smooth_image(192, 256, seed=7)
    data = compress_array(calibrated_session, image)
    estimate = estimate_bits(calibrated_session, image)
    stream_bits = 8 * len(data) - estimate.overhead_bits
    assert estimate.model_bits > 5000  # a rate at which 3 % means something
    assert abs(stream_bits - estimate.model_bits) <= 0.03 * estimate.model_bits
    assert abs(stream_bits - estimate.table_bits) <= 128  # two streams, <= 64 bits of flush each


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_file_size_matches_the_table_estimate_even_for_an_uncalibrated_model(session, shape):
    """For the untrained models estimate_bpp is no guide (their likelihoods sit at the 30-bit
    floor, while escape codes cost less: files come out ~28 % below it), but the integer-table
    estimate still predicts the streams to within the coder's flush."""
    image = test_image(shape)
    data = compress_array(session, image)
    estimate = estimate_bits(session, image)
    assert abs(8 * len(data) - estimate.overhead_bits - estimate.table_bits) <= 128


# ---------------------------------------------------------------------- determinism across processes

CHILD = textwrap.dedent("""
    import sys
    import numpy as np
    import keras
    import imageae.models.codec  # registers HyperpriorCodec for loading
    from imageae.codec import CodecSession, compress_array, decompress_bytes, make_session_lookup

    model_path, image_path, out = sys.argv[1:4]
    session = CodecSession(keras.saving.load_model(model_path), "codec-test-tiny")
    data = compress_array(session, np.load(image_path))
    open(out + ".iae", "wb").write(data)
    np.save(out + ".npy", decompress_bytes(make_session_lookup(session), data))
""")


@pytest.mark.slow
def test_two_processes_write_the_same_bytes_and_decode_the_same_pixels(tmp_path):
    model = tiny_model(mean_scale=True)
    session = CodecSession(model, NAME)
    lookup = make_session_lookup(session)
    model_path = tmp_path / "codec.keras"
    model.save(model_path)
    image = test_image((70, 93, 3), seed=9)
    np.save(tmp_path / "image.npy", image)
    env = {**os.environ, "PYTHONPATH": str(Path(imageae.__file__).resolve().parent.parent), "TF_CPP_MIN_LOG_LEVEL": "3"}
    children = [
        subprocess.Popen([sys.executable, "-c", CHILD, str(model_path), str(tmp_path / "image.npy"),
                          str(tmp_path / f"child{i}")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for i in range(2)
    ]
    for child in children:
        _, err = child.communicate(timeout=120)
        assert child.returncode == 0, err.decode()[-2000:]
    files = [(tmp_path / f"child{i}.iae").read_bytes() for i in range(2)]
    pixels = [np.load(tmp_path / f"child{i}.npy") for i in range(2)]
    assert files[0] == files[1] == compress_array(session, image)
    np.testing.assert_array_equal(pixels[0], pixels[1])
    np.testing.assert_array_equal(pixels[0], decompress_bytes(lookup, files[0]))


# ------------------------------------------------------------------------------ bad files


@pytest.fixture(scope="module")
def valid_file(session):
    return compress_array(session, test_image((70, 93, 3)))


def repack(data, *, sections=None, **header_changes):
    """``data`` with header fields or sections replaced, under a correct checksum."""
    header, old_sections = unpack(data)
    return pack(dataclasses.replace(header, **header_changes), old_sections if sections is None else sections)


def test_damaged_and_foreign_files_are_refused_with_a_reason(lookup, valid_file):
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(40)
    flipped = bytearray(valid_file)
    flipped[len(flipped) // 2] ^= 0x10
    newer = bytearray(valid_file)
    newer[4] = FORMAT_VERSION + 1
    cases = {
        b"": "empty data",
        valid_file[:-1]: "truncated",
        valid_file[:20]: "truncated",
        valid_file + b"\x00": "trailing garbage",
        bytes(flipped): "checksum mismatch",
        bytes(newer): f"version {FORMAT_VERSION + 1}.*upgrade imageae",
        b"JUNK" + valid_file[4:]: "not an .iae file",
        png: "not an .iae file",
    }
    for data, message in cases.items():
        with pytest.raises(IaeFormatError, match=message):
            decompress_bytes(lookup, data)


def test_a_file_from_a_model_that_is_not_installed_is_refused_by_name(model, lookup):
    other = CodecSession(model, "codec-someone-else")
    data = compress_array(other, test_image((64, 64, 3)))
    with pytest.raises(UnknownModelError, match="model 'codec-someone-else', which is not installed.*codec-test-tiny"):
        decompress_bytes(lookup, data)
    assert decompress_bytes(make_session_lookup(other), data).shape == (64, 64, 3)


def test_files_the_model_cannot_have_written_are_refused(lookup, valid_file):
    _, (side, main) = unpack(valid_file)
    cases = [
        (repack(valid_file, quality=2), r"quality 2.*has qualities 1\.\.1"),
        (repack(valid_file, quality=0), r"quality 0.*has qualities 1\.\.1"),
        (repack(valid_file, bit_depth=16), "16 bits"),
        (repack(valid_file, height=200), r"side section declares latent shape \(2, 2, 8\).*200x93 image needs \(4, 2, 8\)"),
        (repack(valid_file, sections=[main, side]), "side section declares latent shape"),
        (repack(valid_file, sections=[side]), "1 sections"),
        # (The coder lets damage within its 96-bit slack through, e.g. one word more or less:
        # within a file the checksum catches that. These are beyond the slack.)
        (repack(valid_file, sections=[side, main[: len(main) // 2 // 4 * 4 + 1]]), "corrupt bitstream"),
        (repack(valid_file, sections=[side, main + bytes(8)]), "corrupt bitstream: data left after the last symbol"),
        (repack(valid_file, sections=[side, main[:3]]), "truncated section"),
    ]
    for data, message in cases:
        with pytest.raises(IaeFormatError, match=message):
            decompress_bytes(lookup, data)


def test_a_size_that_pads_to_the_same_latents_decodes_to_that_size(lookup, valid_file):
    """70x93 and 71x100 both pad to 128x128: the header's size is what the decoder returns."""
    assert decompress_bytes(lookup, repack(valid_file, height=71, width=100)).shape == (71, 100, 3)


MUTATION = st.tuples(st.sampled_from(["flip", "set", "delete", "insert"]), st.integers(0, 2**20), st.integers(0, 255))


def mutate(data, mutations):
    data = bytearray(data)
    for kind, position, value in mutations:
        at = position % (len(data) + (kind == "insert")) if data or kind == "insert" else 0
        if kind == "flip" and data:
            data[at] ^= 1 << (value % 8)
        elif kind == "set" and data:
            data[at] = value
        elif kind == "delete" and data:
            del data[at]
        elif kind == "insert":
            data.insert(at, value)
    return bytes(data)


def decodes_or_is_refused(lookup, data):
    """Decoding gives a uint8 image of the header's size, or raises IaeFormatError; nothing else."""
    started = time.monotonic()
    try:
        decoded = decompress_bytes(lookup, data)
    except IaeFormatError:
        pass
    else:
        header = unpack(data)[0]
        assert decoded.dtype == np.uint8
        assert decoded.shape == (header.height, header.width, 1 if header.colour_mode == "grey" else 3)
    assert time.monotonic() - started < 10.0


@FUZZ
@given(mutations=st.lists(MUTATION, min_size=1, max_size=4), cut=st.integers(0, 2**20))
def test_fuzz_mutated_files_are_refused_with_iae_format_error(lookup, valid_file, mutations, cut):
    data = mutate(valid_file, mutations)
    decodes_or_is_refused(lookup, data)
    decodes_or_is_refused(lookup, data[: cut % (len(data) + 1)])


@FUZZ
@given(
    which=st.sampled_from([0, 1]),
    mutations=st.lists(MUTATION, min_size=1, max_size=3),
    size=st.one_of(st.none(), st.tuples(st.integers(1, 300), st.integers(1, 300))),
)
def test_fuzz_mutated_sections_under_a_valid_checksum_are_refused_with_iae_format_error(
    lookup, valid_file, which, mutations, size
):
    """The checksum is recomputed, so the damage reaches the shape checks, the range decoder and
    the model (huge escaped values, NaN scales)."""
    _, sections = unpack(valid_file)
    sections[which] = mutate(sections[which], mutations)
    changes = {} if size is None else {"height": size[0], "width": size[1]}
    decodes_or_is_refused(lookup, repack(valid_file, sections=sections, **changes))


def test_extreme_latents_under_a_valid_checksum_decode_without_errors_or_warnings(session, lookup, valid_file):
    """int32-extreme hyper-latents and residuals (escape codes) flow through the model; what comes
    out (inf/NaN included) is clipped to valid pixels, never an exception or a cast warning."""
    from imageae.codec import encode_factorized, encode_gaussian

    header, (side, main) = unpack(valid_file)
    z_shape, _ = unpack_section(side)
    y_shape, _ = unpack_section(main)
    z = np.full(z_shape, 2**31 - 1, np.int32)
    z[..., ::2] = -(2**31)
    z_section = pack_section(z_shape, encode_factorized(z, session.z_tables, session.z_offsets))
    scales, _ = session.hyper_synthesis(z[None])  # the indexes the decoder derives
    y = np.full(y_shape, 2**31 - 1, np.int32)
    y[..., ::3] = -(2**31)
    y_section = pack_section(y_shape, encode_gaussian(y, scale_indexes(np.asarray(scales)[0])))
    with np.errstate(all="raise"):
        decodes_or_is_refused(lookup, repack(valid_file, sections=[z_section, main]))
        data = repack(valid_file, sections=[z_section, y_section])
        decoded = decompress_bytes(lookup, data)
    assert decoded.shape == (header.height, header.width, 3)
    np.testing.assert_array_equal(read_latents(lookup, data)[2].y_symbols, y)


# ------------------------------------------------------------------------------ bad images


def test_images_the_codec_does_not_store_are_refused_with_the_reason(session):
    rgb = test_image((20, 30, 3))
    cases = [
        (rgb.astype(np.uint16) * 257, "uint8, got dtype uint16.*16-bit"),
        (rgb.astype(np.float32) / 255, "uint8, got dtype float32"),
        (np.zeros((20, 30, 4), np.uint8), "alpha is not stored by the codec; drop it.*or use PNG"),
        (np.zeros((20, 30, 2), np.uint8), "alpha is not stored by the codec"),
        (np.zeros((20, 30, 5), np.uint8), r"1 \(grey\) or 3 \(RGB\) channels, got shape \(20, 30, 5\)"),
        (np.zeros((1, 20, 30, 3), np.uint8), r"\(H, W\) or \(H, W, C\), got 4 dimensions"),
        (np.zeros(30, np.uint8), "got 1 dimensions"),
        (np.zeros((0, 30, 3), np.uint8), "empty"),
        (np.zeros((1, 70000, 3), np.uint8), "width must be an int in 1..65536"),
    ]
    for image, message in cases:
        with pytest.raises(ValueError, match=message):
            compress_array(session, image)
    with pytest.raises(TypeError, match="numpy array"):
        compress_array(session, rgb.tolist())


def test_bad_sessions_are_refused(model, session):
    with pytest.raises(ValueError, match="model name"):
        CodecSession(model, "x" * 65)
    with pytest.raises(ValueError, match="model name"):
        CodecSession(model, "")
    with pytest.raises(ValueError, match="quality must be 1..1"):
        compress_array(session, test_image((64, 64, 3)), quality=2)
    with pytest.raises(ValueError, match="two sessions"):
        make_session_lookup(session, session)
    with pytest.raises(TypeError):
        make_session_lookup(model)


# ------------------------------------------------------------------------------ variable rate

LAMBDAS = (0.003, 0.013, 0.05)


@pytest.fixture(scope="module")
def variable_session():
    """RANDOM-WEIGHT STAND-IN with three qualities (gains initialised from the lambdas)."""
    keras.utils.set_random_seed(6)
    model = build_codec(num_filters=8, num_latent=12, lambdas=LAMBDAS)
    kernel, bias = model.g_a[-1].get_weights()
    model.g_a[-1].set_weights([kernel * 10.0, bias])
    return CodecSession(model, "codec-test-variable")


def test_every_quality_round_trips_exactly_and_higher_quality_spends_more_bits(variable_session):
    lookup = make_session_lookup(variable_session)
    image = test_image((70, 93, 3), seed=4)
    sizes = []
    for quality in (1, 2, 3):
        data = compress_array(variable_session, image, quality=quality)
        header = unpack(data)[0]
        assert header.quality == quality
        latents = analyze_image(variable_session, image, quality=quality)
        _, _, decoded = read_latents(lookup, data)
        np.testing.assert_array_equal(decoded.y_symbols, latents.y_symbols)
        np.testing.assert_array_equal(decoded.z_symbols, latents.z_symbols)
        assert decoded.quality == quality
        # decoding synthesizes with the quality the file states
        expected = synthesize_image(variable_session, latents, 70, 93, "rgb")
        np.testing.assert_array_equal(decompress_bytes(lookup, data), expected)
        sizes.append(len(data))
    assert sizes[0] < sizes[1] < sizes[2]


def test_a_variable_rate_model_needs_a_quality_it_has(variable_session):
    image = test_image((64, 64, 3))
    with pytest.raises(ValueError, match="qualities 1..3: give a quality"):
        compress_array(variable_session, image)
    for bad in (0, 4, 2.0, True):
        with pytest.raises(ValueError, match="quality must be"):
            compress_array(variable_session, image, quality=bad)
    data = compress_array(variable_session, image, quality=3)
    with pytest.raises(IaeFormatError, match=r"quality 4.*has qualities 1\.\.3"):
        decompress_bytes(make_session_lookup(variable_session), repack(data, quality=4))


def test_large_images_run_in_tiles_with_the_whole_image_result(variable_session):
    """Tiles of 128 pixels (8 latents a side) on a 300 x 430 image: the latents and the decoded
    pixels match the untiled session's up to float rounding."""
    from imageae.codec.session import CodecSession as Session

    tiled = Session(variable_session.model, variable_session.name, tile=128)
    image = test_image((300, 430, 3), seed=12)
    whole = analyze_image(variable_session, image, 2)
    parts = analyze_image(tiled, image, 2)
    assert np.mean(parts.y_symbols != whole.y_symbols) < 1e-3  # a symbol at a rounding boundary may flip
    np.testing.assert_array_equal(parts.z_symbols, whole.z_symbols)
    a = synthesize_image(variable_session, whole, 300, 430, "rgb").astype(int)
    b = synthesize_image(tiled, whole, 300, 430, "rgb").astype(int)
    assert np.abs(a - b).max() <= 1
    data = compress_array(tiled, image, 2)
    assert data == compress_array(tiled, image, 2)  # tiled coding is deterministic too
    assert decompress_bytes(make_session_lookup(tiled), data).shape == (300, 430, 3)
    with pytest.raises(ValueError, match="multiple of the model's stride"):
        Session(variable_session.model, variable_session.name, tile=100)
