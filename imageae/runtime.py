"""Device and numeric-precision choices, made once per process."""

import contextlib
import os
import re
import sys
import tempfile

_PRECISIONS = ("auto", "float32", "mixed_bfloat16", "mixed_float16")


# TensorFlow's start-up chatter: printed from C++ at import and at the first device probe, partly
# before its log level applies. None of it is actionable for imageae's users.
_CHATTER = re.compile(
    r"All log messages before absl::InitializeLog|oneDNN custom operations|Could not find cuda drivers|"
    r"cpu_feature_guard|To enable the following instructions|rebuild TensorFlow with the appropriate compiler|"
    r"failed call to cuInit|Unable to register cu(DNN|FFT|BLAS)|computation placer already registered|"
    r"TF-TRT Warning|This TensorFlow binary is optimized"
)


def _tensorflow_installed():
    import importlib.util

    try:
        return importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):
        return False


def import_tensorflow():
    """Import Keras and TensorFlow with their start-up chatter kept off the terminal.

    Every imageae entry point (the CLI, model loading, folder jobs) comes through here first.
    TensorFlow prints its oneDNN / CUDA-probing lines from C++ before its log level applies, so
    stderr is captured for the import and the first device probe, and only lines that are not
    that known chatter are printed back: real errors still show, and an import error is raised
    as usual. Set ``TF_CPP_MIN_LOG_LEVEL`` yourself to see everything TensorFlow says.

    On another Keras backend (``KERAS_BACKEND=jax``) where TensorFlow is not installed, as on the
    GPU machines the training queue runs on, this imports Keras alone and returns None: the
    recipes train without TensorFlow, and a job that needs it fails on its own import.
    """
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow" and not _tensorflow_installed():
        import keras  # the backend set up before anything else

        return None
    if "tensorflow" in sys.modules:
        import tensorflow

        return tensorflow
    if "TF_CPP_MIN_LOG_LEVEL" in os.environ:  # the user chose what to see
        import keras
        import tensorflow

        return tensorflow
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"  # after start-up: errors only
    with capture_native_stderr(_CHATTER):
        import keras  # noqa: F401
        import tensorflow

        tensorflow.config.list_physical_devices()  # the CUDA probe, while captured
    return tensorflow


@contextlib.contextmanager
def capture_native_stderr(chatter):
    """Capture file descriptor 2 for the block, then print back the lines ``chatter`` does not match.

    C++ libraries (TensorFlow at import, the TFLite converter, the LiteRT interpreter) write
    straight to fd 2, past ``sys.stderr`` and their own log levels; capturing the descriptor is
    the only way to keep their known chatter off the terminal while real errors still show.
    Where fd 2 cannot be duplicated (no stderr), the block runs uncaptured.

    Nest-safe: each entry keeps its own copy of what fd 2 was and its own capture file, and on
    leaving restores and closes only those. A capture inside another (TensorFlow's import inside
    a converter's capture) hands fd 2 back to the outer capture's file, so the lines it keeps
    then pass the outer filter as well.
    """
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with tempfile.TemporaryFile() as captured:
            try:
                sys.stderr.flush()
                os.dup2(captured.fileno(), 2)
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                captured.seek(0)
                text = captured.read().decode("utf-8", "replace")
                kept = [line for line in text.splitlines() if line.strip() and not chatter.search(line)]
                if kept:
                    print("\n".join(kept), file=sys.stderr)
    finally:
        os.close(saved)  # this entry's own copy, closed once, after fd 2 no longer needs it


def cpu_has_bf16():
    """True when the CPU has native bfloat16 arithmetic (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def gpus():
    """The GPUs the Keras backend computes on (TensorFlow's, or JAX's when KERAS_BACKEND=jax)."""
    import keras

    if keras.backend.backend() == "jax":
        import jax

        return [d for d in jax.devices() if d.platform == "gpu"]
    import tensorflow as tf

    return tf.config.get_visible_devices("GPU")  # respects --device cpu, which hides GPUs


def choose_precision(device="auto"):
    """The Keras dtype policy that is fastest without costing quality on ``device``.

    bfloat16 compute on CPUs with native bf16 (measured here: about 2x faster training and
    inference for the denoiser U-Net, with the losses and outputs kept in float32), float16 on
    GPUs, float32 elsewhere.
    """
    if device in ("auto", "gpu") and gpus():
        return "mixed_float16"
    if cpu_has_bf16():
        return "mixed_bfloat16"
    return "float32"


def set_precision(precision="auto", device="auto"):
    """Set the global Keras dtype policy; returns the policy name in force."""
    import keras

    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    name = choose_precision(device) if precision == "auto" else precision
    keras.mixed_precision.set_global_policy(name)
    return name


def describe_device():
    """One line naming the device TensorFlow computes on."""
    found = gpus()
    if found:
        return f"GPU: {getattr(found[0], 'device_kind', None) or found[0].name}"
    model = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU: {model}, {os.cpu_count()} cores{', bf16' if cpu_has_bf16() else ''}"


def with_precision(model, precision="auto", device="auto", *, copy=False):
    """A copy of ``model`` computing under dtype policy ``precision`` (weights shared by value).

    Shipped models are saved in float32; this rebuilds one under the policy chosen for the
    device (bfloat16 on CPUs that have it) without touching the caller's global policy.
    ``copy=True`` always rebuilds (a copy carries no optimizer state: used when shipping).
    """

    if precision not in _PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(_PRECISIONS)}, got {precision!r}")
    name = choose_precision(device) if precision == "auto" else precision
    if model.dtype_policy.name == name and not copy:
        return model
    return rebuilt(model, name)


def rebuilt(model, policy, weights=None, **overrides):
    """A new model of ``model``'s class and constructor arguments (plus ``overrides``), its
    layers built under dtype ``policy``, holding ``model``'s weights (cast), or ``weights``
    (a list in the same order) where given."""
    import keras

    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        clone = type(model).from_config({**constructor_arguments(model), **overrides})
        clone.build(model.inputs[0].shape if getattr(model, "inputs", None) else (None, None, None, model.channels))
    finally:
        keras.config.set_dtype_policy(previous)
    clone.set_weights(model.get_weights() if weights is None else weights)
    return clone


def save_float16(model, path):
    """Save ``model`` as a .keras file whose weights are stored as float16: half the size.

    Layers pinned to float32 (a codec's entropy models and latent layers, its gains) keep
    float32 weights. The file loads back as an ordinary float32 model (the layers are
    rebuilt under the loading process's policy and the stored weights cast up), so nothing
    that loads it changes; the rounding to float16 (11 significant bits) is the only loss,
    and whoever ships such a file measures it.
    """
    # The model itself stays float32 (its saved policy is what a loader gets); the layers it
    # creates take the float16 policy, so their weights are float16.
    rebuilt(model, "float16", dtype="float32").save(path)
    return path


def constructor_arguments(model):
    """A model's own constructor arguments: its config without Keras's name/trainable/dtype."""
    return {k: v for k, v in model.get_config().items() if k not in ("name", "trainable", "dtype")}
