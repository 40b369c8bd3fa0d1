"""Whole image sets as arrays, for training and evaluating the VAE and its classifiers."""

import gzip
from pathlib import Path

import numpy as np
from PIL import Image

from imageae.data.io import find_images, read_image


def _read_idx(path):
    """An MNIST IDX file (optionally .gz) as a numpy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 8:
        raise ValueError(f"{path} is not an unsigned-byte IDX file")
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise ValueError(f"{path}: IDX header is truncated")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: IDX header says {shape}, file holds {array.size} values")
    return array.reshape(shape)


def _square(img, crop):
    """Centre crop: ``crop`` pixels square if given, else the largest centred square."""
    h, w = img.shape[:2]
    side = min(h, w) if not crop else min(crop, h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return img[top : top + side, left : left + side]


def load_image_array(inputs, *, size, channels, crop=None, limit=None):
    """Images as a uint8 array (N, size, size, channels).

    ``inputs`` are folders or files of images (each centre-cropped to a square, ``crop``
    pixels if given, then resized with Pillow's area-averaging ``reduce``/Lanczos filter),
    ``.npz`` files (first array, (N, H, W) or (N, H, W, C) uint8) or MNIST IDX files
    (``*-idx3-ubyte[.gz]``). Arrays of another size are resized the same way.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    arrays = []
    for item in inputs:
        path = Path(item)
        if path.is_file() and path.suffix == ".npz":
            with np.load(path) as data:
                arrays.append(_fit(np.asarray(data[data.files[0]]), size, channels, crop))
        elif path.is_file() and "idx" in path.name:
            arrays.append(_fit(_read_idx(path), size, channels, crop))
        else:
            images = []
            for file, _ in find_images(path):
                if limit and len(images) >= limit:
                    break
                decoded = read_image(file)
                pixels = decoded.pixels if decoded.bit_depth == 8 else (decoded.pixels // 257).astype(np.uint8)
                images.append(_fit(pixels[None], size, channels, crop)[0])
            if not images:
                raise ValueError(f"no images found in {path}")
            arrays.append(np.stack(images))
    result = np.concatenate(arrays)
    return result[:limit] if limit else result


def _fit(batch, size, channels, crop):
    batch = np.asarray(batch)
    if batch.ndim == 3:
        batch = batch[..., None]
    if batch.dtype != np.uint8:
        raise ValueError(f"expected uint8 images, got {batch.dtype}")
    if batch.shape[-1] == 1 and channels == 3:
        batch = np.repeat(batch, 3, axis=-1)
    elif batch.shape[-1] == 3 and channels == 1:
        batch = np.round(batch @ np.array([0.299, 0.587, 0.114])).astype(np.uint8)[..., None]
    needs_crop = crop or batch.shape[1] != batch.shape[2]
    if not needs_crop and batch.shape[1] == size:
        return batch
    out = np.empty((len(batch), size, size, channels), np.uint8)
    for i, img in enumerate(batch):
        img = _square(img, crop)
        pil = Image.fromarray(img[..., 0] if channels == 1 else img)
        out[i] = np.asarray(pil.resize((size, size), Image.LANCZOS, reducing_gap=2.0)).reshape(size, size, channels)
    return out
