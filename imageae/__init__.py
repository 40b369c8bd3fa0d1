"""imageae: convolutional autoencoders that denoise, compress and generate images.

Public API::

    imageae.denoise(image)                 # numpy / PIL image in, same kind out
    imageae.denoise_folder(src, dst)       # a folder job; returns a FolderReport
    imageae.generate(n, model="vae-digits", seed=0, temperature=1.0)   # uint8 images
    imageae.reconstruct(images), imageae.interpolate(a, b, steps=8)
    imageae.export_saved_model(name, dir, version=1)   # TF Serving layout
    imageae.load_model(name_or_path, job)  # a shipped model by name, or a .keras file
    imageae.list_models()
"""

__version__ = "0.1.0"

from imageae.api import Denoiser, denoise, denoise_folder, generate, interpolate, reconstruct  # noqa: E402
from imageae.export import export_saved_model  # noqa: E402
from imageae.registry import list_models, load_model  # noqa: E402

__all__ = ["export_saved_model", "Denoiser", "denoise", "denoise_folder", "generate", "interpolate", "reconstruct", "list_models", "load_model", "__version__"]
