"""Numpy arrays and PIL images in, float (H, W, C) arrays for a model out, and the same kind back.

The one conversion policy of the jobs that give an image back in the caller's kind (denoise) or
read a caller's image into a model (reconstruct, interpolate): uint8 and uint16 on their full
scale, floats on 0..1, alpha passed through, every PIL mode either kept or refused by name.
"""

import numpy as np

# Float inputs are images on the 0..1 scale; noisy ones may stray outside it (the benchmark
# protocol does not clip), but values this far out mean the caller passed 0..255 data.
_FLOAT_LIMIT = 4.0


def _as_array(image):
    """(array (H, W, C), how to turn a float result back into the caller's kind)."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return _pil_as_array(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(f"expected a numpy array or a PIL image, got {type(image).__name__}")
    return _array_restorer(image)


# How imageae.denoise treats each Pillow mode (the docstring of denoise lists the same).
_CONVERT_THROUGH_RGB = ("YCbCr", "HSV", "LAB", "RGBX")  # exact conversions Pillow can invert
_PREMULTIPLIED = {"RGBa": "RGBA", "La": "LA"}


def _pil_as_array(image):
    """:func:`_as_array` for a PIL image: the pixels as a float array, and the same mode back.

    Every mode either comes back in the same mode, or is refused with a ValueError saying
    what to convert it to; nothing comes back silently in another mode or scale.
    """
    from PIL import Image

    mode, size = image.mode, image.size
    info = {key: image.info[key] for key in ("icc_profile", "exif") if image.info.get(key)}

    def pil(make):
        def restore(y):
            out = make(y)
            out.info.update(info)  # same mode, same colour space: the profile still applies
            return out

        return restore

    if mode in ("L", "RGB", "LA", "RGBA"):
        x, back = _array_restorer(np.asarray(image))
        return x, pil(lambda y: Image.fromarray(back(y)))
    if mode in _PREMULTIPLIED:
        x, back = _array_restorer(np.asarray(image.convert(_PREMULTIPLIED[mode])))
        return x, pil(lambda y: Image.fromarray(back(y)).convert(mode))
    if mode in _CONVERT_THROUGH_RGB:
        x, back = _array_restorer(np.asarray(image.convert("RGB")))
        return x, pil(lambda y: Image.fromarray(back(y)).convert(mode))
    if mode.startswith("I;16"):
        array = np.asarray(image)  # byte order as stored: '<u2' or '>u2'
        x, back = _array_restorer(array.astype(np.uint16))
        return x, pil(lambda y: Image.frombytes(mode, size, back(y).astype(array.dtype).tobytes()))
    if mode == "I":
        array = np.asarray(image)
        low, high = (int(array.min()), int(array.max())) if array.size else (0, 0)
        raise ValueError(f"mode 'I' (32-bit integer) images have no fixed scale: 0..255 after image.convert('I'), "
                         f"0..65535 from 16-bit files (this one holds {low}..{high}). Say which: "
                         "pass np.asarray(image).astype(np.uint16) for 16-bit data or .astype(np.uint8) for 8-bit data "
                         "(the result comes back as that array)")
    if mode == "F":
        x, back = _array_restorer(np.asarray(image, dtype=np.float32))
        return x, pil(lambda y: Image.fromarray(back(y)))
    if mode in ("P", "PA"):
        raise ValueError(f"mode {mode!r} (palette) images are not denoised: putting the result back on a "
                         "256-colour palette would undo the denoising. Convert it first, "
                         "image.convert('RGBA' if it has transparency else 'RGB'); the result comes back in that mode")
    if mode == "1":
        raise ValueError("mode '1' (bilevel) images are not denoised: the result has grey levels that one bit "
                         "cannot hold, and thresholding them would invent edges. Convert it first, image.convert('L'); "
                         "the result comes back grey (threshold it yourself if you need one bit)")
    if mode == "CMYK":
        raise ValueError("mode 'CMYK' images are not denoised: the models work in RGB, and converting the result "
                         "back to CMYK would move the black ink (K) into C, M and Y. Convert it to RGB first: "
                         "image.convert('RGB'), or colour-managed with PIL.ImageCms.profileToProfile")
    raise ValueError(f"PIL mode {mode!r} is not supported; convert the image to 'RGB', 'RGBA', 'L' or 'LA' first")


def _array_restorer(array):
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (1, 2, 3, 4)):
        raise ValueError(
            f"expected an image of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ValueError(f"image is empty: shape {array.shape}")
    squeeze = array.ndim == 2
    x = array[:, :, None] if squeeze else array
    alpha = None
    if x.shape[-1] in (2, 4):
        x, alpha = x[..., :-1], x[..., -1:]
    if array.dtype == np.uint8 or array.dtype == np.uint16:
        scale = 255.0 if array.dtype == np.uint8 else 65535.0
        x = x.astype(np.float32) / scale

        def back(y):
            y = np.clip(np.round(y * scale), 0, scale).astype(array.dtype)
            return y
    elif array.dtype.kind == "f":
        if not np.all(np.isfinite(x)):
            raise ValueError("float image contains NaN or infinite values")
        low, high = float(x.min()), float(x.max())
        if high > _FLOAT_LIMIT or low < -_FLOAT_LIMIT + 1:
            raise ValueError(
                f"float images must be on the 0..1 scale (noisy values slightly outside are fine); "
                f"got values from {low:.3g} to {high:.3g}. Divide 0..255 data by 255, or pass uint8."
            )
        x = x.astype(np.float32)

        def back(y):
            return np.clip(y, 0.0, 1.0).astype(np.float32)
    else:
        raise TypeError(f"expected a uint8, uint16 or float image, got dtype {array.dtype}")

    def restore(y):
        y = back(y)
        if alpha is not None:
            y = np.concatenate([y, alpha.astype(y.dtype)], axis=-1)
        return y[:, :, 0] if squeeze else y

    return x, restore
