"""`comp auto --time DURATION`: measure, plan, train and ensemble within a time budget (Workspace.auto)."""

from __future__ import annotations

from comp.cli.common import add_data_options, global_parent, workspace_from


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "auto", parents=[global_parent("workdir", "backend", "quiet")],
        help="the best leaderboard CSV this machine can make in a time budget",
        description="Measure this machine, plan models, epochs, folds and full-data fits so that everything "
                    "(decoding, training, TTA, ensemble) ends within --time, print the plan, run it, write the "
                    "CSV into submissions/. Interrupted, the same command continues the plan.")
    parser.add_argument("--time", required=True, help="the budget: 90s, 10m, 1h, 1h30m")
    parser.add_argument("--out", help="CSV name under submissions/ (default: auto-<budget>.csv)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    add_data_options(parser, limit=False)
    parser.set_defaults(func=run)


def run(args) -> int:
    workspace_from(args).auto(args.time, out=args.out, force=args.force, started_at=getattr(args, "started", None))
    return 0
