"""SavedModels for TensorFlow Serving: every shipped model, usable without imageae.

``export_saved_model(model, directory, version=N)`` writes TF Serving's layout
``directory/<model name>/<N>/`` with Keras 3's :class:`keras.export.ExportArchive`. The folder
is built under a temporary name beside the target and renamed into place, so a server that
watches ``directory/<model name>`` never sees a half-written version.

Signatures (inputs and outputs are named; outputs whose name ends in ``_bytes`` are
base64-encoded by TF Serving's REST API):

denoiser
    ``serving_default``: ``images_bytes`` (string [N], encoded PNG/JPEG/BMP/GIF, any sizes and
    formats mixed) -> ``denoised_bytes`` (string [N], 8-bit PNG). Decoding is TensorFlow's:
    8-bit, no EXIF orientation, no alpha; use the Python package for 16-bit or alpha.
    ``denoise``: ``images`` (float32 [N, H, W, C] on 0..1) -> ``denoised`` (float32).
codec (the transforms; the entropy coding stays with the client, see :mod:`imageae.codec.serving`)
    ``analysis``: ``images`` (uint8 [1, H, W, 3], one image of any size; grey replicated to
    RGB by the client), ``quality`` (int32 scalar, 1..Q) -> ``z_symbols``, ``y_symbols`` and
    ``scale_indexes`` (int32 [1, h, w, C]): the integers an ``.iae`` file stores, and the
    Gaussian table of each y symbol;
    ``scale_indexes``: ``z_symbols``, ``quality`` -> ``scale_indexes`` (what a decoder needs
    before it can read the y symbols);
    ``synthesis``: ``y_symbols``, ``z_symbols``, ``quality``, ``height``, ``width`` (int32) ->
    ``images`` (float32 [1, height, width, 3] on 0..1; x 255 and round for uint8, average the
    channels first for a grey file, as :func:`imageae.codec.synthesize_image` does);
    ``z_tables``: no input -> ``z_cdf_tables`` (int32 [num_filters, L], each row a 16-bit
    frequency table, zero-padded), ``z_table_lengths``, ``z_offsets`` (int32 [num_filters]).
VAE
    ``generate``: ``seed`` (int64), ``count`` (int32), ``temperature`` (float32) ->
    ``images_bytes`` (string [count], PNG), sampled from the model's latent mixture exactly as
    ``imageae.generate(..., sampler="gmm")`` does; ``generate_prior`` the same from N(0, I);
    ``encode``: ``images`` (float32 [N, S, S, C]) -> ``z_mean``, ``z_log_var``;
    ``decode``: ``z`` (float32 [N, latent_dim]) -> ``images`` (float32 on 0..1).
    Everything runs in float32 and in model calls of the same fixed size as the Python API's
    (whose VAE precision is float32 unless asked otherwise), so for a seed the served images
    are ``imageae.generate``'s byte for byte, and ``encode``/``decode`` give
    ``imageae.reconstruct``'s numbers, on the same machine and TensorFlow build. (Another CPU
    or a GPU may round a float32 sum differently: then a pixel can differ by one grey level.)
digit classifier (the feature space of the digit FID/KID benchmark)
    ``serving_default``: ``images`` (float32 [N, 28, 28, 1] on 0..1, white digit on black as
    in MNIST) -> ``logits``, ``probabilities`` (float32 [N, 10]), ``labels`` (int32 [N]) and
    ``features`` (float32 [N, 128], the FID/KID features).
"""

import os
import shutil
import tempfile
from pathlib import Path


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


def _vae_archive(model):
    import keras
    import tensorflow as tf

    from imageae.generation import MAX_TEMPERATURE, mixture_of, run_in_blocks_tf, sample_latents_tf

    size, channels, latent_dim = model.image_size, model.channels, model.latent_dim
    image_spec = tf.TensorSpec([size, size, channels], tf.float32)
    latent_spec = tf.TensorSpec([latent_dim], tf.float32)

    # Every model call runs on blocks of imageae.generation.DECODE_BLOCK rows, as the Python
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

    from imageae.generation import run_in_blocks_tf

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


def _codec_archive(model):
    import keras
    import tensorflow as tf

    from imageae.codec.coder import SCALE_LEVELS, SCALE_TABLE
    from imageae.codec.fixed_point import FixedPointHyperSynthesis
    from imageae.codec.session import analysis_graph, padded_tables, z_coding_tables

    # The same float64 bounds as imageae.codec.coder.scale_indexes compares against, and the
    # same exact fixed-point h_s as imageae.codec.session: identical indexes and means.
    bounds = tf.constant(SCALE_TABLE, tf.float64)
    hyper_synthesis = FixedPointHyperSynthesis(model)
    tables, offsets = z_coding_tables(model)
    z_cdf, z_lengths = (tf.constant(a) for a in padded_tables(tables))
    z_offsets = tf.constant(offsets)

    def indexes_and_means(z_symbols, quality):
        scales, means = hyper_synthesis(z_symbols, quality)
        k = tf.searchsorted(tf.reshape(bounds, [1, -1]), tf.reshape(scales, [1, -1]), side="left")
        k = tf.reshape(tf.minimum(k, SCALE_LEVELS - 1), tf.shape(scales))
        return tf.cast(k, tf.int32), means

    transforms = analysis_graph(model)  # the graph the package's session runs, so y matches bit for bit

    def analysis(images, quality):
        y, z = transforms(images, quality)
        z_symbols = tf.cast(tf.round(z), tf.int32)
        k, means = indexes_and_means(z_symbols, quality)
        y_symbols = tf.cast(tf.round(y - means), tf.int32)
        return {"z_symbols": z_symbols, "y_symbols": y_symbols, "scale_indexes": k}

    def synthesis(y_symbols, z_symbols, quality, height, width):
        _, means = indexes_and_means(z_symbols, quality)
        x = model.synthesize(tf.cast(y_symbols, tf.float32) + means, tf.reshape(quality, [1]))
        return {"images": x[:, :height, :width, :]}

    channels, n, m = int(model.channels), int(model.num_filters), int(model.num_latent)
    quality = tf.TensorSpec([], tf.int32, name="quality")
    z_spec = tf.TensorSpec([1, None, None, n], tf.int32, name="z_symbols")
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        "analysis", analysis,
        input_signature=[tf.TensorSpec([1, None, None, channels], tf.uint8, name="images"), quality],
    )
    archive.add_endpoint(
        "scale_indexes", lambda z_symbols, quality: {"scale_indexes": indexes_and_means(z_symbols, quality)[0]},
        input_signature=[z_spec, quality],
    )
    archive.add_endpoint(
        "synthesis", synthesis,
        input_signature=[tf.TensorSpec([1, None, None, m], tf.int32, name="y_symbols"), z_spec, quality,
                         tf.TensorSpec([], tf.int32, name="height"), tf.TensorSpec([], tf.int32, name="width")],
    )
    archive.add_endpoint(
        "z_tables", lambda: {"z_cdf_tables": z_cdf, "z_table_lengths": z_lengths, "z_offsets": z_offsets},
        input_signature=[],
    )
    return archive


def export_saved_model(model, directory, *, version=1, name=None):
    """Export a shipped model (name) or a .keras file for TensorFlow Serving.

    Parameters
    ----------
    model : str
        A registered model name (``imageae models``) or a .keras path.
    directory : path
        The model base path; the export goes to ``directory/<name>/<version>/``.
    version : int
        TF Serving version number; an existing version is never overwritten.
    name : str, optional
        Folder name under ``directory`` (default: the model's name or the file's stem).

    Returns
    -------
    pathlib.Path
        The written version folder.

    Examples
    --------
    >>> import imageae
    >>> imageae.export_saved_model("denoise-grey", "/tmp/serving", version=1)  # doctest: +SKIP
    PosixPath('/tmp/serving/denoise-grey/1')
    """
    from imageae import registry
    from imageae.models.classifier import DigitClassifier
    from imageae.models.codec import HyperpriorCodec
    from imageae.models.denoiser import DenoiserUNet
    from imageae.models.vae import ConvVAE
    from imageae.runtime import with_precision

    if int(version) < 1:
        raise ValueError(f"version must be a positive integer, got {version}")
    entry = registry.MODELS.get(model)
    path = registry.resolve(model, job=entry.job) if entry else registry.resolve(model, job=None)
    loaded = with_precision(registry.load_model(str(path), job=entry.job if entry else None), "float32")
    if isinstance(loaded, DenoiserUNet):
        archive = _denoiser_archive(loaded)
    elif isinstance(loaded, ConvVAE):
        archive = _vae_archive(loaded)
    elif isinstance(loaded, HyperpriorCodec):
        archive = _codec_archive(loaded)
    elif isinstance(loaded, DigitClassifier):
        archive = _classifier_archive(loaded)
    else:
        raise ValueError(f"{path}: cannot export a {type(loaded).__name__} (no serving signatures defined)")
    target = Path(directory) / (name or (entry.name if entry else Path(path).stem)) / str(int(version))
    if target.exists():
        raise FileExistsError(f"{target} already exists; choose another --version")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".partial", dir=target.parent))
    try:
        archive.write_out(str(staging), verbose=False)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)  # mkdtemp's 0700 would hide the model from a server user
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target
