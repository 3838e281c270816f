"""Pixel CSVs (Fashion-MNIST, Digit Recognizer): found from the files, parsed into the cache, trained
and submitted in the sample's form; each kind of damaged CSV stops `comp data check` with exit 2 and
one line naming the file and the row."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from comp.cli import main
from comp.core.errors import CompError
from comp.data import pixels as pixels_module
from comp.data.decode import fit
from comp.data.sources import load_dataset

from .conftest import learnable_images, run_comp

SIDE = 8
TINY_RUN = ["--model", "baseline", "--width", "0.5", "--batch-size", "16", "--epochs", "1", "--folds", "2",
            "--quiet", "--name", "r"]


def gray(images: np.ndarray) -> np.ndarray:
    luma = images.astype(np.float64) @ np.array([0.299, 0.587, 0.114])
    return np.rint(luma).astype(np.uint8)[..., None]


def flat(images: np.ndarray, order: str) -> np.ndarray:
    """Rows of pixels: (H, W, C) read pixel by pixel ("hwc"), or channel by channel ("chw", CIFAR's own)."""
    if order == "chw":
        images = images.transpose(0, 3, 1, 2)
    return images.reshape(len(images), -1)


def write_pixel_competition(root, style: str = "dacon", channels: int = 1, order: str = "hwc", per_class: int = 12,
                            test_count: int = 9):
    """A pixel-CSV competition in one of the two id styles; (root, train images, labels, test images in
    the sample's order).

    dacon:    train.csv index,label,pixel1..; test.csv index,pixel1..; sample index,label in another order
    kaggle:   train.csv label,pixel0..; test.csv pixel0.. (no id); sample ImageId,Label with 1..M in row order
    dacon-cv: train.csv id,digit,letter,0..; test.csv id,letter,0..; sample id,digit (컴퓨터비전 학습: the
              label is the column test.csv lacks, `letter` is a hint column, ignored)
    """
    root.mkdir(parents=True, exist_ok=True)
    train_x, train_y = learnable_images(3, per_class, SIDE, seed=0)
    test_x, _ = learnable_images(3, test_count // 3, SIDE, seed=1)
    if channels == 1:
        train_x, test_x = gray(train_x), gray(test_x)
    first = 1 if style == "dacon" else 0
    prefix = "" if style == "dacon-cv" else "pixel"
    columns = [f"{prefix}{first + i}" for i in range(SIDE * SIDE * channels)]
    train = pd.DataFrame(flat(train_x, order), columns=columns)
    test = pd.DataFrame(flat(test_x, order), columns=columns)
    train.insert(0, "label", train_y)
    if style == "dacon-cv":
        train = train.rename(columns={"label": "digit"})
        train.insert(1, "letter", "A")
        test.insert(0, "letter", "B")
        train.insert(0, "id", np.arange(len(train)) + 1)
        test.insert(0, "id", np.arange(len(test)) + 2049)
        sample_rows = np.arange(len(test))
        sample = pd.DataFrame({"id": sample_rows + 2049, "digit": 0})
    elif style == "dacon":
        train.insert(0, "index", np.arange(len(train)))
        test.insert(0, "index", np.arange(len(test)))
        sample_rows = np.random.default_rng(0).permutation(len(test))  # the sample's own order
        sample = pd.DataFrame({"index": sample_rows, "label": 0})
    else:
        sample_rows = np.arange(len(test))
        sample = pd.DataFrame({"ImageId": sample_rows + 1, "Label": 0})
    train.to_csv(root / "train.csv", index=False)
    test.to_csv(root / "test.csv", index=False)
    sample.to_csv(root / "sample_submission.csv", index=False)
    return root, train_x, train_y, test_x[sample_rows]


STYLES = [("dacon", 1, "hwc"), ("kaggle", 1, "hwc"), ("dacon-cv", 1, "hwc"), ("dacon", 3, "hwc"), ("kaggle", 3, "chw")]


@pytest.mark.parametrize("style,channels,order", STYLES)
def test_each_style_loads_the_exact_pixels_in_the_samples_order(tmp_path, style, channels, order):
    root, train_x, train_y, test_x = write_pixel_competition(tmp_path / "d", style, channels, order)
    dataset = load_dataset(root, tmp_path / "cache")
    assert dataset.image_shape == (SIDE, SIDE, channels)  # grayscale stays one channel
    assert np.array_equal(dataset.train_x[:], train_x)
    assert np.array_equal(dataset.train_y, train_y)
    assert np.array_equal(dataset.test_x[:], test_x)  # rows matched to the sample's ids, in its order
    assert dataset.classes == ["0", "1", "2"]
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert dataset.test_ids == sample.iloc[:, 0].tolist()
    colour = "grayscale" if channels == 1 else "RGB"
    assert f"pixel CSV (train.csv, test.csv): {SIDE}x{SIDE} {colour}" in dataset.stats["layout"]
    if channels == 3:
        assert dataset.stats["channel_order"] == order  # CIFAR's channel-by-channel rows are recognised
    if style == "dacon-cv":
        assert "column letter ignored" in dataset.stats["layout"]


def test_label_after_the_pixels_and_quoted_ids_with_commas(tmp_path):
    """Columns in another place (read by pandas, not from the start of the lines) and ids that need quotes."""
    root, train_x, train_y, test_x = write_pixel_competition(tmp_path / "d", "dacon")
    for name in ("train.csv", "test.csv", "sample_submission.csv"):
        frame = pd.read_csv(root / name, dtype=str)
        frame["index"] = "img," + frame["index"]  # written "img,0"
        if name != "sample_submission.csv":  # the sample's id comes first; in the others it goes last
            frame = frame[[*frame.columns[1:], "index"]]
        frame.to_csv(root / name, index=False)
    assert '"img,0"' in (root / "test.csv").read_text()
    dataset = load_dataset(root, None)
    assert np.array_equal(dataset.train_x, train_x) and np.array_equal(dataset.train_y, train_y)
    assert np.array_equal(dataset.test_x, test_x)
    assert dataset.stats["train_files"][0] == "img,0"


def test_a_label_column_of_another_name_is_named_with_label_column(tmp_path, monkeypatch):
    from comp.data.sources import LABEL_COLUMN_ENV

    root, _, train_y, _ = write_pixel_competition(tmp_path / "d", "dacon")
    pd.read_csv(root / "train.csv").rename(columns={"label": "answer"}).to_csv(root / "train.csv", index=False)
    test = pd.read_csv(root / "test.csv")
    test.insert(1, "answer", -1)  # in both CSVs: not found as the column test.csv lacks either
    test.to_csv(root / "test.csv", index=False)
    with pytest.raises(CompError, match="no label column beside its pixel columns .*index, answer.*--label-column"):
        load_dataset(root, None)
    monkeypatch.setenv(LABEL_COLUMN_ENV, "answer")  # what --label-column answer sets
    assert np.array_equal(load_dataset(root, None).train_y, train_y)


def test_classes_sort_as_numbers_and_the_folds_name_rows(tmp_path):
    root, *_ = write_pixel_competition(tmp_path / "d", "kaggle")
    train = pd.read_csv(root / "train.csv")
    train["label"] = train["label"].map({0: 2, 1: 10, 2: 9})
    train.to_csv(root / "train.csv", index=False)
    dataset = load_dataset(root, None)
    assert dataset.classes == ["2", "9", "10"]
    assert dataset.stats["train_files"][:2] == ["row 1", "row 2"]  # Digit Recognizer's train.csv has no id


def test_a_second_load_reads_the_cache_and_a_changed_csv_is_parsed_again(tmp_path, monkeypatch):
    root, *_ = write_pixel_competition(tmp_path / "d", "dacon")
    cache = tmp_path / "cache"
    first = load_dataset(root, cache)
    real_batches = pixels_module.pixel_batches
    monkeypatch.setattr(pixels_module, "pixel_batches", lambda *a, **k: pytest.fail("parsed again"))
    assert load_dataset(root, cache).fingerprint == first.fingerprint
    test = pd.read_csv(root / "test.csv")
    pixel = test.iloc[0, 5]
    test.iloc[0, 5] = 255 - pixel
    test.to_csv(root / "test.csv", index=False)
    monkeypatch.setattr(pixels_module, "pixel_batches", real_batches)
    after = load_dataset(root, cache)
    assert after.fingerprint != first.fingerprint
    row = after.test_ids.index("0")
    assert after.test_x[row].reshape(-1)[4] == test.iloc[0, 5]  # column 5 is the 5th pixel (after index)


def test_an_explicit_image_size_resizes_as_image_files_are(tmp_path):
    root, train_x, _, _ = write_pixel_competition(tmp_path / "d", "dacon")
    dataset = load_dataset(root, tmp_path / "cache", image_size=12, resize="pad")
    assert dataset.image_shape == (12, 12, 1)
    expected = np.asarray(fit(Image.fromarray(train_x[3, ..., 0]), (12, 12), "pad"))
    assert np.array_equal(dataset.train_x[3][..., 0], expected)


@pytest.mark.parametrize("style,channels", [("dacon", 1), ("kaggle", 3)])
def test_data_check_train_and_ensemble_through_the_cli(tmp_path, monkeypatch, capsys, style, channels):
    monkeypatch.setenv("COLUMNS", "200")
    root, *_ = write_pixel_competition(tmp_path / "d", style, channels)
    work = tmp_path / "w"
    assert main(["data", "check", "--data", str(root), "--workdir", str(work)]) == 0
    shown = capsys.readouterr().out
    colour = "grayscale" if channels == 1 else "RGB"
    assert f"layout: pixel CSV (train.csv, test.csv): {SIDE}x{SIDE} {colour}" in shown
    assert (work / "folds" / "data_samples.png").stat().st_size > 0
    assert main(["train", "--workdir", str(work), *TINY_RUN]) == 0
    assert main(["ensemble", "--workdir", str(work), "--quiet", "--out", "s.csv"]) == 0
    written = pd.read_csv(work / "submissions" / "s.csv", dtype=str)
    sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
    assert list(written.columns) == list(sample.columns)
    assert written.iloc[:, 0].tolist() == sample.iloc[:, 0].tolist()
    assert set(written.iloc[:, 1]) <= {"0", "1", "2"}
    if channels == 1:  # the report's mistakes grid and labelling image files take one channel too
        assert main(["report", "--workdir", str(work), "--quiet"]) == 0
        assert (work / "folds" / "report" / "mistakes.png").stat().st_size > 0
        folder = tmp_path / "new"
        folder.mkdir()
        Image.fromarray(learnable_images(3, 1, 20)[0][1]).save(folder / "photo.png")  # RGB, another size
        out = tmp_path / "labels.csv"
        assert main(["predict", "--workdir", str(work), "--run", "r", "--images", str(folder), "--out", str(out),
                     "--quiet"]) == 0
        assert pd.read_csv(out, dtype=str)["label"].tolist()[0] in {"0", "1", "2"}


# -- damaged CSVs --------------------------------------------------------------------------------


def edit_line(path, line: int, change) -> None:
    """Change one line (1 = the header) of a CSV, given as its list of values."""
    lines = path.read_text().splitlines()
    lines[line - 1] = ",".join(change(lines[line - 1].split(",")))
    path.write_text("\n".join(lines) + "\n")


def set_value(index: int, value: str):
    return lambda values: values[:index] + [value] + values[index + 1:]


DAMAGE = {
    # name: (style, file, change, what the one line says)
    "long row": ("dacon", "train.csv", lambda p: edit_line(p, 3, lambda v: v + ["7"]), "row 2 (line 3)"),
    "short row": ("dacon", "test.csv", lambda p: edit_line(p, 4, lambda v: v[:-1]), "row 3 (line 4)"),
    "text pixel": ("dacon", "train.csv", lambda p: edit_line(p, 5, set_value(7, "abc")), "pixel6 is 'abc'"),
    "fraction": ("kaggle", "test.csv", lambda p: edit_line(p, 2, set_value(3, "1.5")), "pixel3 is '1.5'"),
    "too bright": ("kaggle", "train.csv", lambda p: edit_line(p, 6, set_value(2, "256")), "pixel1 is '256'"),
    "negative": ("dacon", "test.csv", lambda p: edit_line(p, 2, set_value(1, "-1")), "pixel1 is '-1'"),
    "not square": ("dacon", "train.csv", None, "63 pixel columns"),
    "no label": ("dacon", "train.csv", None, "no label column"),
    "test id not in sample": ("dacon", "test.csv", lambda p: edit_line(p, 3, set_value(0, "999")),
                              "id 999 is not in sample_submission.csv"),
    "sample id without row": ("dacon", "sample_submission.csv", None, "has no row in test.csv"),
    "rows unlike the sample": ("kaggle", "test.csv", lambda p: edit_line(p, 3, lambda v: []),
                               "has 8 rows and no id column"),
}


def damage(root, name: str) -> None:
    _, file, change, _ = DAMAGE[name]
    if change is not None:
        change(root / file)
    elif name == "not square":
        for csv_name in ("train.csv", "test.csv"):
            frame = pd.read_csv(root / csv_name, dtype=str)
            frame.iloc[:, :-1].to_csv(root / csv_name, index=False)
    elif name == "no label":
        pd.read_csv(root / "train.csv", dtype=str).drop(columns="label").to_csv(root / "train.csv", index=False)
    elif name == "sample id without row":
        sample = pd.read_csv(root / "sample_submission.csv", dtype=str)
        pd.concat([sample, pd.DataFrame({"index": ["12345"], "label": ["0"]})]).to_csv(
            root / "sample_submission.csv", index=False)


@pytest.mark.parametrize("name", DAMAGE)
def test_each_damaged_csv_gives_exit_2_and_one_line_naming_the_file(tmp_path, capsys, name):
    style, file, _, said = DAMAGE[name]
    root, *_ = write_pixel_competition(tmp_path / "d", style)
    damage(root, name)
    assert main(["data", "check", "--data", str(root), "--workdir", str(tmp_path / "w")]) == 2
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and str(root / file) in error and said in error, error


def test_a_load_stops_on_a_bad_pixel_with_one_line_and_keeps_no_cache(tmp_path):
    root, *_ = write_pixel_competition(tmp_path / "d", "dacon")
    edit_line(root / "train.csv", 5, set_value(7, "300"))
    edit_line(root / "train.csv", 9, set_value(8, "x"))
    for _ in range(2):  # the second load finds the same: nothing was cached from the bad CSV
        with pytest.raises(CompError) as err:
            load_dataset(root, tmp_path / "cache")
        message = str(err.value)
        assert message.startswith(f"{root / 'train.csv'}: row 4 (line 5): pixel6 is '300', not an integer 0..255")
        assert "1 more error(s)" in message and "\n" not in message
    assert not list((tmp_path / "cache").rglob("*.npy"))  # no half-written cache left behind


def test_the_cli_exits_2_without_a_traceback(tmp_path):
    root, *_ = write_pixel_competition(tmp_path / "d", "kaggle", 3)
    edit_line(root / "train.csv", 2, set_value(4, "12a"))
    result = run_comp("data", "check", "--data", root, "--workdir", tmp_path / "w")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "row 1 (line 2): pixel3 is '12a'" in result.stderr
