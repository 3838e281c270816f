"""Damaged run files (cut short by a full disk or a copy that stopped) are named with their fix."""

from __future__ import annotations

import numpy as np
import pytest

from comp.cli import main

from .conftest import TRAIN_TWO_RUNS


def _cut_short(path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_a_damaged_model_is_named_with_the_command_that_retrains_its_fold(work, shared, capsys, monkeypatch):
    monkeypatch.setenv("COMP_NO_ISOLATE", "1")
    run = work / "folds" / "a"
    _cut_short(run / "fold1" / "model.keras")
    assert main(["predict", "--workdir", str(work), "--run", "a", "--tta", "flip", "--quiet"]) == 2
    err = _error_line(capsys)
    fix = f"comp train --config {run}/config.json --fold 1 --force"
    assert f"{run / 'fold1' / 'model.keras'}: damaged (not a complete .keras archive); retrain fold 1: {fix}" in err
    # The fix as printed works (with the data folder the workdir remembers) and predict runs again.
    assert main(["train", "--workdir", str(work), *fix.split()[2:], "--quiet"]) == 0
    assert main(["predict", "--workdir", str(work), "--run", "a", "--tta", "flip", "--quiet"]) == 0


@pytest.mark.parametrize("name", ["fold2/test_probs.npy", "oof_probs.npy"])
def test_damaged_predictions_stop_the_ensemble_with_their_name(work, capsys, name):
    path = work / "folds" / "a" / name
    _cut_short(path)
    assert main(["ensemble", "--workdir", str(work), "--runs", "a", "--out", "t.csv", "--quiet"]) == 2
    err = _error_line(capsys)
    assert f"{path}: damaged" in err and "comp predict --run a" in err
    assert not (work / "submissions" / "t.csv").exists()
    assert main(["predict", "--workdir", str(work), "--run", "a", "--tta", "none", "--quiet"]) == 0  # the fix
    assert np.load(path).shape[1] == 10


def test_a_damaged_fold_prediction_stops_the_oof_file_with_the_fold_to_retrain(work, shared, capsys, monkeypatch):
    monkeypatch.setenv("COMP_NO_ISOLATE", "1")
    run = work / "folds" / "a"
    path = run / "fold0" / "val_probs.npy"
    _cut_short(path)
    before = (run / "oof_probs.npy").read_bytes()
    args = ["train", "--data", str(shared / "demo"), "--workdir", str(work), *TRAIN_TWO_RUNS, "--augment", "none",
            "--name", "a"]
    assert main(args) == 2  # every fold finished: only the OOF file is written again, from the folds
    err = _error_line(capsys)
    assert f"{path}: damaged" in err
    assert f"retrain fold 0: comp train --config {run}/config.json --fold 0 --force" in err
    assert (run / "oof_probs.npy").read_bytes() == before  # nothing half-written
