"""`comp status`: who trains which fold of which run (Workspace.status)."""

from __future__ import annotations

from comp.cli.common import global_parent, workspace_from


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "status", parents=[global_parent("workdir", "quiet")],
        help="who trains what: per run and fold, done / training (owner, since, heartbeat) / free",
        description="Per run and fold (and full-data fit): done, training (by which worker, since when, "
                    "its last heartbeat), stale (its worker went silent; the next worker takes it over) or "
                    "free; from the lock files in the workdir, or the claims table of --storage.")
    parser.add_argument("--storage", metavar="URL",
                        help="the database the workers were given (comp train --storage); default: the "
                             "workdir's lock files")
    parser.set_defaults(func=run, needs_keras=False)


def run(args) -> int:
    from comp.stages.status import print_status

    print_status(workspace_from(args).status(args.storage))
    return 0
