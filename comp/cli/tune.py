"""`comp tune`: an Optuna search over the run config (Workspace.tune)."""

from __future__ import annotations

from comp.stages.tune import DEFAULT_TRIALS
from comp.stages.tune.storage import GRACE_FACTOR, HEARTBEAT_SECONDS
from comp.cli.common import add_config_options, add_data_options, config_overrides, global_parent, workspace_from


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "tune", parents=[global_parent("workdir", "seed", "backend", "quiet")],
        help="Optuna search over the run config; best trial -> folds/<study>/best.json",
        description="Search the run config with Optuna. Flags and --config fix the base config (as for "
                    "comp train); a searched parameter given as a flag is fixed instead of searched. "
                    "Rerunning the same command continues the study.")
    add_data_options(parser)
    add_config_options(parser)
    group = parser.add_argument_group("search")
    group.add_argument("--trials", type=int, metavar="N", default=DEFAULT_TRIALS,
                       help=f"trials this process runs (default {DEFAULT_TRIALS}); 0 = only report the study")
    group.add_argument("--timeout", type=float, metavar="SECONDS", help="start no new trial after SECONDS")
    group.add_argument("--cv-folds", type=int, metavar="K", default=1,
                       help="score = mean validation accuracy over the first K folds (default 1: fold 0 only)")
    group.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                       help="stop trials that are behind (default: median)")
    group.add_argument("--space", metavar="FILE",
                       help='JSON, TOML or YAML: {"lr": {"low": 1e-4, "high": 1e-2, "log": true}, '
                            '"batch_size": {"choices": [64, 128]}, "dropout": 0.3 (fixed), '
                            '"mixup": null (not searched)}')
    group.add_argument("--show-space", action="store_true", help="print the search space and exit")
    group.add_argument("--storage", metavar="URL",
                       help="database URL or .db path (default: <workdir>/folds/optuna.db); "
                            "postgresql://user:pass@host/db lets workers on many machines share a study")
    group.add_argument("--study", metavar="NAME", help="study name (default: tune-<model>)")
    group.add_argument("--heartbeat", type=int, metavar="SECONDS", default=HEARTBEAT_SECONDS,
                       help=f"seconds between a trial's heartbeats (default {HEARTBEAT_SECONDS}); a trial silent for "
                            f"{GRACE_FACTOR} beats is taken for killed and retried")
    parser.set_defaults(func=run)


def run(args) -> int:
    workspace = workspace_from(args)
    overrides = config_overrides(args)
    if args.show_space:
        from comp.stages.tune import prepare_search
        from comp.stages.tune.space import print_space

        print_space(prepare_search(workspace, args.config, overrides, args.cv_folds, args.space).space)
        return 0
    workspace.tune(args.config, trials=args.trials, timeout=args.timeout, cv_folds=args.cv_folds,
                   k=overrides.pop("folds", None), pruner=args.pruner, space=args.space, storage=args.storage,
                   study=args.study, heartbeat=args.heartbeat, **overrides)
    return 0
