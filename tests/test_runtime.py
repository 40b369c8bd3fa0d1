"""``runtime.capture_native_stderr``: the one fd-2 capture behind TensorFlow's quiet import and the
LiteRT converter's and interpreter's quiet logs. Its captures nest (the VAE's tflite export runs
one inside another, and TensorFlow can be imported inside a converter's capture): each restores
fd 2 to what it found, closes only its own descriptors, and the lines it keeps pass the outer
filter too."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from imageae.runtime import capture_native_stderr


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _fd2():
    st = os.fstat(2)
    return st.st_dev, st.st_ino


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="counts descriptors in /proc")
def test_nested_captures_restore_fd2_close_their_own_fds_and_filter_at_each_level(capfd, monkeypatch):
    # sys.stderr writing to fd 2, as outside pytest (capfd's own sys.stderr bypasses fd 2), so
    # what the inner capture prints back goes into the outer one.
    stream = open(2, "w", closefd=False)  # noqa: SIM115 (closed below; fd 2 stays open)
    monkeypatch.setattr(sys, "stderr", stream)
    before, fds = _fd2(), _open_fds()
    with capture_native_stderr(re.compile("outer chatter")):
        os.write(2, b"outer chatter\nouter real\n")
        with capture_native_stderr(re.compile("inner chatter")):
            os.write(2, b"inner chatter\ninner real\nouter chatter from inside\n")
        os.write(2, b"outer after\n")
    assert _fd2() == before and _open_fds() == fds
    stream.close()
    err = capfd.readouterr().err
    for line in ("outer real", "inner real", "outer after"):
        assert line in err
    for line in ("outer chatter", "inner chatter"):  # each level's chatter is dropped
        assert line not in err


def test_a_capture_left_by_an_error_still_restores_fd2_and_shows_what_was_printed(capfd):
    before, fds = _fd2(), _open_fds()
    noise = re.compile("noise")
    with pytest.raises(RuntimeError, match="boom"), capture_native_stderr(noise), capture_native_stderr(noise):
        os.write(2, b"noise\nthe reason it failed\n")
        raise RuntimeError("boom")
    assert _fd2() == before and _open_fds() == fds
    err = capfd.readouterr().err
    assert "the reason it failed" in err and "noise" not in err


def test_tensorflows_import_inside_a_converter_capture_is_quiet_and_leaves_stderr_working(tmp_path):
    """A fresh process imports TensorFlow (its own capture) inside ``quiet_native_logs``."""
    script = (
        "import os, sys\n"
        "from imageae.pipelines.litert import quiet_native_logs\n"
        "from imageae.runtime import import_tensorflow\n"
        "with quiet_native_logs():\n"
        "    import_tensorflow()\n"
        "    os.write(2, b'fully_quantize: 0\\nreal line inside\\n')\n"
        "os.write(2, b'stderr works after\\n')\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "real line inside" in result.stderr and "stderr works after" in result.stderr
    for chatter in ("fully_quantize", "oneDNN", "cuInit", "absl::InitializeLog", "cpu_feature_guard"):
        assert chatter not in result.stderr, result.stderr
