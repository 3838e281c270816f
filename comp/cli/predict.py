"""`comp predict`: re-predict a finished run with a TTA policy, or label new images (Workspace.predict/label)."""

from __future__ import annotations

from comp.core.console import info
from comp.core.errors import CompError
from comp.config.tta_policy import AVERAGES, DEFAULT_AVERAGE
from comp.cli.common import add_metric_option, global_parent, workspace_from


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "predict", parents=[global_parent("workdir", "backend", "quiet")],
        help="re-predict a finished run with a TTA policy (val, test, OOF), or label new images",
        description="Re-predict every fold of a finished run with a TTA policy and measure its gain on the "
                    "out-of-fold rows, or (--images) label a folder of new images. Without --run: the best "
                    "finished run.")
    parser.add_argument("--run", help="run name under folds/, or a run folder path (default: the best finished run)")
    parser.add_argument("--tta", help="none | flip | flip-shift | a list like flip,shift=1 (default: the run's)")
    parser.add_argument("--tta-average", choices=AVERAGES, default=DEFAULT_AVERAGE,
                        help=f"average the views' probabilities or logits (default: {DEFAULT_AVERAGE})")
    parser.add_argument("--images", help="label the image files in this folder instead "
                                         "(a CSV of file,label,confidence)")
    parser.add_argument("--out", help="with --images: CSV path (default: predictions/<run>-<folder>.csv)")
    parser.add_argument("--data", help="competition folder (default: the one the run was trained on)")
    add_metric_option(parser)
    parser.add_argument("--skip-bad", action="store_true", help="skip damaged images instead of stopping")
    parser.set_defaults(func=run)


def run(args) -> int:
    from comp.stages.predict import best_run
    from comp.store.runs import run_names

    workspace = workspace_from(args)
    if args.out and not args.images:
        raise CompError("--out goes with --images; `comp predict --run R` writes into the run folder")
    if args.run:
        chosen = workspace.run(args.run)
    else:
        chosen = best_run(workspace)
        others = [name for name in run_names(workspace) if name != chosen.name]
        info(f"no --run given: using the best finished run, {chosen.name}"
             + (f" (others: {', '.join(others)})" if others else ""))
    if args.images:
        workspace.label(chosen, args.images, args.out, args.tta, args.tta_average)
    else:
        workspace.predict(chosen, args.tta, args.tta_average)
    return 0
