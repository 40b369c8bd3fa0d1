"""The compress job's public API: :func:`compress`, :func:`decompress`, :func:`compress_folder`,
:func:`decompress_folder` and :func:`codec_session`."""

from pathlib import Path

import numpy as np

from imageae import registry
from imageae.data.io import output_format, write_image

DEFAULT_CODEC = "codec-v4"
IAE_EXTENSION = ".iae"
# The largest image compress and decompress take by default (Pillow's MAX_IMAGE_PIXELS, about
# 89.5 Mpixel); max_pixels= / --max-pixels raise it. imageae.codec.container.DEFAULT_MAX_PIXELS.
MAX_CODEC_PIXELS = 1024 * 1024 * 1024 // 4 // 3
COMPRESS_REPORT = "compress-report.csv"
_sessions = {}


def codec_session(model=DEFAULT_CODEC):
    """The :class:`~imageae.codec.CodecSession` of a registered codec or a .keras file (made once).

    A registered model writes its registry name into its files; a .keras file its file name
    without the extension (so decoding needs the same file: pass it to :func:`decompress`).
    """
    from imageae.codec import CodecSession

    path = registry.resolve(model, job="compress").resolve()
    name = model if model in registry.MODELS else path.stem
    key = (name, str(path), path.stat().st_mtime_ns)
    if key not in _sessions:
        _sessions[key] = CodecSession(registry.load_model(str(path), job="compress"), name)
    return _sessions[key]


def _codec_pixels(image):
    """uint8 (H, W, 1|3) pixels of a numpy array or PIL image; ValueError saying what is wrong."""
    try:
        from PIL import Image

        if isinstance(image, Image.Image):
            image = _pil_codec_pixels(image)
    except ImportError:  # pragma: no cover - Pillow is a core dependency
        pass
    if not isinstance(image, np.ndarray):
        raise TypeError(f"image must be a numpy array or a PIL image, got {type(image).__name__}")
    return image[:, :, None] if image.ndim == 2 else image


def _pil_codec_pixels(image):
    """The 8-bit grey or RGB pixels the codec stores for a PIL image (the policy compress lists)."""
    from imageae.data.io import _cmyk_to_rgb, _is_grey

    mode = image.mode
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        raise ValueError(f"image has an alpha channel (mode {mode!r}): the codec does not store alpha; "
                         "drop it (image.convert('RGB')) or keep the image as PNG")
    if mode in ("L", "RGB"):
        return np.asarray(image)
    if mode == "1":
        return np.asarray(image.convert("L"))
    if mode == "P":
        rgb = image.convert("RGB")
        return np.asarray(rgb.convert("L") if _is_grey(rgb) else rgb)
    if mode in ("YCbCr", "HSV", "LAB", "RGBX"):
        return np.asarray(image.convert("RGB"))
    if mode == "CMYK":
        return np.asarray(_cmyk_to_rgb(image, image.info.get("icc_profile"))[0])
    if mode.startswith("I"):
        bits = 16 if mode.startswith("I;16") else 32
        how = ("Image.fromarray((np.asarray(image) / 257).round().astype(np.uint8)), or keep it as a 16-bit PNG"
               if bits == 16 else "scale it to 0..255 and pass it as a uint8 array")
        raise ValueError(f"mode {mode!r} is a {bits}-bit grey image; the codec stores 8-bit images only. Reduce it "
                         f"to 8 bits first: {how}")
    if mode == "F":
        raise ValueError("mode 'F' is a floating-point image; the codec stores 8-bit images only. Convert it to "
                         "8 bits first: for 0..1 data pass np.round(np.clip(np.asarray(image), 0, 1) * 255).astype(np.uint8)")
    raise ValueError(f"PIL mode {mode!r} is not supported; convert the image to 'RGB' or 'L' first")


def _codec_icc_profile(image):
    """The ICC profile that describes the pixels :func:`_codec_pixels` gives for ``image``, or None.

    A PIL image's own profile, except where those pixels were converted into another colour
    space: CMYK (converted through its profile: the sRGB profile; by the plain formula: none),
    "LAB" and "HSV" (none: their profile, if any, described the unconverted values). An array
    has none.
    """
    info = getattr(image, "info", None)
    if isinstance(image, np.ndarray) or not isinstance(info, dict):
        return None
    icc = info.get("icc_profile") or None
    mode = getattr(image, "mode", None)
    if mode == "CMYK":
        from imageae.data.io import _cmyk_to_rgb

        return _cmyk_to_rgb(image, icc)[1]
    return None if mode in ("LAB", "HSV") else icc


def compress(image, *, quality=None, target_bpp=None, model=DEFAULT_CODEC, refine_steps=0, icc_profile=None,
             max_pixels=MAX_CODEC_PIXELS):
    """Compress an 8-bit image into the bytes of an ``.iae`` file.

    Parameters
    ----------
    image : numpy.ndarray (uint8, (H, W), (H, W, 1) or (H, W, 3)) or PIL image
        Grey or RGB, any size. Alpha and 16-bit images are refused (ValueError), not reduced.
        PIL images by mode: "L" and "RGB" as they are; "1" as grey 0/255; "P" as RGB (grey
        when the palette is grey); "YCbCr", "HSV", "LAB", "RGBX" converted to RGB by Pillow;
        "CMYK" converted to sRGB through its ICC profile when it has one, else by Pillow's
        plain formula. Refused with a ValueError saying how to convert them: alpha ("RGBA",
        "LA", "PA", "RGBa", "La", "P" with transparency), 16-bit ("I;16", "I;16L", "I;16B",
        "I;16N"), 32-bit integer ("I") and float ("F") images.
    quality : int
        1 (smallest files) to the model's number of qualities (``imageae models`` lists
        them); default two thirds up the range (6 of 9 for codec-v4) when ``target_bpp`` is not
        given either.
    target_bpp : float
        Instead of ``quality``: the highest quality whose file stays within this many bits
        per pixel (quality 1 when even that is larger), found by encoding. With
        ``refine_steps``, the search is in one pass, then the next quality up is refined and
        kept if it fits (refined files are smaller), else the chosen one is refined: up to two
        refinements.
    model : str
        A registered codec (default "codec-v4") or the path of a .keras codec.
    refine_steps : int
        0 (default): encode in one pass. N > 0: first N steps of encoder-side rate-distortion
        descent on the latents (:mod:`imageae.codec.refine`): smaller files at the same
        quality (or better pictures at the same size) that any decoder reads as usual; encoding
        takes about N x 1.2 s per Mpixel on 2 CPU cores (100 is a good value). Images up to
        4 Mpixel.
    icc_profile : bytes, optional
        The ICC colour profile to store in the file (format version 2), given back by
        ``decompress(..., return_icc=True)`` and written into ``decompress_folder``'s images.
        Default: a PIL image's own (``image.info["icc_profile"]``; for "CMYK" converted through
        its profile, the sRGB profile; none for "LAB" and "HSV"), none for an array; ``b""``
        stores none. Not counted against ``target_bpp``.
    max_pixels : int or None
        Larger images are refused (``ValueError``) before any work: default about 89.5 Mpixel
        (Pillow's ``MAX_IMAGE_PIXELS``); None: up to the format's 65536 x 65536. Encoding runs
        in tiles; measured peak memory of the whole process (codec-v4, flat image): 2.2 GB for
        8192 x 8192, 2.7 GB at the default limit, about 23 bytes per pixel more beyond.

    Returns
    -------
    bytes

    Examples
    --------
    >>> import numpy as np, imageae                                 # doctest: +SKIP
    >>> data = imageae.compress(np.asarray(Image.open("photo.jpg")), quality=3)
    >>> pixels = imageae.decompress(data)                        # uint8 (H, W, 3)
    """
    if quality is not None and target_bpp is not None:
        raise ValueError("give quality or target_bpp, not both")
    if icc_profile is None:  # a PIL image's own (where it still describes the pixels coded)
        icc_profile = _codec_icc_profile(image)
    data, _ = compress_pixels(codec_session(model), _codec_pixels(image), quality, target_bpp, refine_steps,
                              icc_profile=icc_profile, max_pixels=max_pixels)
    return data


def default_quality(session):
    """The quality used when none is asked for: two thirds up the model's range (codec-v4:
    6 of 9, about 0.7 bits per pixel on photos; a single-rate model: its only one)."""
    return max(1, round(session.num_qualities * 2 / 3))


def compress_pixels(session, pixels, quality, target_bpp, refine_steps=0, *, icc_profile=None,
                    max_pixels=MAX_CODEC_PIXELS, progress=None):
    """:func:`compress` once the session and the pixel array are in hand: (bytes, the quality
    used). ``progress(done, steps)`` is called after each refinement step."""
    import functools

    from imageae.codec import compress_array
    from imageae.codec.container import check_pixels
    from imageae.codec.refine import check_refine_steps

    refine_steps = check_refine_steps(refine_steps)  # before any encoding of the target_bpp search
    check_pixels(pixels.shape[0], pixels.shape[1], max_pixels, what="the image")
    icc_profile = bytes(icc_profile) if icc_profile else None
    encode = functools.partial(compress_array, session, pixels, icc_profile=icc_profile, max_pixels=max_pixels)
    if target_bpp is None:
        quality = session.check_quality(default_quality(session) if quality is None else quality)
        return encode(quality, refine_steps=refine_steps, progress=progress), quality
    if not target_bpp > 0:
        raise ValueError(f"target_bpp must be positive, got {target_bpp}")
    budget = float(target_bpp) * pixels.shape[0] * pixels.shape[1]
    profile_bits = 8 * len(icc_profile or b"")  # the profile is the image's, not the codec's: not counted
    files = {}

    def bits(data):
        return 8 * len(data) - profile_bits

    def fits(q):
        files[q] = encode(q)
        return bits(files[q]) <= budget

    # Higher quality never gives a smaller file in practice; bisect for the last that fits.
    # The search runs without refinement (each try would cost one). Refined files are smaller
    # (codec-v4, 100 steps: 9-27 %), so the next quality up, refined, may fit where its plain file did not:
    # it is tried first; else the chosen quality's refined file replaces its plain one if it fits.
    low, high = 1, session.num_qualities
    if fits(low):
        while low < high:
            middle = (low + high + 1) // 2
            if fits(middle):
                low = middle
            else:
                high = middle - 1
        if refine_steps and low < session.num_qualities:
            higher = encode(low + 1, refine_steps=refine_steps, progress=progress)
            if bits(higher) <= budget:
                return higher, low + 1
    if not refine_steps:
        return files[low], low
    refined = encode(low, refine_steps=refine_steps, progress=progress)
    return (refined if bits(refined) <= max(budget, bits(files[low])) else files[low]), low


def _session_lookup(models):
    """model name -> CodecSession: the registered codecs, plus ``models`` (names or .keras paths)."""
    from imageae.codec import UnknownModelError

    # Sessions by the name their files carry, resolved once per lookup (not once per file).
    found = {session.name: session for session in (codec_session(m) for m in models or ())}
    extra = list(found)

    def lookup(name):
        if name not in found and name in registry.MODELS and registry.MODELS[name].job == "compress":
            found[name] = codec_session(name)
        if name in found:
            return found[name]
        installed = ", ".join([m.name for m in registry.list_models("compress")] + extra) or "none"
        raise UnknownModelError(f"file was written by model {name!r}, which is not installed "
                                f"(installed codec models: {installed}; a codec of your own: pass its .keras file)")

    return lookup


def decompress(data, *, models=None, max_pixels=MAX_CODEC_PIXELS, return_icc=False):
    """Decode the bytes of an ``.iae`` file: uint8 (H, W, 3) for colour, (H, W) for grey.

    ``models``: codec .keras files (or names) besides the registered ones, for files written
    by a codec of your own. ``max_pixels``: a file whose header declares a larger image is
    refused (:class:`~imageae.codec.ImageTooLargeError`, a ``ValueError``) before anything is
    allocated; default about 89.5 Mpixel (Pillow's ``MAX_IMAGE_PIXELS``), None: up to the
    format's 65536 x 65536. Decoding runs in tiles; measured peak memory of the whole process
    (codec-v4): 1.9 GB for 8192 x 8192, 2.1 GB at the default limit. ``return_icc=True`` returns ``(pixels, icc_profile)``, the
    profile the file carries as bytes (None when it has none), e.g. for
    ``PIL.Image.fromarray(pixels).save(path, icc_profile=icc_profile)``.

    Raises :class:`~imageae.codec.IaeFormatError` for anything wrong with the bytes and
    :class:`~imageae.codec.UnknownModelError` for a model not installed.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"data must be bytes (the contents of an .iae file), got {type(data).__name__}")
    header, pixels = _decode_iae(_session_lookup(models), bytes(data), max_pixels)
    pixels = pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels
    return (pixels, header.icc_profile) if return_icc else pixels


def _decode_iae(lookup, data, max_pixels):
    """(IaeHeader, uint8 (H, W, 1|3) pixels) of an .iae file."""
    from imageae.codec import read_latents, synthesize_image

    header, session, latents = read_latents(lookup, data, max_pixels=max_pixels)
    return header, synthesize_image(session, latents, header.height, header.width, header.colour_mode)


def read_for_codec(path):
    """The decoded 8-bit image of a file for the codec (local and Beam jobs); ImageReadError naming what it cannot store."""
    from imageae.data.io import ImageReadError, read_image

    decoded = read_image(path)
    if decoded.alpha is not None:
        raise ImageReadError("has an alpha channel, which the codec does not store (keep it as PNG)")
    if decoded.bit_depth != 8:
        raise ImageReadError(f"is {decoded.bit_depth}-bit; the codec stores 8-bit images only "
                             "(reduce it to 8 bits first, or keep it as PNG)")
    return decoded


def compress_folder(inputs, output, *, quality=None, target_bpp=None, model=DEFAULT_CODEC, overwrite=False,
                    progress=None, refine_steps=0, max_pixels=MAX_CODEC_PIXELS, psnr=False):
    """Compress every image in ``inputs`` (files and folders) into ``.iae`` files under ``output``.

    The output tree mirrors the input tree (``photos/a/b.jpg`` -> ``OUT/a/b.iae``). Existing
    outputs are kept unless ``overwrite``; a file that cannot be read (or has alpha, or 16
    bits, or more than ``max_pixels`` pixels) is recorded in the report with the reason and the
    run goes on. Each image's ICC colour profile is stored in its file.

    ``refine_steps``, ``max_pixels``: as for :func:`compress`. The progress bar counts images,
    in fractions of one during each image's refinement steps. ``psnr``: also decode each file
    and measure its PSNR against the input (8-bit, dB; about the encoding time again).

    Returns
    -------
    FolderReport
        ``pixels`` and ``seconds`` give the speed; ``entries`` one dict per file written, in
        input order: ``input``, ``output``, ``bytes``, ``bpp`` (file bits per pixel),
        ``quality`` (the one used: with ``target_bpp``, the one the search chose), ``seconds``
        (encoding), ``width``, ``height``, and with ``psnr`` the file's ``psnr``. The same table is written as
        ``OUTPUT/compress-report.csv`` (replaced by each run that writes a file).
    """
    from imageae.data.io import write_bytes_atomic
    from imageae.pipelines.folder import FolderReport, decoded_images, ensure_output_dir, plan_outputs, running_job

    if quality is not None and target_bpp is not None:
        raise ValueError("give quality or target_bpp, not both")
    from imageae.codec.refine import check_refine_steps

    refine_steps = check_refine_steps(refine_steps)  # before any file is read
    import time

    from imageae.codec.container import check_pixels

    check_pixels(1, 1, max_pixels)  # the argument itself, before any file is read
    session = codec_session(model)  # loads (and checks) the model before any file is touched
    if quality is not None:
        session.check_quality(quality)
    report = FolderReport()
    tasks = plan_outputs(inputs, output, suffix_for=lambda path: IAE_EXTENSION, overwrite=overwrite, report=report)
    ensure_output_dir(output)
    entries = []
    # Refinements per image (target_bpp may run two): the bar advances by its share per step.
    passes = (2 if target_bpp is not None else 1) * refine_steps
    with running_job(report, len(tasks), desc="compress", progress=progress) as (writer, bar):
        for task, decoded, error in decoded_images(tasks, decode=read_for_codec):
            moved = [0.0]

            def step(done, steps, moved=moved):
                share = min(0.95 - moved[0], 0.95 / passes)  # the rest when the image is done
                if share > 0:
                    moved[0] += share
                    bar.update(share)

            started = time.perf_counter()
            try:
                if error:
                    raise ValueError(error)
                height, width = decoded.pixels.shape[:2]
                data, used = compress_pixels(session, decoded.pixels, quality, target_bpp, refine_steps,
                                             icc_profile=getattr(decoded, "icc_profile", None),
                                             max_pixels=max_pixels, progress=step if passes else None)
            except ValueError as error:
                report.failed.append((str(task.source), str(error)))
                continue
            finally:
                bar.update(1 - moved[0])
            report.pixels += height * width
            entries.append({"input": str(task.source), "output": str(task.target), "bytes": len(data),
                            "bpp": round(8 * len(data) / (height * width), 4), "quality": used,
                            "seconds": round(time.perf_counter() - started, 3), "width": width, "height": height})
            if psnr:
                from imageae.codec.session import decompress_bytes, make_session_lookup
                from imageae.metrics import psnr as psnr_of

                restored = decompress_bytes(make_session_lookup(session), data, max_pixels=max_pixels)
                entries[-1]["psnr"] = round(float(psnr_of(decoded.pixels, restored.reshape(decoded.pixels.shape))), 3)
            writer.submit(task, write_bytes_atomic, data)
    written = set(report.written)
    report.entries = [entry for entry in entries if entry["output"] in written]
    if report.entries:
        _write_compress_report(Path(output) / COMPRESS_REPORT, report.entries)
    return report


def _write_compress_report(path, entries):
    """The per-file table of :func:`compress_folder` as CSV (atomic; a failure is not the run's)."""
    import csv
    import io

    from imageae.data.io import write_bytes_atomic

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(entries[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(entries)
    try:
        write_bytes_atomic(path, text.getvalue().encode("utf-8"))
    except OSError:
        pass


def _write_decoded(target, pixels, fmt, icc_profile=None):
    from imageae.data.io import DecodedImage

    write_image(target, DecodedImage(pixels, None, 8, fmt, icc_profile=icc_profile), fmt=fmt)


def decompress_folder(inputs, output, *, ext=".png", models=None, overwrite=False, progress=None,
                      max_pixels=MAX_CODEC_PIXELS):
    """Decode every ``.iae`` file in ``inputs`` (files and folders) into images under ``output``.

    The output tree mirrors the input tree (``OUT/a/b.iae`` -> ``DIR/a/b.png``); ``ext``
    picks the format (.png by default: lossless, so the decoded pixels are kept exactly).
    The ICC colour profile a file carries is written into its image. A damaged or foreign
    file, or one declaring more than ``max_pixels`` pixels (as for :func:`decompress`), is
    recorded in the report with the reason and the run goes on.
    """
    from imageae.codec import IaeFormatError, ImageTooLargeError, UnknownModelError
    from imageae.codec.container import check_pixels
    from imageae.data.io import ImageReadError
    from imageae.pipelines.folder import FolderReport, decoded_images, ensure_output_dir, plan_outputs, running_job

    ext = ext if ext.startswith(".") else "." + ext
    fmt = output_format(None, ext)
    check_pixels(1, 1, max_pixels)  # the argument itself, before any file is read
    lookup = _session_lookup(models)
    report = FolderReport()
    tasks = plan_outputs(inputs, output, suffix_for=lambda path: ext, overwrite=overwrite, report=report,
                         extensions=(IAE_EXTENSION,))
    ensure_output_dir(output)

    def read_bytes(path):
        try:
            return Path(path).read_bytes()
        except OSError as error:
            raise ImageReadError(f"cannot read file: {error.strerror or error}") from None

    with running_job(report, len(tasks), desc="decompress", progress=progress) as (writer, bar):
        for task, data, error in decoded_images(tasks, decode=read_bytes):
            bar.update(1)
            if error:
                report.failed.append((str(task.source), error))
                continue
            try:
                header, pixels = _decode_iae(lookup, data, max_pixels)
            except (IaeFormatError, UnknownModelError, ImageTooLargeError) as error:
                report.failed.append((str(task.source), str(error)))
                continue
            report.pixels += pixels.shape[0] * pixels.shape[1]
            writer.submit(task, _write_decoded, pixels, fmt, header.icc_profile)
    return report
