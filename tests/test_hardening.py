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


# -- the labels CSV's columns are found by name -------------------------------------------------


def kaggle_folder(root: Path, columns: list[str], sample_target: str = "cat") -> Path:
    """train/img<i>.png + train.csv with `columns` (id and label among them), test/, sample_submission.csv."""
    from PIL import Image

    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for i in range(8):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(root / "train" / f"img{i}.png")
        values = {"id": f"img{i}", "image_id": f"img{i}", "label": "cat" if i % 2 else "dog",
                  "fold": str(i % 4), "width": "8", "height": "8"}
        rows.append({c: values[c] for c in columns})
    pd.DataFrame(rows, columns=columns).to_csv(root / "train.csv", index=False)
    Image.new("RGB", (8, 8)).save(root / "test" / "t0.png")
    pd.DataFrame({"id": ["t0"], "label": [sample_target]}).to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.mark.parametrize("columns", [["id", "fold", "label"], ["image_id", "width", "height", "label"],
                                     ["label", "id"]])
def test_the_labels_csv_columns_are_found_by_name(tmp_path, capsys, columns):
    from comp.data import load_dataset

    dataset = load_dataset(kaggle_folder(tmp_path / "k", columns), None)
    assert dataset.classes == ["cat", "dog"]  # never the fold numbers, widths or the ids
    assert dataset.train_y.tolist() == [1, 0] * 4  # img0 is a dog, img1 a cat...
    assert "classes unlike" not in capsys.readouterr().err


@pytest.mark.parametrize("columns, said", [(["id", "image", "label"], "several id columns (id, image)"),
                                           (["id", "fold", "width"], "no label column")])
def test_an_ambiguous_or_missing_column_stops_with_the_columns_listed(tmp_path, capsys, columns, said):
    data = kaggle_folder(tmp_path / "k", [c if c != "image" else "image_id" for c in columns])
    if "image" in columns:  # a second id column by name
        frame = pd.read_csv(data / "train.csv", dtype=str).rename(columns={"image_id": "image"})
        frame.to_csv(data / "train.csv", index=False)
    assert main(["data", "check", "--data", str(data), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert said in err and "columns: " + ", ".join(columns) in err and "--label-column" in err


def test_the_columns_can_be_named_and_a_class_mismatch_is_warned(tmp_path, capsys, monkeypatch):
    from comp.data import load_dataset

    for variable in ("COMP_ID_COLUMN", "COMP_LABEL_COLUMN"):  # the CLI sets them below: restored after the test
        monkeypatch.setenv(variable, "")

    data = kaggle_folder(tmp_path / "k", ["id", "fold", "label"], sample_target="bird")
    frame = pd.read_csv(data / "train.csv", dtype=str).rename(columns={"id": "picture", "label": "species"})
    frame.to_csv(data / "train.csv", index=False)
    with pytest.raises(CompError, match="no id column among its columns: picture, fold, species"):
        load_dataset(data, None)
    env = {"COMP_ID_COLUMN": "picture", "COMP_LABEL_COLUMN": "species"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        dataset = load_dataset(data, None)
    assert dataset.classes == ["cat", "dog"]
    said = capsys.readouterr()
    assert "classes unlike the sample submission's" in said.out + said.err and "(bird)" in said.out + said.err
    # The same from the command line: --id-column and --label-column.
    capsys.readouterr()
    assert main(["data", "check", "--data", str(data), "--workdir", str(tmp_path / "w"), "--id-column", "picture",
                 "--label-column", "species"]) == 0
