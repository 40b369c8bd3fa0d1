"""The features job's public API: :func:`embed` (images in, a feature matrix out) and
:func:`embed_folder` (files and folders in, one ``.npy``, ``.csv`` or ``.parquet`` file out).

Any encoder works through one small protocol, :class:`Encoder`: a function from float images
(N, S, S, C) on the 0..1 scale to features (N, code_size), with the input size it wants. A
model given by name or path is adapted by what it offers, never by which job made it:

* ``encode(x)`` and ``code_size``: the protocol itself (the anomaly job's convolutional
  autoencoder, or your own model); a tuple from ``encode`` gives its first element;
* ``encode(x) -> (mean, logvar)`` and ``latent_dim``: a VAE (vae-digits, vae-faces64); the
  features are the posterior mean;
* ``analyze(x)`` and ``num_latent``: the learned codec (codec-v4); the features are its analysis
  transform g_a averaged over the image (a global descriptor of a 256x256 view);
* ``features(x)`` and ``feature_dim``: the digit classifier's penultimate layer (supervised);
* a ``model`` attribute holding one of these (``imageae.AnomalyDetector``): that model.
"""

import dataclasses
import importlib
import io
import os
from pathlib import Path

import numpy as np

from imageae import registry

FORMATS = (".npy", ".csv", ".parquet")

# The codec has no input size of its own (any multiple of 64); its features are taken on one
# fixed view so that every image gives a comparable, bounded-cost descriptor.
CODEC_VIEW = 256


@dataclasses.dataclass(frozen=True)
class Encoder:
    """An image encoder as :func:`embed` uses it.

    Attributes
    ----------
    name : str
        What to call it in messages and outputs.
    encode : callable
        float32 images (N, S, S, C) on the 0..1 scale -> features (N, code_size), any array type
        Keras can convert.
    code_size : int
        Features per image.
    image_size : int or None
        S: each image is centre-cropped to a square and resized to S x S first. None takes the
        images as they are (then they must all have one size).
    channels : int or None
        C: 1 (grey) or 3 (RGB); images are converted to it. None takes them as they are.
    """

    name: str
    encode: object
    code_size: int
    image_size: int | None
    channels: int | None


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _input_shape(model):
    """(image_size, channels) a model declares, from its attributes or its functional inputs."""
    size, channels = getattr(model, "image_size", None), getattr(model, "channels", None)
    inputs = getattr(model, "inputs", None)
    if size is None and inputs:
        shape = tuple(inputs[0].shape)
        if len(shape) == 4 and shape[1] == shape[2] and isinstance(shape[1], int):
            size, channels = shape[1], channels or shape[3]
    return (int(size) if size else None), (int(channels) if channels else None)


def as_encoder(model, *, precision="auto"):
    """The :class:`Encoder` for ``model``: a registered model's name, a ``.keras`` path, a model
    object with the protocol (``encode`` and ``code_size``, or one of the kinds listed in this
    module's docstring), or an :class:`Encoder` (returned as it is).

    Raises
    ------
    ValueError
        For an unknown name or a file that cannot be loaded (the message lists the choices).
    TypeError
        For a model that offers none of the encoders above.
    """
    if isinstance(model, Encoder):
        return model
    name = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    if isinstance(model, (str, os.PathLike)):
        if not str(model).strip():
            raise ValueError(f"model is empty; give one of {', '.join(embeddable_models())} or a .keras path")
        try:  # the anomaly job's autoencoder class, so that its .keras files load (models/ is core)
            importlib.import_module("imageae.models.autoencoder")
        except ModuleNotFoundError:
            pass
        from imageae.runtime import with_precision

        loaded = registry.load_model(os.fspath(model), job=None)
        # "auto" is float32: features should not depend on whether this CPU has bfloat16.
        model = with_precision(loaded, "float32" if precision == "auto" else precision)
    return _adapt(model, name)


def _adapt(model, name):
    from keras import ops

    size, channels = _input_shape(model)
    if callable(getattr(model, "encode", None)) and getattr(model, "code_size", None):
        return Encoder(name, lambda x: _first(model.encode(x)), int(model.code_size), size, channels)
    if callable(getattr(model, "encode", None)) and getattr(model, "latent_dim", None):
        return Encoder(name, lambda x: model.encode(x)[0], int(model.latent_dim), size, channels)  # posterior mean
    if callable(getattr(model, "analyze", None)) and getattr(model, "num_latent", None):
        quality = getattr(model, "num_qualities", 1)  # the finest rate: the least-quantised latents

        def pooled(x):
            return ops.mean(model.analyze(x, quality=quality), axis=(1, 2))

        return Encoder(name, pooled, int(model.num_latent), size or CODEC_VIEW, channels or 3)
    if callable(getattr(model, "features", None)) and getattr(model, "feature_dim", None):
        return Encoder(name, model.features, int(model.feature_dim), size or 28, channels or 1)
    inner = getattr(model, "model", None)  # a wrapper holding its model (an anomaly detector, say)
    if inner is not None and inner is not model and not isinstance(inner, (str, os.PathLike)):
        return _adapt(inner, name)
    raise TypeError(
        f"{name} is not an encoder imageae can use: give a model with encode(x) -> (batch, code_size) and a "
        f"code_size attribute (and image_size/channels for its input), or one of {', '.join(embeddable_models())}"
    )


def embeddable_models():
    """The registered models :func:`embed` can take by name (every shipped model except the
    denoisers, which hold no code)."""
    return [m.name for m in registry.list_models() if m.job != "denoise"]


# --- images into the encoder's input ---------------------------------------------------------
def _pil_readable(image):
    """A PIL image in a mode :func:`imageae.data.convert._as_array` reads: palette, bilevel,
    CMYK and the other colour spaces are converted, as an encoder resizes and requantises
    anyway; arrays pass unchanged."""
    from PIL import Image

    if isinstance(image, Image.Image) and image.mode not in ("L", "LA", "RGB", "RGBA", "F") \
            and not image.mode.startswith("I;16"):
        alpha = "A" in image.mode or "a" in image.mode or "transparency" in image.info
        grey = image.mode in ("1", "La", "I")
        return image.convert(("LA" if alpha else "L") if grey else ("RGBA" if alpha else "RGB"))
    return image


def _fit_to(x, encoder):
    """One float (H, W, C) image on 0..1 (alpha already dropped) as the encoder's input: float32
    (S, S, C'), and whether it was resized."""
    from imageae.data.arrays import _fit

    size, channels = encoder.image_size, encoder.channels
    same_size = size is None or x.shape[:2] == (size, size)
    if same_size and (channels is None or x.shape[-1] == channels):
        return x.astype(np.float32, copy=False), False
    if size is None:  # only the channels differ
        size = x.shape[0] if x.shape[0] == x.shape[1] else None
    u8 = np.clip(np.round(x * 255.0), 0, 255).astype(np.uint8)
    if size is None:  # a non-square image for a size-free encoder: convert channels only
        if channels == 1:
            return (u8 @ np.array([0.299, 0.587, 0.114])).astype(np.float32)[..., None] / 255.0, False
        return np.repeat(x, 3, axis=-1).astype(np.float32), False
    fitted = _fit(u8[None], size, channels or x.shape[-1], None)[0]
    return fitted.astype(np.float32) / 255.0, not same_size


def _as_float_image(image):
    """Any image :func:`embed` takes as float32 (H, W, C) on 0..1 with C = 1 or 3 (alpha dropped)."""
    from imageae.data.convert import _as_array

    x, _ = _as_array(_pil_readable(image))
    if x.shape[-1] in (2, 4):
        x = x[..., :-1]
    return x


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    return int(batch_size)


def _run(encoder, batch):
    """Features of one input batch, float32 (N, code_size), checked against the encoder's word."""
    from keras import ops

    features = np.asarray(ops.convert_to_numpy(encoder.encode(np.stack(batch))), np.float32)
    if features.ndim > 2:  # a spatial code (N, h, w, c): its values, flattened
        features = features.reshape(len(features), -1)
    if features.shape != (len(batch), encoder.code_size):
        raise ValueError(f"encoder {encoder.name} returned features of shape {features.shape} for {len(batch)} "
                         f"images, not ({len(batch)}, {encoder.code_size}) as its code_size says")
    return features


def _image_list(images):
    """``images`` as a sequence of single images, refusing layouts that would be guessed."""
    if isinstance(images, np.ndarray):
        if images.ndim == 2:
            raise ValueError(f"got one array of shape {images.shape}: that is a single image, but embed takes a "
                             "batch (N, H, W) or (N, H, W, C); pass image[None] or [image]")
        if images.ndim == 3 and images.shape[-1] in (1, 2, 3, 4):
            raise ValueError(f"got one array of shape {images.shape}: that reads as a single image (H, W, C), but "
                             "embed takes a batch (N, H, W) or (N, H, W, C); pass image[None] or [image]")
        if images.ndim not in (3, 4):
            raise ValueError(f"expected a batch of images (N, H, W) or (N, H, W, C), or a list of images; got an "
                             f"array of shape {images.shape}")
        return images
    try:
        from PIL import Image

        if isinstance(images, Image.Image):
            raise TypeError("got one PIL image; embed takes a list of images: pass [image]")
    except ImportError:  # pragma: no cover
        pass
    if isinstance(images, (str, os.PathLike)):
        raise TypeError(f"got a path ({images!s}); embed takes images (numpy arrays or PIL images). For files "
                        "and folders use imageae.features.api.embed_folder or 'imageae embed'")
    return list(images)


def embed(images, *, model, batch_size=256, precision="auto"):
    """Latent features of images from an encoder.

    Parameters
    ----------
    images : array or sequence of images
        A batch (N, H, W) or (N, H, W, C), or a list of images (numpy (H, W[, C]) uint8, uint16
        or float on 0..1, or PIL images). Each is centre-cropped to a square and resized to the
        encoder's input size, and converted to its grey or colour; alpha is dropped.
    model : str, Encoder or model
        A registered model's name (``vae-digits``, ``vae-faces64``, ``codec-v4``,
        ``digit-classifier``), a ``.keras`` file (e.g. from ``imageae train anomaly``), a
        model object with ``encode(x) -> (batch, code_size)`` and ``code_size``, or an
        :class:`Encoder`.
    batch_size : int
        Images encoded at a time (bounds memory).
    precision : str
        For a model given by name or path: "auto" (default) and "float32" compute in float32,
        so features are the same on every machine; "mixed_bfloat16" is faster on CPUs that
        have it.

    Returns
    -------
    numpy.ndarray
        float32 (N, code_size): the VAEs' posterior mean, the autoencoders' code, the codec's
        pooled analysis transform.

    Examples
    --------
    >>> import numpy as np, imageae
    >>> digits = np.zeros((3, 28, 28), np.uint8)
    >>> imageae.embed(digits, model="vae-digits").shape
    (3, 16)
    """
    batch_size = _check_batch_size(batch_size)
    images = _image_list(images)
    encoder = as_encoder(model, precision=precision)
    out, batch, first_shape = [], [], None
    for i, image in enumerate(images):
        try:
            x, _ = _fit_to(_as_float_image(image), encoder)
        except (TypeError, ValueError) as error:
            raise type(error)(f"image {i}: {error}") from None
        if first_shape is None:
            first_shape = x.shape
        elif x.shape != first_shape:
            raise ValueError(f"image {i} is {x.shape[1]}x{x.shape[0]} but image 0 is {first_shape[1]}x{first_shape[0]}:"
                             f" encoder {encoder.name} names no input size, so give images of one size")
        batch.append(x)
        if len(batch) == batch_size:
            out.append(_run(encoder, batch))
            batch = []
    if batch:
        out.append(_run(encoder, batch))
    return np.concatenate(out) if out else np.zeros((0, encoder.code_size), np.float32)


# --- files and folders -----------------------------------------------------------------------
class ParquetUnavailableError(RuntimeError):
    """Writing .parquet needs pyarrow (or pandas with fastparquet)."""


def _parquet_engine():
    """"pyarrow" or "fastparquet", whichever can write Parquet here; ParquetUnavailableError else."""
    for engine, needs in (("pyarrow", ("pyarrow",)), ("fastparquet", ("pandas", "fastparquet"))):
        try:
            for module in needs:
                importlib.import_module(module)
            return engine
        except ImportError:
            continue
    raise ParquetUnavailableError("writing .parquet needs pyarrow, which is not installed: pip install pyarrow "
                                  "(or write .npy or .csv instead)")


def check_output(output, *, inputs=(), overwrite=False):
    """``output`` as a Path after the checks made before any work: a known extension, Parquet
    support if asked for, not an existing file unless ``overwrite``, not one of ``inputs``."""
    if not os.fspath(output).strip():
        raise ValueError("the output file is empty ('-o \"\"'); name a .npy, .csv or .parquet file")
    output = Path(output)
    if output.suffix.lower() not in FORMATS:
        raise ValueError(f"the output must end in {', '.join(FORMATS)}; got {str(output)!r}")
    if output.suffix.lower() == ".parquet":
        _parquet_engine()
    if output.is_dir():
        raise ValueError(f"the output {output} is a folder; name the features file to write in it, e.g. "
                         f"{output / ('features' + output.suffix)}")
    named = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    for candidate in [output] + ([_paths_file(output)] if output.suffix.lower() == ".npy" else []):
        if any(Path(i).resolve() == candidate.resolve() for i in named):
            raise ValueError(f"writing {candidate} would overwrite an input; choose another output")
        if candidate.exists() and not overwrite:
            raise ValueError(f"{candidate} exists; pass --overwrite (overwrite=True) to replace it")
    return output


def _paths_file(output):
    """The list of paths beside a .npy file: features.npy -> features.paths.txt."""
    return output.with_suffix(".paths.txt")


def encode_table(features, paths, fmt):
    """The bytes of a features file: ``fmt`` is ".npy" (the float32 array alone), ".csv" or
    ".parquet" (a ``path`` column, then ``z0`` .. ``z{D-1}``)."""
    fmt = fmt.lower()
    columns = [f"z{j}" for j in range(features.shape[1])]
    if fmt == ".npy":
        buffer = io.BytesIO()
        np.save(buffer, features.astype(np.float32), allow_pickle=False)
        return buffer.getvalue()
    if fmt == ".csv":
        import csv

        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        writer.writerow(["path", *columns])
        for path, row in zip(paths, features):
            writer.writerow([path, *(f"{v:.9g}" for v in row)])  # 9 digits: float32 round-trips
        return text.getvalue().encode("utf-8")
    if fmt == ".parquet":
        if _parquet_engine() == "pyarrow":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({"path": pa.array(list(paths), pa.string()),
                              **{c: pa.array(features[:, j], pa.float32()) for j, c in enumerate(columns)}})
            sink = pa.BufferOutputStream()
            pq.write_table(table, sink)
            return sink.getvalue().to_pybytes()
        import pandas as pd

        frame = pd.DataFrame({"path": list(paths), **{c: features[:, j] for j, c in enumerate(columns)}})
        buffer = io.BytesIO()
        frame.to_parquet(buffer, engine="fastparquet", index=False)
        return buffer.getvalue()
    raise ValueError(f"unknown features format {fmt!r}: use one of {', '.join(FORMATS)}")


def _discover(inputs, report):
    """The image files named by ``inputs`` (sorted within each input), as the folder jobs find
    them; missing inputs and broken links go to ``report.failed``."""
    from imageae.data.io import IMAGE_EXTENSIONS, find_images
    from imageae.pipelines.folder import NoInputsError

    named = [inputs] if isinstance(inputs, (str, os.PathLike)) else list(inputs)
    problems = []
    found = find_images(named, problems=problems)
    if not any(Path(i).exists() for i in named):  # nothing named exists: a usage error
        raise FileNotFoundError("; ".join(f"{reason}: {path}" for path, reason in problems))
    report.failed.extend(problems)
    if not found and not report.failed:
        raise NoInputsError(f"found no {'/'.join(IMAGE_EXTENSIONS)} files in {', '.join(map(str, named))}, so "
                            "there is nothing to embed (files are matched by extension, in any case)")
    return [path for path, _ in found]


@dataclasses.dataclass
class _Source:
    source: Path


def embed_folder(inputs, output, *, model, overwrite=False, batch_size=256, precision="auto", progress=None):
    """Embed every image in files and folders into one features file.

    Parameters
    ----------
    inputs : path or sequence of paths
        Image files and folders (searched recursively, as every folder job does).
    output : path
        ``.npy`` (float32 (N, code_size), with the image paths one a line in
        ``NAME.paths.txt`` beside it), ``.csv`` or ``.parquet`` (a ``path`` column, then
        ``z0`` .. ``z{code_size-1}``). Rows follow the sorted order of the files found.
        Written atomically once every image is encoded.
    model : str, Encoder or model
        As for :func:`embed`.
    overwrite : bool
        Replace an existing output (otherwise an existing output is an error, before any work).
    batch_size, precision
        As for :func:`embed`.
    progress : bool or None
        Show a progress bar (None: only on a terminal).

    Returns
    -------
    FolderReport
        ``written`` lists the images embedded (one row each), ``failed`` the unreadable ones
        with the reason, ``notes`` the features file and what was done to fit the images.

    Examples
    --------
    >>> from imageae.features.api import embed_folder
    >>> report = embed_folder(["digits/"], "features.csv", model="vae-digits")  # doctest: +SKIP
    >>> print(report.summary("embedded"))  # doctest: +SKIP
    """
    from imageae.data.io import write_bytes_atomic
    from imageae.pipelines.folder import FolderReport, decoded_images, running_job

    batch_size = _check_batch_size(batch_size)
    output = check_output(output, inputs=inputs, overwrite=overwrite)
    report = FolderReport()
    sources = [_Source(path) for path in _discover(inputs, report)]
    if output.suffix.lower() == ".npy":
        for item in [s for s in sources if "\n" in str(s.source) or "\r" in str(s.source)]:
            reason = (f"its name holds a line break, which {_paths_file(output).name} (one path a line) cannot "
                      "hold; rename it or write .csv")
            report.failed.append((str(item.source), reason))
            sources.remove(item)
    features, paths, batch, batch_paths = [], [], [], []
    resized, first_shape = 0, None

    def flush():
        features.append(_run(encoder, batch))
        paths.extend(batch_paths)
        batch.clear()
        batch_paths.clear()

    with running_job(report, len(sources), desc="embed", progress=progress) as (_, bar):
        # Loaded here so that the summary's time includes it, as it says; an unknown model still
        # fails before anything is decoded or written.
        encoder = as_encoder(model, precision=precision)
        for task, decoded, error in decoded_images(sources):
            bar.update(1)
            if error is not None:
                report.failed.append((str(task.source), error))
                continue
            pixels = decoded.pixels
            x = pixels.astype(np.float32) / (65535.0 if decoded.bit_depth == 16 else 255.0)
            x, was_resized = _fit_to(x, encoder)
            if first_shape is None:
                first_shape = x.shape
            elif x.shape != first_shape:
                reason = (f"{pixels.shape[1]}x{pixels.shape[0]}, but the first image is {first_shape[1]}x"
                          f"{first_shape[0]} and encoder {encoder.name} names no input size: give images of one size")
                report.failed.append((str(task.source), reason))
                continue
            resized += was_resized
            report.pixels += pixels.shape[0] * pixels.shape[1]
            batch.append(x)
            batch_paths.append(str(task.source))
            if len(batch) == batch_size:
                flush()
        if batch:
            flush()
        if not paths:
            report.notes.append(f"no image could be embedded, so {output} was not written")
            return report
        matrix = np.concatenate(features)
        if output.suffix.lower() == ".npy":
            write_bytes_atomic(_paths_file(output), ("\n".join(paths) + "\n").encode("utf-8"))
        write_bytes_atomic(output, encode_table(matrix, paths, output.suffix))
    report.written.extend(paths)
    report.notes.append(f"wrote {output}: {len(paths)} row(s) of {encoder.code_size} features from {encoder.name}"
                        + (f", paths in {_paths_file(output)}" if output.suffix.lower() == ".npy" else ""))
    if resized:
        report.notes.append(f"{resized} image(s) were centre-cropped to a square and resized to "
                            f"{encoder.image_size}x{encoder.image_size}, the encoder's input")
    return report
