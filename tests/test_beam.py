"""``imageae beam``: the folder jobs on Apache Beam's DirectRunner, in-process and with two worker
processes, against the local jobs on the same nested folder holding a corrupt file.

The models are the random-weight stand-ins of conftest (tiny U-Net, tiny two-quality codec),
named by their .keras paths so that the worker processes load the same files.
"""

import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import run_cli

beam = pytest.importorskip("apache_beam", reason="the Beam tests need the extra: pip install -e '.[beam]'")

MULTI = ["--direct_num_workers", "2", "--direct_running_mode", "multi_processing"]


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """A nested folder: grey PNG, RGB PNG, RGB JPEG two levels down, a corrupt PNG, a text file."""
    root = tmp_path_factory.mktemp("beam") / "photos"
    (root / "sub" / "deeper").mkdir(parents=True)
    rng = np.random.default_rng(0)
    ramp = np.linspace(0, 255, 40)[None, :] * np.ones((40, 1))
    grey = np.clip(ramp + rng.normal(0, 20, (40, 40)), 0, 255).astype(np.uint8)
    Image.fromarray(grey, "L").save(root / "grey.png")
    colour = np.clip(np.stack([ramp, ramp.T, 255 - ramp], -1) + rng.normal(0, 20, (40, 40, 3)), 0, 255)
    Image.fromarray(colour.astype(np.uint8), "RGB").save(root / "sub" / "colour.png")
    Image.fromarray(colour[:32, :36].astype(np.uint8), "RGB").save(root / "sub" / "deeper" / "photo.jpg", quality=90)
    (root / "sub" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"not an image" * 10)
    (root / "sub" / "notes.txt").write_text("not an image, not an input")
    return root


@pytest.fixture(scope="module")
def models(random_weight_models_dir):
    return {"denoise": str(random_weight_models_dir / "denoise-colour.keras"),
            "codec": str(random_weight_models_dir / "codec-v4.keras")}


@pytest.fixture(scope="module")
def local(photos, models, tmp_path_factory):
    """The local jobs' outputs on ``photos`` (both exit 1: the corrupt file)."""
    root = tmp_path_factory.mktemp("local")
    assert run_cli("denoise", photos, "-o", root / "clean", "--model", models["denoise"])[0] == 1
    assert run_cli("compress", photos, "-o", root / "packed", "--model", models["codec"])[0] == 1
    return root


def _files(folder, suffix):
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob(f"*{suffix}"))


def _report(folder):
    return [json.loads(line) for line in (folder / "beam-failures.jsonl").read_text().splitlines()]


def _check_denoised_like_local(local, beamed):
    names = _files(local, ".png") + _files(local, ".jpg")
    assert names == ["grey.png", "sub/colour.png", "sub/deeper/photo.jpg"]
    assert _files(beamed, ".png") + _files(beamed, ".jpg") == names
    for name in names:
        a, b = (np.asarray(Image.open(folder / name), np.int16) for folder in (local, beamed))
        assert a.shape == b.shape and np.abs(a - b).max() <= 1, name  # same tiling; batching may move a last bit


def _check_compressed_like_local(local, beamed):
    names = _files(local, ".iae")
    assert names == ["grey.iae", "sub/colour.iae", "sub/deeper/photo.iae"]
    assert _files(beamed, ".iae") == names
    for name in names:
        assert (beamed / name).read_bytes() == (local / name).read_bytes(), name


def _check_failure_report(folder, photos, stage="read"):
    [record] = _report(folder)
    assert record["path"] == str(photos / "sub" / "broken.png") and record["stage"] == stage
    assert "cannot decode image" in record["reason"]


def test_beam_denoise_and_compress_in_process_write_what_the_local_jobs_write(photos, models, local, tmp_path):
    code, _, err = run_cli("beam", "denoise", photos, "-o", tmp_path / "clean", "--model", models["denoise"])
    assert code == 1, err
    _check_denoised_like_local(local / "clean", tmp_path / "clean")
    _check_failure_report(tmp_path / "clean", photos)
    assert "denoised 3 file(s), skipped 0 existing, failed 1" in err
    assert f"FAILED {photos / 'sub' / 'broken.png'} (read)" in err
    assert f"failure report: {tmp_path / 'clean' / 'beam-failures.jsonl'}" in err

    code, _, err = run_cli("beam", "compress", photos, "-o", tmp_path / "packed", "--model", models["codec"])
    assert code == 1, err
    _check_compressed_like_local(local / "packed", tmp_path / "packed")
    _check_failure_report(tmp_path / "packed", photos)
    rows = (tmp_path / "packed" / "compress-report.csv").read_text().splitlines()
    assert len(rows) == 4 and rows[0].startswith("input,output,bytes,bpp,quality")

    # decompress: a damaged .iae is named, the others decode to the local decoder's pixels
    damaged = tmp_path / "packed" / "sub" / "damaged.iae"
    damaged.write_bytes((tmp_path / "packed" / "grey.iae").read_bytes()[:-7])
    code, _, err = run_cli("beam", "decompress", tmp_path / "packed", "-o", tmp_path / "restored",
                             "--model", models["codec"])
    assert code == 1, err
    [record] = _report(tmp_path / "restored")
    assert record["path"] == str(damaged) and record["stage"] == "decompress"
    assert run_cli("decompress", local / "packed", "-o", tmp_path / "local-restored",
                   "--model", models["codec"])[0] == 0
    for name in _files(tmp_path / "local-restored", ".png"):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "restored" / name)),
                              np.asarray(Image.open(tmp_path / "local-restored" / name))), name

    # a second run keeps what exists; nothing failed but the corrupt file, so the report has one line again
    code, _, err = run_cli("beam", "compress", photos, "-o", tmp_path / "packed", "--model", models["codec"])
    assert code == 1 and "compressed 0 file(s), skipped 3 existing, failed 1" in err


def test_beam_jobs_with_two_worker_processes_write_what_the_local_jobs_write(photos, models, local, tmp_path):
    from imageae.beam import CompressImages, DenoiseImages
    from imageae.beam.cli import pipeline_options

    # both jobs in one pipeline, so the workers start once
    with beam.Pipeline(options=pipeline_options("DirectRunner", MULTI)) as pipeline:
        _ = pipeline | "denoise" >> DenoiseImages(str(photos), str(tmp_path / "clean"), model=models["denoise"])
        _ = pipeline | "compress" >> CompressImages(str(photos), str(tmp_path / "packed"), model=models["codec"])
    _check_denoised_like_local(local / "clean", tmp_path / "clean")
    _check_compressed_like_local(local / "packed", tmp_path / "packed")
    _check_failure_report(tmp_path / "clean", photos)
    _check_failure_report(tmp_path / "packed", photos)


class _FakeBucket:
    """Where the ``fakebucket://`` object store keeps its objects (a local folder); set by the test."""

    root = None


def _fake_bucket_filesystem():
    """An object store for Beam (``fakebucket://KEY``: no folders, listing by prefix, rename as
    copy) kept in a local folder: the paths a gs:// or s3:// job takes, without a network. Beam
    finds a filesystem among FileSystem's subclasses by its scheme."""
    import os

    from apache_beam.io.filesystem import FileMetadata
    from apache_beam.io.localfilesystem import LocalFileSystem

    prefix = "fakebucket://"

    class FakeBucketFileSystem(LocalFileSystem):
        @classmethod
        def scheme(cls):
            return "fakebucket"

        def _local(self, path):
            return os.path.join(_FakeBucket.root, path[len(prefix):])

        def join(self, base, *paths):
            return "/".join([base.rstrip("/")] + [p.strip("/") for p in paths])

        def split(self, path):
            return tuple(path.rstrip("/").rsplit("/", 1))

        def has_dirs(self):
            return False

        def mkdirs(self, path):
            pass

        def _list(self, key_prefix):
            for folder, _, names in os.walk(_FakeBucket.root):
                for name in names:
                    local = os.path.join(folder, name)
                    key = prefix + os.path.relpath(local, _FakeBucket.root).replace(os.sep, "/")
                    if key.startswith(key_prefix):
                        yield FileMetadata(key, os.path.getsize(local), os.path.getmtime(local))

        def create(self, path, *args, **kwargs):
            os.makedirs(os.path.dirname(self._local(path)), exist_ok=True)
            return super().create(self._local(path), *args, **kwargs)

        def open(self, path, *args, **kwargs):
            return super().open(self._local(path), *args, **kwargs)

        def rename(self, sources, destinations):
            super().rename([self._local(p) for p in sources], [self._local(p) for p in destinations])

        def exists(self, path):
            return os.path.isfile(self._local(path))  # objects only: a prefix is not a file

        def metadata(self, path):
            local = self._local(path)
            return FileMetadata(path, os.path.getsize(local), os.path.getmtime(local))

        def delete(self, paths):
            super().delete([self._local(p) for p in paths])

    return FakeBucketFileSystem


def test_beam_compress_on_an_object_store_writes_the_local_bytes(photos, models, local, tmp_path):
    import shutil

    filesystem = _fake_bucket_filesystem()  # noqa: F841  registered with Beam by being defined
    _FakeBucket.root = str(tmp_path / "store")
    shutil.copytree(photos, tmp_path / "store" / "bucket" / "photos")
    code, _, err = run_cli("beam", "compress", "fakebucket://bucket/photos", "-o", "fakebucket://bucket/packed",
                           "--model", models["codec"])
    assert code == 1, err
    packed = tmp_path / "store" / "bucket" / "packed"
    _check_compressed_like_local(local / "packed", packed)
    [record] = _report(packed)
    assert record == {"path": "fakebucket://bucket/photos/sub/broken.png", "stage": "read",
                      "reason": record["reason"]} and "cannot decode image" in record["reason"]
    assert "failure report: fakebucket://bucket/packed/beam-failures.jsonl" in err
    assert not [p for p in packed.rglob("*") if p.name.endswith(".part")]  # written by temporary name + rename


def test_beam_command_line_errors_are_one_line_with_exit_2(photos, models, tmp_path):
    code, _, err = run_cli("beam", "denoise", photos, "-o", tmp_path / "out", "--direct_num_wrokers", "2")
    assert code == 2 and "unrecognized arguments: --direct_num_wrokers" in err and "Traceback" not in err
    code, _, err = run_cli("beam", "compress", tmp_path / "missing", "-o", tmp_path / "out", "--model", models["codec"])
    assert code == 2 and "imageae beam: error: no such file or folder" in err
    (tmp_path / "empty").mkdir()
    code, _, err = run_cli("beam", "compress", tmp_path / "empty", "-o", tmp_path / "out", "--model", models["codec"])
    assert code == 2 and "imageae beam compress: error: found no files to work on" in err
    code, _, err = run_cli("beam")
    assert code == 2 and "a JOB is required, one of: denoise, compress, decompress" in err
    code, out, _ = run_cli("beam", "denoise", "--help")
    assert code == 0 and "--direct_num_workers 2 --direct_running_mode multi_processing" in out
    assert not any(p.suffix == ".iae" for p in tmp_path.rglob("*"))


def test_beam_denoise_passes_the_strength_to_the_workers_denoiser():
    from imageae.beam.handlers import DenoiseModelHandler

    assert DenoiseModelHandler("auto", strength="7.5").load_model().strength == 7.5
    assert DenoiseModelHandler("auto").load_model().strength == "auto"
    with pytest.raises(ValueError, match="strength"):
        DenoiseModelHandler("auto", strength="lots")  # refused when the pipeline is built, not on a worker
