"""The foundation bar, end to end: a messy folder through `imageae denoise` in a subprocess.

    python benchmarks/robustness.py [--big 6000x4000] [--keep DIR]

Builds a folder holding a truncated JPEG, a text file named .png, an RGBA PNG, a 16-bit grey
PNG, an EXIF-rotated JPEG, a nested subfolder and a large noisy photo; runs the CLI; checks
every good output (size, orientation, mode, alpha, bit depth), that the two bad files are named
with reasons, the exit code (1), that inputs are byte-identical afterwards, and the peak RSS of
the CLI process. Prints a report and writes benchmarks/results/robustness.json.
"""

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

from common import measure_subprocess  # noqa: E402


def build_folder(folder, big):
    rng = np.random.default_rng(0)
    sample = np.asarray(Image.open(ROOT / "data" / "clean" / "coffee.png").convert("RGB"))

    def noisy(img, sigma=25):
        return np.clip(img + rng.normal(0, sigma, img.shape), 0, 255).astype(np.uint8)

    (folder / "nested" / "deeper").mkdir(parents=True)
    w, h = big
    large = np.asarray(Image.fromarray(sample).resize((w, h), Image.BICUBIC))
    Image.fromarray(noisy(large)).save(folder / "large.jpg", quality=92)
    Image.fromarray(noisy(sample[:200, :300])).save(folder / "photo.jpg", quality=92)
    data = (folder / "photo.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (folder / "notes.png").write_text("this is a text file, not a PNG\n")
    rgba = np.dstack([noisy(sample[:120, :160]), np.tile(np.linspace(0, 255, 160).astype(np.uint8), (120, 1))])
    Image.fromarray(rgba, "RGBA").save(folder / "nested" / "rgba.png")
    grey16 = np.clip(sample[:150, :100, 1] * 257.0 + rng.normal(0, 25 * 257, (150, 100)), 0, 65535)
    cv2.imwrite(str(folder / "nested" / "grey16.png"), grey16.astype(np.uint16))
    rotated = Image.fromarray(noisy(sample[:100, :240]))
    exif = rotated.getexif()
    exif[0x0112] = 6  # stored landscape, shown portrait (rotate 90 degrees clockwise)
    rotated.save(folder / "nested" / "deeper" / "exif_rotated.JPG", exif=exif, quality=92)
    expected = {  # relative path: ((height, width), PIL mode, bit depth, has alpha)
        "large.jpg": ((h, w), "RGB", 8, False),
        "photo.jpg": ((200, 300), "RGB", 8, False),
        "nested/rgba.png": ((120, 160), "RGBA", 8, True),
        "nested/grey16.png": ((150, 100), "I;16", 16, False),
        "nested/deeper/exif_rotated.JPG": ((240, 100), "RGB", 8, False),
    }
    return expected, {"truncated.jpg", "notes.png"}


def digest(folder):
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


def check_output(src, dst, rel, shape, mode, depth, has_alpha):
    out = dst / rel
    if not out.exists():
        return "MISSING"
    img = Image.open(out)
    problems = []
    if (img.height, img.width) != shape:
        problems.append(f"size {img.height}x{img.width} != {shape[0]}x{shape[1]}")
    if img.mode != mode:
        problems.append(f"mode {img.mode} != {mode}")
    if depth == 16 and cv2.imread(str(out), cv2.IMREAD_UNCHANGED).dtype != np.uint16:
        problems.append("not 16-bit")
    if has_alpha and not np.array_equal(np.asarray(Image.open(src / rel))[..., 3], np.asarray(img)[..., 3]):
        problems.append("alpha changed")
    return "; ".join(problems) or "ok"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", default="6000x4000", help="size of the large photo, WxH (default 6000x4000)")
    parser.add_argument("--keep", help="build the folder here and keep it (default: a temp folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where robustness.json goes")
    args = parser.parse_args(argv)
    big = tuple(int(v) for v in args.big.lower().split("x"))
    work = Path(args.keep or tempfile.mkdtemp(prefix="imageae-robust-"))
    src, dst = work / "in", work / "out"
    src.mkdir(parents=True, exist_ok=True)
    expected, bad = build_folder(src, big)
    before = digest(src)
    # Measured through a small wrapper process: RUSAGE_CHILDREN of this process would also count
    # the memory this script used to build the large test photo.
    run = measure_subprocess([sys.executable, "-m", "imageae.cli", "denoise", str(src), "-o", str(dst)])
    wall = run["seconds"]
    peak_rss_mb = run["maxrss_kb"] / 1024
    checks = {rel: check_output(src, dst, rel, *spec) for rel, spec in expected.items()}
    named = {b: b in run["stderr"] for b in bad}
    result = {
        "command": f"imageae denoise {src} -o {dst}",
        "exit_code": run["rc"],
        "outputs": checks,
        "bad_files_named": named,
        "inputs_byte_identical": before == digest(src),
        "peak_rss_mb": round(peak_rss_mb, 1),
        "wall_seconds": round(wall, 1),
        "large_photo": f"{big[0]}x{big[1]}",
        "cli_stderr": run["stderr"].strip().splitlines()[-4:],
    }
    result["passed"] = bool(
        run["rc"] == 1 and all(v == "ok" for v in checks.values()) and all(named.values())
        and result["inputs_byte_identical"] and peak_rss_mb < 3072
    )
    print(json.dumps(result, indent=2))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "robustness.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
