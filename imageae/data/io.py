"""Image files in and out: the only module that opens or writes image files.

Decoding goes through Pillow, with OpenCV for what Pillow cannot keep (16-bit colour PNG and
TIFF). TensorFlow's own decoders are not used: they read no TIFF, ignore EXIF orientation and
decode WebP only to 8 bits.

An image is carried as a :class:`DecodedImage`: the colour or grey pixels as an (H, W, C)
uint8 or uint16 array (C is 1 or 3), the alpha channel kept apart and untouched, and what is
needed to write the result back in the input's format, mode and bit depth: its ICC colour
profile and EXIF block too, written back into JPEG, PNG, TIFF and WebP (16-bit PNG and TIFF
included; BMP holds neither). A file of several pages or frames is refused with the reason,
never cut to its first frame; so are floating-point and 32-bit samples.
"""

import dataclasses
import errno
import io
import os
import struct
import tempfile
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
# Formats an output may be written in, by extension; GIF input is written as PNG by default
# because re-quantising a processed image to a 256-colour palette would undo the processing.
WRITE_FORMATS = {
    ".png": "PNG",
    ".jpg": "JPEG",
    ".jpeg": "JPEG",
    ".bmp": "BMP",
    ".webp": "WEBP",
    ".tif": "TIFF",
    ".tiff": "TIFF",
}
_SIXTEEN_BIT_FORMATS = ("PNG", "TIFF")


class ImageReadError(ValueError):
    """A file could not be read as an image; the message says why."""


class ImageWriteError(ValueError):
    """An image could not be written as asked; the message says why."""


@dataclasses.dataclass
class DecodedImage:
    """Pixels plus what is needed to write a processed version back faithfully.

    Attributes
    ----------
    pixels : numpy.ndarray
        (H, W, C) uint8 or uint16, C = 1 (grey) or 3 (RGB), EXIF orientation applied.
    alpha : numpy.ndarray or None
        (H, W) alpha of the same dtype as ``pixels``, or None.
    bit_depth : int
        8 or 16.
    format : str
        Pillow format name of the source ("PNG", "JPEG", ...).
    icc_profile : bytes or None
        The source's embedded ICC colour profile, to be written back with the result.
    exif : bytes or None
        The source's EXIF block (orientation reset to 1 once it has been applied).
    """

    pixels: np.ndarray
    alpha: np.ndarray | None
    bit_depth: int
    format: str
    icc_profile: bytes | None = None
    exif: bytes | None = None

    @property
    def channels(self):
        return self.pixels.shape[-1]

    def to_float(self):
        """Pixels as float32 on the 0..1 scale."""
        return self.pixels.astype(np.float32) / float(2**self.bit_depth - 1)


def find_images(inputs, *, recursive=True, extensions=IMAGE_EXTENSIONS, problems=None):
    """List the image files (or other files, by ``extensions``) named by ``inputs``.

    Parameters
    ----------
    inputs : path or sequence of paths
        Files and folders. A folder contributes every file below it (recursively by
        default, following links to folders) whose extension, in any case, is one of
        ``extensions`` (lower case; default :data:`IMAGE_EXTENSIONS`). A file named
        explicitly is listed whatever its extension, so that a bad one is reported rather
        than silently skipped.
    problems : list or None
        Where to append ``(path, reason)`` for what cannot be listed: a named input that does
        not exist, a broken link or a link loop (named, or below a folder with a matching
        extension), a folder that cannot be read. Without it, a missing named input raises
        and problems below folders are reported in one warning.

    Returns
    -------
    list of (Path, Path)
        ``(path, relative)`` pairs sorted by path within each input, where ``relative``
        is the path below the input folder (the bare name for a file given directly); an
        output tree built from ``relative`` mirrors the input tree.

    Raises
    ------
    ValueError
        If an input is an empty string (it would otherwise mean the working folder).
    FileNotFoundError
        If an input does not exist and ``problems`` is None.
    """
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = list(inputs)
    for item in inputs:
        if not os.fspath(item).strip():
            raise ValueError("an input path is empty; name a file or folder (use '.' for the working folder)")
    collect = [] if problems is None else problems
    found = []
    for item in inputs:
        root = Path(item)
        if root.is_dir():
            files = sorted(_walk(root, recursive, extensions, collect))
            found.extend((p, p.relative_to(root)) for p in files)
        elif root.is_file():
            found.append((root, Path(root.name)))
        elif problems is None:
            raise FileNotFoundError(f"no such file or folder: {item}" + _link_problem(root, prefix=" ("))
        else:
            problems.append((str(item), "no such file or folder" + _link_problem(root, prefix=" (")))
    if problems is None and collect:
        import warnings

        warnings.warn("skipped " + "; ".join(f"{path}: {reason}" for path, reason in collect), stacklevel=2)
    return found


def _link_problem(path, *, prefix=""):
    """Why a path that is neither file nor folder is so, if it is a link ('' otherwise)."""
    if not path.is_symlink():
        return ""
    try:
        target = os.readlink(path)
    except OSError:
        target = "?"
    try:
        path.stat()
    except OSError as error:
        if error.errno == errno.ELOOP:
            return f"{prefix}a symbolic link loop via {target}" + (")" if prefix else "")
    return f"{prefix}a broken symbolic link to {target}" + (")" if prefix else "")


def _walk(root, recursive, extensions, problems):
    """Files below ``root`` with a matching extension; links followed once, problems named."""
    seen = set()
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            status = folder.stat()
            entries = list(os.scandir(folder))
        except OSError as error:
            problems.append((str(folder), f"cannot list folder: {error.strerror or error}"))
            continue
        if (status.st_dev, status.st_ino) in seen:
            problems.append((str(folder), "a link to a folder already searched (a loop); skipped"))
            continue
        seen.add((status.st_dev, status.st_ino))
        for entry in entries:
            path = Path(entry.path)
            try:
                is_dir, is_file = entry.is_dir(), entry.is_file()
            except OSError:
                is_dir = is_file = False
            if is_dir:
                if recursive:
                    pending.append(path)
            elif path.suffix.lower() in extensions:
                if is_file:
                    yield path
                elif entry.is_symlink():
                    problems.append((str(path), "skipped: " + _link_problem(path)))


def _exif_orientation(img):
    try:
        return int(img.getexif().get(0x0112, 1))
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable image unreadable
        return 1


_ORIENTATION = 0x0112
_EXIF_HEADER = b"Exif\x00\x00"
# TIFF tags that describe how a TIFF file stores its pixels (not the picture), plus the
# blocks carried apart (ICC) or not at all (XMP, IPTC, Photoshop resources). A TIFF source's
# EXIF is its first IFD less these; every writer sets its own layout tags.
_TIFF_LAYOUT_TAGS = frozenset(
    [254, 255, 256, 257, 258, 259, 262, 263, 264, 265, 266, 273, 277, 278, 279, 280, 281, 284]
    + [288, 289, 290, 291, 292, 293, 297, 301, 317, 320, 321, 322, 323, 324, 325, 330, 332]
    + [333, 334, 336, 337, 338, 339, 340, 341, 342, 343, 344, 347, 529, 530, 532, 700, 33723]
    + [34377, 34675]
    + list(range(512, 522))
)


def _reset_orientation(exif):
    """EXIF bytes with IFD0's orientation patched to 1 in place (every other byte kept).

    Returns the bytes unchanged when IFD0 holds no orientation (Pillow may have found it in
    XMP, which is not carried), and None when the block cannot be patched.
    """
    body = exif[len(_EXIF_HEADER):]
    order = {b"II": "<", b"MM": ">"}.get(body[:2])
    if order is None:
        return None
    try:
        (ifd,) = struct.unpack_from(order + "I", body, 4)
        (count,) = struct.unpack_from(order + "H", body, ifd)
        for index in range(count):
            entry = ifd + 2 + 12 * index
            tag, kind, number = struct.unpack_from(order + "HHI", body, entry)
            if tag != _ORIENTATION:
                continue
            if number != 1 or kind not in (3, 4):  # SHORT (the standard) or LONG
                return None
            patched = bytearray(body)
            struct.pack_into(order + ("H" if kind == 3 else "I"), patched, entry + 8, 1)
            return _EXIF_HEADER + bytes(patched)
    except struct.error:
        return None
    return exif


def _read_exif(img, fmt, orientation):
    """The EXIF block to carry (``Exif\\0\\0`` + TIFF structure), orientation reset to 1.

    The raw block is kept byte for byte (maker notes and all) and only the orientation value
    is patched; a TIFF's EXIF is its first IFD less the tags that describe the TIFF's own
    pixel layout. A block too broken to patch is not carried: writing it back would rotate
    the already rotated pixels a second time.
    """
    try:
        if fmt == "TIFF":
            exif = img.getexif()
            for tag in [t for t in exif if t in _TIFF_LAYOUT_TAGS]:
                del exif[tag]
            if not len(exif):
                return None
            exif[_ORIENTATION] = 1  # the pixels are upright; 1 is also the default
            return exif.tobytes()
        raw = img.info.get("exif")
        if not raw and "Raw profile type exif" in img.info:  # ImageMagick's PNG text chunk, hex
            raw = bytes.fromhex("".join(img.info["Raw profile type exif"].split("\n")[3:]))
        if not raw:
            return None
        raw = raw if raw.startswith(_EXIF_HEADER) else _EXIF_HEADER + raw
        if orientation == 1:
            return raw
        patched = _reset_orientation(raw)
        if patched is None:
            exif = img.getexif()
            exif[_ORIENTATION] = 1
            patched = exif.tobytes()
        return patched
    except Exception:  # noqa: BLE001 - a broken EXIF block must not make a readable image unreadable
        return None


def _icc_space(icc):
    """The colour space an ICC profile describes: "RGB", "GRAY", "CMYK", "Lab", ... or None."""
    return icc[16:20].decode("latin-1").strip() if icc and len(icc) >= 20 else None


def _srgb_profile():
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB"))


def _cmyk_to_rgb(img, icc):
    """(RGB image, ICC profile of its pixels): colour-managed when the CMYK file has a profile.

    Without a usable CMYK profile Pillow's plain formula (R = 255 - C - K, ...) is used and no
    profile is attached; the source's CMYK profile cannot describe RGB pixels either way.
    """
    if _icc_space(icc) == "CMYK":
        from PIL import ImageCms

        try:
            srgb = _srgb_profile()
            source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
            return ImageCms.profileToProfile(img, source, srgb, outputMode="RGB"), srgb.tobytes()
        except (ImageCms.PyCMSError, OSError, ValueError):
            pass
    return img.convert("RGB"), None


def _apply_orientation(array, orientation):
    """Rotate/flip an (H, W, ...) array as EXIF orientation tags 1-8 prescribe."""
    ops = {
        2: lambda a: a[:, ::-1],
        3: lambda a: a[::-1, ::-1],
        4: lambda a: a[::-1],
        5: lambda a: np.swapaxes(a, 0, 1),
        6: lambda a: np.rot90(a, -1),
        7: lambda a: np.swapaxes(a, 0, 1)[::-1, ::-1],
        8: lambda a: np.rot90(a, 1),
    }
    op = ops.get(orientation)
    return np.ascontiguousarray(op(array)) if op else array


def _read_sixteen_bit(path, data, orientation):
    """Decode 16-bit PNG/TIFF with OpenCV, which (unlike Pillow) keeps 16-bit colour."""
    import cv2

    buffer = np.frombuffer(data, dtype=np.uint8)
    array = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16:
        return None
    if array.ndim == 2:
        array = array[:, :, None]
    alpha = None
    if array.shape[-1] == 4:
        array, alpha = cv2.cvtColor(array, cv2.COLOR_BGRA2RGBA)[..., :3], array[..., 3]
    elif array.shape[-1] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_BGR2RGB)
    elif array.shape[-1] == 2:
        array, alpha = array[..., :1], array[..., 1]
    if data[:8] == b"\x89PNG\r\n\x1a\n" and data[25:26] == b"\x04":  # PNG grey+alpha, read by OpenCV as colour
        array = array[..., :1]
    array = _apply_orientation(array, orientation)
    if alpha is not None:
        alpha = _apply_orientation(alpha, orientation)
    return array, alpha


def _is_grey(img):
    array = np.asarray(img)
    return bool(np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2]))


_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_INTEGER_ONLY = "imageae reads 8- and 16-bit integer images"


def _describe_unreadable_tiff(data):
    """Why Pillow cannot open a TIFF (floating-point, signed or 32-bit samples), read from its
    first IFD without decoding any pixels; None when the samples are not the reason."""
    from PIL import TiffImagePlugin

    try:
        big = data[2:4] in (b"+\x00", b"\x00+")
        order = "<" if data[:2] == b"II" else ">"
        ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=data[: 16 if big else 8])
        stream = _ViewReader(memoryview(data))
        stream.seek(struct.unpack_from(order + ("Q" if big else "I"), data, 8 if big else 4)[0])
        ifd.load(stream)
        bits, sample_format = (ifd.get(tag, default) for tag, default in ((258, 1), (339, 1)))
        bits = bits[0] if isinstance(bits, tuple) else bits
        sample_format = sample_format[0] if isinstance(sample_format, tuple) else sample_format
        channels = int(ifd.get(277, 1))
    except Exception:  # noqa: BLE001 - a header too broken to describe: the caller's reason stands
        return None
    kind = {1: "unsigned integer", 2: "signed integer", 3: "floating-point"}.get(sample_format)
    if kind is None or (sample_format == 1 and bits in (1, 2, 4, 8, 16)):
        return None
    fix = ("scale it to 0..65535 and convert it to 16-bit unsigned integers first (for 0..1 data: "
           "numpy.round(x * 65535).astype(numpy.uint16), saved with OpenCV or tifffile)")
    channels = "1 channel" if channels == 1 else f"{channels} channels"
    return f"has {bits}-bit {kind} samples ({channels}); {_INTEGER_ONLY}: {fix}"


def _page_count(img, fmt):
    """Pages or frames in a file; a TIFF's reduced-resolution copies (thumbnails, pyramid levels:
    NewSubfileType bit 0) are not pages of their own."""
    frames = getattr(img, "n_frames", 1)
    if fmt != "TIFF" or frames == 1:
        return frames
    pages = 0
    for index in range(frames):
        img.seek(index)
        pages += not int(img.tag_v2.get(254, 0)) & 1
    img.seek(0)
    return max(pages, 1)


def _split_hint(path):
    name = Path(path).name
    return (f"split it first, e.g. `magick '{name}' page-%03d.png` (ImageMagick) or "
            f"PIL.ImageSequence.Iterator(Image.open('{name}'))")


def read_image(path):
    """Decode an image file.

    Applies EXIF orientation, keeps grey as grey, separates alpha, keeps 16-bit depth for
    PNG and TIFF, and keeps the embedded ICC profile and EXIF block (``icc_profile``,
    ``exif``; the EXIF orientation reset to 1 as it has been applied to the pixels).

    Other Pillow modes are converted on reading: palette ("P", "PA") to RGB(A), or grey(+alpha)
    when the palette is grey and no RGB profile is attached; bilevel ("1") to grey 0/255;
    "CMYK" to RGB, colour-managed to sRGB (with the sRGB profile attached) when the file has a
    CMYK profile, else by Pillow's plain formula (no profile); "YCbCr" to RGB; "LAB" to sRGB
    (its ICC profile, if any, dropped); 32-bit integer ("I") grey with values in 0..65535 to
    16-bit grey. The written result is in the converted mode.

    Raises
    ------
    ImageReadError
        With the reason, for a file that is missing, empty, truncated, not an image or in
        a mode imageae does not handle: floating-point and 32-bit samples, and files of
        several pages or frames (multi-page TIFF, animated GIF, WebP and PNG), which are
        refused rather than cut to their first frame. A JPEG with extra MPO pictures (the
        previews or depth maps of some cameras) is read as its primary picture, and so is a
        TIFF whose other pages are reduced-resolution copies of it (thumbnails, pyramids).
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ImageReadError(f"cannot read file: {error.strerror or error}") from None
    if not data:
        raise ImageReadError("file is empty")
    try:
        img = Image.open(io.BytesIO(data))
        fmt = img.format or "unknown"
        stored_orientation = _exif_orientation(img)
        frames = _page_count(img, fmt)
        img.load()  # forces a full decode, so truncation is caught here, not later
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"image too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = str(error) or type(error).__name__
        if "cannot identify image file" in reason:
            described = _describe_unreadable_tiff(data) if data[:4] in _TIFF_MAGIC else None
            if described:
                raise ImageReadError(described) from None
            reason = "not an image file (unrecognised content)"
        raise ImageReadError(f"cannot decode image: {reason}") from None
    if fmt == "MPO":  # a camera JPEG whose extra pictures are previews or depth maps
        fmt = "JPEG"
    elif frames > 1:
        unit = "pages" if fmt == "TIFF" else "frames"
        raise ImageReadError(f"has {frames} {unit}; imageae reads single images (it would otherwise keep only "
                             f"the first): {_split_hint(path)}")
    # Pillow and OpenCV (which decodes 16-bit colour) both turn TIFF pixels upright as they
    # load them (Pillow then drops the tag); other formats are loaded as stored.
    orientation = _exif_orientation(img)
    icc = img.info.get("icc_profile") or None
    exif = _read_exif(img, fmt, stored_orientation)

    def decoded(pixels, alpha, bit_depth):
        return DecodedImage(pixels, alpha, bit_depth, fmt, icc_profile=icc, exif=exif)

    # Pillow keeps 16-bit grey (mode I;16 / I) but reduces 16-bit colour to 8 bits.
    if fmt in _SIXTEEN_BIT_FORMATS and (img.mode.startswith("I") or img.mode in ("RGB", "RGBA")):
        sixteen = _read_sixteen_bit(path, data, 1 if fmt == "TIFF" else stored_orientation)
        if sixteen is not None:
            return decoded(sixteen[0], sixteen[1], 16)

    mode = img.mode
    if mode in ("P", "PA"):
        img = img.convert("RGBA" if mode == "PA" or "transparency" in img.info else "RGB")
        if _icc_space(icc) in (None, "GRAY") and _is_grey(img):  # a grey palette (common in GIFs) stays grey
            img = img.convert("LA" if img.mode == "RGBA" else "L")
    elif mode == "1":
        img = img.convert("L")
    elif mode == "CMYK":
        img, icc = _cmyk_to_rgb(img, icc)
    elif mode in ("YCbCr", "RGBX"):
        img = img.convert("RGB")
    elif mode in ("LAB", "HSV"):
        img, icc = img.convert("RGB"), None
    elif mode == "F":
        raise ImageReadError(f"has 32-bit floating-point pixels (mode F); {_INTEGER_ONLY}: convert it to "
                             "16-bit integers first (for 0..1 data: numpy.round(x * 65535).astype(numpy.uint16))")
    elif mode.startswith("I"):
        array = np.asarray(img)
        low, high = int(array.min(initial=0)), int(array.max(initial=0))
        if low < 0 or high > 65535:
            raise ImageReadError(f"has 32-bit integer pixels (mode {mode}) from {low} to {high}, outside the "
                                 f"16-bit range 0..65535; {_INTEGER_ONLY}: scale it into 0..65535 first")
        return decoded(_apply_orientation(array.astype(np.uint16)[:, :, None], orientation), None, 16)

    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageReadError(f"unsupported pixel format: mode {mode}")
    array = _apply_orientation(np.asarray(img), orientation)
    alpha = None
    if img.mode in ("LA", "RGBA"):
        array, alpha = array[..., :-1], np.ascontiguousarray(array[..., -1])
    if array.ndim == 2:
        array = array[:, :, None]
    return decoded(np.ascontiguousarray(array), alpha, 8)


def output_format(source_format, extension=None):
    """Pillow format to write: the one named by ``extension``, else the source's own."""
    if extension:
        ext = extension.lower() if extension.startswith(".") else "." + extension.lower()
        if ext not in WRITE_FORMATS:
            raise ImageWriteError(
                f"cannot write '{extension}' files; choose one of {', '.join(sorted(WRITE_FORMATS))}"
            )
        return WRITE_FORMATS[ext]
    if source_format in WRITE_FORMATS.values():
        return source_format
    return "PNG"


def format_extension(fmt):
    """The usual file extension of a Pillow format name."""
    return {"PNG": ".png", "JPEG": ".jpg", "BMP": ".bmp", "WEBP": ".webp", "TIFF": ".tif"}[fmt]


def _png_chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _png_with_metadata(data, icc, exif):
    """A PNG's bytes with iCCP and eXIf chunks inserted right after IHDR (before any IDAT).

    ``data`` is any bytes-like object (OpenCV's buffer); the result is built in one copy.
    """
    data = memoryview(data).cast("B")
    if not (icc or exif):
        return bytes(data)
    chunks = b""
    if icc:
        chunks += _png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc))
    if exif:
        chunks += _png_chunk(b"eXIf", exif.removeprefix(_EXIF_HEADER))
    end_of_ihdr = 8 + 12 + struct.unpack_from(">I", data, 8)[0]
    return b"".join([data[:end_of_ihdr], chunks, data[end_of_ihdr:]])


class _ViewReader:
    """The read/seek/tell of a file over a bytes-like object, without copying it as BytesIO does."""

    def __init__(self, data):
        self.data, self.position = data, 0

    def seek(self, offset, whence=0):
        self.position = (offset, self.position + offset, len(self.data) + offset)[whence]
        return self.position

    def tell(self):
        return self.position

    def read(self, size=-1):
        end = len(self.data) if size is None or size < 0 else min(self.position + size, len(self.data))
        chunk = bytes(self.data[self.position : end])
        self.position = max(self.position, end)
        return chunk


_STRIP_OFFSETS = 273
_PLACEHOLDER_TAG = 65000  # a private tag number, renamed to StripOffsets once serialised


def _tiff_with_metadata(data, icc, exif):
    """A single-image TIFF's bytes with an ICC profile and EXIF tags added to its IFD.

    The first IFD is rewritten at the end of the file with the extra tags (the pixel strips
    stay where they are) and the header is pointed at it. Pillow serialises the IFD, EXIF
    sub-IFDs included, but shifts StripOffsets by the IFD's own size, so they travel under a
    private tag number and are renamed afterwards. ``data`` is any bytes-like object
    (OpenCV's buffer); the result is built in one copy.
    """
    data = memoryview(data).cast("B")
    if not (icc or exif):
        return bytes(data)
    from PIL import TiffImagePlugin

    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(bytes(data[:4]))
    if order is None:
        raise ImageWriteError("cannot attach the ICC profile and EXIF to this TIFF (not a classic TIFF); "
                              "write PNG instead")
    source = TiffImagePlugin.ImageFileDirectory_v2(ifh=bytes(data[:8]))
    stream = _ViewReader(data)
    stream.seek(struct.unpack_from(order + "I", data, 4)[0])
    source.load(stream)
    ifd = TiffImagePlugin.ImageFileDirectory_v2(ifh=bytes(data[:8]))
    for tag, value in source.items():
        target = _PLACEHOLDER_TAG if tag == _STRIP_OFFSETS else tag
        ifd.tagtype[target] = source.tagtype[tag]
        ifd[target] = value
    if exif:
        tags = Image.Exif()
        tags.load(exif)
        for tag, value in list(tags.items()):
            if tag in _TIFF_LAYOUT_TAGS or tag == _PLACEHOLDER_TAG:
                continue
            ifd[tag] = tags.get_ifd(tag) if tag in (0x8769, 0x8825) else value  # Exif and GPS sub-IFDs
    if icc:
        ifd.tagtype[34675] = 7  # UNDEFINED: the profile's bytes
        ifd[34675] = icc
    start = len(data) + (len(data) & 1)  # an IFD starts on a word boundary
    table = bytearray(ifd.tobytes(start))
    (count,) = struct.unpack_from(order + "H", table, 0)
    entries = [bytes(table[2 + 12 * i : 14 + 12 * i]) for i in range(count)]
    renamed = []
    for entry in entries:
        tag = struct.unpack_from(order + "H", entry)[0]
        renamed.append((_STRIP_OFFSETS if tag == _PLACEHOLDER_TAG else tag, entry[2:]))
    renamed.sort(key=lambda item: item[0])  # TIFF requires ascending tag order
    table[2 : 2 + 12 * count] = b"".join(struct.pack(order + "H", tag) + rest for tag, rest in renamed)
    header = bytes(data[:4]) + struct.pack(order + "I", start)
    return b"".join([header, data[8:], b"\x00" * (start - len(data)), table])


def _png_grey_alpha_sixteen(grey, alpha):
    """A 16-bit grey+alpha PNG (colour type 4), which OpenCV cannot write; rows unfiltered."""
    height, width = alpha.shape
    rows = np.zeros((height, 1 + 4 * width), np.uint8)  # each row: filter byte 0, then the samples
    rows[:, 1:] = np.stack([grey[..., 0], alpha], axis=-1).astype(">u2").view(np.uint8).reshape(height, -1)
    header = struct.pack(">IIBBBBB", width, height, 16, 4, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), 6))
            + _png_chunk(b"IEND", b""))


def _check_icc_fits(icc, fmt, written_colour, source_grey):
    """Refuse to write a grey ICC profile into a file the writer stores in colour."""
    if icc and source_grey and written_colour and _icc_space(icc) == "GRAY":
        raise ImageWriteError(f"the image's grey ICC profile cannot describe the colour {fmt} that would be "
                              "written for it (the profile would be lost); write PNG or TIFF, or 8-bit")


def encode_image(image, fmt, *, quality=95):
    """Encode a :class:`DecodedImage` to bytes in Pillow format ``fmt``.

    16-bit images stay 16-bit in PNG and TIFF; JPEG, BMP and WebP hold 8 bits, so a 16-bit
    image is rounded to 8 bits for them. JPEG and BMP cannot hold alpha: asking for them for
    an image with alpha raises :class:`ImageWriteError` rather than dropping it silently.

    The image's ICC profile and EXIF block are written into JPEG, PNG, TIFF and WebP files,
    16-bit PNG and TIFF included (:class:`ImageWriteError` where one cannot be kept: an EXIF
    block over JPEG's 64 KB, a grey profile on 16-bit grey+alpha TIFF, which goes out as RGBA,
    or on grey WebP, which is colour). BMP files carry neither: the format has no EXIF and Pillow
    writes no ICC profile into BMP; choose another format to keep them. XMP, IPTC and
    Photoshop blocks are not carried.
    """
    pixels, alpha = image.pixels, image.alpha
    icc, exif = (None, None) if fmt == "BMP" else (image.icc_profile, image.exif)
    grey = pixels.shape[-1] == 1
    if alpha is not None and fmt in ("JPEG", "BMP"):
        raise ImageWriteError(f"{fmt} cannot store the alpha channel; write PNG, WebP or TIFF instead")
    if exif and fmt == "JPEG" and len(exif) > 65533:
        raise ImageWriteError(f"the image's EXIF block ({len(exif)} bytes) is larger than JPEG can hold "
                              "(64 KB); write PNG, TIFF or WebP instead")
    if image.bit_depth == 16 and fmt in _SIXTEEN_BIT_FORMATS:
        import cv2

        if fmt == "PNG" and grey and alpha is not None:
            return _png_with_metadata(_png_grey_alpha_sixteen(pixels, alpha), icc, exif)
        _check_icc_fits(icc, f"16-bit {fmt}", alpha is not None, grey)
        array = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=-1)
        if array.shape[-1] == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        elif array.shape[-1] == 4:
            array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
        elif array.shape[-1] == 2:
            # OpenCV writes no grey+alpha; 16-bit grey+alpha TIFF goes out as RGBA.
            level = array[..., 0]
            array = np.stack([level, level, level, array[..., 1]], axis=-1)
        ok, buffer = cv2.imencode(".png" if fmt == "PNG" else ".tif", array)
        if not ok:
            raise ImageWriteError(f"OpenCV could not encode a 16-bit {fmt}")
        if fmt == "PNG":
            return _png_with_metadata(buffer, icc, exif)
        return _tiff_with_metadata(buffer, icc, exif)
    _check_icc_fits(icc, fmt, fmt == "WEBP", grey)
    if image.bit_depth == 16:
        pixels = np.round(pixels.astype(np.float32) / 257.0).astype(np.uint8)
        alpha = None if alpha is None else np.round(alpha.astype(np.float32) / 257.0).astype(np.uint8)
    array = pixels[..., 0] if pixels.shape[-1] == 1 else pixels
    if alpha is not None:
        array = np.concatenate([pixels, alpha[..., None]], axis=-1)
        mode = "LA" if pixels.shape[-1] == 1 else "RGBA"
    else:
        mode = "L" if pixels.shape[-1] == 1 else "RGB"
    img = Image.fromarray(np.ascontiguousarray(array), mode=mode)
    if mode == "LA" and fmt == "WEBP":
        img = img.convert("RGBA")
    options = {}
    if fmt == "JPEG":
        options = {"quality": int(quality), "subsampling": 0 if quality >= 90 else 2}
    elif fmt == "WEBP":
        options = {"quality": int(quality), "method": 4}
    elif fmt == "PNG":
        options = {"compress_level": 6}
    if icc:
        options["icc_profile"] = icc
    if exif:
        options["exif"] = exif
    buffer = io.BytesIO()
    img.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def _read_umask():
    mask = os.umask(0)  # the only portable way to read it is to set it (once, at import:
    os.umask(mask)  # the writer threads must not race a temporary umask of 0)
    return mask


_UMASK = _read_umask()


def write_bytes_atomic(path, data):
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename.

    A reader never sees a half-written file, and an interrupted run leaves no partial output
    under the final name. The file gets the permissions a plain ``open`` would give it
    (0666 less the umask), not the temporary file's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_image(path, image, *, fmt=None, quality=95):
    """Encode ``image`` (a :class:`DecodedImage`) and write it atomically to ``path``.

    ``fmt`` defaults to the format implied by the extension of ``path``.
    """
    fmt = fmt or output_format(image.format, Path(path).suffix)
    write_bytes_atomic(path, encode_image(image, fmt, quality=quality))


def from_float(x, like):
    """A :class:`DecodedImage` from float pixels on the 0..1 scale, in ``like``'s depth.

    ``like``'s alpha, format, ICC profile and EXIF block come with it.
    """
    scale = float(2**like.bit_depth - 1)
    dtype = np.uint16 if like.bit_depth == 16 else np.uint8
    x = np.asarray(x)
    pixels = np.empty(x.shape, dtype)
    # In bands of rows, so a 6000x4000 photo needs no full-size float temporaries.
    for top in range(0, x.shape[0], 256):
        band = np.asarray(x[top : top + 256], np.float32) * scale
        pixels[top : top + 256] = np.clip(np.round(band), 0, scale)
    return DecodedImage(pixels, like.alpha, like.bit_depth, like.format,
                        icc_profile=like.icc_profile, exif=like.exif)
