"""Hostile and careless inputs at the image edges (issue 19): metadata, pages, odd pixel formats
and every Pillow mode through the Python API.

Each test fails on the code before issue 19: ICC profiles and EXIF were dropped from every
output, animated and multi-page files were cut to their first frame without a word, a float
TIFF was refused for a reason that was not true, and PIL images in most modes came back in
another mode, black, near-white or wrapped around.

Content checks ("a mid-grey image stays mid-grey", "the marked corner ends up top right") use
the shipped models, loaded once for this module; the plumbing checks use the random-weight
stand-ins of conftest.py.
"""

import io

import cv2
import numpy as np
import pytest
from conftest import bright_corner, exif_orientation_bytes, marked_corner_image, run_cli
from PIL import Image, ImageCms

import imageae
from imageae.data.io import (
    DecodedImage,
    ImageReadError,
    ImageWriteError,
    encode_image,
    read_image,
)

SRGB = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
# A profile that says it describes grey pixels (only its header's colour space is read here).
GREY_PROFILE = SRGB[:16] + b"GRAY" + SRGB[20:]
MAKE, ORIENTATION, EXPOSURE = 0x010F, 0x0112, 0x829A


def camera_exif(orientation=6):
    """EXIF as a camera writes it: orientation, a Make tag and an Exif sub-IFD tag."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    exif[MAKE] = "ImageaeTestCam"
    exif.get_ifd(0x8769)[EXPOSURE] = (1, 125)
    return exif.tobytes()


def metadata_of(data):
    """(ICC bytes, EXIF orientation, Make, exposure) as Pillow reads them from file bytes."""
    image = Image.open(io.BytesIO(data))
    exif = image.getexif()
    return image.info.get("icc_profile"), exif.get(ORIENTATION), exif.get(MAKE), exif.get_ifd(0x8769).get(EXPOSURE)


SAVE_OPTIONS = {"JPEG": {"quality": 98}, "WEBP": {"lossless": True}, "PNG": {}, "TIFF": {}}
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "WEBP": ".webp"}


def save_camera_file(path, fmt, array=None, orientation=6):
    """A file as stored by a camera: the marked corner top left, to be shown rotated."""
    array = marked_corner_image(16, 24) if array is None else array
    Image.fromarray(array).save(path, format=fmt, icc_profile=SRGB, exif=camera_exif(orientation),
                                **SAVE_OPTIONS[fmt])
    return path


@pytest.fixture(scope="module")
def shipped_models():
    """The repo's own saved_models/, with one model cache for the whole module."""
    from imageae.denoise import api as denoise_api
    from imageae.generate import api as generate_api

    patch = pytest.MonkeyPatch()
    patch.delenv("IMAGEAE_MODELS", raising=False)
    patch.setattr(denoise_api, "_default", {})
    patch.setattr(generate_api, "_default", {})
    yield
    patch.undo()


# ------------------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("source", ["JPEG", "PNG", "TIFF", "WEBP"])
@pytest.mark.parametrize("target", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_icc_and_exif_are_read_and_written_back_with_orientation_reset(tmp_path, source, target):
    path = save_camera_file(tmp_path / f"camera{EXTENSIONS[source]}", source)
    decoded = read_image(path)
    assert decoded.pixels.shape[:2] == (24, 16) and bright_corner(decoded.pixels) == "tr"
    assert decoded.icc_profile == SRGB
    icc, orientation, make, exposure = metadata_of(encode_image(decoded, target))
    assert icc == SRGB
    assert (orientation, make, exposure) == (1, "ImageaeTestCam", (1, 125))


def test_exif_is_carried_byte_for_byte_except_the_orientation_value(tmp_path):
    raw = camera_exif(8)
    Image.fromarray(marked_corner_image(16, 24)).save(tmp_path / "c.jpg", exif=raw)
    carried = read_image(tmp_path / "c.jpg").exif
    assert len(carried) == len(raw)
    changed = [i for i, (a, b) in enumerate(zip(carried, raw)) if a != b]
    assert 1 <= len(changed) <= 2  # the orientation SHORT, 8 -> 1
    reread = Image.Exif()
    reread.load(carried)
    assert reread[ORIENTATION] == 1 and reread[MAKE] == "ImageaeTestCam"


def test_exif_in_imagemagicks_png_text_chunk_is_carried_too(tmp_path):
    from PIL import PngImagePlugin

    body = camera_exif(6)
    hexed = body.hex()
    text = f"\nexif\n{len(body):8d}\n" + "\n".join(hexed[i : i + 72] for i in range(0, len(hexed), 72))
    info = PngImagePlugin.PngInfo()
    info.add_text("Raw profile type exif", text)
    Image.fromarray(marked_corner_image(16, 24)).save(tmp_path / "magick.png", pnginfo=info)
    decoded = read_image(tmp_path / "magick.png")
    assert bright_corner(decoded.pixels) == "tr"
    assert metadata_of(encode_image(decoded, "PNG"))[1:] == (1, "ImageaeTestCam", (1, 125))


def test_a_tiff_sources_layout_tags_do_not_travel_into_another_formats_exif(tmp_path):
    decoded = read_image(save_camera_file(tmp_path / "c.tif", "TIFF"))
    exif = Image.open(io.BytesIO(encode_image(decoded, "JPEG"))).getexif()
    for layout_tag in (256, 257, 258, 259, 262, 273, 279, 34675):
        assert layout_tag not in exif
    assert exif[MAKE] == "ImageaeTestCam"


def sixteen_bit_source(channels, orientation=6):
    pixels = (marked_corner_image(16, 24).astype(np.uint16) * 257)[..., :max(channels, 1)]
    if channels == 1:
        pixels = pixels[..., :1]
    alpha = np.full((16, 24), 40000, np.uint16) if channels == 4 else None
    return DecodedImage(np.ascontiguousarray(pixels[..., :3] if channels == 4 else pixels), alpha, 16, "PNG",
                        icc_profile=SRGB, exif=camera_exif(orientation))


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
@pytest.mark.parametrize("channels", [1, 3, 4])
def test_sixteen_bit_png_and_tiff_keep_icc_exif_and_sixteen_bits(tmp_path, fmt, channels):
    # A 16-bit file with a profile and a camera's EXIF (written by imageae: Pillow cannot
    # write 16-bit colour), read (turned upright) and written again.
    source = tmp_path / f"s{EXTENSIONS[fmt]}"
    source.write_bytes(encode_image(sixteen_bit_source(channels), fmt))
    assert metadata_of(source.read_bytes())[:3] == (SRGB, 6, "ImageaeTestCam")  # Pillow sees them
    decoded = read_image(source)
    assert decoded.bit_depth == 16 and decoded.pixels.shape == (24, 16, min(channels, 3))
    assert bright_corner(decoded.pixels) == "tr"
    data = encode_image(decoded, fmt)
    assert metadata_of(data) == (SRGB, 1, "ImageaeTestCam", (1, 125))
    again = tmp_path / f"again{EXTENSIONS[fmt]}"
    again.write_bytes(data)
    reread = read_image(again)
    assert reread.bit_depth == 16
    np.testing.assert_array_equal(reread.pixels, decoded.pixels)  # exact, not rotated twice
    if channels == 4:
        np.testing.assert_array_equal(reread.alpha, decoded.alpha)
    # OpenCV, which reads 16-bit colour, still reads the file with metadata added
    assert cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED).dtype == np.uint16


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_adding_metadata_to_a_sixteen_bit_file_makes_no_extra_copy_of_it(fmt):
    # a 24 Mpixel 16-bit photo is a 150-200 MB file: the chunks/IFD must not cost copies of it
    import tracemalloc

    pixels = np.random.default_rng(0).integers(0, 65536, (600, 800, 3), dtype=np.uint16)  # ~2.9 MB, incompressible
    plain = DecodedImage(pixels, None, 16, fmt)
    tagged = DecodedImage(pixels, None, 16, fmt, icc_profile=SRGB, exif=camera_exif(1))
    peaks = []
    for image in (plain, tagged):
        tracemalloc.start()
        data = encode_image(image, fmt)
        peaks.append(tracemalloc.get_traced_memory()[1])
        tracemalloc.stop()
    assert len(data) > 2_500_000
    assert peaks[1] < peaks[0] + len(data) // 2, peaks


@pytest.mark.parametrize("orientation", range(1, 9))
@pytest.mark.parametrize("channels", [1, 3])
def test_sixteen_bit_tiff_orientation_matches_eight_bit_orientation(tmp_path, orientation, channels):
    # Pillow and OpenCV both turn TIFF pixels upright on loading: they must not be turned twice
    stored = marked_corner_image(16, 24)[..., :channels]
    eight = DecodedImage(stored, None, 8, "TIFF", exif=exif_orientation_bytes(orientation))
    sixteen = DecodedImage(stored.astype(np.uint16) * 257, None, 16, "TIFF", exif=exif_orientation_bytes(orientation))
    (tmp_path / "e8.tif").write_bytes(encode_image(eight, "TIFF"))
    (tmp_path / "e16.tif").write_bytes(encode_image(sixteen, "TIFF"))
    a, b = read_image(tmp_path / "e8.tif"), read_image(tmp_path / "e16.tif")
    assert b.bit_depth == 16
    np.testing.assert_array_equal(b.pixels, a.pixels.astype(np.uint16) * 257)


def test_sixteen_bit_grey_alpha_png_stays_grey_alpha_with_its_grey_profile(tmp_path):
    rng = np.random.default_rng(3)
    grey, alpha = rng.integers(0, 65536, (5, 7, 1), dtype=np.uint16), rng.integers(0, 65536, (5, 7), dtype=np.uint16)
    data = encode_image(DecodedImage(grey, alpha, 16, "PNG", icc_profile=GREY_PROFILE, exif=camera_exif(1)), "PNG")
    assert data[25] == 4  # PNG colour type 4: grey + alpha (it used to go out as RGBA)
    assert metadata_of(data)[:3] == (GREY_PROFILE, 1, "ImageaeTestCam")
    (tmp_path / "ga.png").write_bytes(data)
    decoded = read_image(tmp_path / "ga.png")
    assert decoded.bit_depth == 16 and decoded.channels == 1
    np.testing.assert_array_equal(decoded.pixels, grey)
    np.testing.assert_array_equal(decoded.alpha, alpha)


def test_a_grey_profile_that_a_colour_file_cannot_keep_is_refused_not_dropped():
    grey_alpha = DecodedImage(np.zeros((4, 4, 1), np.uint16), np.zeros((4, 4), np.uint16), 16, "TIFF",
                              icc_profile=GREY_PROFILE)
    with pytest.raises(ImageWriteError, match="grey ICC profile"):
        encode_image(grey_alpha, "TIFF")  # OpenCV writes 16-bit grey+alpha TIFF as RGBA
    grey = DecodedImage(np.zeros((4, 4, 1), np.uint8), None, 8, "PNG", icc_profile=GREY_PROFILE)
    with pytest.raises(ImageWriteError, match="grey ICC profile"):
        encode_image(grey, "WEBP")  # WebP stores colour only
    assert metadata_of(encode_image(grey, "PNG"))[0] == GREY_PROFILE  # where it fits, it is kept


def test_exif_too_large_for_jpeg_is_refused_naming_the_limit():
    exif = Image.Exif()
    exif[0x010E] = "x" * 70000  # ImageDescription
    image = DecodedImage(np.zeros((4, 4, 3), np.uint8), None, 8, "PNG", exif=exif.tobytes())
    with pytest.raises(ImageWriteError, match="EXIF block .* larger than JPEG can hold"):
        encode_image(image, "JPEG")
    assert metadata_of(encode_image(image, "PNG")) is not None


def test_a_cmyk_files_profile_is_not_attached_to_the_rgb_pixels_read_from_it(tmp_path):
    Image.new("CMYK", (8, 8), (0, 128, 255, 0)).save(tmp_path / "print.jpg", icc_profile=SRGB)
    decoded = read_image(tmp_path / "print.jpg")
    assert decoded.pixels.shape == (8, 8, 3) and decoded.icc_profile is None


def grey_palette_image():
    image = Image.new("P", (8, 8), 90)
    image.putpalette([level for index in range(256) for level in (index, index, index)])
    return image


def test_a_grey_palette_with_a_colour_profile_stays_colour_so_the_profile_stays_valid(tmp_path):
    grey_palette_image().save(tmp_path / "p.png", icc_profile=SRGB)
    decoded = read_image(tmp_path / "p.png")
    assert decoded.channels == 3 and decoded.icc_profile == SRGB
    grey_palette_image().save(tmp_path / "plain.png")
    assert read_image(tmp_path / "plain.png").channels == 1  # without one, a grey palette is grey


@pytest.mark.parametrize("source", ["JPEG", "PNG", "TIFF", "WEBP"])
def test_denoise_folder_keeps_icc_and_exif_and_turns_the_pixels_upright(tmp_path, shipped_models, source):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    name = f"camera{EXTENSIONS[source]}"
    save_camera_file(src / name, source)
    report = imageae.denoise_folder(src, out, precision="float32")
    assert report.ok and len(report.written) == 1, report.summary()
    data = (out / name).read_bytes()
    assert metadata_of(data) == (SRGB, 1, "ImageaeTestCam", (1, 125))
    result = read_image(out / name)
    assert result.pixels.shape[:2] == (24, 16)  # upright: shown as stored, and no second turn
    assert bright_corner(result.pixels) == "tr"


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_denoise_folder_keeps_icc_and_exif_of_sixteen_bit_colour(tmp_path, shipped_models, fmt):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    (src / f"scan{EXTENSIONS[fmt]}").write_bytes(encode_image(sixteen_bit_source(3), fmt))
    report = imageae.denoise_folder(src, out, precision="float32")
    assert report.ok, report.summary()
    data = (out / f"scan{EXTENSIONS[fmt]}").read_bytes()
    assert metadata_of(data) == (SRGB, 1, "ImageaeTestCam", (1, 125))
    result = read_image(out / f"scan{EXTENSIONS[fmt]}")
    assert result.bit_depth == 16 and result.pixels.shape == (24, 16, 3) and bright_corner(result.pixels) == "tr"


# ---------------------------------------------------------------------------- pages and frames


def frames(n=3):
    return [Image.fromarray(np.full((8, 8, 3), 60 * i, np.uint8)) for i in range(n)]


def save_multi(path, fmt, n=3):
    first, *rest = frames(n)
    first.save(path, format=fmt, save_all=True, append_images=rest, **({"duration": 100} if fmt != "TIFF" else {}))
    return path


@pytest.mark.parametrize("fmt, unit", [("TIFF", "pages"), ("GIF", "frames"), ("WEBP", "frames"), ("PNG", "frames")])
def test_files_of_several_pages_or_frames_are_refused_not_cut_to_the_first(tmp_path, fmt, unit):
    path = save_multi(tmp_path / f"many.{fmt.lower()}", fmt)
    with pytest.raises(ImageReadError, match=rf"has 3 {unit}; imageae reads single images.*split it first"):
        read_image(path)


def test_a_camera_jpeg_with_extra_mpo_pictures_is_read_as_its_primary_picture(tmp_path):
    primary, preview = marked_corner_image(16, 24), np.zeros((8, 12, 3), np.uint8)
    Image.fromarray(primary).save(tmp_path / "cam.jpg", format="MPO", save_all=True,
                                  append_images=[Image.fromarray(preview)], quality=98)
    assert Image.open(tmp_path / "cam.jpg").format == "MPO"
    decoded = read_image(tmp_path / "cam.jpg")
    assert decoded.format == "JPEG" and decoded.pixels.shape == (16, 24, 3)
    assert bright_corner(decoded.pixels) == "tl"


def test_a_tiff_whose_other_pages_are_its_thumbnails_is_read_as_its_full_page(tmp_path):
    from PIL import TiffImagePlugin

    full, thumbnail = Image.fromarray(marked_corner_image(16, 24)), Image.fromarray(np.zeros((4, 6, 3), np.uint8))
    with open(tmp_path / "scan.tif", "w+b") as fp, TiffImagePlugin.AppendingTiffWriter(fp, new=True) as tiff:
        for page, subfile_type in ((full, 0), (thumbnail, 1)):  # NewSubfileType 1: a reduced-resolution copy
            page.encoderinfo, page.encoderconfig = {"tiffinfo": {254: subfile_type}}, ()
            TiffImagePlugin._save(page, tiff, "scan.tif")
            tiff.newFrame()
    assert Image.open(tmp_path / "scan.tif").n_frames == 2
    decoded = read_image(tmp_path / "scan.tif")
    np.testing.assert_array_equal(decoded.pixels, marked_corner_image(16, 24))


def test_a_folder_job_names_an_animated_file_and_exits_1_doing_the_rest(tmp_path, random_weight_models):
    src, out = tmp_path / "src", tmp_path / "out"
    src.mkdir()
    save_multi(src / "anim.gif", "GIF")
    Image.fromarray(np.full((8, 8), 100, np.uint8)).save(src / "still.png")
    code, _, stderr = run_cli("denoise", src, "-o", out)
    assert code == 1
    assert f"FAILED {src / 'anim.gif'}: has 3 frames" in stderr
    assert (out / "still.png").exists() and not (out / "anim.png").exists()


# --------------------------------------------------------------------- pixel formats of files


def test_float_tiff_is_refused_for_being_floating_point(tmp_path):
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(tmp_path / "f.tif")
    with pytest.raises(ImageReadError, match="32-bit floating-point pixels") as error:
        read_image(tmp_path / "f.tif")
    assert "outside" not in str(error.value)  # the old reason, untrue for 0.5
    assert "16-bit" in str(error.value)  # and says what to do


@pytest.mark.parametrize("dtype, what", [(np.float32, "32-bit floating-point"), (np.float64, "64-bit floating-point"),
                                         (np.int32, "32-bit signed integer"), (np.uint32, "32-bit unsigned integer")])
def test_colour_tiff_of_other_samples_is_refused_naming_them_not_as_no_image(tmp_path, dtype, what):
    cv2.imwrite(str(tmp_path / "f.tif"), np.full((4, 4, 3), 1, dtype))
    with pytest.raises(ImageReadError, match=rf"has {what} samples \(3 channels\).*16-bit unsigned integers first"):
        read_image(tmp_path / "f.tif")


def test_thirty_two_bit_integer_tiff_names_the_range_it_holds(tmp_path):
    Image.fromarray(np.array([[0, 70000]], np.int32)).save(tmp_path / "wide.tif")
    with pytest.raises(ImageReadError, match="from 0 to 70000, outside the 16-bit range"):
        read_image(tmp_path / "wide.tif")
    Image.fromarray(np.array([[0, 60000]], np.int32)).save(tmp_path / "fits.tif")
    decoded = read_image(tmp_path / "fits.tif")
    assert decoded.bit_depth == 16 and decoded.pixels.max() == 60000


def test_lab_tiff_is_read_as_its_rgb_colours(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[:] = (200, 100, 50)
    Image.fromarray(rgb).convert("LAB").save(tmp_path / "lab.tif")
    assert Image.open(tmp_path / "lab.tif").mode == "LAB"
    decoded = read_image(tmp_path / "lab.tif")
    assert np.abs(decoded.pixels.astype(int) - rgb).max() <= 3


# ------------------------------------------------------------------- every PIL mode, in the API

H, W = 16, 16
RGB_COLOUR = (150, 120, 90)


def mid_grey(seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(128 + rng.normal(0, 12, (H, W))), 0, 255).astype(np.uint8)


def colour_image(seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(np.round(np.array(RGB_COLOUR) + rng.normal(0, 12, (H, W, 3))), 0, 255).astype(np.uint8)


def make_pil(mode):
    """A small noisy image in ``mode``: mid-grey for grey modes, a brownish colour otherwise."""
    grey, colour = mid_grey(), colour_image()
    alpha = np.full((H, W, 1), 200, np.uint8)
    if mode.startswith("I;16"):
        dtype = {"I;16B": ">u2", "I;16N": "=u2"}.get(mode, "<u2")
        return Image.frombytes(mode, (W, H), (grey.astype(np.uint16) * 257).astype(dtype).tobytes())
    if mode == "I":
        return Image.fromarray(grey.astype(np.int32) * 257)
    if mode == "F":
        return Image.fromarray(grey.astype(np.float32) / 255)
    if mode in ("L", "1"):
        return Image.fromarray(grey).convert(mode)
    if mode in ("LA", "La"):
        return Image.fromarray(np.concatenate([grey[..., None], alpha], -1)).convert(mode)
    if mode in ("RGBA", "RGBa", "PA"):
        return Image.fromarray(np.concatenate([colour, alpha], -1)).convert(mode)
    return Image.fromarray(colour).convert(mode)  # may raise for modes Pillow cannot make


ALL_MODES = ["1", "L", "P", "RGB", "RGBA", "CMYK", "YCbCr", "LAB", "HSV", "I", "F", "LA", "PA", "RGBa", "La",
             "I;16", "I;16L", "I;16B", "I;16N", "RGBX", "BGR;15", "BGR;16", "BGR;24"]
# mode -> how its result is compared: the result's values on the input's scale, as (H, W, C) floats
SAME_MODE_BACK = ["L", "RGB", "RGBA", "YCbCr", "LAB", "HSV", "F", "LA", "RGBa", "La",
                  "I;16", "I;16L", "I;16B", "I;16N", "RGBX"]
DENOISE_REFUSES = {"1": "not denoised.*convert\\('L'\\)", "P": "not denoised.*convert\\('RGBA'",
                   "PA": "not denoised.*convert\\('RGBA'", "CMYK": "not denoised.*convert\\('RGB'\\)",
                   "I": "no fixed scale.*astype\\(np.uint16\\)"}
COMPRESS_ACCEPTS = ["1", "L", "P", "RGB", "CMYK", "YCbCr", "LAB", "HSV", "RGBX"]
COMPRESS_REFUSES = {"RGBA": "alpha", "LA": "alpha", "PA": "alpha", "RGBa": "alpha", "La": "alpha",
                    "I": "32-bit", "F": "floating-point", "I;16": "16-bit", "I;16L": "16-bit",
                    "I;16B": "16-bit", "I;16N": "16-bit"}


def pil_or_skip(mode):
    try:
        return make_pil(mode)
    except (ValueError, KeyError, OSError) as error:
        pytest.skip(f"Pillow {Image.__version__} cannot make a mode {mode} image ({error})")


def comparable(image):
    """Colour values of a PIL image on its natural 0..1 scale, as RGB (or grey) floats."""
    if image.mode in ("F",):
        return np.asarray(image, np.float64)[..., None]
    if image.mode == "I" or image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.float64)[..., None] / 65535
    rgb = image.convert("RGBA" if image.mode in ("RGBa",) else "LA" if image.mode == "La" else image.mode)
    rgb = rgb.convert("RGB") if rgb.mode not in ("L", "LA") else rgb.convert("L")
    array = np.asarray(rgb).astype(np.float64) / 255
    return array[..., None] if array.ndim == 2 else array


def test_every_pil_mode_has_a_policy():
    assert set(SAME_MODE_BACK) | set(DENOISE_REFUSES) >= set(ALL_MODES) - {"BGR;15", "BGR;16", "BGR;24"}
    assert set(COMPRESS_ACCEPTS) | set(COMPRESS_REFUSES) >= set(ALL_MODES) - {"BGR;15", "BGR;16", "BGR;24"}


@pytest.mark.parametrize("mode", ALL_MODES)
def test_denoise_gives_the_same_mode_back_with_sensible_content_or_refuses_clearly(shipped_models, mode):
    image = pil_or_skip(mode)
    if mode in DENOISE_REFUSES:
        with pytest.raises(ValueError, match=f"mode '{mode}'.*{DENOISE_REFUSES[mode]}"):
            imageae.denoise(image, precision="float32")
        return
    if mode not in SAME_MODE_BACK:  # a mode Pillow added after this test was written
        with pytest.raises(ValueError, match="not supported"):
            imageae.denoise(image, precision="float32")
        return
    out = imageae.denoise(image, precision="float32")
    assert isinstance(out, Image.Image) and out.mode == mode and out.size == image.size
    before, after = comparable(image), comparable(out)
    assert after.shape == before.shape
    # denoising a flat noisy patch keeps its level and colour (not black, white or wrapped)
    np.testing.assert_allclose(after.mean(axis=(0, 1)), before.mean(axis=(0, 1)), atol=6 / 255)
    assert after.std() < before.std()  # and it did remove noise
    if "A" in mode.upper() and mode not in ("LAB",):
        np.testing.assert_array_equal(np.asarray(out)[..., -1], np.asarray(image)[..., -1])


def test_lab_comes_back_lab_without_an_invented_alpha(shipped_models):
    out = imageae.denoise(make_pil("LAB"), precision="float32")
    assert out.mode == "LAB" and np.asarray(out).shape == (H, W, 3)


def test_mode_i_is_refused_naming_its_values_not_wrapped_or_guessed(random_weight_models):
    # 0..255 after convert('I'), 0..65535 from 16-bit files: either guess would wreck the other
    with pytest.raises(ValueError, match="holds 0..70000"):
        imageae.denoise(Image.fromarray(np.array([[0, 70000]], np.int32)))
    with pytest.raises(ValueError, match="holds 128..128"):
        imageae.denoise(Image.new("L", (4, 4), 128).convert("I"))


def test_mode_f_on_the_0_to_255_scale_is_refused_with_the_fix(random_weight_models):
    with pytest.raises(ValueError, match="0..1 scale.*Divide 0..255 data by 255"):
        imageae.denoise(Image.fromarray(np.full((8, 8), 128, np.float32)))


def test_pil_modes_give_exactly_what_the_matching_array_gives(random_weight_models):
    grey16 = mid_grey().astype(np.uint16) * 257
    by_array = imageae.denoise(grey16, precision="float32")
    for mode in ("I;16", "I;16B", "I;16N"):
        out = imageae.denoise(make_pil(mode), precision="float32")
        np.testing.assert_array_equal(np.asarray(out).astype(np.uint16), by_array)
    floats = mid_grey().astype(np.float32) / 255
    np.testing.assert_array_equal(np.asarray(imageae.denoise(make_pil("F"), precision="float32")),
                                  imageae.denoise(floats, precision="float32"))


def test_the_icc_profile_and_exif_of_a_pil_image_stay_in_the_result(random_weight_models):
    image = Image.fromarray(colour_image())
    image.info.update(icc_profile=SRGB, exif=camera_exif(1))
    out = imageae.denoise(image, precision="float32")
    assert out.info["icc_profile"] == SRGB and out.info["exif"] == camera_exif(1)


@pytest.mark.parametrize("mode", ALL_MODES)
def test_compress_keeps_the_picture_of_every_mode_it_accepts_and_refuses_the_rest(shipped_models, mode):
    image = pil_or_skip(mode)
    if mode in COMPRESS_REFUSES:
        with pytest.raises(ValueError, match=COMPRESS_REFUSES[mode]) as error:
            imageae.compress(image)
        assert "first" in str(error.value) or "drop it" in str(error.value)  # says what to do
        return
    if mode not in COMPRESS_ACCEPTS:
        with pytest.raises(ValueError, match="not supported"):
            imageae.compress(image)
        return
    decoded = imageae.decompress(imageae.compress(image)).astype(np.float64) / 255
    expected = comparable(image.convert("L") if mode == "1" else image)
    decoded = decoded[..., None] if decoded.ndim == 2 else decoded
    if decoded.shape[-1] != expected.shape[-1]:  # a palette of greys may come back colour or grey
        decoded, expected = decoded.mean(-1, keepdims=True), expected.mean(-1, keepdims=True)
    np.testing.assert_allclose(decoded.mean(axis=(0, 1)), expected.mean(axis=(0, 1)), atol=8 / 255)


def test_compress_of_a_sixteen_bit_pil_image_is_refused_not_decoded_near_white(random_weight_models):
    with pytest.raises(ValueError, match="16-bit grey image; the codec stores 8-bit images only"):
        imageae.compress(make_pil("I;16"))


def test_the_profile_for_the_codec_describes_the_pixels_it_stores():
    from imageae.codec.api import _codec_icc_profile

    rgb = Image.new("RGB", (4, 4), (10, 20, 30))
    rgb.info["icc_profile"] = SRGB
    assert _codec_icc_profile(rgb) == SRGB
    for mode in ("CMYK", "LAB", "HSV"):  # converted to RGB without a usable profile: none describes them
        image = rgb.convert(mode)
        image.info["icc_profile"] = SRGB
        assert _codec_icc_profile(image) is None, mode
    assert _codec_icc_profile(np.zeros((4, 4, 3), np.uint8)) is None
