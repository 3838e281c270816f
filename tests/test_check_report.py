"""What `comp data check` reports once the data loads: exact duplicates and the sample grid."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from comp.stages import check


def images_with_duplicates(shape=(5, 7, 3)):
    """40 distinct train images, then rows 10 and 30 copies of row 20 (labels 0, 1, 0: a conflict),
    row 41 a copy of row 40 (same label); 6 test images, the first two copies of train rows."""
    rng = np.random.default_rng(3)
    train = rng.integers(0, 256, (42, *shape), dtype=np.uint8)
    labels = rng.integers(0, 3, 42)
    train[10] = train[30] = train[20]
    labels[[10, 20, 30]] = [0, 1, 0]
    train[41] = train[40]
    labels[41] = labels[40]
    test = rng.integers(0, 256, (6, *shape), dtype=np.uint8)
    test[0], test[1] = train[5], train[20]
    return SimpleNamespace(train_x=train, train_y=labels, test_x=test, multilabel=False)


EXPECTED = {"train_duplicate_groups": 2, "train_duplicate_rows": 3, "train_conflicting_label_groups": 1,
            "test_images_also_in_train": 2}


@pytest.mark.parametrize("shape", [(5, 7, 3), (4, 4, 1), (32, 32, 3)])  # rows of 105, 16 and 3,072 bytes
def test_exact_duplicates_are_counted(shape):
    assert check.find_duplicates(images_with_duplicates(shape)) == EXPECTED


def test_images_whose_fast_hashes_collide_are_told_apart_by_their_bytes(monkeypatch):
    monkeypatch.setattr(check, "_fast_hashes", lambda images: np.zeros(len(images), np.uint64))
    assert check.find_duplicates(images_with_duplicates()) == EXPECTED


@pytest.mark.parametrize("channels", [3, 1])  # RGB, and grayscale as a pixel CSV caches it
def test_the_sample_grid_has_a_row_per_class(tmp_path, channels):
    data = images_with_duplicates((8, 16, channels))  # wider than high: the tiles keep the aspect
    data.classes, data.num_classes, data.image_shape = ["a", "b", "c"], 3, (8, 16, channels)
    path = check.sample_grid(data, tmp_path / "grid.png", per_class=4)
    tile_w, tile_h = check.grid_tile_size(data.image_shape)
    assert (tile_w, tile_h) == (check.GRID_TILE, check.GRID_TILE // 2)
    width, height = Image.open(path).size
    assert width == check.GRID_GAP + 4 * (tile_w + check.GRID_GAP)
    assert height == check.GRID_GAP + 3 * (check.GRID_LABEL + tile_h + check.GRID_GAP)
