"""Process isolation (comp.core.isolate): a fold or trial runs as a function call in a child interpreter.

The child imports the parent's `comp`, never one in the folder it was started from; a child killed
by a signal is named with it, and the folds or trials after it go on.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from comp.core.errors import CompError
from comp.core.isolate import ChildDied, call_in_child, tell_parent

from .conftest import make_competition

ISOLATED = {k: v for k, v in os.environ.items() if k != "COMP_NO_ISOLATE"}  # the CLI's default: children on TF


# Module-level functions: the child imports them by name, as it imports comp's fold and trial tasks.
def add(a, b):
    tell_parent("started")
    return a + b


def refuse():
    raise CompError("data/x.png: broken; fix it")


def kill_self():
    os.kill(os.getpid(), signal.SIGKILL)


def crash():
    raise ValueError("a bug")


def test_a_child_returns_its_result_and_its_messages():
    messages = []
    assert call_in_child(add, 2, 3, what="sum", on_message=messages.append) == 5
    assert messages == ["started"]


def test_a_child_s_error_is_raised_here_as_one_line():
    with pytest.raises(CompError, match=r"^data/x.png: broken; fix it$"):
        call_in_child(refuse, what="task")


def test_a_killed_child_is_named_with_its_signal():
    with pytest.raises(ChildDied, match="fold 3: killed by SIGKILL"):
        call_in_child(kill_self, what="fold 3")
    with pytest.raises(ChildDied, match="trial: failed: ValueError: a bug"):
        call_in_child(crash, what="trial")


def comp_command() -> list[str]:
    """The installed `comp` console script (as a user runs it), else `python -m comp`."""
    script = Path(sys.executable).parent / "comp"
    return [str(script)] if script.exists() else [sys.executable, "-m", "comp"]


@pytest.mark.slow
def test_children_ignore_a_comp_folder_or_module_where_they_start(tmp_path):
    data = make_competition(tmp_path / "d", per_class=6)
    cwd = tmp_path / "cwd"
    (cwd / "comp").mkdir(parents=True)  # an empty folder named like the package
    (cwd / "comp.py").write_text(f"open({str(tmp_path / 'hijacked')!r}, 'w').write('ran')\n")
    if not (Path(sys.executable).parent / "comp").exists():
        pytest.skip("no installed comp console script (python -m comp would import ./comp.py by design)")
    result = subprocess.run([*comp_command(), "train", "--data", str(data), "--workdir", str(tmp_path / "w"),
                             "--model", "baseline", "--width", "0.25", "--epochs", "1", "--folds", "2", "--quiet"],
                            cwd=cwd, env=ISOLATED, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not (tmp_path / "hijacked").exists()
    assert (tmp_path / "w" / "folds").glob("*/oof_probs.npy")
    assert len(list((tmp_path / "w" / "folds").glob("*/fold*/metrics.json"))) == 2


def children_of(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def kill_child_when(proc: subprocess.Popen, ready, what: str) -> None:
    deadline = time.time() + 300
    while not ready():
        if proc.poll() is not None:
            pytest.fail(f"the command ended before its child could be killed: {proc.stdout.read()[-2000:]}")
        assert time.time() < deadline, f"{what} never started"
        time.sleep(0.1)
    children = children_of(proc.pid)
    assert children, "no child process"
    for child in children:
        os.kill(child, signal.SIGKILL)


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_fold_is_named_and_the_other_folds_go_on(tmp_path):
    data = make_competition(tmp_path / "d", per_class=30)
    work = tmp_path / "w"
    proc = subprocess.Popen([sys.executable, "-m", "comp", "train", "--data", str(data), "--workdir", str(work),
                             "--model", "baseline", "--width", "0.25", "--epochs", "30", "--folds", "2",
                             "--name", "r"], env=ISOLATED, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    kill_child_when(proc, lambda: (work / "folds" / "r" / "fold0" / "history.csv").exists(), "fold 0")
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 2, out[-2000:]
    assert "fold 0: killed by SIGKILL" in out and "the others go on" in out
    assert (work / "folds" / "r" / "fold1" / "metrics.json").exists()  # fold 1 still trained
    assert not (work / "folds" / "r" / "fold0" / "metrics.json").exists()
    assert "fold(s) 0 of run r died" in out


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_killed_trial_is_marked_failed_and_the_study_goes_on(tmp_path):
    data = make_competition(tmp_path / "d", per_class=30)
    work = tmp_path / "w"
    db = work / "folds" / "optuna.db"
    proc = subprocess.Popen([sys.executable, "-m", "comp", "tune", "--data", str(data), "--workdir", str(work),
                             "--model", "baseline", "--width", "0.25", "--epochs", "30", "--trials", "2",
                             "--pruner", "none", "--folds", "2"],
                            env=ISOLATED, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def training() -> bool:
        if not db.exists():
            return False
        try:
            trials = optuna.load_study(study_name="tune-baseline", storage=f"sqlite:///{db}").trials
        except Exception:  # noqa: BLE001 -- the study or its tables do not exist yet
            return False
        return any(t.state == TrialState.RUNNING and "config" in t.user_attrs for t in trials)

    kill_child_when(proc, training, "trial 0")
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out[-2000:]
    assert "trial 0: killed by SIGKILL" in out and "marked failed" in out
    trials = optuna.load_study(study_name="tune-baseline", storage=f"sqlite:///{db}").trials
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    assert "SIGKILL" in trials[0].user_attrs["error"]
