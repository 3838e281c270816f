"""Hardening of the data layer: content fingerprint, odd image files, every problem in one pass."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image, ImageOps

from comp.data import sources as data_module
from comp.data import decode as decode_module
from comp.stages.check import check_folder, size_summary
from comp.data.sources import (
    BAD_CSV,
    BAD_LINK,
    DAMAGED,
    EMPTY_CLASS,
    ERROR,
    ID_WITHOUT_IMAGE,
    IMAGE_WITHOUT_ID,
    LABEL_WITHOUT_IMAGE,
    NON_IMAGE,
    ONE_CLASS,
    UNLABELED,
    WARNING,
    find_problems,
    load_dataset,
)
from comp.core.errors import CompError

from .conftest import make_competition, run_comp


def _no_decoding(monkeypatch):
    monkeypatch.setattr(decode_module, "decode_file",
                        lambda path, *args: (_ for _ in ()).throw(AssertionError("decoded again")))


# -- 1. the fingerprint covers content -------------------------------------------------------


@pytest.fixture
def trust_fresh_files(monkeypatch):
    """Remember the digests of files written a moment ago (tests write their data just before loading)."""
    monkeypatch.setattr(data_module, "RACY_NS", 0)


def test_same_size_replacement_changes_fingerprint_and_cached_arrays(tmp_path, trust_fresh_files):
    """BMPs of one size all have the same byte count: a swapped test image keeps names and sizes."""
    root = make_competition(tmp_path / "d", per_class=3, test_count=4, ext=".bmp")
    cache = tmp_path / "cache"
    before = load_dataset(root, cache)
    victim, donor = root / "test" / "0000.bmp", root / "test" / "0001.bmp"
    stat = victim.stat()
    victim.write_bytes(donor.read_bytes())
    os.utime(victim, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # even the modification time is kept
    assert victim.stat().st_size == stat.st_size and victim.stat().st_mtime_ns == stat.st_mtime_ns
    after = load_dataset(root, cache)
    assert after.fingerprint != before.fingerprint
    row = before.test_ids.index("0000")
    donor_pixels = np.asarray(Image.open(donor).convert("RGB"))
    assert not np.array_equal(before.test_x[row], donor_pixels)
    assert np.array_equal(after.test_x[row], donor_pixels)  # the decoded cache was not reused


def test_second_load_reads_no_file_and_a_touch_decodes_nothing(tmp_path, monkeypatch, trust_fresh_files):
    root = make_competition(tmp_path / "d", per_class=3, test_count=4)
    cache = tmp_path / "cache"
    first = load_dataset(root, cache)
    hashed = []
    real_digest = data_module._file_digest
    monkeypatch.setattr(data_module, "_file_digest", lambda path: hashed.append(path) or real_digest(path))
    _no_decoding(monkeypatch)
    assert load_dataset(root, cache).fingerprint == first.fingerprint
    assert hashed == []  # size, mtime and ctime matched: no file was read again
    touched = sorted((root / "train" / "class1").iterdir())[0]
    os.utime(touched, ns=(1_000_000_000, 1_000_000_000))
    again = load_dataset(root, cache)  # the same content: hashed again, but not decoded again
    assert hashed == [touched] and again.fingerprint == first.fingerprint


def test_files_changed_a_moment_ago_are_read_again(tmp_path, monkeypatch):
    """Within RACY_NS of a change, a file may change again with the same size and times: never trusted."""
    monkeypatch.setattr(data_module, "RACY_NS", 10**18)  # every file "just changed", however slow this machine
    root = make_competition(tmp_path / "d", per_class=3, test_count=4)
    cache = tmp_path / "cache"
    load_dataset(root, cache)
    hashed = []
    real_digest = data_module._file_digest
    monkeypatch.setattr(data_module, "_file_digest", lambda path: hashed.append(path) or real_digest(path))
    load_dataset(root, cache)
    assert len(hashed) == 3 * 3 + 4  # every file is read again


# -- 2. odd files ------------------------------------------------------------------------------


def test_symlink_loops_are_skipped_with_a_warning(tmp_path, capsys):
    root = make_competition(tmp_path / "d", per_class=3)
    (root / "train" / "class0" / "loop.png").symlink_to("loop.png")  # ELOOP when followed
    (root / "train" / "class1" / "dead.png").symlink_to("nowhere.png")
    (root / "train" / "back").symlink_to("..", target_is_directory=True)  # a "class folder" holding train/
    ds = load_dataset(root, None)
    assert ds.classes == ["class0", "class1", "class2"] and np.bincount(ds.train_y).tolist() == [3, 3, 3]
    out = capsys.readouterr().out
    assert "unreadable links skipped: 3" in out and "loop.png" in out and "dead.png" in out and "back" in out
    links = [p for p in find_problems(root) if p.kind == BAD_LINK]
    assert [p.path.name for p in links] == ["back", "loop.png", "dead.png"]
    assert {p.severity for p in links} == {WARNING}


def _add(root: Path, name: str, image: Image.Image, **save) -> Path:
    path = root / "train" / "class0" / name
    image.save(path, **save)
    return path


def _decoded(ds, root: Path, path: Path) -> np.ndarray:
    return ds.train_x[ds.stats["train_files"].index(str(path.relative_to(root)))]


@pytest.mark.parametrize("mode, ext", [("I;16", ".png"), ("I;16B", ".tif"), ("I", ".tif")])
def test_16_bit_images_are_scaled_not_saturated(tmp_path, mode, ext):
    root = make_competition(tmp_path / "d", per_class=3)
    values = (np.arange(256).reshape(16, 16) * 257).astype(np.uint16)  # the full 16-bit range
    image = Image.frombytes(mode, (16, 16), values.astype(">u2" if mode == "I;16B" else "<u2").tobytes()) \
        if mode != "I" else Image.fromarray(values.astype(np.int32))
    path = _add(root, f"deep{ext}", image)
    assert Image.open(path).mode == mode
    decoded = _decoded(load_dataset(root, None), root, path)
    expected = np.arange(256, dtype=np.uint8).reshape(16, 16)
    assert np.array_equal(decoded, np.repeat(expected[..., None], 3, axis=-1))


@pytest.mark.parametrize("ext", [".jpg", ".tif"])
def test_cmyk_converts_to_the_same_colours(tmp_path, ext):
    root = make_competition(tmp_path / "d", per_class=3)
    rgb = np.random.default_rng(0).integers(0, 256, (16, 16, 3)).astype(np.uint8)
    path = _add(root, f"print{ext}", Image.fromarray(rgb).convert("CMYK"), **({"quality": 100} if ext == ".jpg" else {}))
    assert Image.open(path).mode == "CMYK"
    decoded = _decoded(load_dataset(root, None), root, path).astype(int)
    assert np.abs(decoded - rgb).mean() < 3  # JPEG's loss only; inverted or swapped channels are ~100 off


def test_exif_orientation_is_applied(tmp_path):
    root = make_competition(tmp_path / "d", per_class=3)
    stored = np.zeros((16, 16, 3), np.uint8)
    stored[:4, :8] = 255  # a bar in the top left, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # show turned 90 degrees clockwise
    path = _add(root, "phone.png", Image.fromarray(stored), exif=exif)
    ds = load_dataset(root, None)
    assert np.array_equal(_decoded(ds, root, path), np.rot90(stored, -1))
    assert np.array_equal(_decoded(ds, root, path), np.asarray(ImageOps.exif_transpose(Image.open(path))))
    assert ds.stats["rotated"] == 1


def test_conversions_are_said_once(tmp_path, capsys):
    root = make_competition(tmp_path / "d", per_class=3)
    _add(root, "grey.png", Image.new("L", (16, 16), 9))
    _add(root, "grey2.png", Image.new("L", (16, 16), 9))
    _add(root, "alpha.png", Image.new("LA", (16, 16), (9, 100)))
    _add(root, "deep.png", Image.fromarray(np.full((16, 16), 40000, np.uint16)))
    exif = Image.Exif()
    exif[0x0112] = 3
    _add(root, "upside.png", Image.new("RGB", (16, 16)), exif=exif)
    cache = tmp_path / "cache"
    load_dataset(root, cache)
    out = capsys.readouterr().out
    for said in ("2 L (grayscale, expanded to RGB)", "1 LA (grayscale, expanded to RGB, alpha dropped)",
                 "1 I;16 (16-bit grayscale, scaled to 8 bits", "1 turned upright by their EXIF orientation"):
        assert said in out
    load_dataset(root, cache)
    assert "converted" not in capsys.readouterr().out  # from the cache: nothing converted again


# -- 3. every problem in one pass ----------------------------------------------------------


def _damaged_dacon(tmp_path) -> tuple[Path, Path]:
    root = make_competition(tmp_path / "d", per_class=3, test_count=4, ext=".jpg")
    victim = sorted((root / "train" / "class1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:60])
    (root / "train" / "zebra").mkdir()
    (root / "train" / "class2" / "notes.txt").write_text("x")
    (root / "test" / "0003.jpg").unlink()
    Image.new("RGB", (16, 16)).save(root / "test" / "extra.jpg")
    return root, victim


def test_find_problems_lists_every_problem(tmp_path):
    root, victim = _damaged_dacon(tmp_path)
    found = {(p.severity, p.kind, p.path.name) for p in find_problems(root)}
    assert found == {
        (ERROR, EMPTY_CLASS, "zebra"),
        (ERROR, DAMAGED, victim.name),
        (WARNING, NON_IMAGE, "notes.txt"),
        (ERROR, ID_WITHOUT_IMAGE, "sample_submission.csv"),
        (ERROR, IMAGE_WITHOUT_ID, "extra.jpg"),
    }


def test_a_load_stops_on_the_first_error_and_counts_the_others(tmp_path):
    """A wrong layout stops the load before any image is decoded (the damaged one is not counted yet)."""
    root, _ = _damaged_dacon(tmp_path)
    with pytest.raises(CompError) as err:
        load_dataset(root, None)
    message = str(err.value)
    assert message.startswith(f"{root / 'train' / 'zebra'}: class folder has no images")
    assert "2 more error(s) found before decoding" in message and "comp data check" in message and "\n" not in message


def test_data_check_cli_prints_the_table_and_exits_2(tmp_path):
    root, victim = _damaged_dacon(tmp_path)
    result = run_comp("data", "check", "--data", root, "--workdir", tmp_path / "w", env={"COLUMNS": "160"})
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "4 error(s)" in result.stderr
    for shown in ("train/zebra", f"train/class1/{victim.name}", "train/class2/notes.txt", "test/extra.jpg",
                  "id 0003 has no image"):
        assert shown in result.stdout
    assert result.stdout.index("train/zebra") < result.stdout.index("notes.txt")  # errors before warnings


def test_data_check_decodes_each_image_once_and_reuses_the_cache(tmp_path, monkeypatch):
    root = make_competition(tmp_path / "d", per_class=3, test_count=4, ext=".jpg")
    victim = sorted((root / "train" / "class1").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:60])
    decoded = []
    real_decode = decode_module.decode_file
    monkeypatch.setattr(decode_module, "decode_file", lambda path, *args: decoded.append(path) or real_decode(path, *args))
    cache = tmp_path / "cache"
    for _ in range(2):
        with pytest.raises(CompError, match=victim.name):
            check_folder(root, cache, tmp_path / "grid.png")
    assert sorted(decoded) == sorted([*root.glob("train/*/*.jpg"), *root.glob("test/*.jpg")])  # once each
    decoded.clear()
    result = check_folder(root, cache, tmp_path / "grid.png", skip_bad=True)
    assert decoded == [] and result["bad_files"] == [str(victim.relative_to(root))]


def test_kaggle_problems_and_unlabeled_images_are_warned(tmp_path, capsys):
    root = tmp_path / "k"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    for i in range(7):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(root / "train" / f"img{i}.jpg")
    Image.new("RGB", (8, 8)).save(root / "test" / "t0.jpg")
    pd.DataFrame({"id": ["t0.jpg"], "label": ["cat"]}).to_csv(root / "sample_submission.csv", index=False)
    labels = pd.DataFrame({"id": ["img0", "img1", "img2", "img3", "img4"], "label": ["cat", "dog"] * 2 + ["cat"]})
    labels.to_csv(root / "train.csv", index=False)
    ds = load_dataset(root, None)  # img5 and img6 are not in the CSV: a warning, not silence
    assert len(ds.train_y) == 5
    out = capsys.readouterr().out
    assert "train images not in the labels CSV, not used: 2 (train/img5.jpg, train/img6.jpg)" in out
    assert {(p.kind, p.path.name) for p in find_problems(root)} == {(UNLABELED, "img5.jpg"), (UNLABELED, "img6.jpg")}

    pd.DataFrame({"id": [*labels["id"], "ghost"], "label": "cat"}).to_csv(root / "train.csv", index=False)
    found = {(p.severity, p.kind) for p in find_problems(root)}
    assert found == {(ERROR, LABEL_WITHOUT_IMAGE), (ERROR, ONE_CLASS), (WARNING, UNLABELED)}


def test_unreadable_sample_csv_is_one_problem_among_others(tmp_path):
    root = make_competition(tmp_path / "d", per_class=3)
    (root / "sample_submission.csv").write_bytes(b"\xff\xfe\x00garbage\x00\x81")
    (root / "train" / "empty").mkdir()
    found = {(p.kind, p.path.name) for p in find_problems(root)}
    assert found == {(BAD_CSV, "sample_submission.csv"), (EMPTY_CLASS, "empty")}


def test_size_summary_is_one_short_line():
    sizes = {f"{h}x{w}": 1 for h in range(30, 200, 3) for w in (40, 50, 60)} | {"32x32": 900}
    line = size_summary(sizes)
    assert line.startswith(f"image sizes (h x w): {len(sizes)} distinct; height 30-198")
    assert "width 32-60" in line and "most common: 32x32 x900" in line and len(line) < 200
    assert size_summary({"32x32": 60000}) == "image size (h x w): 32x32 (all 60,000)"


def test_problem_table_shows_a_few_per_kind_and_counts_the_rest(tmp_path):
    from rich.console import Console

    from comp.stages.check import ROWS_PER_KIND, problems_table

    root = make_competition(tmp_path / "d", per_class=3)
    for i in range(ROWS_PER_KIND + 3):
        (root / "train" / "class0" / f"note{i}.txt").write_text("x")
    (root / "train" / "empty").mkdir()
    console = Console(record=True, width=200)
    console.print(problems_table(find_problems(root), root))
    text = console.export_text()
    assert text.index("train/empty") < text.index("note0.txt")  # errors first
    shown = [f"note{i}.txt" for i in range(ROWS_PER_KIND + 3) if f"note{i}.txt" in text]
    assert len(shown) == ROWS_PER_KIND and "... and 3 more" in text and f"1 error(s), {ROWS_PER_KIND + 3} warning(s)" in text


def test_skipped_files_come_from_this_scan_not_the_cache(tmp_path):
    root = make_competition(tmp_path / "d", per_class=3)
    stray = root / "train" / "class0" / "notes.txt"
    stray.write_text("x")
    assert load_dataset(root, tmp_path / "cache").stats["skipped_files"] == ["train/class0/notes.txt"]
    stray.unlink()  # not an image: the fingerprint and the decoded cache stay as they were
    assert load_dataset(root, tmp_path / "cache").stats["skipped_files"] == []
