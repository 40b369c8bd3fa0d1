"""Image files in and out: the only module that opens or writes image files.

Decoding goes through Pillow, with OpenCV for what Pillow cannot keep (16-bit colour PNG and
TIFF). TensorFlow's own decoders are not used: they read no TIFF, ignore EXIF orientation and
decode WebP only to 8 bits.

An image is carried as a :class:`DecodedImage`: the colour or grey pixels as an (H, W, C)
uint8 or uint16 array (C is 1 or 3), the alpha channel kept apart and untouched, and what is
needed to write the result back in the input's format, mode and bit depth.
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
from PIL import Image, ImageOps

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
    except Exception:  # a broken EXIF block must not make a readable image unreadable
        return 1


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
    array = _apply_orientation(array, orientation)
    if alpha is not None:
        alpha = _apply_orientation(alpha, orientation)
    return array, alpha


def _is_grey(img):
    array = np.asarray(img)
    return bool(np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(array[..., 1], array[..., 2]))


def read_image(path):
    """Decode an image file.

    Applies EXIF orientation, keeps grey as grey, separates alpha, keeps 16-bit depth for
    PNG and TIFF, and reads the first frame of an animated file.

    Raises
    ------
    ImageReadError
        With the reason, for a file that is missing, empty, truncated, not an image or in
        a mode imageae does not handle.
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
        img.load()  # forces a full decode, so truncation is caught here, not later
    except Image.DecompressionBombError as error:
        raise ImageReadError(f"image too large: {error}") from None
    except (OSError, SyntaxError, ValueError) as error:
        reason = str(error) or type(error).__name__
        if "cannot identify image file" in reason:
            reason = "not an image file (unrecognised content)"
        raise ImageReadError(f"cannot decode image: {reason}") from None
    orientation = _exif_orientation(img)

    # Pillow keeps 16-bit grey (mode I;16 / I) but reduces 16-bit colour to 8 bits.
    if fmt in _SIXTEEN_BIT_FORMATS and (img.mode.startswith("I") or img.mode in ("RGB", "RGBA")):
        decoded = _read_sixteen_bit(path, data, orientation)
        if decoded is not None:
            return DecodedImage(decoded[0], decoded[1], 16, fmt)

    mode = img.mode
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if _is_grey(img):  # a grey palette (common in GIFs) stays grey
            img = img.convert("LA" if img.mode == "RGBA" else "L")
    elif mode == "PA":
        img = img.convert("RGBA")
    elif mode in ("1",):
        img = img.convert("L")
    elif mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        img = img.convert("RGB")
    elif mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(img)
        if array.dtype.kind == "f" or array.max(initial=0) > 65535 or array.min(initial=0) < 0:
            raise ImageReadError(f"unsupported pixel format: mode {mode} with values outside 0..65535")
        pixels = _apply_orientation(array.astype(np.uint16)[:, :, None], orientation)
        return DecodedImage(pixels, None, 16, fmt)
    img = ImageOps.exif_transpose(img) if orientation != 1 else img

    if img.mode not in ("L", "LA", "RGB", "RGBA"):
        raise ImageReadError(f"unsupported pixel format: mode {mode}")
    array = np.asarray(img)
    alpha = None
    if img.mode in ("LA", "RGBA"):
        array, alpha = array[..., :-1], np.ascontiguousarray(array[..., -1])
    if array.ndim == 2:
        array = array[:, :, None]
    return DecodedImage(np.ascontiguousarray(array), alpha, 8, fmt)


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


def encode_image(image, fmt, *, quality=95):
    """Encode a :class:`DecodedImage` to bytes in Pillow format ``fmt``.

    16-bit images stay 16-bit in PNG and TIFF; JPEG, BMP and WebP hold 8 bits, so a 16-bit
    image is rounded to 8 bits for them. JPEG and BMP cannot hold alpha: asking for them for
    an image with alpha raises :class:`ImageWriteError` rather than dropping it silently.
    """
    pixels, alpha = image.pixels, image.alpha
    if alpha is not None and fmt in ("JPEG", "BMP"):
        raise ImageWriteError(f"{fmt} cannot store the alpha channel; write PNG, WebP or TIFF instead")
    if image.bit_depth == 16 and fmt in _SIXTEEN_BIT_FORMATS:
        import cv2

        array = pixels if alpha is None else np.concatenate([pixels, alpha[..., None]], axis=-1)
        if array.shape[-1] == 3:
            array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
        elif array.shape[-1] == 4:
            array = cv2.cvtColor(array, cv2.COLOR_RGBA2BGRA)
        elif array.shape[-1] == 2:
            # OpenCV writes no grey+alpha; 16-bit grey+alpha goes out as RGBA.
            grey = array[..., 0]
            array = np.stack([grey, grey, grey, array[..., 1]], axis=-1)
        ok, buffer = cv2.imencode(".png" if fmt == "PNG" else ".tif", array)
        if not ok:
            raise ImageWriteError(f"OpenCV could not encode a 16-bit {fmt}")
        return buffer.tobytes()
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
    """A :class:`DecodedImage` from float pixels on the 0..1 scale, in ``like``'s depth."""
    scale = float(2**like.bit_depth - 1)
    dtype = np.uint16 if like.bit_depth == 16 else np.uint8
    x = np.asarray(x)
    pixels = np.empty(x.shape, dtype)
    # In bands of rows, so a 6000x4000 photo needs no full-size float temporaries.
    for top in range(0, x.shape[0], 256):
        band = np.asarray(x[top : top + 256], np.float32) * scale
        pixels[top : top + 256] = np.clip(np.round(band), 0, scale)
    return DecodedImage(pixels, like.alpha, like.bit_depth, like.format)
