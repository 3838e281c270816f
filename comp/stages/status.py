"""`comp status`: who trains what, per run and unit (fold, full-data fit), from the claims (comp.store.claims).

A unit is done when its metrics.json is in this workdir (or, with a claims database, when a worker
elsewhere marked it done: its owner says where), training by a worker (host:pid:token, since when,
its last heartbeat), stale (its worker stopped heartbeating: the next worker takes it over), or free.
"""

from __future__ import annotations

from comp.core.console import console, info
from comp.store.claims import DONE, FREE, Holder
from comp.store.runs import all_runs, fold_done

COLUMNS = ["run", "unit", "index", "state", "owner", "since", "heartbeat", "silent_s"]


def run_units(run) -> list[tuple[str, int]]:
    """A run's folds, then the full-data fits it has begun (full/seed<i>)."""
    seeds = sorted(int(p.name[4:]) for p in (run.path / "full").glob("seed*") if p.name[4:].isdigit())
    return [("fold", k) for k in run.folds] + [("seed", s) for s in seeds]


def unit_status(workspace, storage: str | None = None):
    """Every unit of the workdir's runs and of the claims database, as a DataFrame (Workspace.status)."""
    import pandas as pd

    from comp.stages.fanout import open_claims, unit_dir

    claims = open_claims(workspace, storage)
    now = claims.now()
    held = {(h.run, h.unit, h.index): h for h in claims.holders()}
    rows = []
    for run in all_runs(workspace):
        for unit, index in run_units(run):
            claimed = held.pop((run.path.name, unit, index), None)
            if fold_done(unit_dir(run.path, unit, index)):
                rows.append(Holder(run.path.name, unit, index, DONE, claimed.owner if claimed else ""))
            else:
                rows.append(claimed or Holder(run.path.name, unit, index, FREE))
    rows += held.values()  # claimed in the database, not (yet) in this workdir
    frame = pd.DataFrame([{"run": h.run, "unit": h.unit, "index": h.index, "state": h.state, "owner": h.owner,
                           "since": h.since, "heartbeat": h.heartbeat,
                           "silent_s": (now - h.heartbeat).total_seconds() if h.heartbeat and h.state != DONE
                           else None} for h in rows], columns=COLUMNS)
    frame.attrs["claims"] = claims.where
    return frame.sort_values(["run", "unit", "index"], kind="stable").reset_index(drop=True)


def print_status(frame) -> None:
    from rich.table import Table

    if frame.empty:
        info(f"no runs in this workdir and no claims in {frame.attrs.get('claims', 'the claims')}")
        return
    table = Table(title=f"who trains what ({frame.attrs.get('claims', '')})")
    for column in ("run", "unit", "state", "owner", "since (UTC)", "last heartbeat"):
        table.add_column(column)
    for row in frame.itertuples():
        since = row.since.strftime("%Y-%m-%d %H:%M:%S") if row.since is not None and row.state != DONE else ""
        beat = f"{row.silent_s:.0f}s ago" if row.silent_s is not None and row.silent_s == row.silent_s else ""
        table.add_row(row.run, f"{row.unit} {row.index}", row.state, row.owner or "", since, beat)
    console.print(table)
