"""The compress job: the learned image codecs, from the bitstream up.

``container`` reads and writes ``.iae`` files (format: ``docs/iae-format.md``); ``coder`` turns
integer symbol arrays into range-coded bytes and back, with integer probability tables so that
a file decodes bit-exactly on any machine. Neither touches the filesystem or a model.
``transforms``, ``session`` and ``refine`` run a model's transforms and code its latents;
``api`` is the public API (:func:`imageae.compress`, ...), ``train`` the recipe, ``cli`` the
subcommands, ``export`` and ``serving`` the TensorFlow Serving side.
"""

from imageae.codec.coder import (
    CDF_PRECISION,
    GAUSSIAN_RADII,
    GAUSSIAN_TABLES,
    GAUSSIAN_TABLES_SHA256,
    SCALE_TABLE,
    decode_factorized,
    decode_gaussian,
    encode_factorized,
    encode_gaussian,
    estimate_factorized_bits,
    estimate_gaussian_bits,
    quantize_pmf_tables,
    quantized_cdf_table,
    scale_indexes,
)
from imageae.codec.container import (
    DEFAULT_MAX_PIXELS,
    FORMAT_VERSION,
    IaeFormatError,
    IaeHeader,
    ImageTooLargeError,
    pack,
    pack_section,
    unpack,
    unpack_section,
)
from imageae.codec.session import (
    CodecLatents,
    CodecSession,
    RateEstimate,
    UnknownModelError,
    analyze_image,
    compress_array,
    decompress_bytes,
    estimate_bits,
    make_session_lookup,
    read_latents,
    synthesize_image,
)

__all__ = [
    "CDF_PRECISION",
    "DEFAULT_MAX_PIXELS",
    "FORMAT_VERSION",
    "GAUSSIAN_RADII",
    "GAUSSIAN_TABLES",
    "GAUSSIAN_TABLES_SHA256",
    "SCALE_TABLE",
    "CodecLatents",
    "CodecSession",
    "IaeFormatError",
    "IaeHeader",
    "ImageTooLargeError",
    "RateEstimate",
    "UnknownModelError",
    "analyze_image",
    "compress_array",
    "decode_factorized",
    "decode_gaussian",
    "decompress_bytes",
    "encode_factorized",
    "encode_gaussian",
    "estimate_bits",
    "estimate_factorized_bits",
    "estimate_gaussian_bits",
    "make_session_lookup",
    "pack",
    "pack_section",
    "quantize_pmf_tables",
    "quantized_cdf_table",
    "read_latents",
    "scale_indexes",
    "synthesize_image",
    "unpack",
    "unpack_section",
]
