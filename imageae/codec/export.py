"""The codec's TensorFlow Serving signatures (written by :func:`imageae.export.export_saved_model`)."""


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
