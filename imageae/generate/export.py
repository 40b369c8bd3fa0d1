"""The VAE's and the digit classifier's TensorFlow Serving signatures (written by
:func:`imageae.export.export_saved_model`)."""


def _vae_archive(model):
    import keras
    import tensorflow as tf

    from imageae.generate.sampling import MAX_TEMPERATURE, mixture_of, run_in_blocks_tf, sample_latents_tf

    size, channels, latent_dim = model.image_size, model.channels, model.latent_dim
    image_spec = tf.TensorSpec([size, size, channels], tf.float32)
    latent_spec = tf.TensorSpec([latent_dim], tf.float32)

    # Every model call runs on blocks of imageae.generate.sampling.DECODE_BLOCK rows, as the Python
    # API's do, so the served numbers are the API's to the bit (float32 on both sides).
    def decode(z):
        return run_in_blocks_tf(lambda block: (model.decode(block),), z, (image_spec,))[0]

    def to_png(images):
        pixels = tf.cast(tf.clip_by_value(tf.round(images * 255.0), 0.0, 255.0), tf.uint8)
        return tf.map_fn(tf.io.encode_png, pixels, fn_output_signature=tf.string)

    def generate(seed, count, temperature, mixture):
        # The API refuses these with a clear error; a server cannot, so it fails the request.
        checks = [
            tf.debugging.assert_non_negative(seed, message="seed must be a whole number in 0..2**63-1"),
            tf.debugging.assert_non_negative(count, message="count must be >= 0"),
            tf.debugging.Assert(
                tf.logical_and(temperature > 0.0, temperature <= MAX_TEMPERATURE),
                ["temperature must be positive and at most", MAX_TEMPERATURE, "got", temperature],
            ),
        ]
        with tf.control_dependencies(checks):
            z = sample_latents_tf(count, latent_dim, seed, temperature, mixture)
        return {"images_bytes": to_png(decode(z))}

    scalars = [
        tf.TensorSpec([], tf.int64, name="seed"),
        tf.TensorSpec([], tf.int32, name="count"),
        tf.TensorSpec([], tf.float32, name="temperature"),
    ]
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "generate", lambda seed, count, temperature: generate(seed, count, temperature, mixture_of(model)),
        input_signature=scalars,
    )
    archive.add_endpoint(
        "generate_prior", lambda seed, count, temperature: generate(seed, count, temperature, None),
        input_signature=scalars,
    )

    def encode(images):
        mean, log_var = run_in_blocks_tf(model.encode, images, (latent_spec, latent_spec))
        return {"z_mean": mean, "z_log_var": log_var}

    archive.add_endpoint(
        "encode", encode, input_signature=[tf.TensorSpec([None, size, size, channels], tf.float32, name="images")]
    )
    archive.add_endpoint(
        "decode", lambda z: {"images": decode(z)},
        input_signature=[tf.TensorSpec([None, latent_dim], tf.float32, name="z")],
    )
    return archive


def _classifier_archive(model):
    import keras
    import tensorflow as tf

    from imageae.generate.sampling import run_in_blocks_tf

    size = 28  # the digit classifier's input (MNIST)
    feature_spec = tf.TensorSpec([model.feature_dim], tf.float32)
    logit_spec = tf.TensorSpec([10], tf.float32)

    def classify(images):
        def run(block):
            features = model.features(block)
            return features, model.logits(features)

        features, logits = run_in_blocks_tf(run, images, (feature_spec, logit_spec))
        return {"logits": logits, "probabilities": tf.nn.softmax(logits),
                "labels": tf.argmax(logits, axis=-1, output_type=tf.int32), "features": features}

    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default", classify,
        input_signature=[tf.TensorSpec([None, size, size, 1], tf.float32, name="images")],
    )
    return archive
