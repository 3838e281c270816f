"""Datasets written in DACON layout: the embedded demo set and CIFAR-10.

The demo set is scikit-learn's bundled 8x8 digits (1,797 real handwritten digits that ship
with a dependency, so no download), upscaled to 32x32 RGB. A fifth of it is held back as the
test set, with its answers in answers.csv so `comp score` can grade a practice submission.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from comp.core.console import info
from comp.core.errors import CompError
from comp.core.fileio import save_csv

DEMO_SIZE = 32  # upscale 8x8 digits to CIFAR's size, so every model preset applies unchanged
DEMO_TEST_FRACTION = 0.2
DEMO_SEED = 0


def _write_images(folder: Path, images: np.ndarray, names: list[str]) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        Image.fromarray(image).save(folder / name)


def write_competition(out_dir: Path, train_x, train_y, classes, test_x, test_y, ext=".png",
                      id_with_ext=False, target_kind="name") -> Path:
    """Write arrays as train/<class>/NNNN.ext, test/NNNN.ext, sample_submission.csv, answers.csv."""
    out_dir = Path(out_dir)
    if (out_dir / "train").exists() and any((out_dir / "train").iterdir()):
        raise CompError(f"{out_dir}/train: already holds data; choose an empty folder")
    for index, name in enumerate(classes):
        members = np.flatnonzero(train_y == index)
        _write_images(out_dir / "train" / name, train_x[members], [f"{i:04d}{ext}" for i in range(len(members))])
    test_names = [f"{i:04d}{ext}" for i in range(len(test_x))]
    _write_images(out_dir / "test", test_x, test_names)
    ids = test_names if id_with_ext else [Path(n).stem for n in test_names]
    if target_kind == "int":
        placeholder, answers = [0] * len(ids), [int(y) for y in test_y]
    else:
        placeholder, answers = [classes[0]] * len(ids), [classes[y] for y in test_y]
    save_csv(out_dir / "sample_submission.csv", pd.DataFrame({"id": ids, "target": placeholder}))
    save_csv(out_dir / "answers.csv", pd.DataFrame({"id": ids, "target": answers}))
    return out_dir


def write_demo(out_dir: Path) -> Path:
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    # 0..16 grey levels -> 0..255, then bilinear upscale and grey -> RGB.
    small = (digits.images * (255.0 / 16.0)).astype(np.uint8)
    images = np.stack([
        np.asarray(Image.fromarray(im).resize((DEMO_SIZE, DEMO_SIZE), Image.BILINEAR).convert("RGB"))
        for im in small
    ])
    labels = digits.target.astype(np.int64)
    train_x, test_x, train_y, test_y = train_test_split(
        images, labels, test_size=DEMO_TEST_FRACTION, stratify=labels, random_state=DEMO_SEED
    )
    classes = [str(i) for i in range(10)]
    # Integer targets, ids without extension: the other half of what real competitions use.
    write_competition(out_dir, train_x, train_y, classes, test_x, test_y, target_kind="int")
    info(f"demo dataset: {len(train_x)} train, {len(test_x)} test images (32x32 digits) in {out_dir}")
    return out_dir


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_cifar10(out_dir: Path) -> Path:
    import keras

    try:
        (train_x, train_y), (test_x, test_y) = keras.datasets.cifar10.load_data()
    except Exception as err:  # urllib, ssl and tarfile errors all mean "could not download"
        raise CompError(
            f"CIFAR-10 download failed ({type(err).__name__}); this needs internet access, or put "
            "cifar-10-batches-py.tar.gz in ~/.keras/datasets/ and run again"
        ) from None
    write_competition(out_dir, train_x, train_y.ravel(), CIFAR10_CLASSES, test_x, test_y.ravel(),
                      id_with_ext=True)
    info(f"CIFAR-10: 50,000 train, 10,000 test images in {out_dir}")
    return out_dir
