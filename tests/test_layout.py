"""The package layout (docs/architecture.md): one package per job on a job-free core.

The import graph is read from the source with ``ast`` (module-level and function-level imports
alike; a module named in a string and imported with importlib at run time is not an edge), and
a toy job registered in a test shows that adding a job is one package plus one line in
``imageae.cli.JOBS``.
"""

import ast
import textwrap
from pathlib import Path

import pytest

import imageae
import imageae.cli
from imageae.cli import main

ROOT = Path(imageae.__file__).parent

# The package itself (re-exports the jobs' public API) and the CLI's assembler (imports the jobs
# by the names in JOBS): the two places above the jobs.
FACADE = {"imageae", "imageae.cli", "imageae.cli.__main__"}

# Runners: packages that run the jobs elsewhere (imageae.beam: on Apache Beam). A runner has
# subcommands like a job, and may import the core and each job's public ``api`` module, nothing
# else of a job; no job and nothing in the core imports a runner.
RUNNERS = {"imageae.beam"}


def _module_name(path):
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules():
    return {_module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def _job_packages(modules):
    """A job is a package below imageae with a ``cli`` module (imageae.cli itself is the assembler)."""
    return {name.rsplit(".", 1)[0] for name in modules
            if name.endswith(".cli") and name.count(".") == 2 and name != "imageae.cli"}


def _imports(name, path, modules):
    """The imageae modules that ``name`` imports anywhere in its source, with line numbers."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno))
    return [(target, line) for target, line in found if target == "imageae" or target.startswith("imageae.")]


def _owner(name, jobs):
    """The job package a module belongs to, "facade", or "core"."""
    if name in FACADE:
        return "facade"
    for job in jobs:
        if name == job or name.startswith(job + "."):
            return job
    return "core"


def _graph():
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        targets = []
        for target, line in _imports(name, path, modules):
            while target not in modules and "." in target:  # `import a.b.c` of a name inside a module
                target = target.rsplit(".", 1)[0]
            targets.append((target, line))
        graph[name] = targets
    return modules, graph


def test_the_layout_has_the_jobs_and_core_it_documents():
    modules, _ = _graph()
    assert _job_packages(modules) - RUNNERS == {"imageae.denoise", "imageae.codec", "imageae.generate",
                                                "imageae.features", "imageae.anomaly"}
    assert RUNNERS <= _job_packages(modules)
    for gone in ("imageae.api", "imageae.train", "imageae.generation"):
        assert gone not in modules, f"{gone} should have moved into the job packages"
    for job in ("imageae.denoise", "imageae.codec", "imageae.generate"):
        for part in ("api", "train", "cli", "export"):
            assert f"{job}.{part}" in modules, f"{job} has no {part} module"
    assert "imageae.training" in modules and "imageae.data.convert" in modules


def test_jobs_import_only_the_core_and_the_core_imports_no_job():
    modules, graph = _graph()
    jobs = _job_packages(modules)
    wrong = []
    for name, targets in graph.items():
        owner = _owner(name, jobs)
        for target, line in targets:
            goes_to = _owner(target, jobs)
            if owner == "core" and goes_to != "core":
                wrong.append(f"{name}:{line} (core) imports {target} ({goes_to})")
            elif owner in RUNNERS:
                # a runner uses a job through its api; its own command line also takes the job's
                # option block from the job's cli, so that the options cannot drift apart
                allowed = {f"{goes_to}.api"} | ({f"{goes_to}.cli"} if name == f"{owner}.cli" else set())
                if goes_to not in ("core", owner) and target not in allowed:
                    wrong.append(f"{name}:{line} (runner {owner}) imports {target} ({goes_to}), not a job's api")
            elif goes_to in RUNNERS:
                wrong.append(f"{name}:{line} ({owner}) imports the runner {target}")
            elif owner not in ("core", "facade") and goes_to not in ("core", owner):
                wrong.append(f"{name}:{line} (job {owner}) imports {target} ({goes_to})")
    assert not wrong, "layering broken:\n" + "\n".join(wrong)


def test_no_import_cycle_among_imageae_modules():
    _, graph = _graph()
    edges = {name: sorted({t for t, _ in targets if t != name}) for name, targets in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        stack.append(node)
        for nxt in edges.get(node, ()):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_every_job_package_is_registered_once_in_the_cli():
    modules, _ = _graph()
    listed = [name for name in imageae.cli.JOBS if name != "imageae.cli.models"]
    assert sorted(listed) == sorted(f"{job}.cli" for job in _job_packages(modules))
    assert len(set(imageae.cli.JOBS)) == len(imageae.cli.JOBS)


def test_the_public_api_is_unchanged():
    assert sorted(imageae.__all__) == sorted([
        "AnomalyDetector", "Denoiser", "__version__", "compress", "compress_folder", "decompress", "decompress_folder", "denoise",
        "denoise_folder", "embed", "export_saved_model", "generate", "generate_batches", "interpolate", "list_models",
        "load_model", "reconstruct"])
    for name in imageae.__all__:
        assert getattr(imageae, name) is not None
    # The functions keep the names the packages also have.
    assert callable(imageae.denoise) and callable(imageae.generate)


# ------------------------------------------------------------------------------- a toy job

TOY_CLI = '''
"""A toy job's subcommands: 'imageae toy' counts the images it is given; 'imageae train toy' refuses."""

from imageae.cli.common import EXIT_FAILED, EXIT_OK, _add_folder_flags
from imageae.data.io import find_images


def register(commands, train):
    p = commands.add_parser("toy", help="count images (a toy job)", description="Count images.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    _add_folder_flags(p)
    t = train.add_parser("toy", help="a toy model")
    t.add_argument("--steps", type=int, default=1)
    return {"toy": _cmd_toy, "train toy": _cmd_train_toy}


def _cmd_toy(args):
    images = find_images(args.inputs)
    print(f"toy: {len(images)} image(s)")
    return EXIT_OK if images else EXIT_FAILED


def _cmd_train_toy(args):
    raise ValueError(f"the toy model cannot learn in {args.steps} step(s)")
'''


@pytest.fixture
def toy_job(tmp_path, monkeypatch):
    """A job package written to tmp_path (one package) and added to the CLI (one line)."""
    package = tmp_path / "site" / "toyjob"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text('"""A toy job."""\n')
    (package / "cli.py").write_text(textwrap.dedent(TOY_CLI))
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setattr(imageae.cli, "JOBS", imageae.cli.JOBS + ("toyjob.cli",))


def test_a_new_job_is_one_package_and_one_registration_line(toy_job, tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("L", (8, 8), i).save(folder / f"{i}.png")
    assert main(["toy", str(folder)]) == 0
    assert "toy: 3 image(s)" in capsys.readouterr().out
    # The CLI's own policies apply to it unchanged: exit codes, errors named by the command,
    # unknown flags named by the command they were given to, help listing.
    (tmp_path / "empty").mkdir()
    assert main(["toy", str(tmp_path / "empty")]) == 1
    assert main(["toy", str(tmp_path / "missing")]) == 2
    assert "imageae toy: error: no such file or folder" in capsys.readouterr().err
    assert main(["train", "toy", "--steps", "2"]) == 2
    assert "imageae train: error: the toy model cannot learn in 2 step(s)" in capsys.readouterr().err
    assert main(["toy", str(folder), "--bogus"]) == 2
    assert "imageae toy: error: unrecognized arguments: --bogus" in capsys.readouterr().err
    assert main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert "count images (a toy job)" in listing
    assert listing.index("toy") < listing.index("train      train")  # 'train' stays last


def test_without_its_line_the_toy_job_is_not_a_command(tmp_path, capsys):
    assert "toyjob.cli" not in imageae.cli.JOBS
    assert main(["toy", str(tmp_path)]) == 2
    assert "invalid choice: 'toy'" in capsys.readouterr().err
