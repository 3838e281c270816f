"""The leaderboard CSV in each format a sample_submission.csv can ask for, end to end on tiny runs."""

from __future__ import annotations

import csv

import numpy as np
import pandas as pd
import pytest

from comp.cli import main
from comp.data.sources import read_submission_format
from comp.core.errors import CompError
from comp.stages.submission import check_format

from .conftest import make_competition

TINY_RUN = ["--model", "baseline", "--width", "0.5", "--batch-size", "16", "--epochs", "1", "--folds", "2",
            "--quiet", "--name", "r"]
CLASSES = ["class0", "class1", "class2"]


def first_fields(path) -> list[str]:
    """The first field of every data row, exactly as the bytes have it (no CSV reader stripping)."""
    with open(path, newline="") as handle:
        return [row[0] for row in list(csv.reader(handle))[1:]]


def spaced_ids(ids: list[str]) -> list[str]:
    """Some ids with a space before or after: the submission must keep them as they are."""
    return [f" {i}" if n % 3 == 0 else f"{i} " if n % 3 == 1 else i for n, i in enumerate(ids)]


@pytest.mark.parametrize("kind", ["name", "int", "probs"])
def test_each_sample_format_end_to_end(tmp_path, monkeypatch, capsys, kind):
    monkeypatch.setenv("COMP_NO_ISOLATE", "1")
    data = make_competition(tmp_path / "d", per_class=12, test_count=9, target_kind="int" if kind == "int" else "name")
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    ids = spaced_ids(sample["id"].tolist())
    if kind == "probs":  # Kaggle's probability format, columns in an order of its own
        sample = pd.DataFrame({"id": ids, **{c: 1 / 3 for c in ("class2", "class0", "class1")}})
    else:
        sample["id"] = ids
    sample.to_csv(data / "sample_submission.csv", index=False)
    work = tmp_path / "w"
    assert main(["train", "--data", str(data), "--workdir", str(work), *TINY_RUN]) == 0
    assert main(["ensemble", "--workdir", str(work), "--quiet", "--out", "s.csv"]) == 0
    out = work / "submissions" / "s.csv"
    written = pd.read_csv(out, dtype=str, keep_default_na=False)
    assert list(written.columns) == list(sample.columns)
    assert first_fields(out) == first_fields(data / "sample_submission.csv") == ids  # spaces kept
    run = work / "folds" / "r"
    expected = np.mean([np.load(run / f"fold{k}" / "test_probs.npy") for k in range(2)], axis=0)
    if kind == "probs":
        probs = written[["class2", "class0", "class1"]].astype(float).to_numpy()
        assert np.allclose(probs, expected[:, [2, 0, 1]], atol=1e-5)  # each class under its own name
        assert np.allclose(probs.sum(1), 1, atol=1e-4)
    elif kind == "int":
        assert written["target"].tolist() == [str(i) for i in expected.argmax(1)]
        assert "wants integer targets but the classes are names" in capsys.readouterr().out
    else:
        assert written["target"].tolist() == [CLASSES[i] for i in expected.argmax(1)]
    capsys.readouterr()
    answers = data / "answers.csv"
    assert main(["score", str(out), "--answers", str(answers)]) == 0
    truth = pd.read_csv(answers, dtype=str)["target"].tolist()
    right = sum(str(t) == str(p) for t, p in zip(truth, [CLASSES[i] for i in expected.argmax(1)]
                                                 if kind != "int" else expected.argmax(1)))
    assert f"({right} of 9 correct" in capsys.readouterr().out


def write_sample(folder, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sample_submission.csv").write_text(text)
    problems = []
    fmt = read_submission_format(folder, problems)
    assert not problems, problems
    return fmt


@pytest.mark.parametrize("header, words", [
    ("id,class0,class1,cat", "column(s) that are not classes: cat; class(es) without a column: class2"),
    ("id,class0,class1", "class(es) without a column: class2"),
    ("id,class0,class1,class2,class3", "column(s) that are not classes: class3"),
    ("id,class0,class1,class1", "not exactly"),  # pandas renames the repeat class1.1
])
def test_probability_columns_must_be_exactly_the_classes(tmp_path, header, words):
    fmt = write_sample(tmp_path / "d", f"{header}\n0{',0.3' * header.count(',')}\n")
    assert fmt.target_kind == "probs"
    with pytest.raises(CompError) as err:
        check_format(fmt, CLASSES)
    assert words in str(err.value) and "sample_submission.csv" in str(err.value)


def test_probability_columns_match_in_any_order(tmp_path):
    fmt = write_sample(tmp_path / "d", "id, class1,class2 ,class0\n0,0.3,0.3,0.4\n")
    check_format(fmt, CLASSES)  # spaces around a column name aside, the names are the classes


def test_a_single_probability_column_is_refused(tmp_path):
    fmt = write_sample(tmp_path / "d", "id,label\n1,0.5\n2,0.5\n")
    assert fmt.target_kind == "fraction"
    with pytest.raises(CompError, match="holds fractions"):
        check_format(fmt, ["cat", "dog"])
    assert write_sample(tmp_path / "e", "id,label\n1,0\n2,0\n").target_kind == "int"
    assert write_sample(tmp_path / "f", "id,label\n1,cat\n2,cat\n").target_kind == "name"
