"""The data layer: layouts, id matching, conversion, cache, fingerprint, --limit and bad input."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from comp.data import decode as decode_module
from comp.data.sources import limit_rows, load_dataset, scan
from comp.core.errors import CompError

from .conftest import make_competition, run_comp


def test_dacon_layout_loads_in_sample_order(tmp_path):
    root = make_competition(tmp_path / "d", num_classes=3, per_class=5, test_count=4)
    ds = load_dataset(root, tmp_path / "cache")
    assert ds.classes == ["class0", "class1", "class2"]
    assert ds.train_x.shape == (15, 16, 16, 3) and ds.train_x.dtype == np.uint8
    assert np.bincount(ds.train_y).tolist() == [5, 5, 5]
    assert ds.test_x.shape == (4, 16, 16, 3)
    assert ds.test_ids == pd.read_csv(root / "sample_submission.csv", dtype=str)["id"].tolist()
    assert ds.submission.target_kind == "name"
    # The test image in row i is the file named by id i.
    first = np.asarray(Image.open(root / "test" / f"{ds.test_ids[0]}.png").convert("RGB"))
    assert np.array_equal(ds.test_x[0], first)


@pytest.mark.parametrize("id_format", ["0000", "0000.png", "0"])
def test_test_ids_match_by_stem_and_number(tmp_path, id_format):
    root = make_competition(tmp_path / "d", per_class=3, test_count=3)
    frame = pd.read_csv(root / "sample_submission.csv", dtype=str)
    frame = frame.iloc[::-1]  # a CSV order unlike the file order must be kept
    numbers = [int(i) for i in frame["id"]]
    frame["id"] = [{"0000": f"{n:04d}", "0000.png": f"{n:04d}.png", "0": str(n)}[id_format] for n in numbers]
    frame.to_csv(root / "sample_submission.csv", index=False)
    ds = load_dataset(root, None)
    assert ds.test_ids == frame["id"].tolist()
    expected = np.asarray(Image.open(root / "test" / f"{numbers[0]:04d}.png").convert("RGB"))
    assert np.array_equal(ds.test_x[0], expected)


def test_integer_targets_detected(tmp_path):
    root = make_competition(tmp_path / "d", per_class=3, target_kind="int")
    assert load_dataset(root, None).submission.target_kind == "int"


def test_modes_converted_and_sizes_unified(tmp_path, capsys):
    root = make_competition(tmp_path / "d", per_class=4)
    folder = root / "train" / "class0"
    Image.new("L", (16, 16), 128).save(folder / "grey.png")
    Image.new("RGBA", (16, 16), (10, 20, 30, 40)).save(folder / "rgba.png")
    Image.new("P", (16, 16), 3).save(folder / "palette.png")
    Image.new("RGB", (24, 20), (200, 0, 0)).save(folder / "big.png")
    ds = load_dataset(root, None, image_size=16)  # "auto" would choose 128: the sizes differ
    assert ds.train_x.shape[1:] == (16, 16, 3)
    assert np.bincount(ds.train_y)[0] == 8
    assert ds.stats["resized"] == 1
    assert "resized 1 image(s)" in capsys.readouterr().out
    assert set(ds.stats["modes"]) >= {"L", "RGBA", "P", "RGB"}


def test_cache_is_used_on_second_load(tmp_path, monkeypatch):
    root = make_competition(tmp_path / "d", per_class=4)
    first = load_dataset(root, tmp_path / "cache")
    monkeypatch.setattr(decode_module, "decode_file",
                        lambda path, *args: (_ for _ in ()).throw(AssertionError("decoded again")))
    second = load_dataset(root, tmp_path / "cache")
    assert np.array_equal(first.train_x, second.train_x) and first.fingerprint == second.fingerprint


def test_fingerprint_survives_copy_and_changes_on_relabel(tmp_path):
    root = make_competition(tmp_path / "d", per_class=4)
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    assert load_dataset(root, None).fingerprint == load_dataset(copy, None).fingerprint
    moved = next((copy / "train" / "class0").iterdir())
    shutil.move(moved, copy / "train" / "class1" / ("x" + moved.name))
    assert load_dataset(copy, None).fingerprint != load_dataset(root, None).fingerprint


def test_limit_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(4), [100, 50, 30, 20])
    rows = limit_rows(labels, 40)
    assert len(rows) == 40 and np.array_equal(rows, limit_rows(labels, 40))
    assert np.bincount(labels[rows]).tolist() == [20, 10, 6, 4]
    assert len(limit_rows(labels, 0)) == 200


def test_kaggle_layout_with_labels_csv(tmp_path):
    root = tmp_path / "k"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for i in range(12):
        Image.new("RGB", (8, 8), (i * 20, 0, 0)).save(root / "train" / f"img{i}.jpg")
        rows.append({"id": f"img{i}", "label": "cat" if i % 2 else "dog"})
    pd.DataFrame(rows).to_csv(root / "train.csv", index=False)
    for i in range(3):
        Image.new("RGB", (8, 8)).save(root / "test" / f"t{i}.jpg")
    pd.DataFrame({"id": [f"t{i}.jpg" for i in range(3)], "label": ["cat"] * 3}).to_csv(
        root / "sample_submission.csv", index=False)
    ds = load_dataset(root, None)
    assert ds.classes == ["cat", "dog"] and len(ds.train_y) == 12 and ds.train_y[1] == 0


# -- bad input: one clear line naming the file and the fix -------------------------------------


def _expect_error(root, *fragments, **kwargs):
    with pytest.raises(CompError) as err:
        load_dataset(root, None, **kwargs)
    for fragment in fragments:
        assert fragment in str(err.value)
    return str(err.value)


def test_missing_train_and_test(tmp_path):
    root = make_competition(tmp_path / "d", per_class=2)
    shutil.rmtree(root / "test")
    _expect_error(root, "test", "missing")
    shutil.rmtree(root / "train")
    _expect_error(root, "train", "missing")


def test_empty_class_folder(tmp_path):
    root = make_competition(tmp_path / "d", per_class=2)
    (root / "train" / "zebra").mkdir()
    _expect_error(root, "zebra", "no images")


def test_single_class(tmp_path):
    root = make_competition(tmp_path / "d", num_classes=2, per_class=3)
    shutil.rmtree(root / "train" / "class1")
    _expect_error(root, "only one class")


def test_non_image_files_are_skipped_with_a_warning(tmp_path, capsys):
    root = make_competition(tmp_path / "d", per_class=3)
    (root / "train" / "class0" / "notes.txt").write_text("hello")
    ds = load_dataset(root, None)
    assert np.bincount(ds.train_y)[0] == 3
    assert "notes.txt" in capsys.readouterr().out


def test_truncated_image_names_file_and_skip_bad_skips_it(tmp_path):
    root = make_competition(tmp_path / "d", per_class=4, ext=".jpg")
    victim = sorted((root / "train" / "class1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:60])
    _expect_error(root, victim.name, "--skip-bad")
    ds = load_dataset(root, None, skip_bad=True)
    assert np.bincount(ds.train_y).tolist() == [4, 3, 4]
    assert ds.stats["bad_files"] == [str(victim.relative_to(root))]


def test_ids_without_files_and_files_without_ids(tmp_path):
    root = make_competition(tmp_path / "d", per_class=2, test_count=3)
    Image.new("RGB", (16, 16)).save(root / "test" / "9999.png")
    _expect_error(root, "9999.png", "no id")
    (root / "test" / "9999.png").unlink()
    (root / "test" / "0001.png").unlink()
    _expect_error(root, "sample_submission.csv", "0001")


def test_repeated_ids_in_the_sample_and_the_labels_csv(tmp_path):
    root = make_competition(tmp_path / "d", per_class=2, test_count=3)
    sample = root / "sample_submission.csv"
    frame = pd.read_csv(sample, dtype=str)
    pd.concat([frame, frame.iloc[:1]]).to_csv(sample, index=False)
    _expect_error(root, "sample_submission.csv", "repeated ids", frame.iloc[0, 0])
    sample.write_text("id\n")
    _expect_error(root, "sample_submission.csv", "needs an id column and a target column")

    kaggle = tmp_path / "k"
    (kaggle / "train").mkdir(parents=True)
    (kaggle / "test").mkdir()
    for i in range(4):
        Image.new("RGB", (8, 8)).save(kaggle / "train" / f"img{i}.jpg")
    Image.new("RGB", (8, 8)).save(kaggle / "test" / "t0.jpg")
    pd.DataFrame({"id": ["t0.jpg"], "label": ["cat"]}).to_csv(kaggle / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ["img0", "img1", "img2", "img3", "img1"],
                  "label": ["cat", "dog", "cat", "dog", "cat"]}).to_csv(kaggle / "train.csv", index=False)
    _expect_error(kaggle, "train.csv", "repeated ids (e.g. img1)", "fix the CSV")


def test_cli_damaged_copy_gets_one_line_and_exit_2(tmp_path):
    """The issue's damaged copy: each defect gets exit code 2 and a single line, never a traceback."""
    root = make_competition(tmp_path / "d", per_class=3, ext=".jpg")
    victim = sorted((root / "train" / "class0").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:50])
    (root / "train" / "class2" / "readme.txt").write_text("x")
    result = run_comp("data", "check", "--data", root, "--workdir", tmp_path / "w")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and victim.name in result.stderr
    assert "readme.txt" in result.stdout  # the stray file was reported before the stop
    victim.unlink()
    (root / "train" / "empty").mkdir()
    result = run_comp("data", "check", "--data", root, "--workdir", tmp_path / "w")
    assert result.returncode == 2 and "empty" in result.stderr and "Traceback" not in result.stderr
    (root / "train" / "empty").rmdir()
    sorted((root / "test").iterdir())[0].unlink()
    result = run_comp("data", "check", "--data", root, "--workdir", tmp_path / "w")
    assert result.returncode == 2 and "sample_submission.csv" in result.stderr


def test_scan_reports_layout(tmp_path):
    root = make_competition(tmp_path / "d", per_class=2, test_count=2)
    layout = scan(root)
    assert len(layout.train_files) == 6 and len(layout.test_files) == 2
    assert all(isinstance(p, Path) for p in layout.train_files)


def test_error_text_is_made_one_line():
    from comp.core.errors import one_line

    assert one_line(ValueError("cannot open\n\tIs the server running?")) == "cannot open Is the server running?"
    assert one_line("x" * 10, limit=6) == "xxx..."
