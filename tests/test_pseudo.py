"""Pseudo-labelling: fold k learns from its teachers' fold-k test predictions only; refusals."""

from __future__ import annotations

import numpy as np
import pytest

from comp.cli import main
from comp.core.errors import CompError
from comp.core.fileio import read_json, save_npy
from comp.stages.pseudo import fold_pseudo_labels, with_pseudo_rows
from comp.workspace import Workspace

from .conftest import make_competition

TINY = ["--model", "baseline", "--width", "0.25", "--epochs", "1", "--folds", "2", "--quiet"]


class FakeTeacher:
    """A finished run's per-fold test probabilities, as fold_pseudo_labels reads them."""

    def __init__(self, path, per_fold):
        self.name, self.own_tag, self.path = "t", "", path
        for fold, probs in enumerate(per_fold):
            save_npy(self.fold_dir(fold) / "test_probs.npy", np.asarray(probs, np.float32))

    def fold_dir(self, fold):
        return self.path / f"fold{fold}"


def test_each_fold_takes_its_teachers_own_fold_predictions(tmp_path):
    fold0 = [[0.97, 0.03], [0.5, 0.5], [0.02, 0.98]]
    fold1 = [[0.2, 0.8], [0.99, 0.01], [0.6, 0.4]]  # another model: other confident rows, other labels
    teacher = FakeTeacher(tmp_path, [fold0, fold1])
    first, second = fold_pseudo_labels([teacher], 0, 0.95), fold_pseudo_labels([teacher], 1, 0.95)
    assert first.rows.tolist() == [0, 2] and first.labels.tolist() == [0, 1]
    assert second.rows.tolist() == [1] and second.labels.tolist() == [0]
    # Two teachers: their mean decides.
    other = FakeTeacher(tmp_path / "o", [[[0.93, 0.07], [0.0, 1.0], [0.0, 1.0]], fold1])
    both = fold_pseudo_labels([teacher, other], 0, 0.95)
    assert both.rows.tolist() == [0, 2]
    x, y = with_pseudo_rows(np.zeros((4, 2, 2, 3), np.uint8), np.array([0, 1, 0, 1]),
                            np.arange(3 * 12, dtype=np.uint8).reshape(3, 2, 2, 3), first)
    assert x.shape == (6, 2, 2, 3) and y.tolist() == [0, 1, 0, 1, 0, 1]
    assert np.array_equal(x[4], np.arange(12).reshape(2, 2, 3))


def test_a_pseudo_labelled_run_records_what_it_took_and_refuses_bad_teachers(tmp_path, capsys):
    data = make_competition(tmp_path / "d", per_class=12, test_count=9)
    work = tmp_path / "w"
    common = ["train", "--data", str(data), "--workdir", str(work), *TINY]
    assert main(common + ["--name", "teacher"]) == 0
    capsys.readouterr()
    loud = [arg for arg in common if arg != "--quiet"]
    assert main(loud + ["--name", "student", "--pseudo", "teacher", "--threshold", "0.0001"]) == 0
    out = capsys.readouterr().out
    assert "+ 9 pseudo-labelled test images" in out
    for fold in range(2):
        record = read_json(work / "folds" / "student" / f"fold{fold}" / "pseudo.json")
        assert record == {"teachers": ["teacher"], "threshold": 0.0001, "rows": 9, "of": 9}
    manifest = read_json(work / "folds" / "student" / "config.json")
    assert manifest["config"]["pseudo"] == "teacher" and (work / "folds" / "student" / "oof_probs.npy").exists()
    # Refused before anything is written: itself, an unknown run, an unfinished run, another split.
    for teachers, words in (("student2", "cannot teach itself"), ("nope", "nope")):
        assert main(common + ["--name", "student2", "--pseudo", teachers]) == 2
        assert words in capsys.readouterr().err
    assert not (work / "folds" / "student2").exists()
    assert main(common[:-3] + ["--folds", "2", "--fold", "0", "--name", "half"]) == 0
    assert main(common + ["--name", "student3", "--pseudo", "half"]) == 2
    assert "not finished" in capsys.readouterr().err
    teacher = Workspace(work, data).run("teacher")
    manifest = read_json(teacher.path / "config.json")
    manifest["split"]["hash"] = "another"
    from comp.core.fileio import write_json

    write_json(teacher.path / "config.json", manifest)
    with pytest.raises(CompError, match="another fold split"):
        Workspace(work, data).train(None, model="baseline", epochs=1, width=0.25, name="student4", pseudo="teacher",
                                    isolate=False)
