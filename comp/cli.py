"""The `comp` command line: a thin layer that parses arguments and calls one stage function.

Each stage module exposes `register(subparsers, parents)`, adding its command(s) with
`set_defaults(func=...)`. Stage modules import keras only inside their functions, so
`--backend` can take effect before the first import.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from . import __version__
from .console import console, set_quiet
from .context import add_global_options, import_keras, set_backend
from .errors import CompError, one_line
from .isolate import INTERRUPTED_EXIT, die_with_parent, is_worker

# One module per stage; each registers its own commands.
COMMAND_MODULES = ["comp.data_cli", "comp.train", "comp.tune", "comp.predict", "comp.ensemble",
                   "comp.report", "comp.transfer"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="comp",
        description="Win image-classification competitions without pretrained weights: "
                    "comp tune -> comp train --fold all -> comp ensemble --out submission.csv",
    )
    parser.add_argument("--version", action="version", version=f"comp {__version__}")
    add_global_options(parser)
    globals_parent = argparse.ArgumentParser(add_help=False)
    add_global_options(globals_parent, suppress=True)
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:  # a stage not written yet; the others still work
                continue
            raise
        module.register(subparsers, [globals_parent])
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # for stages that rerun a part in a child
    if is_worker():
        die_with_parent()
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    set_quiet(args.quiet)
    # --preset gpu means the JAX backend unless one was named (the GPU machine has no TensorFlow).
    set_backend(args.backend or ("jax" if getattr(args, "preset", None) == "gpu" else None))
    if getattr(args, "needs_keras", True):
        import_keras()
    try:
        result = args.func(args)
    except CompError as err:
        console.quiet = False
        print(f"error: {one_line(err)}", file=sys.stderr)  # one line, whatever the message embeds
        return 2
    except KeyboardInterrupt:
        print("interrupted: everything written so far is consistent; rerun the same command to resume",
              file=sys.stderr)
        return INTERRUPTED_EXIT
    return result if isinstance(result, int) else 0


if __name__ == "__main__":
    sys.exit(main())
