"""`comp report`: leaderboard of runs, confusion matrix and confident mistakes (Workspace.report)."""

from __future__ import annotations

from comp.stages.report import MISTAKES_SHOWN
from comp.cli.common import add_metric_option, global_parent, workspace_from


def register(subparsers) -> None:
    parser = subparsers.add_parser("report", parents=[global_parent("workdir", "quiet")],
                                   help="leaderboard of runs, confusion matrix and confident mistakes (PNG)",
                                   description="Every finished run as a leaderboard (CSV and table), and for the "
                                               "best run (or --run) a confusion matrix and its most confident "
                                               "out-of-fold mistakes. Reads run files only; predicts nothing.")
    parser.add_argument("--run", help="plot this run (name under folds/ or a path) instead of the best")
    parser.add_argument("--out", help="output folder (default: folds/report)")
    parser.add_argument("--mistakes", type=int, default=MISTAKES_SHOWN,
                        help=f"how many confident mistakes to show (default: {MISTAKES_SHOWN})")
    parser.add_argument("--data", help="competition folder (default: the one the runs were trained on)")
    add_metric_option(parser)
    parser.add_argument("--skip-bad", action="store_true", help="as given to comp train, if it was")
    parser.set_defaults(func=run, needs_keras=False)


def run(args) -> int:
    workspace_from(args).report(args.run, args.out, args.mistakes)
    return 0
