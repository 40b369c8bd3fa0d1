"""The anomaly detector's TensorFlow Serving signatures (written by :func:`imageae.export.export_saved_model`).

The graph gives what the detector's score is made of, per image at the model's input size: the
reconstruction, the squared-error map (the heat map) and the code. The scores themselves (SSIM,
the latent distance, the standardisation and the threshold stored in the model) are computed by
:class:`imageae.AnomalyDetector` from these outputs; a serving client can rank by the error map's
mean or read the calibration from the model card.
"""


def _autoencoder_archive(model):
    import keras
    import tensorflow as tf

    size, channels = int(model.image_size), int(model.channels)

    def run(images):
        code = model.encode(images)
        reconstruction = tf.cast(model.decode(code), tf.float32)
        error = tf.reduce_mean(tf.square(reconstruction - images), axis=-1)
        return {"reconstruction": reconstruction, "error_map": error, "code": tf.cast(code, tf.float32),
                "mean_squared_error": tf.reduce_mean(error, axis=(1, 2))}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", run,
        input_signature=[tf.TensorSpec([None, size, size, channels], tf.float32, name="images")],
    )
    return archive


def _autoencoder_tflite(model, **options):
    """The detector as a LiteRT .tflite and its sidecar (:func:`imageae.anomaly.litert.autoencoder_tflite`)."""
    from imageae.anomaly.litert import autoencoder_tflite

    return autoencoder_tflite(model, **options)
