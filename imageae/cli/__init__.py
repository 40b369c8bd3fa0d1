"""The ``imageae`` command line: argparse only; flags become API calls and configs here.

This package assembles the command line from the jobs: each module in :data:`JOBS` has a
``register(commands, train)`` that adds its subcommands (and its ``imageae train`` models) and
returns their handlers by command (``"denoise"``, ``"train denoiser"``). This package parses the
global flags, runs the handler and maps exceptions to exit codes; it imports the jobs only by
the names in :data:`JOBS`. Adding a job is one package with a ``cli`` module and one line in
:data:`JOBS`.

Exit codes: 0 every file succeeded, 1 some files failed (each named with its reason),
2 usage error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM). Interrupted or terminated,
a job finishes the file it is writing, cancels the rest and leaves no partial file.
"""

import argparse
import contextlib
import importlib
import signal
import sys
import threading

from imageae.cli.common import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE  # noqa: F401  (the exit codes)

# The modules whose register() adds subcommands, in the order of 'imageae --help'.
JOBS = (
    "imageae.denoise.cli",
    "imageae.codec.cli",
    "imageae.generate.cli",
    "imageae.anomaly.cli",
    "imageae.features.cli",
    "imageae.beam.cli",
    "imageae.cli.models",
)


def _assemble(jobs=None):
    """The parser with every job's subcommands, and their handlers by command."""
    parser = argparse.ArgumentParser(
        prog="imageae",
        description="Convolutional autoencoders for images: denoise photos and scans, compress images into "
                    "small .iae files, generate new images.",
        epilog="Run 'imageae COMMAND --help' for each command's options and examples.",
    )
    parser.add_argument("--version", action="version", version=f"imageae {_version()}")
    # Not required here: main() says "a COMMAND is required" only after naming any unknown flag.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = commands.add_parser("train", help="train or fine-tune a model on your own images",
                            description="Train or fine-tune a model.")
    train = p.add_subparsers(dest="family", metavar="MODEL")  # required: checked in main()
    handlers = {}
    for name in JOBS if jobs is None else jobs:
        handlers.update(importlib.import_module(name).register(commands, train))
    _list_last(commands, "train")
    return parser, handlers


def _list_last(commands, name):
    """List ``name`` last among the commands (in --help and in "choose from" messages): 'train'
    had to exist before the jobs added their models to it, but reads best after the jobs."""
    pseudo = [action for action in commands._choices_actions if action.dest == name]
    for action in pseudo:
        commands._choices_actions.remove(action)
        commands._choices_actions.append(action)
    commands.choices[name] = commands.choices.pop(name)


def build_parser():
    """The ``imageae`` argument parser, with every job's subcommands."""
    return _assemble()[0]


def _version():
    from imageae import __version__

    return __version__


def _subcommand_parser(parser, args):
    """The (sub)parser of the deepest command given (imageae, imageae denoise, imageae train vae, ...)."""
    for dest in ("command", "family"):
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        if not actions or getattr(args, dest, None) is None:
            break
        parser = actions[0].choices[getattr(args, dest)]
    return parser


def _parse(parser, argv):
    """Parse like ``parse_args``, but an unknown flag is named by the command it was given to
    (not hidden behind "COMMAND required"), and a missing command is named with the choices."""
    args, extras = parser.parse_known_args(argv)
    deepest = _subcommand_parser(parser, args)
    if extras:
        deepest.error(f"unrecognized arguments: {' '.join(extras)} (see '{deepest.prog} --help')")
    actions = [a for a in deepest._actions if isinstance(a, argparse._SubParsersAction)]
    if actions:
        deepest.error(f"a {actions[0].metavar} is required, one of: {', '.join(actions[0].choices)} "
                      f"(see '{deepest.prog} --help')")
    return args


EXIT_TERMINATED = 143  # 128 + SIGTERM, as shells report it


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python next runs, so a job unwinds as it does on Ctrl-C."""


def _raise_terminated(signum, frame):
    raise Terminated()


@contextlib.contextmanager
def _sigterm_unwinds():
    """While a command runs, SIGTERM (``kill``, a scheduler's stop) unwinds it like Ctrl-C:
    queued writes are cancelled, the running one completes, no temporary file is left."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv=None):
    """Run the imageae command line; returns the exit code."""
    parser, handlers = _assemble()
    try:
        args = _parse(parser, argv)
    except SystemExit as exit_:
        return int(exit_.code or 0)
    from imageae.runtime import import_tensorflow

    import_tensorflow()
    command = f"train {args.family}" if args.command == "train" else args.command
    try:
        with _sigterm_unwinds():
            return handlers[command](args)
    except KeyboardInterrupt as stop:
        how = "terminated" if isinstance(stop, Terminated) else "interrupted"
        print(f"{how}; outputs written so far are complete, no partial files were left", file=sys.stderr)
        return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED
    except (ValueError, OSError, RuntimeError, TypeError, LookupError) as error:
        # Whole-run problems (bad options, missing inputs, an output folder that cannot be made,
        # a model that is not installed): one line naming the command, no traceback.
        message = str(error) if not isinstance(error, OSError) or not error.filename else \
            f"{error.strerror or error}: {error.filename}"
        print(f"imageae {args.command}: error: {message}", file=sys.stderr)
        return EXIT_USAGE


def main_exit():
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    main_exit()
