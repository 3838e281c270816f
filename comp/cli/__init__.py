"""The `comp` command line: a thin layer that parses arguments and calls the Python API.

Each command module here exposes `register(subparsers)`, adding its command(s) with
`set_defaults(func=...)`; the function turns `args` into typed values, calls a Workspace verb
or a stage function, and prints. Nothing outside this package sees an argparse Namespace.
Stage modules import keras only inside their functions, so `--backend` can take effect before
the first import.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import sys
import time

from comp.core.version import __version__
from comp.core.console import console, is_quiet, set_quiet
from comp.core.backend import import_keras, set_backend
from comp.core.errors import CompError, one_line
from comp.core.isolate import INTERRUPTED_EXIT
from comp.cli.common import add_global_options

# One module per command group; each registers its own commands.
COMMAND_MODULES = ["comp.cli.data", "comp.cli.train", "comp.cli.tune", "comp.cli.predict", "comp.cli.ensemble",
                   "comp.cli.report", "comp.cli.transfer", "comp.cli.auto", "comp.cli.status"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comp",
        description="Win image-classification competitions without pretrained weights: "
                    "comp tune -> comp train --fold all -> comp ensemble --out submission.csv",
    )
    parser.add_argument("--version", action="version", version=f"comp {__version__}")
    add_global_options(parser, ("workdir", "seed", "backend", "quiet"))
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def missing_backend_error(err: ModuleNotFoundError) -> CompError | None:
    """A Keras backend that is not installed, as one line naming what to install."""
    extras = {"jax": "jax", "jaxlib": "jax", "torch": "torch", "tensorflow": "tensorflow-cpu"}
    package = (err.name or "").split(".")[0]
    if package not in extras:
        return None
    return CompError(f"the {package} backend is not installed: pip install 'comp[{extras[package]}]' "
                     f"(or pip install {extras[package]}), or choose another --backend")


def main(argv: list[str] | None = None) -> int:
    started = time.time()  # before Keras is imported: comp auto counts that time in its budget
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # as typed: a refusal may quote it back
    args.started = started
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    was_quiet = is_quiet()  # restored at the end: main() called in-process (notebooks, tests) leaves no trace
    set_quiet(getattr(args, "quiet", False))
    try:
        # --preset gpu means the JAX backend unless one was named (the GPU machine has no TensorFlow).
        set_backend(getattr(args, "backend", None) or ("jax" if getattr(args, "preset", None) == "gpu" else None))
        if getattr(args, "needs_keras", True):
            try:
                import_keras()
            except ModuleNotFoundError as err:
                raise (missing_backend_error(err) or err) from None
        result = args.func(args)
    except CompError as err:
        console.quiet = False
        print(f"error: {one_line(err)}", file=sys.stderr)  # one line, whatever the message embeds
        return 2
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        # Every artifact is written to a temp file and renamed: what was finished is still whole.
        print(f"error: no space left on the device ({err.filename or 'a file being written'}); everything "
              "written before is intact; free some space and rerun the same command to continue", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything written so far is consistent; rerun the same command to resume",
              file=sys.stderr)
        return INTERRUPTED_EXIT
    finally:
        set_quiet(was_quiet)
    return result if isinstance(result, int) else 0


__all__ = ["build_parser", "main"]
