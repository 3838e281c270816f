"""Multi-label targets (issue #24, item 3): detected in the labels CSV in both forms it ships in
(0/1 columns; space-separated labels), split by iterative stratification, trained with sigmoid
outputs and binary cross-entropy, ensembled on probabilities with per-label thresholds fitted by
cross-fitting, and submitted in the sample's form."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comp.cli import main

LABELS = ["ne", "nw", "se", "sw"]  # a bright quadrant each
SIZE = 8
TRAIN = ["--model", "baseline", "--epochs", "6", "--folds", "3", "--width", "0.5", "--quiet", "--name", "r",
         "--lr", "0.01"]


def quadrant_images(matrix: np.ndarray, seed: int) -> np.ndarray:
    """One 8x8 image per row of a multi-hot matrix: quadrant q bright where label q is on, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.normal(40, 20, (len(matrix), SIZE, SIZE, 3))
    half = SIZE // 2
    corners = [(0, half), (0, 0), (half, half), (half, 0)]  # (row, col) of ne, nw, se, sw
    for label, (top, left) in enumerate(corners):
        images[matrix[:, label] == 1, top:top + half, left:left + half] += 180
    return np.clip(images, 0, 255).astype(np.uint8)


def label_matrix(rows: int, seed: int) -> np.ndarray:
    """Each label on in about a third of the rows; every row has at least one label; skewed: the
    last label rarer."""
    rng = np.random.default_rng(seed)
    matrix = (rng.random((rows, len(LABELS))) < [0.45, 0.4, 0.35, 0.2]).astype(np.uint8)
    matrix[matrix.sum(1) == 0, 0] = 1
    return matrix


def make_multilabel_competition(root: Path, form: str, rows: int = 60, test_rows: int = 12, seed: int = 0) -> Path:
    """train/NNNN.png + train.csv (0/1 columns or space-separated labels), test/, sample_submission.csv."""
    from PIL import Image

    train_y, test_y = label_matrix(rows, seed), label_matrix(test_rows, seed + 1)
    for folder, matrix, offset in (("train", train_y, 0), ("test", test_y, 1)):
        (root / folder).mkdir(parents=True)
        for i, image in enumerate(quadrant_images(matrix, seed + offset)):
            Image.fromarray(image).save(root / folder / f"{i:04d}.png")
    ids = [f"{i:04d}" for i in range(rows)]
    test_ids = [f"{i:04d}" for i in range(test_rows)]
    if form == "columns":
        pd.DataFrame({"id": ids, **{name: train_y[:, j] for j, name in enumerate(LABELS)}}).to_csv(
            root / "train.csv", index=False)
        pd.DataFrame({"id": test_ids, **{name: 0 for name in LABELS}}).to_csv(root / "sample_submission.csv",
                                                                               index=False)
    else:
        spaced = [" ".join(LABELS[j] for j in np.flatnonzero(row)) for row in train_y]
        pd.DataFrame({"image": [f"{i}.png" for i in ids], "labels": spaced}).to_csv(root / "train.csv", index=False)
        pd.DataFrame({"image": [f"{i}.png" for i in test_ids], "labels": LABELS[0]}).to_csv(
            root / "sample_submission.csv", index=False)
    return root
