"""Proof on real-looking photos (issue 17): a Kaggle-layout folder of JPEGs of mixed sizes and aspect
ratios, made here, goes through tune -> train --fold all -> ensemble at --image-size 64 through the
real CLI, then a second run at 96 px (a second cache; the 64-px one untouched) ensembles with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from .conftest import run_comp

# The set: a few hundred photos, as a small Kaggle competition ships them.
CLASSES = ("circle", "square", "triangle")  # each a shape in its own colour
TRAIN_PER_CLASS = 80
TEST_COUNT = 30
SIDES = (96, 400)  # each image's width and height drawn from this range: mixed sizes and aspects
COLOURS = {"circle": (210, 60, 50), "square": (60, 190, 70), "triangle": (60, 80, 210)}
NOISE = 30  # pixel noise (std) over the picture: the colour stays visible, the pixels vary

# A small net and few epochs: the point is the pipeline at photo sizes, on 2 CPU cores.
# resnet: at 96 px its strided stem halves the images (comp.nets.models.input_halvings).
TRAINING = ["--width", "0.25", "--batch-size", "16", "--lr", "0.02", "--epochs", "4"]


def _photo(rng, shape: str):
    from PIL import Image, ImageDraw

    width, height = (int(v) for v in rng.integers(SIDES[0], SIDES[1] + 1, 2))
    background = rng.integers(90, 170, 3)
    pixels = np.clip(background + rng.normal(0, NOISE, (height, width, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    # The shape covers a third to two thirds of the shorter side, anywhere in the picture.
    size = int(min(width, height) * rng.uniform(0.35, 0.65))
    left, top = int(rng.integers(0, width - size + 1)), int(rng.integers(0, height - size + 1))
    box = (left, top, left + size, top + size)
    colour = tuple(int(c) for c in np.clip(np.array(COLOURS[shape]) + rng.integers(-25, 26, 3), 0, 255))
    draw = ImageDraw.Draw(image)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    else:
        draw.polygon([(left, top + size), (left + size, top + size), (left + size // 2, top)], fill=colour)
    return image


def make_photo_competition(root: Path, seed: int = 0) -> Path:
    """train/<id>.jpg + train.csv (id,label), test/<id>.jpg, sample_submission.csv in Kaggle's
    probability format (id,<class>,...), answers.csv."""
    rng = np.random.default_rng(seed)
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    labels = [name for name in CLASSES for _ in range(TRAIN_PER_CLASS)]
    rng.shuffle(labels)
    for i, name in enumerate(labels):
        _photo(rng, name).save(root / "train" / f"{i:05d}.jpg", quality=90)
    pd.DataFrame({"id": [f"{i:05d}" for i in range(len(labels))], "label": labels}).to_csv(root / "train.csv", index=False)
    answers = [CLASSES[i % len(CLASSES)] for i in range(TEST_COUNT)]
    ids = [f"t{i:04d}" for i in range(TEST_COUNT)]
    for id_, name in zip(ids, answers):
        _photo(rng, name).save(root / "test" / f"{id_}.jpg", quality=90)
    sample = pd.DataFrame({"id": ids, **{name: 1 / len(CLASSES) for name in CLASSES}})
    sample.to_csv(root / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids, "label": answers}).to_csv(root / "answers.csv", index=False)
    return root


def comp(*args) -> str:
    result = run_comp(*map(str, args))
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout + result.stderr


def _caches(work: Path) -> dict[tuple[int, int], Path]:
    """The decoded caches under the workdir, by image size (read from each images.npy's header)."""
    found = {}
    for images in work.rglob("cache/*/images.npy"):
        found[tuple(np.load(images, mmap_mode="r").shape[1:3])] = images
    return found


def _summary(work: Path, run: str) -> dict:
    import json

    (path,) = [p for p in work.rglob("summary.json") if p.parent.name == run]
    return json.loads(path.read_text())


def _check_submission(path: Path, data: Path) -> None:
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    written = pd.read_csv(path, dtype=str)
    assert list(written.columns) == list(sample.columns)
    assert written["id"].tolist() == sample["id"].tolist()
    probs = written[list(CLASSES)].astype(float).to_numpy()
    assert ((probs >= 0) & (probs <= 1)).all() and np.allclose(probs.sum(1), 1.0, atol=1e-3)


@pytest.mark.slow
def test_mixed_size_photos_tune_train_and_ensemble_at_two_sizes(tmp_path):
    from PIL import Image

    data, work = make_photo_competition(tmp_path / "photos"), tmp_path / "work"
    sizes = {Image.open(p).size for p in (data / "train").glob("*.jpg")}
    assert len(sizes) > 100 and min(min(s) for s in sizes) >= SIDES[0] and max(max(s) for s in sizes) <= SIDES[1]
    common = ["--data", data, "--workdir", work, "--quiet"]

    comp("tune", *common, "--model", "resnet", *TRAINING, "--image-size", "64", "--trials", "1", "--epochs", "1")
    # No --model: train takes the tune result (resnet at 64 px), with more epochs.
    comp("train", *common, *TRAINING, "--image-size", "64", "--fold", "all", "--name", "px64")
    assert _summary(work, "px64")["model"] == "resnet"
    assert _summary(work, "px64")["cv_accuracy"] > 1 / len(CLASSES) + 0.1  # above chance (0.33)
    comp("ensemble", "--workdir", work, "--runs", "px64", "--out", "one.csv", "--quiet")
    _check_submission(work / "submissions" / "one.csv", data)

    caches = _caches(work)
    assert list(caches) == [(64, 64)]
    before = caches[(64, 64)].stat()
    # A second size: its own cache, decoded once; the 64-px cache is neither rewritten nor replaced.
    comp("train", *common, "--model", "resnet", *TRAINING, "--image-size", "96", "--fold", "all", "--name", "px96")
    caches = _caches(work)
    assert sorted(caches) == [(64, 64), (96, 96)]
    after = caches[(64, 64)].stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (before.st_ino, before.st_mtime_ns, before.st_size)
    assert _summary(work, "px96")["cv_accuracy"] > 1 / len(CLASSES) + 0.1

    comp("ensemble", "--workdir", work, "--runs", "px64,px96", "--out", "both.csv", "--quiet")
    _check_submission(work / "submissions" / "both.csv", data)
    index = pd.read_csv(work / "submissions" / "index.csv", dtype=str)
    assert index["file"].iloc[-1].endswith("both.csv") and set(index["runs"].iloc[-1].split(";")) == {"px64", "px96"}
