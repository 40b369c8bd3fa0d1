"""tools/gpu/gpu_queue.py (issue 24): each GPU stage's dry run, so that a rare GPU window is never
lost to a broken script. The dry run is the stage's own command on the JAX backend with
TensorFlow hidden (the GPU image has none), 2 steps on tiny images, in a fresh process."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parent.parent
QUEUE = REPO / "tools" / "gpu" / "gpu_queue.py"

pytest.importorskip("jax", reason="the GPU stages train on the JAX backend (pip install -e '.[test]')")


def _queue(*args, timeout=600):
    env = {**os.environ, "KERAS_BACKEND": "jax", "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, str(QUEUE), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO, check=False)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gpu") / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:96, :128] / 96
    for i in range(6):
        x = np.stack([xx, yy, 0.5 + 0.4 * np.sin(5 * xx + i)], -1) * 200 + rng.normal(0, 8, (96, 128, 3))
        Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(folder / f"{i}.png")
    return folder


@pytest.mark.parametrize("stage", ["codec", "denoise-colour"])
def test_each_gpu_stage_trains_without_tensorflow_and_writes_weights_card_and_history(stage, images, tmp_path):
    out = tmp_path / "out"
    done = _queue("run", stage, "--dry-run", "--data", str(images), "--out", str(out), "--minutes", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    model = {"codec": "codec-v4", "denoise-colour": "denoise-colour"}[stage]
    card = json.loads((out / f"{model}.json").read_text())
    assert (out / f"{model}.keras").stat().st_size > 100_000 and (out / "history.csv").exists()
    assert card["training"]["steps_done"] == 2
    assert f"stage {stage}: exit 0" in done.stdout


def test_a_dry_run_really_hides_tensorflow(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text(f"import sys\nsys.path.insert(0, {str(QUEUE.parent)!r})\nimport gpu_queue\n"
                     "gpu_queue._hide(gpu_queue.ABSENT_THERE)\nimport tensorflow\n")
    done = subprocess.run([sys.executable, str(probe)], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode != 0 and "not on the GPU machine" in done.stderr


def test_the_device_command_installs_the_carried_wheels_and_runs_the_stage_in_time():
    done = _queue("command", "codec", "--minutes", "8")
    assert done.returncode == 0, done.stderr
    call = json.loads(done.stdout)
    assert call["carry"] == [".gpu"] and call["timeout_s"] <= 600
    assert ".gpu/whl/*.whl" in call["command"] and "gpu_queue.py run codec --minutes 8" in call["command"]
    assert len(call["command"]) <= 2000  # the device tool's limit
