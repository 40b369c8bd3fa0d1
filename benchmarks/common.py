"""Helpers shared by the benchmark scripts (run as `python benchmarks/NAME.py`, which puts this
folder on sys.path)."""

import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``: wall time of the block."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def git_commit():
    """The checkout's short commit, marked when imageae/ has uncommitted changes."""
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "imageae"], cwd=REPO, capture_output=True,
                               text=True).stdout.strip() != ""
        return commit + (" (imageae/ has uncommitted changes)" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"


# Runs a command and reports its wall time and peak RSS. It is a separate small process because
# Linux carries the forking process's peak RSS over into the child's ru_maxrss across exec, so
# getrusage(RUSAGE_CHILDREN) taken by a benchmark would report the benchmark's own peak.
_MEASURE = """
import json, resource, subprocess, sys, time
timeout = float(sys.argv[1]) or None
start = time.perf_counter()
try:
    done = subprocess.run(sys.argv[2:], capture_output=True, text=True, timeout=timeout)
    rc, out, err = done.returncode, done.stdout, done.stderr
except subprocess.TimeoutExpired as expired:  # killed and reaped: its peak RSS still counts
    rc, out, err = "timeout", expired.stdout or "", expired.stderr or ""
    out, err = [t.decode("utf-8", "replace") if isinstance(t, bytes) else t for t in (out, err)]
seconds = time.perf_counter() - start
print(json.dumps({"rc": rc, "seconds": seconds, "stdout": out[-4000:], "stderr": err[-4000:],
                  "maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))
"""


def measure_subprocess(command, env=None, *, timeout=0):
    """{rc, seconds (wall, start-up included), stdout, stderr, maxrss_kb} of ``command``; with a
    ``timeout`` in seconds, a command still running then is killed and rc is "timeout"."""
    done = subprocess.run([sys.executable, "-c", _MEASURE, str(float(timeout)), *command], env=env,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"could not measure {command[:3]}: {done.stderr.strip()[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])
