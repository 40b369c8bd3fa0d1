#!/usr/bin/env python
"""The GPU training queue (issue 24): one resumable stage per model, run on a lent GPU machine in
one call of the device tool, then loaded back and benchmarked here before anything ships.

The GPU machines have JAX and PyTorch but neither TensorFlow nor Keras nor constriction, and a
call sends at most 64 MiB: the checkout's tracked files plus what it carries. The checkout alone
is larger than that (the shipped models are about 58 MiB), so ``pack`` parks what the stage does
not need outside the checkout for the call, and ``unpark`` puts it back afterwards.

    python tools/gpu/gpu_queue.py pack codec     # here: .gpu/ (ignored) gets the stage's training images, its
                                             # start weights and the keras wheel; parks the rest; says the size
    python tools/gpu/gpu_queue.py command codec  # the device call to make: its command and its carry list
    python tools/gpu/gpu_queue.py run codec      # there (inside that command): trains into $OUT for --minutes
    python tools/gpu/gpu_queue.py unpark         # here, after the call: the parked files back (git status clean)
    python tools/gpu/gpu_queue.py run codec --dry-run   # CPU, TensorFlow and constriction hidden, 2 steps on
                                                    # tiny images: what tests/test_gpu_queue.py runs

Stages, in the issue's order: ``codec`` (codec-v4's transforms, longer training from the shipped
weights), ``denoise-colour`` (the noise-level colour denoiser on the camera-noise model). The faces
VAE's last stage (the adversarial decoder) trains on TensorFlow only, so it has no GPU stage yet.
``--init PATH`` packs another start (the weights a previous window wrote) to resume from.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared" / "datasets"
GPU = REPO / ".gpu"  # ignored (.gitignore); carried by the device call
PARKED = REPO.parent / "gpu-parked"  # outside the checkout: never travels
LIMIT = 64 * 2**20
#: Carried as wheels: Keras at the version tested here, what it needs beyond the GPU image, and
#: constriction (the codec's recipe builds its coding tables at the end).
WHEELS = ("keras==3.15.1", "namex==0.1.0", "optree==0.20.0", "constriction==0.5.0")
#: The GPU image's Python (3.12, x86-64) and the manylinux tags pip must match exactly.
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64")

STAGES = {
    "codec": {
        "model": "codec-v4",
        "data": ["photos/BSDS500/train", "photos/BSDS500/test"],
        "argv": ["train", "codec", "--batch-size", "16", "--patch-size", "256", "--learning-rate", "1e-4",
                 "--warmup-steps", "100", "--min-learning-rate", "5e-6", "--steps", "100000",
                 "--steps-per-epoch", "1000", "--patience", "100", "--precision", "float32", "--workers", "8"],
    },
    "denoise-colour": {
        "model": "denoise-colour",
        "data": ["photos/BSDS500/train", "photos/BSDS500/test"],
        "argv": ["train", "denoiser", "--channels", "3", "--noise", "camera", "--batch-size", "32",
                 "--patch-size", "128", "--learning-rate", "1e-4", "--warmup-steps", "100",
                 "--min-learning-rate", "1e-6", "--steps", "100000", "--steps-per-epoch", "500",
                 "--patience", "100", "--precision", "float32", "--workers", "8"],
    },
}
#: What a dry run changes: a few steps on tiny images.
DRY = {"--batch-size": "2", "--patch-size": "64", "--steps": "2", "--steps-per-epoch": "2", "--workers": "1"}
#: What the GPU image lacks and no call carries; a dry run hides it so that a stage needing it fails here.
ABSENT_THERE = ("tensorflow",)


def tracked_files():
    out = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    return [REPO / p for p in out.decode().split("\0") if p]


def travel_size(extra=()):
    """Bytes a device call would send: the tracked files present, plus ``extra`` folders."""
    total = sum(p.stat().st_size for p in tracked_files() if p.is_file())
    for folder in extra:
        total += sum(p.stat().st_size for p in Path(folder).rglob("*") if p.is_file())
    return total


def _parkable(keep_model):
    """Tracked files a stage does not need on the GPU: the other shipped models and the results."""
    keep = {f"saved_models/{keep_model}.keras", f"saved_models/{keep_model}.json"}
    for path in tracked_files():
        rel = path.relative_to(REPO).as_posix()
        if path.is_file() and rel not in keep and rel.startswith(("saved_models/", "benchmarks/results/")):
            yield path, rel


def pack(stage, init=None):
    spec = STAGES[stage]
    if GPU.exists():
        shutil.rmtree(GPU)
    (GPU / "data").mkdir(parents=True)
    for folder in spec["data"]:
        source = SHARED / folder
        if not source.is_dir():
            raise SystemExit(f"training images missing: {source}")
        shutil.copytree(source, GPU / "data" / folder.replace("/", "_"))
    # The shipped weights travel where they are (tracked); other start weights are carried, and
    # then the shipped file is parked with the rest.
    start = Path(init) if init else REPO / "saved_models" / f"{spec['model']}.keras"
    if init:
        (GPU / "init").mkdir()
        shutil.copy2(start, GPU / "init" / "start.keras")
    (GPU / "whl").mkdir()
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                    "--python-version", "3.12", "--implementation", "cp",
                    *[a for tag in PLATFORMS for a in ("--platform", tag)], "-d", str(GPU / "whl"), *WHEELS],
                   check=True)
    moved = 0
    for path, rel in list(_parkable(None if init else spec["model"])):
        target = PARKED / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        moved += 1
    (GPU / "stage.json").write_text(json.dumps({"stage": stage, "start": str(start), "packed": time.time()}))
    size = travel_size([GPU])
    print(f"packed {stage}: {size / 2**20:.1f} MiB would travel (limit 64 MiB); {moved} files parked in {PARKED}")
    if size > LIMIT:
        raise SystemExit("too large for one call: park more or carry fewer images")
    print(f"next: python tools/gpu/gpu_queue.py command {stage}; after the call: python tools/gpu/gpu_queue.py unpark")


def unpark():
    if not PARKED.exists():
        print("nothing parked")
        return
    count = 0
    for path in sorted(p for p in PARKED.rglob("*") if p.is_file()):
        target = REPO / path.relative_to(PARKED)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        count += 1
    shutil.rmtree(PARKED)
    print(f"{count} files back; check with: git status --short")


def command(stage, minutes):
    install = ("python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "
               ".gpu/whl/*.whl && export PYTHONPATH=/tmp/site:$PWD")
    print(json.dumps({"command": f"{install} && PYTHONUNBUFFERED=1 python3 tools/gpu/gpu_queue.py run {stage} "
                                 f"--minutes {minutes:g}",
                      "carry": [".gpu"], "timeout_s": int(60 * minutes + 90)}, indent=1))


def _hide(modules):
    """Make ``modules`` unimportable in this process, as they are on the GPU machine."""
    import importlib.abc

    class Hidden(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in modules:
                raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU machine)")
            # otherwise None: not this finder's module

    sys.meta_path.insert(0, Hidden())


def run(stage, minutes, out, dry_run=False, data=None):
    """Train ``stage`` into ``out``: the weights, the model card, the history and the log."""
    spec = STAGES[stage]
    os.environ.setdefault("KERAS_BACKEND", "jax")
    argv = list(spec["argv"])
    if dry_run:
        _hide(ABSENT_THERE)
        for flag, value in DRY.items():
            if flag in argv:
                argv[argv.index(flag) + 1] = value
        init = REPO / "saved_models" / f"{spec['model']}.keras"
        folders = [str(data)]
    else:
        carried = GPU / "init" / "start.keras"
        init = carried if carried.exists() else REPO / "saved_models" / f"{spec['model']}.keras"
        folders = sorted(str(p) for p in (GPU / "data").iterdir())
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    checkpoints = Path(os.environ.get("TMPDIR", "/tmp")) / f"gpu-{stage}-checkpoints"
    argv += ["--data", *folders, "--init", str(init), "--max-minutes", f"{minutes:g}",
             "--checkpoint-dir", str(checkpoints), "-o", str(out / f"{spec['model']}.keras")]
    print("imageae " + " ".join(argv), flush=True)
    from imageae.cli import main

    start = time.time()
    code = main(argv)
    for name in ("history.csv",):
        if (checkpoints / name).exists():
            shutil.copy2(checkpoints / name, out / name)
    print(f"stage {stage}: exit {code} after {time.time() - start:.0f} s", flush=True)
    return code


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("pack")
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--init", help="start weights other than the shipped model's (a previous window's output)")
    p = sub.add_parser("command")
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--minutes", type=float, default=8.0)
    sub.add_parser("unpark")
    p = sub.add_parser("run")
    p.add_argument("stage", choices=sorted(STAGES))
    p.add_argument("--minutes", type=float, default=8.0, help="training time (default: 8, inside one 10-minute call)")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu-out"), help="output folder (default: $OUT)")
    p.add_argument("--dry-run", action="store_true", help="2 steps on --data with TensorFlow hidden, on this CPU")
    p.add_argument("--data", help="images for --dry-run")
    args = parser.parse_args(argv)
    if args.verb == "pack":
        pack(args.stage, args.init)
    elif args.verb == "unpark":
        unpark()
    elif args.verb == "command":
        command(args.stage, args.minutes)
    else:
        if args.dry_run and not args.data:
            parser.error("--dry-run needs --data (a folder of a few images)")
        return run(args.stage, args.minutes, args.out, dry_run=args.dry_run, data=args.data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
