"""Fan-out: several `comp train --fold all` workers on one run train each fold once.

Workers are real `comp train` subprocesses, as on several machines: on one workdir (lock files),
against one PostgreSQL database (each its own workdir), and one killed mid-fold (SIGKILL) whose
fold the other takes over and finishes from its checkpoint. The claims themselves are checked on
SQLite and lock files in-process, in a second or two.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from comp.cli import main
from comp.core.fileio import read_json, write_json
from comp.stages.fanout import train_units
from comp.stages.tune.storage import with_driver
from comp.store.claims import CLOCK_SLACK, DONE, FREE, GRACE_FACTOR, STALE, TRAINING, DbClaims, FileClaims
from comp.workspace import Workspace

from .conftest import REPO, make_competition

sys.path.insert(0, str(REPO / "tests"))  # tests/pg.py, the PostgreSQL helper, whatever pytest's import mode
import pg  # noqa: E402

FOLDS = 5
TINY = ["--model", "baseline", "--width", "0.25", "--batch-size", "16", "--folds", str(FOLDS), "--name", "r"]
TRAINED = re.compile(r"^fold (\d+): val accuracy", re.MULTILINE)  # the line a worker prints for a fold it trained
WAIT = 600  # seconds: generous, for a loaded 2-core machine; the polls end as soon as the files appear


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    return make_competition(tmp_path_factory.mktemp("fanout") / "data", per_class=20)


def worker(work: Path, data: Path, *extra: str) -> subprocess.Popen:
    """A `comp train --fold all` process, as a user (or a second machine) would start it."""
    command = [sys.executable, "-m", "comp", "train", "--data", str(data), "--workdir", str(work), *TINY,
               "--fold", "all", *extra]
    # Unbuffered: a worker killed with SIGKILL has said every fold it finished.
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def finish(procs: list[subprocess.Popen]) -> list[str]:
    outputs = [proc.communicate(timeout=1800)[0] for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * len(procs), outputs
    assert "Traceback" not in "".join(outputs)
    return outputs


def trained_folds(outputs: list[str]) -> Counter:
    return Counter(int(k) for text in outputs for k in TRAINED.findall(text))


def warm_cache(work: Path, data: Path) -> None:
    """Decode the images once before the workers start (each would otherwise decode them itself)."""
    assert main(["data", "check", "--data", str(data), "--workdir", str(work), "--quiet"]) == 0


@pytest.fixture
def postgres():
    server, why = pg.start()
    if server is None:
        pytest.skip(f"cannot start a PostgreSQL server: {why}")
    yield server
    server.stop()


# -- the claims, in-process --------------------------------------------------------------------


def test_file_claims_hold_a_unit_until_released(tmp_path):
    claims = FileClaims(tmp_path / "folds")
    claim = claims.claim("r", "fold", 0)
    assert claim is not None and claims.claim("r", "fold", 0) is None  # a second worker cannot take it
    held = claims.holder("r", "fold", 0)
    assert held.state == TRAINING and held.owner.startswith(f"{socket.gethostname()}:{os.getpid()}:")
    assert [(h.run, h.unit, h.index) for h in claims.holders()] == [("r", "fold", 0)]
    claim.release()
    assert claims.holder("r", "fold", 0).state == FREE and claims.holders() == []
    assert claims.claim("r", "fold", 0) is not None


def test_db_claims_are_taken_over_when_their_owner_goes_silent(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'claims.db'}"
    mine, theirs = DbClaims(url, "split", heartbeat_seconds=0.5), DbClaims(url, "split", heartbeat_seconds=0.5)
    theirs.owner = "elsewhere:1:beef"  # a worker on another machine
    claim = mine.claim("r", "fold", 0)
    assert claim is not None and theirs.claim("r", "fold", 0) is None
    claim.beat()
    assert theirs.holder("r", "fold", 0).state == TRAINING
    assert theirs.holder("r", "fold", 0).owner == mine.owner
    assert DbClaims(url, "other split").claim("r", "fold", 0) is not None  # a run name reused on another split
    time.sleep(GRACE_FACTOR * 0.5 + CLOCK_SLACK + 1.5)  # silent past the grace (SQLite counts whole seconds)
    assert theirs.holder("r", "fold", 0).state == STALE
    taken = theirs.claim("r", "fold", 0)
    assert taken is not None and "taking it over" in capsys.readouterr().out
    claim.beat()  # the silent owner wakes up: it is told, and it no longer holds the unit
    assert claim.lost and "another worker took it over" in capsys.readouterr().out
    taken.finish()
    assert mine.holder("r", "fold", 0).state == DONE and mine.claim("r", "fold", 0) is None
    # --force: a unit done before the worker started is claimed again, one done since is not.
    redone = mine.claim("r", "fold", 0, redo_before=mine.now() + dt.timedelta(seconds=5))
    assert redone is not None
    redone.finish()
    assert theirs.claim("r", "fold", 0, redo_before=theirs.now() - dt.timedelta(seconds=60)) is None


@pytest.mark.parametrize("storage,says", [("nosuchdb://x", "not a database URL"),
                                          ("postgresql://nobody@127.0.0.1:1/none", "cannot open it")])
def test_a_bad_storage_is_one_line_before_anything_is_written(tmp_path, storage, says, capsys):
    data = make_competition(tmp_path / "d", per_class=6)
    work = tmp_path / "w"
    assert main(["train", "--data", str(data), "--workdir", str(work), *TINY, "--epochs", "1",
                 "--storage", storage]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: --storage {storage.split('@')[0]}") and says in err and err.count("\n") == 1
    assert not (work / "folds" / "r").exists()


@pytest.mark.parametrize("store", ["files", "sqlite"])
@pytest.mark.parametrize("force", [False, True])
def test_workers_in_threads_train_each_unit_once(tmp_path, store, force):
    """The fold loop itself (comp.stages.fanout), with a stand-in for training: two workers at once
    train every unit once; with --force, the units finished before they started are retrained once."""
    run_dir = tmp_path / "folds" / "r"
    if force:  # a finished run, an hour old
        for k in range(FOLDS):
            write_json(run_dir / f"fold{k}" / "metrics.json", {"fold": k, "val_accuracy": 0.0})
            os.utime(run_dir / f"fold{k}" / "metrics.json", (time.time() - 3600,) * 2)
    trained, lock, together = [], threading.Lock(), threading.Barrier(2)

    def worker_thread(claims) -> None:
        def train(index: int) -> dict:
            with lock:
                trained.append(index)
            time.sleep(0.3)
            write_json(run_dir / f"fold{index}" / "metrics.json", {"fold": index, "val_accuracy": 1.0})
            return {}

        together.wait()  # started together: with --force, each redoes what was finished before it started
        assert train_units(claims, run_dir, list(range(FOLDS)), force, train, "fold", lambda i, r: f"{i} done") == []

    if store == "files":
        workers = [FileClaims(tmp_path / "folds", heartbeat_seconds=0.2) for _ in range(2)]
    else:
        workers = [DbClaims(f"sqlite:///{tmp_path / 'claims.db'}", "split", heartbeat_seconds=0.2) for _ in range(2)]
        for i, claims in enumerate(workers):
            claims.owner = f"w{i}:1:0000"  # as if two processes
    threads = [threading.Thread(target=worker_thread, args=(claims,)) for claims in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=WAIT)
    assert sorted(trained) == list(range(FOLDS))
    assert all(read_json(run_dir / f"fold{k}" / "metrics.json")["val_accuracy"] == 1.0 for k in range(FOLDS))


def test_status_of_a_workdir_without_runs(tmp_path, capsys):
    assert main(["status", "--workdir", str(tmp_path)]) == 0
    assert "no runs in this workdir" in capsys.readouterr().out


# -- workers ---------------------------------------------------------------------------------------


@pytest.mark.slow
def test_two_workers_on_one_workdir_train_each_fold_once(tmp_path, data_dir, capsys):
    work = tmp_path / "work"
    warm_cache(work, data_dir)
    outputs = finish([worker(work, data_dir, "--epochs", "2") for _ in range(2)])
    assert trained_folds(outputs) == Counter(range(FOLDS))  # every fold, each by one worker
    run = work / "folds" / "r"
    assert all(read_json(run / f"fold{k}" / "metrics.json")["fold"] == k for k in range(FOLDS))
    # Both end with the run complete; one wrote the OOF file and summary, the other kept them.
    assert all("CV accuracy" in text for text in outputs)
    assert sum("up to date (written after the last fold finished); kept" in text for text in outputs) == 1
    assert read_json(run / "summary.json")["rows"] == 60 and (run / "oof_probs.npy").exists()
    # comp status: every fold done; a full-data fit a worker holds shows as training, with its owner.
    claim = FileClaims(work / "folds").claim("r", "seed", 0)
    status = Workspace(work).status()
    assert status[status.unit == "fold"].state.tolist() == [DONE] * FOLDS
    (held,) = status[status.unit == "seed"].itertuples()
    assert held.state == TRAINING and held.owner.startswith(f"{socket.gethostname()}:{os.getpid()}:")
    claim.release()
    capsys.readouterr()
    assert main(["status", "--workdir", str(work)]) == 0
    assert re.search(r"r\s.*fold 4\s.*done", capsys.readouterr().out)


@pytest.mark.slow
def test_two_workers_on_one_postgresql_database_train_each_fold_once(tmp_path, data_dir, postgres):
    # Two workdirs, as on two machines: only the database is shared.
    works = [tmp_path / f"machine{i}" for i in range(2)]
    for work in works:
        warm_cache(work, data_dir)
    outputs = finish([worker(work, data_dir, "--epochs", "2", "--storage", postgres.url, "--heartbeat", "5")
                      for work in works])
    assert trained_folds(outputs) == Counter(range(FOLDS))
    mine = [{k for k in range(FOLDS) if (work / "folds" / "r" / f"fold{k}" / "metrics.json").exists()}
            for work in works]
    assert mine[0] | mine[1] == set(range(FOLDS)) and not mine[0] & mine[1]
    for work, text in zip(works, outputs):
        if len(mine[works.index(work)]) < FOLDS:  # the folds the other machine trained are named, with the fix
            assert "trained by other workers into their own workdirs" in text
    status = Workspace(works[0]).status(postgres.url)
    assert status.state.tolist() == [DONE] * FOLDS


@pytest.mark.slow
@pytest.mark.parametrize("store", ["files", "postgresql"])
def test_a_killed_workers_fold_is_finished_by_the_other(tmp_path, data_dir, store, request):
    """SIGKILL a worker mid-fold: the other worker takes its fold over (the lock is gone at once; a
    database claim once its heartbeat is stale) and resumes it from the dead worker's checkpoint."""
    extra = ["--epochs", "24", "--heartbeat", "2"]
    if store == "postgresql":
        extra += ["--storage", request.getfixturevalue("postgres").url]
    work = tmp_path / "work"
    warm_cache(work, data_dir)
    victim, survivor = worker(work, data_dir, *extra), worker(work, data_dir, *extra)
    run = work / "folds" / "r"
    deadline = time.time() + WAIT
    while (fold := fold_mid_training(run, victim.pid, store, extra)) is None:
        assert victim.poll() is None, f"the worker ended before it could be killed: {victim.communicate()[0]}"
        assert time.time() < deadline, "the worker never checkpointed a fold"
        time.sleep(0.2)
    victim.send_signal(signal.SIGKILL)  # mid-fold: no chance to release its claim
    killed_output = victim.communicate()[0]
    assert not (run / f"fold{fold}" / "metrics.json").exists()
    (output,) = finish([survivor])
    assert trained_folds([killed_output, output]) == Counter(range(FOLDS))  # each fold once, the killed one too
    assert re.search(rf"fold {fold}: resuming after epoch \d+", output)  # from the dead worker's checkpoint
    if store == "postgresql":
        assert re.search(rf"fold {fold} of run r: its worker \S+:{victim.pid}:\S+ has been silent", output)
    assert (run / "oof_probs.npy").exists() and read_json(run / "summary.json")["rows"] == 60


def fold_mid_training(run: Path, pid: int, store: str, extra: list[str]) -> int | None:
    """The fold worker `pid` holds that has a checkpoint and is not finished yet, else None."""
    if store == "files":
        claims = FileClaims(run.parent)
    else:
        claims = DbClaims(with_driver(extra[extra.index("--storage") + 1]), "")
    try:
        holders = claims.holders()
    finally:
        if store != "files":
            claims.close()
    for held in holders:
        folder = run / f"fold{held.index}"
        if (held.state == TRAINING and held.unit == "fold" and held.owner.split(":")[1] == str(pid)
                and (folder / "checkpoint" / "state.json").exists() and not (folder / "metrics.json").exists()):
            return held.index
    return None
