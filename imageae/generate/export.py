"""The VAE's and the digit classifier's TensorFlow Serving signatures (written by
:func:`imageae.export.export_saved_model`), and the VAE decoder's LiteRT conversion
(:func:`imageae.export.export_tflite`)."""

import numpy as np


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


# ----------------------------------------------------------------------------- LiteRT (.tflite)

# Latents per calibration batch are DECODE_BLOCK rows; half the batches come from the model's
# latent mixture (the default 'gmm' sampler), half from the N(0, I) prior (sampler 'normal').
_CALIBRATION_BATCHES = 16


def _vae_tflite(model, *, quantize="int8", calibration=None, tile=None, calibration_batches=_CALIBRATION_BATCHES):
    """Convert a ConvVAE's decoder to a .tflite on a fixed (DECODE_BLOCK, latent_dim) float32 batch.

    The graph is ``model.decode``: latents in, images on 0..1 out (float32 in and out, int8
    inside for ``quantize="int8"``). int8 is calibrated on latents drawn from the model's own
    samplers, half from its latent mixture and half from N(0, I), with the stateless draws of
    :func:`~imageae.generate.sampling.sample_latents`. The sidecar records what a runner needs
    to sample as :func:`imageae.generate` does: the latent size, the batch, the output shape and
    the mixture (log weights, means, log variances).

    Returns ``(tflite bytes, metadata dict)``.
    """
    import keras
    import tensorflow as tf

    from imageae.export import convert_to_tflite
    from imageae.generate.sampling import DECODE_BLOCK, SAMPLE_BLOCK, mixture_of, sample_latents

    if calibration is not None:
        raise ValueError("--calibration applies to the denoisers; a VAE decoder is calibrated on latents drawn from "
                         "its own samplers (its latent mixture and N(0, I)), so leave it out")
    if tile is not None:
        raise ValueError(f"--tile applies to the denoisers; a VAE decoder takes a fixed batch of {DECODE_BLOCK} "
                         "latents, so leave it out")
    batch, latent_dim = DECODE_BLOCK, int(model.latent_dim)
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "serving_default",
        lambda z: {"images": tf.cast(model.decode(z), tf.float32)},
        input_signature=[tf.TensorSpec([batch, latent_dim], tf.float32, name="z")],
    )

    def calibration_latents():
        half = calibration_batches // 2
        latents = [sample_latents(model, batch, seed=1, sampler="gmm", start=i * batch) for i in range(half)]
        return latents + [sample_latents(model, batch, seed=2, sampler="normal", start=i * batch)
                          for i in range(calibration_batches - half)]

    data = convert_to_tflite(archive, quantize=quantize, representative_inputs=calibration_latents)
    log_weights, means, log_vars = (np.asarray(v, np.float32) for v in mixture_of(model))
    size, channels = int(model.image_size), int(model.channels)
    meta = {
        "format": "imageae-litert",
        "job": "generate",
        "class": type(model).__name__,
        "graph": "decoder: z float32 (batch, latent_dim) -> images float32 (batch, size, size, channels) on 0..1",
        "latent_dim": latent_dim,
        "batch": batch,
        "image_size": size,
        "channels": channels,
        "output_shape": [size, size, channels],
        "quantize": quantize,
        "input_dtype": "float32",
        "output_dtype": "float32",
        "samplers": {
            "gmm": "z = means[k] + exp(0.5 * log_vars[k]) * eps * temperature, k ~ Categorical(log_weights)",
            "normal": "z = eps * temperature",
        },
        # imageae draws eps and k with TensorFlow's stateless Philox generators, block b of
        # sample_block latents from the seeds (seed, 2b) and (seed, 2b + 1), so a seed gives the
        # Keras model's latents; elsewhere any generator of these distributions will do.
        "sample_block": SAMPLE_BLOCK,
        # Each float32 as its shortest decimal that reads back as the same float32.
        "mixture": {
            "log_weights": _decimals(log_weights),
            "means": [_decimals(row) for row in means],
            "log_vars": [_decimals(row) for row in log_vars],
        },
        "calibration": (None if quantize != "int8" else
                        f"{calibration_batches * batch} latents: half from the model's mixture (seed 1), half from "
                        "N(0, I) (seed 2), temperature 1"),
    }
    return data, meta


def _decimals(values):
    """float32 values as the shortest decimals that read back (as float32) to the same values."""
    return [float(str(np.float32(v))) for v in values]
