"""The one table of named models shipped with imageae.

Every job, the CLI's ``--model`` choices, ``imageae models`` and the docs read this table.
A model is named here once, with its job, its colour mode and its weights file under
``saved_models/``; its model card (training data, steps, wall time, hardware, measured
metrics) sits next to the weights as ``<name>.json``.
"""

import dataclasses
import json
import os
import sys
from pathlib import Path

# Where shipped weights are looked for: a checkout's saved_models/ (running from the repo or
# an editable install), then the copy `pip install .` puts under <prefix>/share/imageae.
_CANDIDATES = (
    Path(__file__).resolve().parent.parent / "saved_models",
    Path(sys.prefix) / "share" / "imageae" / "saved_models",
)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A shipped model: how to find it and what it is for."""

    name: str
    job: str
    colour_mode: str
    description: str

    @property
    def path(self):
        return saved_models_dir() / f"{self.name}.keras"

    @property
    def card_path(self):
        return self.path.with_suffix(".json")

    def card(self):
        """The model card as a dict (empty when the card is missing)."""
        try:
            return json.loads(self.card_path.read_text())
        except (OSError, ValueError):
            return {}

    def as_dict(self):
        row = {
            "name": self.name,
            "job": self.job,
            "colour_mode": self.colour_mode,
            "file": str(self.path),
            "available": self.path.exists(),
            "description": self.description,
        }
        if self.job == "compress":  # the --quality range, from the model card
            row["qualities"] = self.card().get("rate_distortion", {}).get("qualities")
        return row


MODELS = {
    entry.name: entry
    for entry in [
        ModelEntry(
            "denoise-grey",
            "denoise",
            "grey",
            "blind Gaussian denoiser for grey images (residual U-Net, trained on Train400)",
        ),
        ModelEntry(
            "denoise-colour",
            "denoise",
            "colour",
            "RGB photos: real camera noise and Gaussian noise, --strength auto or set (residual U-Net "
            "with a noise-level input, trained on a camera-noise model and Gaussian noise, BSDS500 train+test)",
        ),
        ModelEntry(
            "vae-digits",
            "generate",
            "grey",
            "VAE for 28x28 handwritten digits (trained on MNIST), latent 16, mixture sampler",
        ),
        ModelEntry(
            "vae-faces64",
            "generate",
            "colour",
            "VAE for 64x64 faces (trained on CelebA, non-commercial licence), latent 128, mixture sampler",
        ),
        ModelEntry(
            "codec-v4",
            "compress",
            "both",
            "learned image codec, experimental: undertrained, files 21 % smaller than JPEG's but 21 % larger "
            "than WebP's (mean-scale hyperprior, one model for nine qualities, trained on BSDS500 train+test)",
        ),
        ModelEntry(
            "anomaly-elpv",
            "anomaly",
            "grey",
            "anomaly detector for electroluminescence images of solar cells (conv autoencoder trained on the "
            "functional cells of ELPV, CC BY-NC-SA licence)",
        ),
        ModelEntry(
            "digit-classifier",
            "features",
            "grey",
            "small MNIST classifier whose 128-d features score generated digits (FID/KID)",
        ),
    ]
}


def saved_models_dir():
    """Where shipped weights live: ``$IMAGEAE_MODELS`` if set, else the first of the checkout's
    saved_models/ and the installed share/imageae/saved_models that holds any model."""
    if os.environ.get("IMAGEAE_MODELS"):
        return Path(os.environ["IMAGEAE_MODELS"])
    for candidate in _CANDIDATES:
        if any(candidate.glob("*.keras")):
            return candidate
    return _CANDIDATES[0]


def list_models(job=None):
    """Registered models, optionally only those for ``job``."""
    return [m for m in MODELS.values() if job is None or m.job == job]


def resolve(name_or_path, *, job):
    """The .keras file for a registered model name or a path; raises ValueError with the choices.

    ``job=None`` accepts a model of any job."""
    if name_or_path in MODELS:
        entry = MODELS[name_or_path]
        if job is not None and entry.job != job:
            raise ValueError(f"model '{name_or_path}' is a {entry.job} model, not a {job} model")
        if not entry.path.exists():
            raise FileNotFoundError(f"weights of model '{name_or_path}' are missing: {entry.path}")
        return entry.path
    path = Path(name_or_path)
    if path.suffix == ".keras" and path.is_file():
        return path
    names = ", ".join(m.name for m in (list_models(job) if job else MODELS.values()))
    choices = f"give one of {names} or the path of a .keras file" if names else (
        f"no {job} model ships yet; give the path of a .keras file"
    )
    raise ValueError(f"unknown model '{name_or_path}': {choices}")


_cache = {}


def load_model(name_or_path, *, job):
    """Load (once per process) a registered model or a .keras file for ``job``."""
    from imageae.runtime import import_tensorflow

    import_tensorflow()  # quietly, before Keras pulls it in
    import keras

    import imageae.layers.blocks  # noqa: F401  (registers the custom layers)
    import imageae.metrics  # noqa: F401
    import imageae.models.autoencoder  # noqa: F401
    import imageae.models.classifier  # noqa: F401
    import imageae.models.codec  # noqa: F401
    import imageae.models.denoiser  # noqa: F401
    import imageae.models.vae  # noqa: F401

    path = resolve(name_or_path, job=job).resolve()
    key = (str(path), path.stat().st_mtime_ns)
    if key not in _cache:
        try:
            _cache[key] = keras.saving.load_model(path, compile=False)
        except Exception as error:  # a foreign or damaged file: say which and why
            raise ValueError(f"cannot load model {path}: {error}") from None
    model = _cache[key]
    expected = _JOB_CLASSES.get(job)
    if expected and type(model).__name__ != expected:
        raise ValueError(f"{path} holds a {type(model).__name__}, not a {job} model ({expected})")
    return model


# The model class each job runs (checked by name, so this module needs no model imports).
_JOB_CLASSES = {
    "denoise": "DenoiserUNet", "generate": "ConvVAE", "anomaly": "ConvAutoencoder", "features": "DigitClassifier", "compress": "HyperpriorCodec",
}

# The TensorFlow Serving signatures of each model class ("module:function", called with the
# loaded model, returning a keras.export.ExportArchive), defined by the job that runs the model.
# imageae.export imports them by this name, so the core imports no job.
SERVING_SIGNATURES = {
    "DenoiserUNet": "imageae.denoise.export:_denoiser_archive",
    "ConvVAE": "imageae.generate.export:_vae_archive",
    "DigitClassifier": "imageae.generate.export:_classifier_archive",
    "HyperpriorCodec": "imageae.codec.export:_codec_archive",
    "ConvAutoencoder": "imageae.anomaly.export:_autoencoder_archive",
}

# The LiteRT (.tflite) converter of each model class ("module:function", called with the loaded
# model and quantize=, plus calibration= and tile= when given; returns the flatbuffer bytes and
# the sidecar JSON's dict). imageae.export.export_tflite imports them by this name.
TFLITE_EXPORTERS = {
    "DenoiserUNet": "imageae.denoise.export:_denoiser_tflite",
    "ConvVAE": "imageae.generate.export:_vae_tflite",
    "ConvAutoencoder": "imageae.anomaly.export:_autoencoder_tflite",
}
