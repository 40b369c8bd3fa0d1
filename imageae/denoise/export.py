"""The denoiser's TensorFlow Serving signatures (written by :func:`imageae.export.export_saved_model`)."""


def _denoiser_archive(model):
    import keras
    import tensorflow as tf

    stride, channels = int(model.stride), int(model.channels)

    def run_float(x):
        # Pad to the stride with mirror padding, as imageae.pipelines.tiling.pad_to_multiple does.
        h, w = tf.shape(x)[1], tf.shape(x)[2]
        padded = tf.pad(x, [[0, 0], [0, (-h) % stride], [0, (-w) % stride], [0, 0]], mode="SYMMETRIC")
        return model(padded, training=False)[:, :h, :w, :]

    def denoise_png(data):
        image = tf.io.decode_image(data, channels=channels, expand_animations=False, dtype=tf.uint8)
        y = run_float(tf.cast(image, tf.float32)[None] / 255.0)[0]
        return tf.io.encode_png(tf.cast(tf.clip_by_value(tf.round(y * 255.0), 0.0, 255.0), tf.uint8))

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda images_bytes: {"denoised_bytes": tf.map_fn(denoise_png, images_bytes, fn_output_signature=tf.string)},
        input_signature=[tf.TensorSpec([None], tf.string, name="images_bytes")],
    )
    archive.add_endpoint(
        "denoise",
        lambda images: {"denoised": run_float(images)},
        input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32, name="images")],
    )
    if getattr(model, "noise_level", False):  # "denoise" estimates the level; this one takes it

        def run_at(x, strength):
            h, w = tf.shape(x)[1], tf.shape(x)[2]
            padded = tf.pad(x, [[0, 0], [0, (-h) % stride], [0, (-w) % stride], [0, 0]], mode="SYMMETRIC")
            return model((padded, strength / 255.0), training=False)[:, :h, :w, :]

        archive.add_endpoint(
            "denoise_at_strength",
            lambda images, strength: {"denoised": run_at(images, strength)},
            input_signature=[tf.TensorSpec([None, None, None, channels], tf.float32, name="images"),
                             tf.TensorSpec([None], tf.float32, name="strength")],
        )
    return archive


# ----------------------------------------------------------------------------- LiteRT (.tflite)

_DATA = __import__("pathlib").Path(__file__).resolve().parents[2] / "data"
_CALIBRATION_SIGMAS = (15.0, 25.0, 50.0)


def _calibration_windows(channels, tile, calibration, count, seed=0):
    """``count`` float32 (1, tile, tile, channels) noisy windows for int8 calibration.

    From ``calibration`` (a folder of images, used as they are: give noisy images) or, by
    default, the checkout's ``data/clean`` (Gaussian noise added at sigma 15, 25, 50 as in
    training) and ``data/samples`` (already noisy)."""
    import numpy as np

    from imageae.data.io import find_images, read_image

    rng = np.random.default_rng(seed)
    if calibration is not None:
        sources = [(p, False) for p, _ in find_images([calibration])]
    else:
        sources = [(p, True) for p, _ in find_images([_DATA / "clean"])] if (_DATA / "clean").is_dir() else []
        sources += [(p, False) for p, _ in find_images([_DATA / "samples"])] if (_DATA / "samples").is_dir() else []
    if not sources:
        where = calibration if calibration is not None else f"{_DATA}/clean and {_DATA}/samples"
        raise ValueError(f"no calibration images found in {where}; give --calibration DIR with noisy images")
    images = []
    for path, clean in sources:
        x = read_image(path).to_float()  # (H, W, 1 or 3), alpha apart
        x = x.mean(axis=-1, keepdims=True) if channels == 1 else (np.repeat(x, 3, -1) if x.shape[-1] == 1 else x)
        images.append((x.astype(np.float32), clean))
    windows = []
    for i in range(count):
        x, clean = images[i % len(images)]
        if x.shape[0] < tile or x.shape[1] < tile:
            x = np.pad(x, ((0, max(0, tile - x.shape[0])), (0, max(0, tile - x.shape[1])), (0, 0)), mode="symmetric")
        y0 = rng.integers(0, x.shape[0] - tile + 1)
        x0 = rng.integers(0, x.shape[1] - tile + 1)
        w = x[y0 : y0 + tile, x0 : x0 + tile]
        if clean:
            sigma = _CALIBRATION_SIGMAS[i % len(_CALIBRATION_SIGMAS)]
            w = w + rng.normal(0.0, sigma / 255.0, w.shape).astype(np.float32)
        windows.append(np.ascontiguousarray(w[None], np.float32))
    return windows


def _denoiser_tflite(model, *, quantize="int8", calibration=None, tile=512, calibration_count=24):
    """Convert a DenoiserUNet to a .tflite on a fixed (1, tile, tile, C) float32 window.

    The graph computes the model's noise estimate (:meth:`DenoiserUNet.predict_noise`); the
    runner subtracts it from its float input, so the result keeps float precision although
    the convolutions run in int8. Inputs and outputs are float32 (quantised inside).

    Returns ``(tflite bytes, metadata dict)``.
    """
    import keras
    import tensorflow as tf

    from imageae.export import convert_to_tflite
    from imageae.pipelines.tiling import round_up

    stride, channels = int(model.stride), int(model.channels)
    margin = round_up(model.receptive_radius, stride)
    tile = round_up(int(tile), stride)
    if tile <= 2 * margin:
        raise ValueError(f"tile {tile} must exceed twice the model's margin ({margin} pixels); give a larger --tile")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda images: {"noise": tf.cast(model.predict_noise(images), tf.float32)},
        input_signature=[tf.TensorSpec([1, tile, tile, channels], tf.float32, name="images")],
    )

    def calibration_windows():
        return _calibration_windows(channels, tile, calibration, calibration_count)

    data = convert_to_tflite(archive, quantize=quantize, representative_inputs=calibration_windows)
    meta = {
        "format": "imageae-litert",
        "job": "denoise",
        "class": type(model).__name__,
        "channels": channels,
        "tile": tile,
        "margin": margin,
        "stride": stride,
        "output": "noise",  # result = input - output
        "quantize": quantize,
        "input_dtype": "float32",
        "output_dtype": "float32",
        "calibration": (None if quantize != "int8" else
                        str(calibration) if calibration is not None else "data/clean (+sigma 15/25/50) and data/samples"),
    }
    return data, meta
