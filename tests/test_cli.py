"""The command line, called in-process through ``imageae.cli.main([...])``.

Exit codes: 0 all good, 1 some files failed (each named with its reason), 2 usage error.
The models are the random-weight stand-ins of conftest.py; these tests check the folder
job's plumbing (discovery, formats, modes, bit depth, alpha, skipping, safety), not quality.
"""

import json

import cv2
import numpy as np
import pytest
from conftest import (
    exif_orientation_bytes,
    marked_corner_image,
    noise_image,
    part_files,
    run_cli,
    save_text_as_png,
    save_truncated_jpeg,
    smooth_image,
    tree_hashes,
)
from PIL import Image

from imageae.cli import main
from imageae.data.io import read_image
from imageae.registry import list_models

pytestmark = pytest.mark.usefixtures("random_weight_models")

H, W = 24, 40  # every test image: multiples of the stand-ins' stride (8), so little retracing


def output_files(folder):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def make_mixed_folder(src):
    """Good images of every kind the job must keep faithful, plus two bad files and a non-image."""
    (src / "sub" / "nested").mkdir(parents=True)
    Image.fromarray(smooth_image(H, W, seed=1)).save(src / "photo.jpg", quality=90)
    Image.fromarray(marked_corner_image(H, W)).save(
        src / "rotated.jpg", quality=90, exif=exif_orientation_bytes(6)
    )
    Image.fromarray(noise_image((H, W), seed=2)).save(src / "grey.png")
    Image.fromarray(noise_image((H, W, 4), seed=3)).save(src / "alpha.png")
    Image.fromarray(noise_image((H, W), np.uint16, seed=4)).save(src / "deep.png")
    Image.fromarray(noise_image((H, W, 3), seed=5)).save(src / "sub" / "nested" / "inner.PNG")
    cv2.imwrite(str(src / "sub" / "scan.tif"), noise_image((H, W, 3), np.uint16, seed=6))
    Image.fromarray(noise_image((H, W, 3), seed=7)).save(src / "anim.gif")
    save_truncated_jpeg(src / "broken.jpg")
    save_text_as_png(src / "notes.png")
    (src / "readme.txt").write_text("not an image, and not named like one\n")


def make_good_folder(src, names=("a.png", "b.jpg")):
    src.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        Image.fromarray(smooth_image(H, W, seed=i)).save(src / name)
    return src


# --------------------------------------------------------------------- one mixed folder run


@pytest.fixture(scope="module")
def mixed_run(tmp_path_factory, random_weight_models_dir):
    """``imageae denoise src -o out`` on the mixed folder, run once for the tests below."""
    root = tmp_path_factory.mktemp("cli_mixed")
    src, out = root / "src", root / "out"
    make_mixed_folder(src)
    before = tree_hashes(src)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("IMAGEAE_MODELS", str(random_weight_models_dir))
        code, stdout, stderr = run_cli("denoise", src, "-o", out)
    return {"src": src, "out": out, "code": code, "stdout": stdout, "stderr": stderr, "before": before}


def test_folder_with_bad_files_exits_1(mixed_run):
    assert mixed_run["code"] == 1, mixed_run["stderr"]


def test_summary_names_each_bad_file_with_its_reason(mixed_run):
    src, stderr = mixed_run["src"], mixed_run["stderr"]
    assert "denoised 8 file(s), skipped 0 existing, failed 2" in stderr
    failed = {line.split(": ", 1)[0].strip(): line for line in stderr.splitlines() if "FAILED" in line}
    assert set(failed) == {f"FAILED {src / 'broken.jpg'}", f"FAILED {src / 'notes.png'}"}
    assert "truncated" in failed[f"FAILED {src / 'broken.jpg'}"].lower()
    assert "not an image file" in failed[f"FAILED {src / 'notes.png'}"]


def test_good_files_are_written_in_a_mirrored_tree(mixed_run):
    assert output_files(mixed_run["out"]) == [
        "alpha.png",
        "anim.png",  # GIF is written as PNG, not re-quantised to a palette
        "deep.png",
        "grey.png",
        "photo.jpg",
        "rotated.jpg",
        "sub/nested/inner.PNG",
        "sub/scan.tif",
    ]


@pytest.mark.parametrize(
    "name, fmt, mode, bit_depth",
    [
        ("photo.jpg", "JPEG", "RGB", 8),
        ("grey.png", "PNG", "L", 8),
        ("alpha.png", "PNG", "RGBA", 8),
        ("deep.png", "PNG", "I;16", 16),
        ("sub/nested/inner.PNG", "PNG", "RGB", 8),
        ("sub/scan.tif", "TIFF", None, 16),  # 16-bit RGB: Pillow has no mode for it
        ("anim.png", "PNG", "RGB", 8),
    ],
)
def test_outputs_keep_size_mode_and_bit_depth(mixed_run, name, fmt, mode, bit_depth):
    path = mixed_run["out"] / name
    with Image.open(path) as image:
        assert image.format == fmt and image.size == (W, H)
        if mode:
            assert image.mode == mode
    decoded = read_image(path)
    assert decoded.bit_depth == bit_depth
    assert decoded.pixels.shape == (H, W, 1 if mode in ("L", "I;16") else 3)


def test_alpha_channel_is_kept_exactly(mixed_run):
    source, result = read_image(mixed_run["src"] / "alpha.png"), read_image(mixed_run["out"] / "alpha.png")
    np.testing.assert_array_equal(result.alpha, source.alpha)


def test_sixteen_bit_outputs_use_more_than_256_levels(mixed_run):
    for name in ("deep.png", "sub/scan.tif"):
        pixels = read_image(mixed_run["out"] / name).pixels
        assert pixels.dtype == np.uint16 and len(np.unique(pixels)) > 256, name


def test_exif_rotated_jpeg_is_written_upright(mixed_run):
    with Image.open(mixed_run["out"] / "rotated.jpg") as image:
        assert image.size == (H, W)  # rotated: 24 wide, 40 tall
        assert image.getexif().get(0x0112, 1) == 1  # and not rotated a second time by viewers


def test_inputs_are_byte_identical_afterwards(mixed_run):
    assert tree_hashes(mixed_run["src"]) == mixed_run["before"]


def test_no_temporary_files_are_left(mixed_run):
    assert part_files(mixed_run["src"]) == [] and part_files(mixed_run["out"]) == []


# ------------------------------------------------------------------------- reruns and safety


def test_rerun_skips_existing_outputs_and_overwrite_rewrites_them(tmp_path):
    src, out = make_good_folder(tmp_path / "src", ["good.png"]), tmp_path / "out"
    save_truncated_jpeg(src / "broken.jpg")
    assert run_cli("denoise", src, "-o", out)[0] == 1
    first = (out / "good.png").read_bytes()
    (out / "good.png").write_bytes(b"stale output from an older run")

    code, _, stderr = run_cli("denoise", src, "-o", out)
    assert code == 1  # the broken file still fails
    assert "denoised 0 file(s), skipped 1 existing, failed 1" in stderr
    assert "--overwrite replaces them" in stderr
    assert (out / "good.png").read_bytes() == b"stale output from an older run"

    code, _, stderr = run_cli("denoise", src, "-o", out, "--overwrite")
    assert code == 1 and "denoised 1 file(s), skipped 0 existing, failed 1" in stderr
    assert (out / "good.png").read_bytes() == first
    assert part_files(tmp_path) == []


def test_ext_changes_the_output_format_and_keeps_sixteen_bits_in_png(tmp_path):
    src, out = make_good_folder(tmp_path / "src", ["photo.jpg"]), tmp_path / "out"
    cv2.imwrite(str(src / "scan.tif"), noise_image((H, W, 3), np.uint16, seed=8))
    code, _stdout, stderr = run_cli("denoise", src, "-o", out, "--ext", "png")
    assert code == 0, stderr
    assert output_files(out) == ["photo.png", "scan.png"]
    assert Image.open(out / "photo.png").format == "PNG"
    assert read_image(out / "scan.png").bit_depth == 16


def test_ext_that_cannot_hold_alpha_fails_that_file_only(tmp_path):
    src, out = make_good_folder(tmp_path / "src", ["grey.png"]), tmp_path / "out"
    Image.fromarray(noise_image((H, W, 4), seed=9)).save(src / "alpha.png")
    code, _, stderr = run_cli("denoise", src, "-o", out, "--ext", "jpg")
    assert code == 1
    assert f"FAILED {src / 'alpha.png'}: cannot write" in stderr and "alpha channel" in stderr
    assert output_files(out) == ["grey.jpg"]
    assert part_files(out) == []


def test_output_folder_equal_to_the_input_folder_never_overwrites_inputs(tmp_path):
    src = make_good_folder(tmp_path / "src", ["a.png", "b.jpg"])
    before = tree_hashes(src)
    code, _, stderr = run_cli("denoise", src, "-o", src)
    assert code == 1
    for name in ("a.png", "b.jpg"):
        assert f"FAILED {src / name}: output {src / name} would overwrite an input" in stderr
    assert tree_hashes(src) == before  # same files, same bytes, nothing added


def test_output_folder_inside_the_input_folder_is_not_read_back_as_input(tmp_path):
    src = make_good_folder(tmp_path / "src", ["a.png"])
    out = src / "clean"
    assert run_cli("denoise", src, "-o", out)[0] == 0
    code, stdout, _ = run_cli("denoise", src, "-o", out)
    assert code == 0 and "denoised 0 file(s), skipped 1 existing, failed 0" in stdout
    assert output_files(out) == ["a.png"]  # no clean/clean/a.png


def test_all_good_folder_and_explicit_files_exit_0(tmp_path):
    src = make_good_folder(tmp_path / "src", ["a.png", "b.jpg", "c.bmp"])
    code, stdout, stderr = run_cli("denoise", src / "a.png", src / "c.bmp", "-o", tmp_path / "out")
    assert code == 0 and stderr == ""
    assert "denoised 2 file(s), skipped 0 existing, failed 0" in stdout
    assert output_files(tmp_path / "out") == ["a.png", "c.bmp"]
    assert run_cli("denoise", src, "-o", tmp_path / "all", "--precision", "float32", "--tile", "64")[0] == 0
    assert output_files(tmp_path / "all") == ["a.png", "b.jpg", "c.bmp"]


# ------------------------------------------------------------------------------ usage errors


def test_help_exits_0(capsys):
    assert main(["--help"]) == 0
    assert main(["denoise", "--help"]) == 0
    assert "--overwrite" in capsys.readouterr().out


def test_missing_output_is_a_usage_error(tmp_path, capsys):
    assert main(["denoise", str(make_good_folder(tmp_path / "src"))]) == 2
    assert "-o/--output" in capsys.readouterr().err


def test_nonexistent_input_is_a_usage_error(tmp_path):
    code, _, stderr = run_cli("denoise", tmp_path / "nowhere", "-o", tmp_path / "out")
    assert code == 2 and "no such file or folder" in stderr and "nowhere" in stderr


def test_unknown_ext_is_a_usage_error_before_anything_is_written(tmp_path):
    src = make_good_folder(tmp_path / "src")
    code, _, stderr = run_cli("denoise", src, "-o", tmp_path / "out", "--ext", "gif")
    assert code == 2 and "cannot write 'gif' files; choose one of" in stderr and ".png" in stderr
    assert not (tmp_path / "out").exists()


def test_unknown_model_is_a_usage_error_listing_the_choices(tmp_path):
    src = make_good_folder(tmp_path / "src")
    code, _, stderr = run_cli("denoise", src, "-o", tmp_path / "out", "--model", "bm3d")
    assert code == 2 and "unknown model 'bm3d'" in stderr and "denoise-grey, denoise-colour" in stderr


def test_bad_option_value_is_a_usage_error(tmp_path, capsys):
    assert main(["denoise", str(tmp_path), "-o", str(tmp_path / "out"), "--quality", "0"]) == 2
    assert "positive integer" in capsys.readouterr().err


def test_a_flag_the_jobs_share_means_the_same_in_every_subcommand():
    """--device and --progress come from imageae.cli.common, and so do the folder jobs'
    --skip-existing/--overwrite: one dest, default, choice set and help wherever they appear
    (the anomaly and Beam jobs included; 'interpolate' and 'embed' write one file and say so)."""
    import argparse

    from imageae.cli import build_parser

    folder_jobs = {"denoise", "compress", "decompress", "generate", "reconstruct", "anomaly score",
                   "beam denoise", "beam compress", "beam decompress"}
    seen = {}

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}".strip())
            shared = {"--device", "--progress"} | ({"--skip-existing", "--overwrite"} if path in folder_jobs else set())
            for flag in set(action.option_strings) & shared:
                choices = tuple(action.choices) if action.choices else None
                seen.setdefault(flag, {})[path] = (action.dest, action.default, choices, action.help)

    walk(build_parser(), "")
    for flag, where in seen.items():
        assert len(set(where.values())) == 1, (flag, where)
    assert set(seen["--overwrite"]) == folder_jobs and "anomaly score" in seen["--device"]


def test_a_job_on_beam_takes_the_same_options_as_the_local_job():
    """``imageae beam denoise|compress|decompress`` offer every option of the local job that is
    about the job itself (not where it runs: --device, --progress), with the same defaults."""
    import argparse

    from imageae.cli import build_parser

    def options(parser, path):
        for word in path.split():
            sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = sub.choices[word]
        return {a.dest: (a.default, tuple(a.choices) if a.choices else None) for a in parser._actions
                if a.option_strings and a.dest not in ("help", "device", "progress", "runner")}

    parser = build_parser()
    for job in ("denoise", "compress", "decompress"):
        local, beam = options(parser, job), options(parser, f"beam {job}")
        assert beam == {k: v for k, v in local.items() if k != "psnr"}, job
    assert "strength" in options(parser, "beam denoise")


# ------------------------------------------------------------------------------------ models


def test_models_lists_every_registered_model():
    code, stdout, _ = run_cli("models")
    assert code == 0
    for entry in list_models():
        assert entry.name in stdout
    for name in ("denoise-grey", "denoise-colour"):
        [line] = [line for line in stdout.splitlines() if line.startswith(name + " ")]
        assert "[weights missing]" not in line  # the stand-ins are found through $IMAGEAE_MODELS
    [line] = [line for line in stdout.splitlines() if line.startswith("codec-v4 ")]
    assert "(--quality 1..2)" in line  # the stand-in codec's range, from its model card


def test_models_json_is_machine_readable(random_weight_models):
    code, stdout, _ = run_cli("models", "--json")
    assert code == 0
    rows = {row["name"]: row for row in json.loads(stdout)}
    assert set(rows) == {entry.name for entry in list_models()}
    for name in ("denoise-grey", "denoise-colour"):
        assert rows[name]["job"] == "denoise" and rows[name]["available"] is True
        assert rows[name]["file"] == str(random_weight_models / f"{name}.keras")


def test_models_flags_missing_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("IMAGEAE_MODELS", str(tmp_path))
    code, stdout, _ = run_cli("models")
    assert code == 0 and stdout.count("[weights missing]") == len(list_models())
    assert all(row["available"] is False for row in json.loads(run_cli("models", "--json")[1]))
