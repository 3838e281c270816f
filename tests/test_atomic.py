"""Atomic writes leave no temp behind: not on success, and not for long after a SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pandas as pd

from comp.core.fileio import atomic_path, save_csv

from .conftest import REPO

# A writer that stops inside atomic_path: it prints its temp path, then waits for a line on
# stdin (so the test controls how long it lives) and kills itself with SIGKILL when the line comes.
WRITER = """
import os, signal, sys
from comp.core.fileio import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half")
    print(tmp, flush=True)
    sys.stdin.readline()
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_csv_temp_is_hidden_and_not_a_csv(tmp_path):
    with atomic_path(tmp_path / "sub.csv") as tmp:
        assert tmp.name.startswith(".") and not tmp.name.endswith(".csv")
        assert str(os.getpid()) in tmp.name  # names its writer
        assert list(tmp_path.glob("*.csv")) == []
        tmp.write_text("id,target\n")
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]
    with atomic_path(tmp_path / "x.npy", suffix=".npy") as tmp:
        assert tmp.name.endswith(".npy")  # numpy appends .npy unless the name has it


def test_a_killed_writers_temp_is_swept_at_the_next_write_but_a_live_ones_is_not(tmp_path):
    target = tmp_path / "submissions" / "sub.csv"
    with subprocess.Popen([sys.executable, "-c", WRITER, str(target)], cwd=REPO, stdin=subprocess.PIPE,
                          stdout=subprocess.PIPE, text=True) as writer:
        temp = target.parent / os.path.basename(writer.stdout.readline().strip())
        assert temp.exists()
        save_csv(target.parent / "other.csv", pd.DataFrame({"a": [1]}))  # the writer is alive: its temp stays
        assert temp.exists()
        writer.stdin.write("die\n")
        writer.stdin.flush()
        assert writer.wait() == -signal.SIGKILL
    assert temp.exists() and not target.exists()  # SIGKILL ran no cleanup
    foreign = target.parent / ".sub.csv.tmp-otherhost-1-abcdefgh"  # another machine on a shared disk
    foreign.write_text("")
    save_csv(target.parent / "other.csv", pd.DataFrame({"a": [2]}))
    assert not temp.exists()
    assert foreign.exists()
    assert sorted(p.name for p in target.parent.iterdir()) == [foreign.name, "other.csv"]
