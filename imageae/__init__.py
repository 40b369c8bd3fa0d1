"""imageae: convolutional autoencoders that denoise, compress and generate images.

Public API::

    imageae.denoise(image)                 # numpy / PIL image in, same kind out
    imageae.denoise_folder(src, dst)       # a folder job; returns a FolderReport
    imageae.compress(image, quality=4)     # uint8 image -> bytes of an .iae file
    imageae.decompress(data)               # -> uint8 image
    imageae.compress_folder(src, dst), imageae.decompress_folder(src, dst)
    imageae.generate(n, model="vae-digits", seed=0, temperature=1.0)   # uint8 images
    imageae.generate_batches(n, batch_size=256)   # the same images, streamed (any n)
    imageae.reconstruct(images), imageae.interpolate(a, b, steps=8)
    imageae.embed(images, model="vae-digits")   # latent features, float32 (n, code_size)
    imageae.export_saved_model(name, dir, version=1)   # TF Serving layout
    imageae.load_model(name_or_path, job)  # a shipped model by name, or a .keras file
    imageae.list_models()

Each job is a package holding its API, training recipe and subcommands (``imageae/denoise/``,
``imageae/codec/``, ``imageae/generate/``) on a job-free core; docs/architecture.md maps them.
``imageae.denoise`` and ``imageae.generate`` name the functions above; reach the packages'
modules with ``from imageae.denoise import api``.
"""

__version__ = "0.1.0"

from imageae.anomaly.api import AnomalyDetector  # noqa: E402
from imageae.codec.api import compress, compress_folder, decompress, decompress_folder  # noqa: E402
from imageae.denoise.api import Denoiser, denoise, denoise_folder  # noqa: E402
from imageae.export import export_saved_model  # noqa: E402
from imageae.features.api import embed  # noqa: E402
from imageae.generate.api import generate, generate_batches, interpolate, reconstruct  # noqa: E402
from imageae.registry import list_models, load_model  # noqa: E402

__all__ = [
    "AnomalyDetector",
    "Denoiser",
    "__version__",
    "compress",
    "compress_folder",
    "decompress",
    "decompress_folder",
    "denoise",
    "denoise_folder",
    "embed",
    "export_saved_model",
    "generate",
    "generate_batches",
    "interpolate",
    "list_models",
    "load_model",
    "reconstruct",
]
