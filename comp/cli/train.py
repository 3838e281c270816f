"""`comp train`: K-fold training of one run config (Workspace.train)."""

from __future__ import annotations

import shlex
import sys
import time

from comp.core.console import console, info
from comp.store.claims import GRACE_FACTOR, HEARTBEAT_SECONDS
from comp.core.errors import CompError
from comp.cli.common import add_config_options, add_data_options, config_overrides, global_parent, workspace_from


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", parents=[global_parent("workdir", "seed", "backend", "quiet")],
        help="K-fold training: OOF and test predictions",
        description="Train one run config on K stratified folds: every fold's model predicts its validation rows "
                    "(out-of-fold) and the test set. Resumable: rerun the same command after an interruption. "
                    "Without --config, --model or --preset, trains the newest tune result on this data.")
    add_data_options(parser)
    add_config_options(parser)
    parser.add_argument("--fold", default="all", help="all | 0 | 0,2 (default: all)")
    parser.add_argument("--force", action="store_true", help="retrain the chosen folds even if finished")
    parser.add_argument("--full", action="store_true",
                        help="train on every train row, no holdout (full-data fits; test predictions only): "
                             "comp ensemble submits them, scored and weighted by this run's folds")
    parser.add_argument("--seeds", type=int, default=1, help="with --full: how many full-data fits (default: 1)")
    parser.add_argument("--resplit", action="store_true", help="write a new folds/folds.csv for this data")
    group = parser.add_argument_group("several workers on one run (each fold trained once)")
    group.add_argument("--storage", metavar="URL",
                       help="claim folds in this database (as comp tune --storage: postgresql://user:pass@host/db "
                            "for workers on many machines, or a SQLite path); default: lock files in the workdir")
    group.add_argument("--heartbeat", type=float, metavar="SECONDS", default=HEARTBEAT_SECONDS,
                       help=f"seconds between a training worker's heartbeats (default {HEARTBEAT_SECONDS}); a fold "
                            f"whose worker is silent for {GRACE_FACTOR} beats is taken over")
    parser.add_argument("--list-models", action="store_true", help="list the model zoo and exit")
    parser.add_argument("--list-recipes", action="store_true", help="list the bundled recipes and exit")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.list_models:
        from comp.nets.models import MODELS

        for name, spec in MODELS.items():
            console.print(f"[bold]{name:<11}[/bold] {spec.summary}")
            console.print(f"{'':<11} sizes: {spec.sizes}")
        return 0
    if args.list_recipes:
        from comp.config.run_config import recipe_names

        for name in recipe_names():
            console.print(name)
        return 0
    started = time.time()
    if args.seeds < 1:
        raise CompError(f"--seeds {args.seeds}: give 1 or more")
    from comp.stages.train import NoKfoldTwin

    overrides = config_overrides(args)
    try:
        _train(args, overrides)
    except NoKfoldTwin as err:
        raise CompError(f"{err.message} {twin_command(args)}") from None
    info(f"done in {time.time() - started:.0f}s")
    return 0


def twin_command(args) -> str:
    """The command line that trains the folds of the run a `--full` was asked of: the same without --full/--seeds."""
    argv, kept, skip = list(getattr(args, "argv", None) or sys.argv[1:]), [], False
    for item in argv:
        if skip:
            skip = False
        elif item == "--full" or item.startswith("--seeds="):
            continue
        elif item == "--seeds":
            skip = True
        else:
            kept.append(item)
    return "comp " + shlex.join(kept)


def _train(args, overrides: dict) -> None:
    workspace_from(args).train(args.config, folds=args.fold, k=overrides.pop("folds", None), force=args.force,
                               resplit=args.resplit, preset=args.preset, full=args.seeds if args.full else 0,
                               storage=args.storage, heartbeat=args.heartbeat, **overrides)
