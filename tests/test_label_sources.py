"""More label sources: labels in the file names, labels CSVs whose ids lack the extension or point
into sub-folders, one-hot labels CSVs (and the one-hot submission) -- each through data check,
train and ensemble on the command line, and each damaged variant as exit 2 and one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from comp.cli import main

from .conftest import learnable_images

CLASSES = ["blight", "healthy", "rust"]
TRAIN_RUN = ["--model", "baseline", "--epochs", "1", "--folds", "2", "--width", "0.5", "--quiet"]


@pytest.fixture(autouse=True)
def no_inherited_label_options(monkeypatch):
    """The CLI puts --id-column, --label-column and --labels-from in the environment: restored after each test."""
    for variable in ("COMP_ID_COLUMN", "COMP_LABEL_COLUMN", "COMP_LABELS_FROM"):
        monkeypatch.setenv(variable, "")


def write_images(root: Path, names: list[str], per_class: int = 8, test_count: int = 6,
                 sample_columns: str = "label") -> Path:
    """train/<names[i]> (per_class images of each of CLASSES, in class order), test/t<i>.png and a
    sample: id,label, or "probs" (id,<class>,... of 1/3) or "onehot" (id,<class>,... of 0)."""
    images, labels = learnable_images(len(CLASSES), per_class, size=8)
    for image, name in zip(images, names):
        (root / "train" / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(root / "train" / name)
    (root / "test").mkdir(parents=True, exist_ok=True)
    test_images, _ = learnable_images(len(CLASSES), test_count // len(CLASSES), size=8, seed=1)
    for i, image in enumerate(test_images):
        Image.fromarray(image).save(root / "test" / f"t{i}.png")
    ids = [f"t{i}" for i in range(len(test_images))]
    if sample_columns == "label":
        sample = pd.DataFrame({"id": ids, "label": CLASSES[0]})
    else:
        value = "0.333333" if sample_columns == "probs" else "0"
        sample = pd.DataFrame({"image_id": ids, **{c: value for c in CLASSES}})
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root


def class_of(row: int, per_class: int = 8) -> str:
    return CLASSES[row // per_class]


def check_train_ensemble(data: Path, work: Path, *data_options: str, metric: str = "accuracy") -> pd.DataFrame:
    """data check, train and ensemble through the CLI; the submission written."""
    assert main(["data", "check", "--data", str(data), "--workdir", str(work), "--metric", metric,
                 *data_options]) == 0
    assert main(["train", "--workdir", str(work), *TRAIN_RUN]) == 0  # bare: the options remembered in comp.toml
    assert main(["ensemble", "--workdir", str(work), "--out", "sub.csv", "--quiet"]) == 0
    return pd.read_csv(work / "submissions" / "sub.csv", dtype=str)


def expect_one_line_error(capsys, data: Path, work: Path, *fragments: str, options=()) -> str:
    capsys.readouterr()
    assert main(["train", "--data", str(data), "--workdir", str(work), *TRAIN_RUN, *options]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    for fragment in fragments:
        assert fragment in err, err
    return err


# -- labels in the file names ------------------------------------------------------------------


def name_labelled(root: Path, **kwargs) -> Path:
    """Dogs vs Cats: train/blight.0.png, train/healthy.8.png ..., no labels CSV."""
    return write_images(root, [f"{class_of(i)}.{i}.png" for i in range(8 * len(CLASSES))], **kwargs)


def test_file_name_labels_are_found_and_said_then_train_and_ensemble(tmp_path, capsys):
    data = name_labelled(tmp_path / "d")
    submission = check_train_ensemble(data, tmp_path / "w")
    said = capsys.readouterr()
    assert "labels taken from the file names" in said.out + said.err
    assert "3 classes: blight, healthy, rust" in " ".join((said.out + said.err).split())  # as the table wraps it
    assert submission.columns.tolist() == ["id", "label"] and set(submission["label"]) <= set(CLASSES)

    from comp.data.sources import load_dataset

    dataset = load_dataset(data, None)
    assert dataset.classes == CLASSES
    assert dataset.train_y.tolist() == [i // 8 for i in range(24)]


def test_a_pattern_names_the_label_and_is_remembered(tmp_path, capsys):
    # The label after the number: 0_blight.png. The default (before the first . or _) would take "0".
    data = write_images(tmp_path / "d", [f"{i}_{class_of(i)}.png" for i in range(24)])
    work = tmp_path / "w"
    assert main(["data", "check", "--data", str(data), "--workdir", str(work),
                 "--labels-from", r"name:^\d+_([a-z]+)\."]) == 0
    assert "train: 24 images in 3 classes" in capsys.readouterr().out
    assert "labels_from = " in (work / "comp.toml").read_text()
    from comp.data.sources import load_dataset

    assert load_dataset(data, None).classes == CLASSES  # COMP_LABELS_FROM set by the command above


@pytest.mark.parametrize("names", [
    [f"TRAIN_{i:05d}.png" for i in range(24)],  # DACON: one prefix is not a label
    [f"{i:04d}_{i % 3}.png" for i in range(24)],  # numbers are ids, not labels
    [f"{class_of(i)}{i}.png" for i in range(24)],  # no separator after the word
    [f"w{i}.{i}.png" for i in range(24)],  # a prefix per image: 24 "classes" for 24 images
])
def test_names_that_are_not_labels_are_not_taken_for_labels(tmp_path, capsys, names):
    data = write_images(tmp_path / "d", names)
    err = expect_one_line_error(capsys, data, tmp_path / "w", "has no labels CSV", "--labels-from name")
    assert "labels taken from the file names" not in err
    assert main(["data", "check", "--data", str(data), "--workdir", str(tmp_path / "w")]) == 2


def test_file_names_without_the_pattern_and_a_bad_option_stop_in_one_line(tmp_path, capsys):
    data = name_labelled(tmp_path / "d")
    (data / "train" / "healthy.11.png").rename(data / "train" / "unknown-3.png")
    expect_one_line_error(capsys, data, tmp_path / "w", "unknown-3.png", "no label in its name",
                          "--labels-from name:REGEX", options=["--labels-from", "name:^(blight|healthy|rust)[.]"])
    expect_one_line_error(capsys, data, tmp_path / "w2", "--labels-from folder", "expected csv, name, or name:REGEX",
                          options=["--labels-from", "folder"])
    expect_one_line_error(capsys, data, tmp_path / "w3", "not a regular expression",
                          options=["--labels-from", "name:(["])


def test_labels_from_csv_turns_the_file_names_off(tmp_path, capsys):
    data = name_labelled(tmp_path / "d")
    expect_one_line_error(capsys, data, tmp_path / "w", "has no labels CSV", options=["--labels-from", "csv"])


# -- labels CSVs whose ids lack the extension or carry a path -----------------------------------


def test_ids_with_a_folder_and_no_extension_match_the_train_images(tmp_path):
    names = [f"{i:03x}ab.png" for i in range(24)]
    data = write_images(tmp_path / "d", names)
    ids = [f"images/{Path(n).stem}" if i % 2 else f"./train/{Path(n).stem}" for i, n in enumerate(names)]
    pd.DataFrame({"image_id": ids, "label": [class_of(i) for i in range(24)]}).to_csv(data / "train.csv",
                                                                                     index=False)
    submission = check_train_ensemble(data, tmp_path / "w")
    assert len(submission) == 6

    from comp.data.sources import load_dataset

    assert load_dataset(data, None).train_y.tolist() == [i // 8 for i in range(24)]


def test_ids_that_are_paths_into_sub_folders_of_train(tmp_path):
    """train/a/3.png and train/b/3.png: the same name in two folders, told apart by the CSV's paths;
    the folders are not classes (the CSV gives the labels)."""
    names = [f"{'ab'[i % 2]}/{i // 2}.png" for i in range(24)]
    data = write_images(tmp_path / "d", names)
    pd.DataFrame({"path": [f"train/{n}" for n in names], "label": [class_of(i) for i in range(24)]}).to_csv(
        data / "train.csv", index=False)
    check_train_ensemble(data, tmp_path / "w")

    from comp.data.sources import load_dataset

    dataset = load_dataset(data, None)
    assert dataset.classes == CLASSES and dataset.train_y.tolist() == [i // 8 for i in range(24)]
    assert dataset.stats["train_files"][:2] == ["train/a/0.png", "train/b/0.png"]


def test_a_sub_path_id_without_its_image_is_named(tmp_path, capsys):
    names = [f"{'ab'[i % 2]}/{i // 2}.png" for i in range(24)]
    data = write_images(tmp_path / "d", names)
    ids = [f"train/{n}" for n in names]
    ids[5] = "train/c/2.png"
    pd.DataFrame({"path": ids, "label": [class_of(i) for i in range(24)]}).to_csv(data / "train.csv", index=False)
    expect_one_line_error(capsys, data, tmp_path / "w", "train.csv", "id train/c/2.png has no image")


# -- one-hot labels CSVs ---------------------------------------------------------------------


def one_hot_labelled(root: Path, **kwargs) -> Path:
    """Plant Pathology 2020: train/Train_<i>.png, train.csv image_id,blight,healthy,rust (one 1 a row)."""
    data = write_images(root, [f"Train_{i}.png" for i in range(24)], **kwargs)
    rows = [{"image_id": f"Train_{i}", **{c: int(c == class_of(i)) for c in CLASSES}} for i in range(24)]
    pd.DataFrame(rows).to_csv(data / "train.csv", index=False)
    return data


def assert_one_hot_submission(submission: pd.DataFrame, zero_one: bool) -> None:
    assert submission.columns.tolist() == ["image_id", *CLASSES]
    values = submission[CLASSES].astype(float).to_numpy()
    assert np.allclose(values.sum(1), 1, atol=1e-3)
    if zero_one:  # the sample's 0/1: a 1 under the predicted class
        assert set(submission[CLASSES].to_numpy().ravel()) <= {"0", "1"}
    else:
        assert (values > 0).all() and (values < 1).all()


def assert_one_hot_labels_read(data: Path) -> None:
    from comp.data.sources import load_dataset

    dataset = load_dataset(data, None)
    assert dataset.classes == CLASSES and dataset.train_y.tolist() == [i // 8 for i in range(24)]


@pytest.fixture(scope="module")
def probs_sample_work(tmp_path_factory) -> Path:
    """One-hot labels and a sample of probabilities, checked and trained once: the metrics differ only in
    what the ensemble writes (the sample is part of the data's fingerprint, so the 0/1 sample trains its own)."""
    root = tmp_path_factory.mktemp("one-hot")
    data = one_hot_labelled(root / "d", sample_columns="probs")
    with pytest.MonkeyPatch.context() as patch:  # the CLI's label options stay inside this fixture
        for variable in ("COMP_ID_COLUMN", "COMP_LABEL_COLUMN", "COMP_LABELS_FROM"):
            patch.setenv(variable, "")
        assert main(["data", "check", "--data", str(data), "--workdir", str(root / "w"), "--metric", "log_loss"]) == 0
        assert main(["train", "--workdir", str(root / "w"), *TRAIN_RUN]) == 0
    return root / "w"


@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_one_hot_labels_train_and_a_probabilities_sample_gets_the_class_probabilities(probs_sample_work, metric):
    work = probs_sample_work
    assert main(["ensemble", "--workdir", str(work), "--metric", metric, "--out", f"{metric}.csv", "--quiet"]) == 0
    assert_one_hot_submission(pd.read_csv(work / "submissions" / f"{metric}.csv", dtype=str), zero_one=False)
    assert_one_hot_labels_read(work.parent / "d")


def test_one_hot_labels_train_and_a_zero_one_sample_gets_a_one_under_the_class(tmp_path):
    data = one_hot_labelled(tmp_path / "d", sample_columns="onehot")
    assert_one_hot_submission(check_train_ensemble(data, tmp_path / "w", metric="accuracy"), zero_one=True)
    assert_one_hot_labels_read(data)


@pytest.mark.parametrize("row, marks, fragments", [
    (4, {"blight": 0}, ["row 5 (id Train_4) has no class marked 1", "mark its class with 1"]),
    (6, {"healthy": "2"}, ["row 7 (id Train_6): healthy is '2', not 0 or 1", "one 1 a row"]),
])
def test_a_bad_one_hot_row_stops_in_one_line(tmp_path, capsys, row, marks, fragments):
    data = one_hot_labelled(tmp_path / "d", sample_columns="probs")
    frame = pd.read_csv(data / "train.csv", dtype=str)
    for column, value in marks.items():
        frame.loc[row, column] = str(value)
    frame.to_csv(data / "train.csv", index=False)
    expect_one_line_error(capsys, data, tmp_path / "w", "train.csv", *fragments)
    capsys.readouterr()
    assert main(["data", "check", "--data", str(data), "--workdir", str(tmp_path / "w")]) == 2


def test_a_row_with_two_ones_makes_the_csv_multilabel(tmp_path):
    # Several 1s in a row: multi-label targets (comp.data.multilabel), every cell 0 or 1.
    from comp.data.sources import load_dataset

    data = one_hot_labelled(tmp_path / "d", sample_columns="probs")
    frame = pd.read_csv(data / "train.csv", dtype=str)
    frame.loc[9, "rust"] = "1"
    frame.to_csv(data / "train.csv", index=False)
    dataset = load_dataset(data, None)
    assert dataset.multilabel and dataset.classes == CLASSES
    assert dataset.train_y[9].tolist() == [0, 1, 1] and dataset.train_y.sum() == 25


def test_two_ones_beside_a_damaged_cell_stop_in_one_line(tmp_path, capsys):
    data = one_hot_labelled(tmp_path / "d", sample_columns="probs")
    frame = pd.read_csv(data / "train.csv", dtype=str)
    frame.loc[9, "rust"], frame.loc[6, "healthy"] = "1", "2"
    frame.to_csv(data / "train.csv", index=False)
    expect_one_line_error(capsys, data, tmp_path / "w", "train.csv", "row 7 (id Train_6): healthy is '2'")
    capsys.readouterr()
    assert main(["data", "check", "--data", str(data), "--workdir", str(tmp_path / "w")]) == 2
    assert "2 error(s)" in capsys.readouterr().out  # the damaged cell, and the row of two 1s


def test_a_sample_class_column_unknown_to_the_train_set_stops_in_one_line(tmp_path, capsys):
    data = one_hot_labelled(tmp_path / "d", sample_columns="probs")
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str).rename(columns={"rust": "scab"})
    sample.to_csv(data / "sample_submission.csv", index=False)
    expect_one_line_error(capsys, data, tmp_path / "w", "sample_submission.csv",
                          "its class column(s) scab are not classes of the train set",
                          "no column for the class(es) rust", "check the labels CSV's class columns")
