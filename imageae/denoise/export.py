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
    return archive
