"""Issue 17 (1, 2): the training image size, resize modes, a memory-mapped cache per size, a decode
that uses worker processes and resumes when interrupted."""

from __future__ import annotations

import json
import mmap

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from comp.data import cache as cache_module
from comp.data import sources as data_module
from comp.data import decode as decode_module
from comp.data.cache import JOURNAL, Rows
from comp.config.run_config import RunConfig
from comp.data.sources import auto_size, load_dataset
from comp.core.errors import CompError

STRIPES = "stripes"  # a 120x40 image of three vertical stripes: red, green, blue
RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _stripes() -> Image.Image:
    pixels = np.zeros((40, 120, 3), np.uint8)
    for third, colour in enumerate((RED, GREEN, BLUE)):
        pixels[:, third * 40:(third + 1) * 40] = colour
    return Image.fromarray(pixels)


def mixed_kaggle(root, train_count=36, test_count=8, seed=0):
    """A Kaggle-layout folder of JPEGs 40-120 px of random aspect, plus the stripes PNG (lossless)."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()

    def write(path):
        height, width = rng.integers(40, 121, 2)
        colour = rng.integers(40, 256, 3)
        noise = rng.integers(0, 30, (height, width, 3))
        Image.fromarray(np.clip(colour + noise, 0, 255).astype(np.uint8)).save(path, quality=90)

    labels = []
    for i in range(train_count):
        write(root / "train" / f"img{i:03d}.jpg")
        labels.append({"id": f"img{i:03d}", "label": "cat" if i % 2 else "dog"})
    _stripes().save(root / "train" / f"{STRIPES}.png")
    labels.append({"id": STRIPES, "label": "cat"})
    pd.DataFrame(labels).to_csv(root / "train.csv", index=False)
    for i in range(test_count):
        write(root / "test" / f"t{i}.jpg")
    pd.DataFrame({"id": [f"t{i}" for i in range(test_count)], "label": ["cat"] * test_count}).to_csv(
        root / "sample_submission.csv", index=False)
    return root


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    return mixed_kaggle(tmp_path_factory.mktemp("mixed") / "data")


def _stripes_row(ds) -> np.ndarray:
    return np.asarray(ds.train_x[ds.stats["train_files"].index(f"train/{STRIPES}.png")]).astype(int)


def _is(pixel, colour) -> bool:
    return bool(np.abs(np.asarray(pixel, int) - colour).max() < 40)


# -- sizes and resize modes --------------------------------------------------------------------------


@pytest.mark.parametrize("side", [32, 48])
@pytest.mark.parametrize("resize", ["squash", "crop", "pad"])
def test_mixed_sizes_load_at_the_chosen_size_with_each_resize_mode(mixed, side, resize):
    ds = load_dataset(mixed, None, image_size=side, resize=resize)
    assert ds.train_x.shape == (37, side, side, 3) and ds.test_x.shape == (8, side, side, 3)
    assert ds.resize == resize and ds.stats["resized"] == 45
    stripes, middle = _stripes_row(ds), side // 2
    if resize == "squash":  # all three stripes, stretched over the whole square
        assert _is(stripes[0, 0], RED) and _is(stripes[-1, middle], GREEN) and _is(stripes[middle, -1], BLUE)
    elif resize == "crop":  # the middle third only: green everywhere
        assert _is(stripes[0, 0], GREEN) and _is(stripes[-1, -1], GREEN)
        assert np.abs(stripes - GREEN).max(axis=-1).mean() < 15
    else:  # the aspect kept: a band a third as high as it is wide, black above and below
        band = np.flatnonzero(stripes.max(axis=(1, 2)) > 0)
        assert (stripes[:band[0]] == 0).all() and (stripes[band[-1] + 1:] == 0).all()
        assert len(band) == pytest.approx(side / 3, abs=1.5)
        assert _is(stripes[middle, 0], RED) and _is(stripes[middle, middle], GREEN) and _is(stripes[middle, -1], BLUE)


def test_height_by_width_and_the_default_size(mixed, capsys):
    assert load_dataset(mixed, None, image_size="24x40").train_x.shape[1:] == (24, 40, 3)
    ds = load_dataset(mixed, None)  # auto: the images differ in size, so 128
    assert ds.image_shape == (128, 128, 3)
    assert "image size 128x128: the default" in capsys.readouterr().out


def test_auto_size_rule():
    assert auto_size({(32, 32): 60_000})[0] == (32, 32)
    assert auto_size({(32, 32): 9_995, (20, 24): 5})[0] == (32, 32)  # a few strays are resized to the rest
    assert auto_size({(32, 32): 90, (20, 24): 10})[0] == (128, 128)
    assert auto_size({(64, 64): 10})[0] == (64, 64)
    assert auto_size({(65, 65): 10})[0] == (128, 128)  # one size, but above 64 px
    assert auto_size({})[0] == (128, 128)


def test_image_size_config_field_is_checked_and_canonical():
    assert RunConfig.from_dict({"image_size": "64x64"}).image_size == 64
    assert RunConfig.from_dict({"image_size": "64"}).image_size == 64
    assert RunConfig.from_dict({"image_size": "96x128"}).image_size == "96x128"
    assert RunConfig().image_size == "auto" and RunConfig().resize == "squash"
    assert RunConfig.from_dict({"image_size": 64}).identity_hash() == RunConfig.from_dict(
        {"image_size": "64x64"}).identity_hash()
    for bad in ("0", "big", "64x", True, 2.5, 10_000):
        with pytest.raises(CompError, match="image_size"):
            RunConfig.from_dict({"image_size": bad})
    with pytest.raises(CompError, match="resize = 'stretch'; expected one of squash, crop, pad"):
        RunConfig.from_dict({"resize": "stretch"})


# -- the cache: one per size, mapped, resumable --------------------------------------------------------


def _cache_folders(cache) -> list:
    return sorted(p for p in cache.iterdir() if p.is_dir())


def test_two_sizes_make_two_caches_and_a_second_load_reuses_its_own(mixed, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    small, large = load_dataset(mixed, cache, image_size=32), load_dataset(mixed, cache, image_size=48)
    assert len(_cache_folders(cache)) == 2 and small.fingerprint == large.fingerprint
    monkeypatch.setattr(decode_module, "decode_file",
                        lambda path, *args: (_ for _ in ()).throw(AssertionError("decoded again")))
    again = load_dataset(mixed, cache, image_size=32)
    assert np.array_equal(again.train_x, small.train_x) and np.array_equal(again.test_x, small.test_x)
    assert len(_cache_folders(cache)) == 2


def test_cached_images_are_read_through_a_memory_mapping_not_copied(mixed, tmp_path):
    cache = tmp_path / "cache"
    load_dataset(mixed, cache, image_size=32)
    ds = load_dataset(mixed, cache, image_size=32)
    for images in (ds.train_x, ds.test_x):
        assert isinstance(cache_module._mapping_of(images), mmap.mmap)  # a view of the mapped file
        assert not images.flags.owndata and not images.flags.writeable
    limited = load_dataset(mixed, cache, image_size=32, limit=10)
    assert isinstance(limited.train_x, Rows) and isinstance(cache_module._mapping_of(limited.train_x), mmap.mmap)
    assert limited.train_x.shape == (10, 32, 32, 3)
    assert np.array_equal(limited.train_x[[0, 3]], ds.train_x[limited.rows[[0, 3]]])
    assert np.array_equal(np.asarray(limited.train_x), ds.train_x[limited.rows])


REAL_DECODE = decode_module.decode_file


def _count_decodes(monkeypatch, fail_at: int | None = None) -> list:
    decoded, real = [], REAL_DECODE

    def counting(path, *args):
        if fail_at is not None and len(decoded) == fail_at:
            raise KeyboardInterrupt  # Ctrl-C in the middle of a chunk
        decoded.append(path)
        return real(path, *args)

    monkeypatch.setattr(decode_module, "decode_file", counting)
    return decoded


def test_an_interrupted_decode_resumes_with_the_chunks_not_done(mixed, tmp_path, monkeypatch):
    monkeypatch.setattr(decode_module, "CHUNK_FILES", 8)
    cache = tmp_path / "cache"
    _count_decodes(monkeypatch, fail_at=20)  # chunks 0 and 1 finish, chunk 2 does not
    with pytest.raises(KeyboardInterrupt):
        load_dataset(mixed, cache, image_size=32)
    (folder,) = _cache_folders(cache)
    assert [json.loads(line)["start"] for line in (folder / JOURNAL).read_text().splitlines()] == [0, 8]
    decoded = _count_decodes(monkeypatch)
    resumed = load_dataset(mixed, cache, image_size=32)
    assert len(decoded) == 45 - 16
    fresh = load_dataset(mixed, None, image_size=32)
    assert np.array_equal(resumed.train_x, fresh.train_x) and np.array_equal(resumed.test_x, fresh.test_x)


def test_worker_processes_decode_the_same_pixels(mixed, tmp_path, monkeypatch):
    monkeypatch.setattr(decode_module, "CHUNK_FILES", 8)
    monkeypatch.setattr(decode_module, "IN_PROCESS_BELOW", 0)
    monkeypatch.setenv(decode_module.WORKERS_ENV, "2")
    started = []
    real_worker = decode_module.Worker.__init__
    monkeypatch.setattr(decode_module.Worker, "__init__", lambda self: started.append(1) or real_worker(self))
    in_workers = load_dataset(mixed, tmp_path / "cache", image_size=40, resize="pad")
    assert len(started) == 2
    in_memory = load_dataset(mixed, None, image_size=40, resize="pad")
    assert np.array_equal(in_workers.train_x, in_memory.train_x) and np.array_equal(in_workers.test_x, in_memory.test_x)
    assert in_workers.stats["sizes"] == in_memory.stats["sizes"]


def test_damaged_train_images_are_moved_out_even_when_the_move_is_interrupted(mixed, tmp_path, monkeypatch):
    """The rows after a damaged train image move down over it; a crash mid-move must not leave them shifted twice."""
    import shutil

    root = tmp_path / "data"
    shutil.copytree(mixed, root)
    victim = root / "train" / "img003.jpg"
    victim.write_bytes(victim.read_bytes()[:80])
    monkeypatch.setattr(decode_module, "CHUNK_FILES", 8)
    real_compact = data_module.compact_rows

    def compact_then_crash(*args):
        real_compact(*args)
        raise RuntimeError("power cut before the cache was complete")

    monkeypatch.setattr(data_module, "compact_rows", compact_then_crash)
    with pytest.raises(RuntimeError):
        load_dataset(root, tmp_path / "cache", image_size=32, skip_bad=True)
    monkeypatch.setattr(data_module, "compact_rows", real_compact)
    resumed = load_dataset(root, tmp_path / "cache", image_size=32, skip_bad=True)
    fresh = load_dataset(root, None, image_size=32, skip_bad=True)
    assert len(resumed.train_y) == 36 and "train/img003.jpg" not in resumed.stats["train_files"]
    assert np.array_equal(resumed.train_x, fresh.train_x) and np.array_equal(resumed.train_y, fresh.train_y)
    assert np.array_equal(resumed.test_x, fresh.test_x)


def test_a_cache_that_does_not_fit_on_disk_is_one_line(mixed, tmp_path, monkeypatch):
    from collections import namedtuple

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(cache_module.shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(CompError, match="need .* on disk and .* are free; free some space, or choose a smaller"):
        load_dataset(mixed, tmp_path / "cache", image_size=64)


# -- check reports the footprint; stages use the run's size ---------------------------------------------


def test_data_check_reports_disk_and_memory_of_the_chosen_size(mixed, tmp_path, capsys):
    from comp.cli import main

    assert main(["data", "check", "--data", str(mixed), "--workdir", str(tmp_path / "w"), "--image-size", "48",
                 "--resize", "pad"]) == 0
    out = capsys.readouterr().out
    per_image = 48 * 48 * 3
    assert f"image size 48x48 (pad): the decoded cache takes {45 * per_image / 1e6:.1f} MB on disk" in out
    assert f"({per_image:,} bytes an image)" in out


def test_runs_of_two_sizes_ensemble_and_each_predicts_at_its_own_size(mixed, tmp_path):
    from comp.workspace import Workspace

    ws = Workspace(tmp_path / "w", data=mixed)
    settings = dict(model="baseline", epochs=1, k=2, width=0.25, batch_size=8, isolate=False)
    small = ws.train(name="at16", image_size=16, **settings)
    large = ws.train(name="at24", image_size=24, resize="crop", **settings)
    assert small.data["image_shape"] == [16, 16, 3] and small.data["resize"] == "squash"
    assert large.data["image_shape"] == [24, 24, 3] and large.data["resize"] == "crop"
    submission = ws.ensemble([small, large], out="both.csv")
    assert len(pd.read_csv(submission.path)) == 8 and set(submission.weights or {"at16": 1}) <= {"at16", "at24"}
    ws.predict(large, tta="flip")  # its nets take 24x24: the data must be loaded at its size
    labelled = pd.read_csv(ws.label(large, mixed / "test"))
    assert len(labelled) == 8
    assert len(_cache_folders(ws.cache)) == 2  # one per size; ensemble and predict decoded nothing new
