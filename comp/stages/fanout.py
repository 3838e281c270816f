"""Fan-out: several `comp train --fold all` workers on one run train each unit (fold, full-data fit) once.

Every worker walks the run's units: one finished (its metrics.json) is skipped; a free one is claimed
(comp.store.claims: lock files, or the --storage database), trained while a thread heartbeats, and
marked done; one another worker holds is left for later. When only held units are left, the
worker waits for them: done, they are skipped; given up or gone silent (their worker died), it
claims them and resumes them from their checkpoints. So every worker ends with every unit done,
and the OOF file and summary are written by one of them (`summary_lock`), complete.

Workers sharing only a database (each its own workdir) still train each unit once; a unit done
on another machine lives in that machine's workdir and is named at the end.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Callable

from comp.core.console import info, warn
from comp.core.fileio import read_json, remove_tree
from comp.store.claims import DONE, HEARTBEAT_SECONDS, STALE, Claims, DbClaims, FileClaims, heartbeating, lock_path
from comp.store.runs import fold_done

POLL_SECONDS = 5  # how often a worker with nothing left to claim looks at the units others hold


def open_claims(workspace, storage: str | None = None, split_hash: str = "",
                heartbeat: float | None = None) -> Claims:
    """The claims of `workspace`'s runs: in the `storage` database (a URL or a SQLite path, as for comp
    tune) when given, else lock files in the workdir."""
    heartbeat = heartbeat or HEARTBEAT_SECONDS
    if not storage:
        return FileClaims(workspace.folds, heartbeat)
    from comp.stages.tune.storage import display_url, storage_url

    url = storage_url(storage, workspace)
    return DbClaims(url, split_hash, heartbeat, display_url(storage))  # as given, its password hidden


def unit_dir(run_dir: Path, unit: str, index: int) -> Path:
    """Where one of a run's models lives: fold k of the split, or full-data fit (seed) i."""
    return run_dir / f"fold{index}" if unit == "fold" else run_dir / "full" / f"seed{index}"


def finished(fold_dir: Path, since: dt.datetime | None = None) -> bool:
    """Whether the unit is done (and, with `since` (--force), done again after that moment)."""
    if not fold_done(fold_dir):
        return False
    return since is None or dt.datetime.fromtimestamp((fold_dir / "metrics.json").stat().st_mtime,
                                                      dt.timezone.utc) >= since


def train_units(claims: Claims, run_dir: Path, units: list[int], force: bool, train: Callable[[int], dict],
                unit: str, line: Callable[[int, dict], str]) -> list[int]:
    """Train the `units` of the run at `run_dir` that no other worker trains (see the module
    docstring); `line(index, result)` says a trained one. Returns the units whose child process
    died (see comp.core.isolate)."""
    started = claims.now() if force else None  # --force: what other workers redo after this moment counts
    pending = []
    for index in units:
        folder = unit_dir(run_dir, unit, index)
        if fold_done(folder) and not force:
            info(f"{unit} {index}: finished earlier ({read_json(folder / 'metrics.json')['val_accuracy']:.4f}), "
                 "skipped")
        else:
            pending.append(index)
    failed, elsewhere, said = [], {}, set()
    while pending:
        trained = False
        for index in list(pending):
            folder = unit_dir(run_dir, unit, index)
            if finished(folder, started):
                info(f"{unit} {index}: finished by another worker")
                pending.remove(index)
                continue
            claim = claims.claim(run_dir.name, unit, index, redo_before=started)
            if claim is None:
                held = claims.holder(run_dir.name, unit, index)
                if held.state == DONE:  # by a worker with another workdir (a shared database)
                    elsewhere[index] = held.owner
                    pending.remove(index)
                elif index not in said and held.state != STALE:
                    info(f"{unit} {index}: {held.owner or 'another worker'} is training it; this worker trains the "
                         "others and then waits for it")
                said.add(index)
                continue
            pending.remove(index)
            trained = True
            failed += train_claimed(claims, claim, run_dir, unit, index, force, started, train, line)
        if pending and not trained:
            time.sleep(min(POLL_SECONDS, claims.heartbeat_seconds))
    if elsewhere:
        names = ", ".join(f"{index} ({owner})" for index, owner in sorted(elsewhere.items()))
        info(f"{unit}(s) {names}: trained by other workers into their own workdirs; copy those "
             f"{unit} folders into {run_dir} and rerun this command to write the OOF file here")
    return failed


def train_claimed(claims: Claims, claim, run_dir: Path, unit: str, index: int, force: bool,
                  started: dt.datetime | None, train: Callable[[int], dict],
                  line: Callable[[int, dict], str]) -> list[int]:
    """Train one claimed unit with heartbeats, then mark it done; [index] if its child process died."""
    from comp.core.isolate import ChildDied

    folder = unit_dir(run_dir, unit, index)
    try:
        with heartbeating(claim, claims.heartbeat_seconds):  # stopped before the claim is finished or released
            if finished(folder, started):  # finished by another worker between the look and the claim
                result = None
            else:
                if force and folder.exists():
                    remove_tree(folder, inside=run_dir)
                result = train(index)
    except ChildDied as died:
        claim.release()  # another worker (or a rerun) retries it
        warn(f"{died}; the others go on, rerun the same command to retry it")
        return [index]
    except BaseException:
        claim.release()
        raise
    claim.finish()
    if result is not None:
        info(line(index, result))
    return []


def summary_lock(workspace, run_name: str):
    """Held while a worker writes the run's OOF file and summary: the second worker then finds them
    written and up to date instead of writing them again."""
    from comp.store.claims import waiting_for

    return waiting_for(lock_path(workspace.folds, run_name, 0, "summary"))


def summary_current(run_dir: Path, folds: list[int], metric: str) -> bool:
    """Whether summary.json (under `metric`) was written after every file the OOF file is made of
    (each fold's metrics.json and validation probabilities), by another worker: a fold file changed
    since (retrained, or damaged) makes it stale."""
    summary = run_dir / "summary.json"
    if not (summary.exists() and (run_dir / "oof_probs.npy").exists() and (run_dir / "oof_rows.npy").exists()):
        return False
    sources = [path for f in folds for path in (run_dir / f"fold{f}").glob("*") if path.name == "metrics.json"
               or (path.name.startswith("val_probs") and path.suffix == ".npy")]
    newest = max(path.stat().st_mtime for path in sources)
    try:
        return summary.stat().st_mtime >= newest and read_json(summary).get("metric") == metric
    except ValueError:
        return False
