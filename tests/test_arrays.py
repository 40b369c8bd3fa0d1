"""imageae.data.arrays.load_image_array: .npz arrays, image folders and MNIST IDX files as one
uint8 (N, size, size, channels) array."""

import gzip
import struct

import numpy as np
import pytest
from PIL import Image

from imageae.data.arrays import load_image_array


def idx_bytes(array):
    """An unsigned-byte IDX file (the MNIST format) holding ``array``."""
    array = np.asarray(array, np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + b"".join(struct.pack(">I", n) for n in array.shape)
    return header + array.tobytes()


def ramp_images(n, size):
    return np.arange(n * size * size, dtype=np.uint8).reshape(n, size, size)


# ------------------------------------------------------------------------------------------ npz


def test_npz_of_the_right_size_comes_back_unchanged_with_a_channel_axis(tmp_path):
    images = ramp_images(3, 6)
    np.savez(tmp_path / "x.npz", x_train=images, unused=np.zeros(1))
    out = load_image_array(tmp_path / "x.npz", size=6, channels=1)
    assert out.dtype == np.uint8 and out.shape == (3, 6, 6, 1)
    np.testing.assert_array_equal(out[..., 0], images)


def test_npz_grey_to_colour_repeats_the_channel_and_colour_to_grey_weights_it(tmp_path):
    np.savez(tmp_path / "grey.npz", ramp_images(2, 4))
    colour = load_image_array(tmp_path / "grey.npz", size=4, channels=3)
    assert colour.shape == (2, 4, 4, 3)
    for c in range(3):
        np.testing.assert_array_equal(colour[..., c], ramp_images(2, 4))
    red = np.zeros((1, 4, 4, 3), np.uint8)
    red[..., 0] = 255
    np.savez(tmp_path / "red.npz", red)
    grey = load_image_array(tmp_path / "red.npz", size=4, channels=1)
    assert grey.shape == (1, 4, 4, 1)
    assert np.all(grey == round(0.299 * 255))  # ITU-R 601 luma


def test_npz_of_another_size_is_resized(tmp_path):
    images = np.zeros((2, 16, 16), np.uint8)
    images[:, :, 8:] = 255  # right half white
    np.savez(tmp_path / "x.npz", images)
    out = load_image_array(tmp_path / "x.npz", size=4, channels=1)
    assert out.shape == (2, 4, 4, 1)
    # Lanczos rings a little next to the edge; the halves stay dark and bright
    assert np.all(out[:, :, :2] < 32) and np.all(out[:, :, 2:] > 223)
    assert np.all(out[:, :, 0] == 0) and np.all(out[:, :, 3] == 255)


def test_float_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "x.npz", np.zeros((2, 4, 4), np.float32))
    with pytest.raises(ValueError, match="expected uint8 images, got float32"):
        load_image_array(tmp_path / "x.npz", size=4, channels=1)


# --------------------------------------------------------------------------------------- folders


def test_folder_of_non_square_images_is_centre_cropped_then_resized(tmp_path):
    # white centre square, black margins: a centred crop sees only white, any other crop some black
    wide = np.zeros((20, 40, 3), np.uint8)
    wide[:, 10:30] = 255
    tall = np.zeros((40, 20), np.uint8)
    tall[10:30] = 255
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(tall).save(tmp_path / "tall.png")
    (tmp_path / "notes.txt").write_text("not an image\n")
    for channels in (1, 3):
        out = load_image_array(tmp_path, size=10, channels=channels)
        assert out.shape == (2, 10, 10, channels) and out.dtype == np.uint8
        assert np.all(out == 255)


def test_crop_takes_a_centred_square_of_that_many_pixels(tmp_path):
    image = np.zeros((30, 30), np.uint8)
    image[10:20, 10:20] = 200  # a 10-pixel centre block on black
    Image.fromarray(image).save(tmp_path / "a.png")
    cropped = load_image_array(tmp_path, size=5, channels=1, crop=10)
    assert np.all(cropped == 200)
    whole = load_image_array(tmp_path, size=5, channels=1)
    assert whole[0, 0, 0, 0] < 20 and whole[0, 2, 2, 0] > 180  # black border, bright middle


def test_sixteen_bit_images_are_scaled_to_eight_bits(tmp_path):
    Image.fromarray(np.full((6, 6), 65535, np.uint16)).save(tmp_path / "deep.png")
    out = load_image_array(tmp_path, size=6, channels=1)
    assert out.dtype == np.uint8 and np.all(out == 255)


def test_limit_and_several_inputs(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(4):
        Image.fromarray(np.full((4, 4), 10 * i, np.uint8)).save(folder / f"{i}.png")
    np.savez(tmp_path / "x.npz", np.full((2, 4, 4), 99, np.uint8))
    out = load_image_array([tmp_path / "x.npz", folder], size=4, channels=1)
    np.testing.assert_array_equal(out[:, 0, 0, 0], [99, 99, 0, 10, 20, 30])  # inputs in order, files sorted
    assert len(load_image_array(folder, size=4, channels=1, limit=3)) == 3


def test_empty_folder_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no images found"):
        load_image_array(tmp_path, size=4, channels=1)


# ------------------------------------------------------------------------------------------- IDX


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "train-images-idx3-ubyte.gz"])
def test_idx_file_is_read_as_its_header_says(tmp_path, name):
    images = ramp_images(3, 5)
    data = idx_bytes(images)
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    out = load_image_array(tmp_path / name, size=5, channels=1)
    assert out.shape == (3, 5, 5, 1)
    np.testing.assert_array_equal(out[..., 0], images)


def test_truncated_idx_file_is_refused(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(ramp_images(3, 5))[:-3])  # the pixel data ends early
    with pytest.raises(ValueError, match=r"IDX header says \(3, 5, 5\), file holds 72 values"):
        load_image_array(path, size=5, channels=1)


def test_idx_file_cut_inside_its_header_is_refused(tmp_path):
    path = tmp_path / "t10k-images-idx3-ubyte"
    path.write_bytes(idx_bytes(ramp_images(3, 5))[:10])  # 3 dimensions need a 16-byte header
    with pytest.raises(ValueError):  # numpy's message, which does not name the file
        load_image_array(path, size=5, channels=1)


def test_idx_file_of_another_element_type_is_refused(tmp_path):
    path = tmp_path / "x-idx3-ubyte"
    data = bytearray(idx_bytes(ramp_images(1, 4)))
    data[2] = 0x0D  # float32 elements
    path.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="not an unsigned-byte IDX file"):
        load_image_array(path, size=4, channels=1)
