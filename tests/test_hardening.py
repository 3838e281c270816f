"""Issue #28: the wrong input or the failure that used to pass silently, or to print a traceback,
is refused or reported in one line (exit 2), before anything is written."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pandas as pd
import pytest

from comp.cli import main
from comp.errors import CompError

from .conftest import make_competition, run_comp

TINY = ["--model", "baseline", "--width", "0.25", "--epochs", "1", "--folds", "2", "--quiet", "--name", "r"]


# -- --full needs its finished K-fold twin --------------------------------------------------------


def test_full_without_its_kfold_twin_is_refused_with_the_command_that_makes_it(tmp_path, capsys):
    data = make_competition(tmp_path / "d", per_class=8, test_count=6)
    work = tmp_path / "w"
    train = ["train", "--data", str(data), "--workdir", str(work), *TINY]
    capsys.readouterr()
    assert main(train + ["--full", "--seeds", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0 of 2 folds finished" in err
    twin = err.split("train the folds first: ", 1)[1]
    assert twin.startswith("comp train ") and "--full" not in twin and "--seeds" not in twin
    assert "--name r" in twin
    assert not (work / "folds" / "r" / "full").exists()
