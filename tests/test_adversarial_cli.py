"""Hostile and careless use of the folder jobs and the command line (issue 19's classes).

Each test is a case a hostile-input run found: the job must do the work, or name each file
with its reason (exit 1), or refuse the usage (exit 2) -- never "nothing happened" with exit 0,
never a traceback. The models are conftest's random-weight stand-ins: these tests check the
plumbing, not quality.
"""

import errno
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import run_cli, smooth_image

pytestmark = pytest.mark.usefixtures("random_weight_models")

H, W = 24, 40


def make_images(folder, names=("a.png", "b.png")):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(smooth_image(H, W, seed=i)).save(folder / name)
    return folder


def files_below(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


# ------------------------------------------------------------------------------ silent no-ops


@pytest.mark.parametrize("flags", [[], ["--overwrite"]])
def test_output_folder_holding_the_named_input_names_the_file_instead_of_doing_nothing(tmp_path, flags):
    photos = make_images(tmp_path / "photos", ("k.png",))
    before = (photos / "k.png").read_bytes()
    code, out, err = run_cli("denoise", photos / "k.png", "-o", photos, *flags)
    assert code == 1, (out, err)
    assert "k.png" in err and "would overwrite an input" in err
    assert (photos / "k.png").read_bytes() == before  # the input is never touched


def test_output_folder_above_the_input_folder_does_the_job(tmp_path):
    make_images(tmp_path / "anc" / "raw")
    code, out, err = run_cli("denoise", tmp_path / "anc" / "raw", "-o", tmp_path / "anc")
    assert code == 0, err
    assert "denoised 2 file(s)" in out
    assert files_below(tmp_path / "anc") == ["a.png", "b.png", "raw/a.png", "raw/b.png"]


def test_output_folder_inside_the_input_folder_leaves_earlier_outputs_out_and_says_so(tmp_path):
    photos = make_images(tmp_path / "photos")
    assert run_cli("denoise", photos, "-o", photos / "clean")[0] == 0
    code, out, err = run_cli("denoise", photos, "-o", photos / "clean", "--overwrite")
    assert code == 0, err
    assert "denoised 2 file(s)" in out and "2 file(s) below the output folder" in out
    assert files_below(photos / "clean") == ["a.png", "b.png"]  # no clean/clean/...


@pytest.mark.parametrize("argv", [["", "-o", "{out}"], ["{src}", "-o", ""], ["{src}", "-o", "  "]])
def test_empty_input_or_output_path_is_refused_not_taken_as_the_working_folder(tmp_path, argv, monkeypatch):
    src = make_images(tmp_path / "src")
    monkeypatch.chdir(src)  # "" must not mean this folder
    code, out, err = run_cli("denoise", *[a.format(src=src, out=tmp_path / "out") for a in argv])
    assert code == 2 and "empty" in err, (out, err)
    assert files_below(src) == ["a.png", "b.png"] and not (tmp_path / "out").exists()


def test_a_folder_without_images_says_so(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code, out, err = run_cli("denoise", tmp_path / "empty", "-o", tmp_path / "out")
    assert code == 2 and "found no" in err and "nothing to do" in err and str(tmp_path / "empty") in err


def test_decompress_of_a_folder_without_iae_files_says_so(tmp_path):
    src = make_images(tmp_path / "src")
    code, out, err = run_cli("decompress", src, "-o", tmp_path / "out")
    assert code == 2 and ".iae" in err and "found no" in err


# ------------------------------------------------------------------------------ links


def test_broken_links_and_link_loops_in_a_folder_are_named_and_the_rest_is_done(tmp_path):
    src = make_images(tmp_path / "src")
    os.symlink(tmp_path / "gone.png", src / "dangling.png")
    os.symlink(src / "loop.png", src / "loop.png")
    os.symlink(src, src / "again")  # a folder link back up: must not recurse forever
    code, out, err = run_cli("denoise", src, "-o", tmp_path / "out")
    assert code == 1, (out, err)
    assert "denoised 2 file(s)" in err
    assert "dangling.png" in err and "broken symbolic link" in err
    assert "loop.png" in err and "loop" in err
    assert files_below(tmp_path / "out") == ["a.png", "b.png"]


def test_a_broken_link_named_on_the_command_line_is_reported_and_the_others_still_run(tmp_path):
    src = make_images(tmp_path / "src", ("a.png",))
    os.symlink(tmp_path / "gone.png", tmp_path / "link.png")
    code, out, err = run_cli("denoise", tmp_path / "link.png", src / "a.png", "-o", tmp_path / "out")
    assert code == 1, (out, err)
    assert "link.png" in err and "broken symbolic link" in err
    assert files_below(tmp_path / "out") == ["a.png"]


def test_only_missing_inputs_is_a_usage_error_naming_them(tmp_path):
    code, _, err = run_cli("denoise", tmp_path / "nowhere", tmp_path / "neither", "-o", tmp_path / "out")
    assert code == 2 and "nowhere" in err and "neither" in err


# ------------------------------------------------------------------------------ output folders


def test_an_output_folder_that_cannot_be_created_is_a_clear_error_not_a_traceback(tmp_path):
    src = make_images(tmp_path / "src")
    (tmp_path / "file").write_text("a file, not a folder")
    code, out, err = run_cli("denoise", src, "-o", tmp_path / "file" / "sub")
    assert code == 2 and "Traceback" not in err and "output folder" in err and "file" in err


def test_a_read_only_output_folder_is_a_clear_error(tmp_path, monkeypatch):
    src = make_images(tmp_path / "src")

    def read_only(path, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(os, "makedirs", read_only)
    code, out, err = run_cli("denoise", src, "-o", tmp_path / "ro")
    assert code == 2 and "Read-only file system" in err and "ro" in err and "Traceback" not in err


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("options, message", [
    ({"tile": 0}, "tile must be at least 1"),
    ({"tile": -5}, "tile must be at least 1"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"tile": 1.5}, "tile must be a whole number"),
    ({"batch_size": True}, "batch_size must be a whole number"),
])
def test_api_refuses_tile_and_batch_size_that_make_no_sense(options, message):
    import imageae

    with pytest.raises((ValueError, TypeError), match=message):
        imageae.denoise(np.zeros((8, 8), np.uint8), **options)


def test_denoise_folder_refuses_bad_options_before_writing_anything(tmp_path):
    import imageae

    src = make_images(tmp_path / "src")
    for options in ({"quality": 0}, {"tile": 0}, {"batch_size": -1}):
        with pytest.raises(ValueError):
            imageae.denoise_folder(src, tmp_path / "out", **options)
    assert not (tmp_path / "out").exists()


def test_an_unknown_flag_is_named_with_its_command():
    code, _, err = run_cli("--bogus")
    assert code == 2 and "unrecognized arguments: --bogus" in err and "COMMAND required" not in err
    code, _, err = run_cli("models", "--bogus")
    assert code == 2 and "imageae models" in err and "--bogus" in err


def test_a_missing_command_lists_the_commands():
    code, _, err = run_cli()
    assert code == 2 and "COMMAND is required" in err and "denoise" in err
    code, _, err = run_cli("train")
    assert code == 2 and "imageae train" in err and "codec" in err


def test_summary_says_what_its_speed_measures(tmp_path):
    code, out, _ = run_cli("denoise", make_images(tmp_path / "src"), "-o", tmp_path / "out")
    assert code == 0 and "end to end" in out and "model loading" in out


# ------------------------------------------------------------------------------ log noise


def test_the_python_api_prints_none_of_tensorflows_start_up_chatter(tmp_path):
    script = ("import numpy as np, imageae\n"
              "imageae.denoise(np.zeros((8, 8), np.uint8), model=" + repr(str(tmp_path / "m.keras")) + ")\n")
    from conftest import build_tiny_denoiser

    build_tiny_denoiser(1).save(tmp_path / "m.keras")
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parents[1]), env.get("PYTHONPATH", "")])
    result = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                            check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    for chatter in ("oneDNN", "cuInit", "cuda drivers", "absl::InitializeLog", "cpu_feature_guard"):
        assert chatter not in result.stderr, result.stderr


# ------------------------------------------------------------------------------ signals


@pytest.mark.parametrize("signum, code, word", [(2, 130, "interrupted"), (15, 143, "terminated")])
def test_a_signal_mid_run_leaves_complete_outputs_and_no_partial_file(tmp_path, signum, code, word):
    import signal as signals
    import time

    src = tmp_path / "src"
    src.mkdir()
    for i in range(60):  # the shipped colour model: long enough a run to stop in the middle
        Image.fromarray(smooth_image(256, 256, seed=i)).save(src / f"{i:02d}.png")
    out = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH", "")]))
    # A suite started as a background job inherits SIGINT as ignored, and Python then installs no
    # KeyboardInterrupt handler (the command would rightly ignore Ctrl-C): give the command the
    # default disposition a terminal gives it.
    process = subprocess.Popen([sys.executable, "-m", "imageae.cli", "denoise", str(src), "-o", str(out)], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signals.signal(signals.SIGINT, signals.SIG_DFL))
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and not (out.exists() and any(out.glob("*.png"))):
        time.sleep(0.2)
    process.send_signal(signals.Signals(signum))
    _, stderr = process.communicate(timeout=240)
    assert process.returncode == code, stderr[-2000:]
    assert word in stderr and "Traceback" not in stderr
    written = sorted(out.iterdir())
    assert 0 < len(written) < 60 and not [p for p in written if p.name.endswith(".part") or p.name.startswith(".")]
    for path in written:  # every output that exists is a whole image
        assert Image.open(path).size == (256, 256)
        Image.open(path).load()
