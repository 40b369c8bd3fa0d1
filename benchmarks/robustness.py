"""The foundation bar, end to end: a messy folder, then a table of hostile cases, each through
the real `imageae` command line (shipped models) in a subprocess.

    python benchmarks/robustness.py [--big 6000x4000] [--keep DIR] [--only-hostile] [--skip-large]

Builds a folder holding a truncated JPEG, a text file named .png, an RGBA PNG, a 16-bit grey
PNG, an EXIF-rotated JPEG, a nested subfolder and a large noisy photo; runs the CLI; checks
every good output (size, orientation, mode, alpha, bit depth), that the two bad files are named
with reasons, the exit code (1), that inputs are byte-identical afterwards, and the peak RSS of
the CLI process. Prints a report and writes benchmarks/results/robustness.json.

Then the hostile cases (issue 19's classes: silent no-ops, tracebacks, links, validation,
metadata, dropped pages, resource bombs, format strictness), each judged on its exit code, its
message, that no traceback is printed, that no input changed, that it stays under 3 GB RSS, and
a check of its own; a table of cases tried, OK and failures by kind goes to the terminal and to
benchmarks/results/robustness.md (--skip-large leaves out the 8192x8192 codec cases, ~minutes).
"""

import argparse
import dataclasses
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent

from common import git_commit, measure_subprocess  # noqa: E402


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


# ------------------------------------------------------------------------------ hostile cases

RSS_LIMIT_MB = 3072


def _cli(*argv):
    return [sys.executable, "-m", "imageae.cli", *map(str, argv)]


def _photo(size=(48, 64), seed=0):
    rng = np.random.default_rng(seed)
    sample = np.asarray(Image.open(ROOT / "data" / "clean" / "coffee.png").convert("RGB"))[: size[0], : size[1]]
    return np.clip(sample + rng.normal(0, 20, sample.shape), 0, 255).astype(np.uint8)


def _srgb_icc():
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _exif(orientation=1, make="imageae-test"):
    exif = Image.Exif()
    exif[0x0112] = orientation
    exif[0x010F] = make
    return exif


def _metadata_kept(path, icc):
    img = Image.open(path)
    exif = img.getexif()
    problems = []
    if img.info.get("icc_profile") != icc:
        problems.append("ICC profile lost")
    if exif.get(0x010F) != "imageae-test":
        problems.append("EXIF lost")
    if exif.get(0x0112, 1) != 1:
        problems.append(f"EXIF orientation {exif.get(0x0112)} left after rotating the pixels")
    return problems


def hostile_cases(work):
    """[(kind, name, setup(folder) -> (argv, expectation))]; expectation: dict of
    codes (allowed exit codes), names (strings the output must hold), check (folder, run) -> problems."""
    cases = []

    def case(kind, name):
        def register(setup):
            cases.append((kind, name, setup))
            return setup
        return register

    @case("no-op", "file written into the folder that holds it")
    def _(d):
        Image.fromarray(_photo()).save(d / "k.png")
        return _cli("denoise", d / "k.png", "-o", d, "--overwrite"), {"codes": {1}, "names": ["k.png"]}

    @case("no-op", "-o a parent of the input folder")
    def _(d):
        (d / "raw").mkdir()
        Image.fromarray(_photo()).save(d / "raw" / "a.png")
        return _cli("denoise", d / "raw", "-o", d), {
            "codes": {0}, "check": lambda d, r: [] if (d / "a.png").exists() else ["no output written"]}

    @case("no-op", "empty input path")
    def _(d):
        return _cli("denoise", "", "-o", d / "out"), {"codes": {2}, "names": ["empty"]}

    @case("no-op", "empty output path")
    def _(d):
        Image.fromarray(_photo()).save(d / "a.png")
        return _cli("denoise", d / "a.png", "-o", ""), {"codes": {2}, "names": ["empty"]}

    @case("no-op", "folder without images")
    def _(d):
        (d / "in").mkdir()
        (d / "in" / "notes.txt").write_text("text")
        return _cli("denoise", d / "in", "-o", d / "out"), {"codes": {2}, "names": ["found no"]}

    @case("no-op", "decompress a folder without .iae files")
    def _(d):
        Image.fromarray(_photo()).save(d / "a.png")
        return _cli("decompress", d, "-o", d / "out"), {"codes": {2}, "names": [".iae"]}

    @case("no-op", "generate twice into one folder keeps the first files")
    def _(d):
        subprocess.run(_cli("generate", "-n", "2", "-o", d / "out", "--seed", "1"), capture_output=True, check=False)
        before = digest(d / "out")
        return _cli("generate", "-n", "2", "-o", d / "out", "--seed", "2"), {
            "codes": {0, 1}, "check": lambda d, r: [] if digest(d / "out") == before else ["existing files replaced"]}

    for job in ("denoise", "generate", "compress"):
        @case("traceback", f"{job} -o below a file")
        def _(d, job=job):
            (d / "file").write_text("x")
            if job == "generate":
                return _cli(job, "-n", "1", "-o", d / "file" / "sub"), {"codes": {2}, "names": ["file"]}
            Image.fromarray(_photo()).save(d / "a.png")
            return _cli(job, d / "a.png", "-o", d / "file" / "sub"), {"codes": {2}, "names": ["output"]}

    @case("usage", "unknown top-level flag")
    def _(d):
        return _cli("--bogus"), {"codes": {2}, "names": ["--bogus"]}

    @case("usage", "unknown subcommand flag")
    def _(d):
        return _cli("generate", "-o", d, "--bogus"), {"codes": {2}, "names": ["--bogus", "generate"]}

    @case("links", "broken link and link loop inside a folder")
    def _(d):
        (d / "in").mkdir()
        Image.fromarray(_photo()).save(d / "in" / "a.png")
        os.symlink(d / "gone.png", d / "in" / "dangling.png")
        os.symlink(d / "in" / "loop.png", d / "in" / "loop.png")
        return _cli("denoise", d / "in", "-o", d / "out"), {
            "codes": {1}, "names": ["dangling.png", "loop.png"],
            "check": lambda d, r: [] if (d / "out" / "a.png").exists() else ["good file not processed"]}

    @case("links", "broken link named beside a good file")
    def _(d):
        Image.fromarray(_photo()).save(d / "a.png")
        os.symlink(d / "gone.png", d / "link.png")
        return _cli("denoise", d / "link.png", d / "a.png", "-o", d / "out"), {
            "codes": {1}, "names": ["link.png"],
            "check": lambda d, r: [] if (d / "out" / "a.png").exists() else ["good file not processed"]}

    for flags, label in ((["--temperature", "inf"], "temperature inf"), (["--temperature", "nan"], "temperature nan"),
                         (["--seed", str(2**64)], "seed 2**64"), (["--seed", "1.5"], "seed 1.5")):
        @case("validation", f"generate {label}")
        def _(d, flags=flags):
            return _cli("generate", "-n", "1", "-o", d / "out", *flags), {
                "codes": {2}, "check": lambda d, r: [] if not (d / "out").exists() or not any((d / "out").iterdir())
                else ["files written"]}

    @case("validation", "denoise --tile 0")
    def _(d):
        Image.fromarray(_photo()).save(d / "a.png")
        return _cli("denoise", d / "a.png", "-o", d / "out", "--tile", "0"), {"codes": {2}}

    for ext in ("jpg", "png", "tif", "webp"):
        @case("metadata", f"denoise keeps ICC and EXIF ({ext})")
        def _(d, ext=ext):
            icc = _srgb_icc()
            Image.fromarray(_photo()).save(d / f"a.{ext}", icc_profile=icc, exif=_exif(6))
            return _cli("denoise", d / f"a.{ext}", "-o", d / "out"), {
                "codes": {0}, "check": lambda d, r: _metadata_kept(d / "out" / f"a.{ext}", icc)}

    @case("metadata", "compress + decompress keeps the ICC profile")
    def _(d):
        icc = _srgb_icc()
        Image.fromarray(_photo((64, 64))).save(d / "a.png", icc_profile=icc)
        subprocess.run(_cli("compress", d / "a.png", "-o", d / "iae"), capture_output=True, check=False)
        return _cli("decompress", d / "iae", "-o", d / "out"), {
            "codes": {0}, "check": lambda d, r: [] if Image.open(d / "out" / "a.png").info.get("icc_profile") == icc
            else ["ICC profile lost"]}

    @case("pages", "multi-page TIFF")
    def _(d):
        frames = [Image.fromarray(_photo(seed=i)) for i in range(3)]
        frames[0].save(d / "pages.tif", save_all=True, append_images=frames[1:])
        return _cli("denoise", d / "pages.tif", "-o", d / "out"), {
            "codes": {0, 1}, "check": lambda d, r: _pages_handled(d / "out" / "pages.tif", 3, r)}

    @case("pages", "animated GIF")
    def _(d):
        frames = [Image.fromarray(_photo(seed=i)).convert("P") for i in range(3)]
        frames[0].save(d / "anim.gif", save_all=True, append_images=frames[1:])
        return _cli("denoise", d / "anim.gif", "-o", d / "out"), {
            "codes": {0, 1}, "check": lambda d, r: _pages_handled(d / "out" / "anim.png", 3, r)}

    @case("strictness", "float32 TIFF")
    def _(d):
        Image.fromarray(np.full((16, 16), 0.5, np.float32), mode="F").save(d / "f.tif")
        return _cli("denoise", d / "f.tif", "-o", d / "out"), {
            "codes": {0, 1}, "check": lambda d, r: [] if r["rc"] == 0 or "float" in r["stderr"].lower()
            else ["refused without naming the float format"]}

    @case("bombs", ".iae header claiming 100000 x 100000 pixels")
    def _(d):
        Image.fromarray(_photo((64, 64))).save(d / "a.png")
        subprocess.run(_cli("compress", d / "a.png", "-o", d / "iae"), capture_output=True, check=False)
        data = bytearray((d / "iae" / "a.iae").read_bytes())
        (d / "iae" / "a.iae").write_bytes(_with_size(data, 100000, 100000))
        return _cli("decompress", d / "iae", "-o", d / "out"), {"codes": {1}, "names": ["a.iae"], "max_seconds": 60}

    @case("bombs", "generate -n 10000000 (stopped after 60 s)")
    def _(d):
        return _cli("generate", "-n", "10000000", "-o", d / "out"), {
            "codes": {"timeout", 0}, "timeout": 60,
            "check": lambda d, r: [] if (d / "out").exists() and any((d / "out").iterdir())
            else ["no file written after 60 s"]}

    return cases


def _pages_handled(output, pages, run):
    if run["rc"] == 1:  # refused: the file must be named with a reason about its pages
        return [] if ("frame" in run["stderr"] or "page" in run["stderr"]) else ["refused without saying why"]
    if not output.exists():
        return ["no output and no failure"]
    n = getattr(Image.open(output), "n_frames", 1)
    return [] if n == pages else [f"{n} of {pages} pages written"]


def _with_size(data, height, width):
    """The .iae bytes with the header's image size replaced (docs/iae-format.md layout)."""
    sys.path.insert(0, str(ROOT))
    from imageae.codec import container

    header, sections = container.unpack(bytes(data))
    return container.pack(dataclasses.replace(header, height=height, width=width), sections, max_size=10**6)


def large_cases(work):
    """The 8192x8192 flat image: compress and decompress must stay under 3 GB."""
    cases = []
    flat = work / "flat"
    flat.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8192, 8192, 3), 128, np.uint8)).save(flat / "flat.png")
    cases.append(("bombs", "compress a flat 8192x8192 image",
                  lambda d: (_cli("compress", flat / "flat.png", "-o", work / "flat-iae", "--overwrite"),
                             {"codes": {0}})))
    cases.append(("bombs", "decompress a flat 8192x8192 image",
                  lambda d: (_cli("decompress", work / "flat-iae", "-o", d / "out"), {"codes": {0}})))
    return cases


def run_hostile(work, *, large=True):
    rows = []
    cases = hostile_cases(work) + (large_cases(work) if large else [])
    for index, (kind, name, setup) in enumerate(cases):
        folder = work / f"case{index:02d}"
        folder.mkdir(parents=True)
        argv, expect = setup(folder)
        before = {k: v for k, v in digest(folder).items() if not k.startswith("out")}
        run = measure_subprocess(argv, timeout=expect.get("timeout", 600))
        problems = []
        if run["rc"] not in expect["codes"]:
            problems.append(f"exit {run['rc']}, expected {sorted(map(str, expect['codes']))}")
        said = run["stdout"] + run["stderr"]
        problems += [f"does not name {n!r}" for n in expect.get("names", []) if n not in said]
        if "Traceback" in said:
            problems.append("traceback")
        if run["maxrss_kb"] / 1024 > RSS_LIMIT_MB:
            problems.append(f"peak RSS {run['maxrss_kb'] / 1024:.0f} MB")
        if run["seconds"] > expect.get("max_seconds", 1e9):
            problems.append(f"took {run['seconds']:.0f} s")
        after = {k: v for k, v in digest(folder).items() if k in before}
        if after != before:
            problems.append("an input changed")
        if "check" in expect:
            problems += expect["check"](folder, run)
        rows.append({"kind": kind, "case": name, "ok": not problems, "problems": problems, "exit": run["rc"],
                     "seconds": round(run["seconds"], 1), "peak_rss_mb": round(run["maxrss_kb"] / 1024),
                     "said": said.strip().splitlines()[-3:]})
        print(f"{'ok  ' if not problems else 'FAIL'} [{kind}] {name}: {'; '.join(problems) or 'ok'} "
              f"({run['seconds']:.1f} s, {run['maxrss_kb'] / 1024:.0f} MB)", flush=True)
    return rows


def hostile_table(rows):
    kinds = list(dict.fromkeys(r["kind"] for r in rows))
    lines = ["| kind | cases | OK | failures |", "| --- | --- | --- | --- |"]
    for kind in kinds:
        these = [r for r in rows if r["kind"] == kind]
        failed = [f"{r['case']}: {'; '.join(r['problems'])}" for r in these if not r["ok"]]
        lines.append(f"| {kind} | {len(these)} | {len(these) - len(failed)} | {'<br>'.join(failed) or '-'} |")
    total = sum(r["ok"] for r in rows)
    lines.append(f"| **all** | {len(rows)} | {total} | {len(rows) - total} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--big", default="6000x4000", help="size of the large photo, WxH (default 6000x4000)")
    parser.add_argument("--keep", help="build the folder here and keep it (default: a temp folder)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="where robustness.json goes")
    parser.add_argument("--only-hostile", action="store_true", help="skip the messy-folder run")
    parser.add_argument("--skip-large", action="store_true", help="leave out the 8192x8192 codec cases")
    args = parser.parse_args(argv)
    if args.only_hostile:
        return hostile_main(args)
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
    return max(0 if result["passed"] else 1, hostile_main(args))


def hostile_main(args):
    work = Path(tempfile.mkdtemp(prefix="imageae-hostile-"))
    rows = run_hostile(work, large=not args.skip_large)
    table = hostile_table(rows)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "robustness.md").write_text(
        "# Hostile cases through the imageae CLI\n\nMeasured by `python benchmarks/robustness.py"
        + (" --skip-large" if args.skip_large else "") + f"` at {git_commit()}.\n\n" + table + "\n")
    (Path(args.out) / "robustness-hostile.json").write_text(json.dumps(rows, indent=2) + "\n")
    return 0 if all(r["ok"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
