"""Image files in and out: discovery, faithful decoding, encoding and atomic writes."""

import io
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import (
    bright_corner,
    exif_orientation_bytes,
    marked_corner_image,
    noise_image,
    part_files,
    save_text_as_png,
    save_truncated_jpeg,
    smooth_image,
)
from PIL import Image

from imageae.data import io as image_io
from imageae.data.io import (
    DecodedImage,
    ImageReadError,
    ImageWriteError,
    encode_image,
    find_images,
    from_float,
    output_format,
    read_image,
    write_bytes_atomic,
    write_image,
)


@pytest.fixture
def reread(tmp_path):
    """Encode a DecodedImage as a format and decode the bytes again, through a file."""
    counter = iter(range(10**6))

    def encode_and_read(image, fmt):
        return read_bytes(encode_image(image, fmt))

    def read_bytes(data):
        path = tmp_path / f"reread-{next(counter)}"
        path.write_bytes(data)
        return read_image(path)

    encode_and_read.bytes = read_bytes
    return encode_and_read


# ------------------------------------------------------------------------------ find_images


@pytest.fixture
def image_tree(tmp_path):
    root = tmp_path / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    for relative in ["b.png", "a.JPG", "sub/c.Png", "sub/deeper/d.tiff", "sub/e.jpeg", "notes.txt", "sub/archive.zip"]:
        (root / relative).write_bytes(b"x")
    return root


def test_find_images_walks_folders_recursively_in_sorted_order(image_tree):
    found = find_images(image_tree)
    assert [rel.as_posix() for _, rel in found] == [
        "a.JPG",
        "b.png",
        "sub/c.Png",
        "sub/deeper/d.tiff",
        "sub/e.jpeg",
    ]
    assert all(path == image_tree / rel for path, rel in found)


def test_find_images_matches_extensions_in_any_case_and_ignores_other_files(image_tree):
    names = {path.name for path, _ in find_images(image_tree)}
    assert {"a.JPG", "c.Png", "e.jpeg", "d.tiff"} <= names
    assert "notes.txt" not in names and "archive.zip" not in names


def test_find_images_non_recursive_stays_in_the_top_folder(image_tree):
    found = find_images(image_tree, recursive=False)
    assert [rel.as_posix() for _, rel in found] == ["a.JPG", "b.png"]


def test_find_images_lists_an_explicit_file_whatever_its_extension(image_tree):
    # a file named on purpose is reported (and later fails) rather than silently skipped
    found = find_images([image_tree / "notes.txt", image_tree / "sub"])
    assert found[0] == (image_tree / "notes.txt", Path("notes.txt"))
    assert [rel.as_posix() for _, rel in found[1:]] == ["c.Png", "deeper/d.tiff", "e.jpeg"]


def test_find_images_accepts_a_single_string_path(image_tree):
    assert find_images(str(image_tree / "b.png")) == [(image_tree / "b.png", Path("b.png"))]


def test_find_images_missing_input_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        find_images([tmp_path, tmp_path / "nowhere"])


# ------------------------------------------------------------------ decode / encode round trips


def test_grey_png_round_trips_exactly(tmp_path, reread):
    pixels = noise_image((13, 17))
    Image.fromarray(pixels).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    assert image.format == "PNG" and image.bit_depth == 8 and image.alpha is None
    np.testing.assert_array_equal(image.pixels[..., 0], pixels)
    assert image.channels == 1  # grey stays grey, not three equal channels
    np.testing.assert_array_equal(reread(image, "PNG").pixels, image.pixels)


def test_rgb_png_round_trips_exactly(tmp_path, reread):
    pixels = noise_image((13, 17, 3))
    Image.fromarray(pixels).save(tmp_path / "c.png")
    image = read_image(tmp_path / "c.png")
    np.testing.assert_array_equal(image.pixels, pixels)
    assert image.alpha is None and image.bit_depth == 8
    np.testing.assert_array_equal(reread(image, "PNG").pixels, pixels)


def test_rgba_png_keeps_alpha_apart_and_exact(tmp_path, reread):
    pixels = noise_image((13, 17, 4), seed=3)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    np.testing.assert_array_equal(image.pixels, pixels[..., :3])
    np.testing.assert_array_equal(image.alpha, pixels[..., 3])
    back = reread(image, "PNG")
    np.testing.assert_array_equal(back.pixels, pixels[..., :3])
    np.testing.assert_array_equal(back.alpha, pixels[..., 3])
    assert np.asarray(Image.open(io.BytesIO(encode_image(image, "PNG")))).tolist() == pixels.tolist()


def test_grey_alpha_png_stays_grey_with_alpha(tmp_path):
    pixels = noise_image((13, 17, 2), seed=4)
    Image.fromarray(pixels).save(tmp_path / "la.png")
    image = read_image(tmp_path / "la.png")
    assert image.channels == 1
    np.testing.assert_array_equal(image.pixels[..., 0], pixels[..., 0])
    np.testing.assert_array_equal(image.alpha, pixels[..., 1])
    written = Image.open(io.BytesIO(encode_image(image, "PNG")))
    assert written.mode == "LA"
    np.testing.assert_array_equal(np.asarray(written), pixels)


def test_sixteen_bit_grey_png_stays_sixteen_bit_and_exact(tmp_path, reread):
    pixels = noise_image((13, 17), np.uint16, seed=5)
    Image.fromarray(pixels).save(tmp_path / "g16.png")
    image = read_image(tmp_path / "g16.png")
    assert image.bit_depth == 16 and image.pixels.dtype == np.uint16 and image.channels == 1
    np.testing.assert_array_equal(image.pixels[..., 0], pixels)
    back = reread(image, "PNG")
    assert back.bit_depth == 16
    np.testing.assert_array_equal(back.pixels, image.pixels)


def test_sixteen_bit_rgb_png_stays_sixteen_bit_and_exact_in_rgb_order(tmp_path, reread):
    bgr = noise_image((13, 17, 3), np.uint16, seed=6)
    assert cv2.imwrite(str(tmp_path / "c16.png"), bgr)  # OpenCV arrays are BGR
    image = read_image(tmp_path / "c16.png")
    assert image.bit_depth == 16 and image.pixels.dtype == np.uint16
    np.testing.assert_array_equal(image.pixels, bgr[..., ::-1])
    back = reread(image, "PNG")
    np.testing.assert_array_equal(back.pixels, image.pixels)
    # Pillow (8-bit) agrees on which channel is red
    eight_bit = np.asarray(Image.open(tmp_path / "c16.png").convert("RGB")).astype(int)
    assert np.abs(eight_bit - (image.pixels >> 8)).max() <= 1


def test_sixteen_bit_rgba_png_keeps_sixteen_bit_alpha(tmp_path, reread):
    bgra = noise_image((13, 17, 4), np.uint16, seed=7)
    assert cv2.imwrite(str(tmp_path / "c16a.png"), bgra)
    image = read_image(tmp_path / "c16a.png")
    np.testing.assert_array_equal(image.pixels, bgra[..., 2::-1])
    np.testing.assert_array_equal(image.alpha, bgra[..., 3])
    back = reread(image, "PNG")
    np.testing.assert_array_equal(back.pixels, image.pixels)
    np.testing.assert_array_equal(back.alpha, image.alpha)


@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_tiff_stays_sixteen_bit_and_exact(tmp_path, reread, channels):
    shape = (13, 17) if channels == 1 else (13, 17, 3)
    array = noise_image(shape, np.uint16, seed=8)
    assert cv2.imwrite(str(tmp_path / "scan.tif"), array)
    image = read_image(tmp_path / "scan.tif")
    assert image.format == "TIFF" and image.bit_depth == 16 and image.channels == channels
    expected = array[..., None] if channels == 1 else array[..., ::-1]
    np.testing.assert_array_equal(image.pixels, expected)
    back = reread(image, "TIFF")
    assert back.bit_depth == 16
    np.testing.assert_array_equal(back.pixels, expected)


def test_pillow_written_sixteen_bit_tiff_is_read_exactly(tmp_path):
    pixels = noise_image((13, 17), np.uint16, seed=9)
    Image.fromarray(pixels).save(tmp_path / "scan.tiff")
    image = read_image(tmp_path / "scan.tiff")
    assert image.bit_depth == 16
    np.testing.assert_array_equal(image.pixels[..., 0], pixels)


@pytest.mark.parametrize("channels", [1, 3])
def test_bmp_round_trips_exactly(tmp_path, reread, channels):
    pixels = noise_image((13, 17) if channels == 1 else (13, 17, 3), seed=10)
    Image.fromarray(pixels).save(tmp_path / "x.bmp")
    image = read_image(tmp_path / "x.bmp")
    assert image.format == "BMP" and image.channels == channels
    np.testing.assert_array_equal(image.pixels.reshape(pixels.shape), pixels)
    np.testing.assert_array_equal(reread(image, "BMP").pixels, image.pixels)


@pytest.mark.parametrize("mode", ["RGB", "RGBA"])
def test_webp_keeps_size_mode_and_alpha(tmp_path, mode):
    pixels = smooth_image(21, 34, channels=len(mode))
    Image.fromarray(pixels, mode).save(tmp_path / "x.webp", lossless=True)
    image = read_image(tmp_path / "x.webp")
    assert image.format == "WEBP" and image.pixels.shape == (21, 34, 3)
    assert (image.alpha is not None) == (mode == "RGBA")
    written = Image.open(io.BytesIO(encode_image(image, "WEBP")))
    assert written.format == "WEBP" and written.mode == mode and written.size == (34, 21)


def test_single_frame_gif_is_read_and_written_as_png_by_default(tmp_path):
    first = np.zeros((12, 20, 3), np.uint8)
    first[:, :10] = (255, 0, 0)
    first[:, 10:] = (0, 0, 255)
    Image.fromarray(first).save(tmp_path / "still.gif")
    image = read_image(tmp_path / "still.gif")
    assert image.format == "GIF"
    np.testing.assert_array_equal(image.pixels, first)
    # a processed image must not be re-quantised to a 256-colour palette
    assert output_format("GIF") == "PNG"


def test_animated_gif_is_refused_naming_its_frames_not_cut_to_the_first(tmp_path):
    first = np.zeros((12, 20, 3), np.uint8)
    second = np.full((12, 20, 3), (0, 255, 0), np.uint8)
    frames = [Image.fromarray(first), Image.fromarray(second)]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=100, loop=0)
    with pytest.raises(ImageReadError, match=r"has 2 frames; imageae reads single images.*split it first"):
        read_image(tmp_path / "anim.gif")


def test_output_format_keeps_the_source_format_or_follows_the_extension():
    assert output_format("JPEG") == "JPEG"
    assert output_format("TIFF") == "TIFF"
    assert output_format("PNG", "jpg") == "JPEG"
    assert output_format("PNG", ".WEBP") == "WEBP"
    assert output_format("MPO") == "PNG"  # anything we do not write falls back to PNG
    with pytest.raises(ImageWriteError, match="gif"):
        output_format("PNG", "gif")


@pytest.mark.parametrize(
    "orientation, expected_shape, expected_corner",
    [
        (1, (24, 40), "tl"),
        (3, (24, 40), "br"),  # rotated 180 degrees
        (6, (40, 24), "tr"),  # rotate 90 degrees clockwise to display
        (8, (40, 24), "bl"),  # rotate 90 degrees anticlockwise to display
    ],
)
def test_jpeg_exif_orientation_is_applied(tmp_path, orientation, expected_shape, expected_corner):
    stored = marked_corner_image(24, 40)
    path = tmp_path / f"camera-{orientation}.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif_orientation_bytes(orientation))
    image = read_image(path)
    assert image.pixels.shape[:2] == expected_shape
    assert bright_corner(image.pixels) == expected_corner


@pytest.mark.parametrize("orientation", range(1, 9))
def test_sixteen_bit_orientation_matches_eight_bit_orientation(tmp_path, orientation):
    # 16-bit files take a separate (OpenCV) path; it must rotate exactly as Pillow does
    pixels = noise_image((5, 7), seed=orientation)
    exif = exif_orientation_bytes(orientation)
    Image.fromarray(pixels).save(tmp_path / "e8.png", exif=exif)
    Image.fromarray(pixels.astype(np.uint16) * 257).save(tmp_path / "e16.png", exif=exif)
    eight, sixteen = read_image(tmp_path / "e8.png"), read_image(tmp_path / "e16.png")
    assert sixteen.bit_depth == 16
    np.testing.assert_array_equal(sixteen.pixels, eight.pixels.astype(np.uint16) * 257)
    assert eight.pixels.shape[:2] == ((7, 5) if orientation >= 5 else (5, 7))


def test_truncated_jpeg_raises_image_read_error(tmp_path):
    save_truncated_jpeg(tmp_path / "cut.jpg")
    with pytest.raises(ImageReadError, match="(?i)cannot decode image: .*truncated"):
        read_image(tmp_path / "cut.jpg")


def test_text_file_named_png_raises_image_read_error(tmp_path):
    save_text_as_png(tmp_path / "notes.png")
    with pytest.raises(ImageReadError, match="not an image file"):
        read_image(tmp_path / "notes.png")


def test_empty_file_raises_image_read_error(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(ImageReadError, match="empty"):
        read_image(tmp_path / "empty.png")


def test_missing_file_raises_image_read_error(tmp_path):
    with pytest.raises(ImageReadError, match="cannot read file"):
        read_image(tmp_path / "gone.png")


def test_image_read_error_is_a_value_error():
    # callers that catch ValueError (the CLI does) also catch unreadable images
    assert issubclass(ImageReadError, ValueError) and issubclass(ImageWriteError, ValueError)


# ---------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("fmt", ["JPEG", "BMP"])
def test_encode_refuses_to_drop_alpha(fmt):
    image = DecodedImage(noise_image((4, 5, 3)), noise_image((4, 5)), 8, "PNG")
    with pytest.raises(ImageWriteError, match="alpha"):
        encode_image(image, fmt)


def test_sixteen_bit_image_is_rounded_to_eight_bits_for_jpeg(reread):
    pixels = np.array([[0, 257 * 100, 65535, 257 * 200]], np.uint16).reshape(1, 4, 1)
    pixels = np.repeat(np.repeat(pixels, 8, axis=0), 8, axis=1)  # flat 8x8 blocks survive JPEG
    decoded = reread.bytes(encode_image(DecodedImage(pixels, None, 16, "PNG"), "JPEG"))
    assert decoded.bit_depth == 8 and decoded.format == "JPEG"
    centres = decoded.pixels[4, [4, 12, 20, 28], 0].astype(int)
    assert np.abs(centres - [0, 100, 255, 200]).max() <= 2


def test_write_image_picks_the_format_from_the_extension(tmp_path):
    image = DecodedImage(noise_image((6, 7, 3)), None, 8, "PNG")
    write_image(tmp_path / "out.tif", image)
    assert Image.open(tmp_path / "out.tif").format == "TIFF"
    np.testing.assert_array_equal(read_image(tmp_path / "out.tif").pixels, image.pixels)


# ---------------------------------------------------------------------------- atomic writes


def test_write_bytes_atomic_creates_folders_and_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a" / "b" / "out.png"
    write_bytes_atomic(target, b"first")
    assert target.read_bytes() == b"first"
    write_bytes_atomic(target, b"second, longer")
    assert target.read_bytes() == b"second, longer"
    assert sorted(p.name for p in target.parent.iterdir()) == ["out.png"]
    assert part_files(tmp_path) == []


def test_write_bytes_atomic_gives_the_usual_permissions_not_the_temp_files_0600(tmp_path):
    target = tmp_path / "out.bin"
    write_bytes_atomic(target, b"x")
    mask = os.umask(0)
    os.umask(mask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~mask


def test_write_bytes_atomic_replaces_the_file_instead_of_rewriting_it(tmp_path):
    target = tmp_path / "out.png"
    target.write_bytes(b"old contents")
    with open(target, "rb") as reader:  # a reader that opened the old file ...
        write_bytes_atomic(target, b"new")
        assert reader.read() == b"old contents"  # ... never sees a half-written one
    assert target.read_bytes() == b"new"


def test_write_bytes_atomic_failure_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"old contents")

    def fail(*args):
        raise OSError("disk full")

    monkeypatch.setattr(image_io.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        write_bytes_atomic(target, b"new")
    monkeypatch.undo()
    assert target.read_bytes() == b"old contents"
    assert part_files(tmp_path) == []


# -------------------------------------------------------------------------------- from_float


def test_from_float_clips_and_keeps_eight_bit_depth_alpha_and_format():
    alpha = np.array([[7, 9, 11]], np.uint8)
    like = DecodedImage(np.zeros((1, 3, 1), np.uint8), alpha, 8, "WEBP")
    out = from_float(np.array([[[-0.2], [0.5], [1.3]]], np.float32), like)
    assert out.pixels.dtype == np.uint8 and out.bit_depth == 8 and out.format == "WEBP"
    assert out.pixels[..., 0].tolist() == [[0, 128, 255]]
    assert out.alpha is alpha


def test_from_float_keeps_sixteen_bit_depth():
    like = DecodedImage(np.zeros((1, 3, 1), np.uint16), None, 16, "PNG")
    out = from_float(np.array([[[-1.0], [0.5], [2.0]]]), like)
    assert out.pixels.dtype == np.uint16 and out.bit_depth == 16
    assert out.pixels[..., 0].tolist() == [[0, 32768, 65535]]


def test_to_float_and_from_float_are_inverse():
    for dtype, depth in ((np.uint8, 8), (np.uint16, 16)):
        image = DecodedImage(noise_image((9, 11, 3), dtype), None, depth, "PNG")
        np.testing.assert_array_equal(from_float(image.to_float(), image).pixels, image.pixels)
