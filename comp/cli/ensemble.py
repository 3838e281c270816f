"""`comp ensemble` (Workspace.ensemble) and `comp score` (Workspace.score)."""

from __future__ import annotations

from comp.core.console import info
from comp.stages.ensemble import METHODS
from comp.config.tta_policy import AVERAGES, DEFAULT_AVERAGE
from comp.cli.common import add_data_options, add_metric_option, global_parent, workspace_from


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "ensemble", parents=[global_parent("workdir", "quiet")],
        help="blend finished runs into a leaderboard CSV (scored on OOF rows)",
        description="Blend finished runs into a leaderboard CSV in the shape of sample_submission.csv, scored "
                    "and weighted on their out-of-fold predictions; logged in submissions/index.csv.")
    parser.add_argument("--runs", help="comma-separated run names under folds/ or paths (e.g. studies/x), or all "
                                       "(default: every finished run that fits the data, split and rows)")
    parser.add_argument("--out", help="CSV path; a bare name lands in submissions/ (default: ensemble-<time>.csv)")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="how runs are combined (default: auto = mean or fitted weights, "
                             "whichever scores better on held-out OOF rows)")
    parser.add_argument("--tta", help="use every run's predictions with this TTA policy (default: per run, its own "
                                      "policy or none, whichever scores better on its OOF rows)")
    parser.add_argument("--tta-average", choices=AVERAGES, default=DEFAULT_AVERAGE,
                        help=f"which averaged TTA predictions to use (default: {DEFAULT_AVERAGE})")
    parser.add_argument("--force", action="store_true", help="replace an existing --out file")
    parser.add_argument("--allow-pretrained", action="store_true",
                        help="accept runs made from pretrained weights (forbidden in these competitions)")
    add_data_options(parser)  # --limit N: only runs trained with --limit N (the same rows)
    parser.set_defaults(func=run, needs_keras=False)

    score = subparsers.add_parser("score", parents=[global_parent("workdir", "quiet")],
                                  help="a submission CSV scored against an answers CSV: the metric and accuracy")
    score.add_argument("submission", help="the submission CSV (id,target)")
    score.add_argument("--answers", help="answers CSV (id,target) (default: answers.csv in the data folder)")
    score.add_argument("--data", help="data folder holding answers.csv (default: the workdir's)")
    add_metric_option(score)
    score.set_defaults(func=run_score, needs_keras=False)


def run_names(text: str | None) -> list[str] | None:
    """--runs a,b -> the names; absent or `all` -> None (every run that fits)."""
    if text in (None, "", "all"):
        return None
    return [name.strip() for name in text.split(",") if name.strip()]


def run(args) -> int:
    workspace_from(args).ensemble(run_names(args.runs), out=args.out, method=args.method, tta=args.tta,
                                  average=args.tta_average, force=args.force,
                                  allow_pretrained=args.allow_pretrained, limit=args.limit)
    return 0


def run_score(args) -> int:
    from pathlib import Path

    workspace = workspace_from(args)
    result = workspace.score(Path(args.submission).expanduser(), args.answers)
    named = "" if result["metric"] == "accuracy" else f"{result['metric']} [bold]{result['value']:.4f}[/bold], "
    info(f"{args.submission}: {named}accuracy {'[bold]' if not named else ''}{result['accuracy']:.4f}"
         f"{'[/bold]' if not named else ''} ({result['correct']:,} of {result['rows']:,} correct, "
         f"answers {result['answers']})")
    return 0
