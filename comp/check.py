"""`comp data check`: the look at the data that competitors always take first."""

from __future__ import annotations

import hashlib
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.table import Table

from .console import console
from .data import Dataset
from .fileio import save_figure


def _pixel_hashes(images: np.ndarray) -> list[str]:
    return [hashlib.blake2b(image.tobytes(), digest_size=12).hexdigest() for image in images]


def find_duplicates(dataset: Dataset) -> dict:
    """Exact pixel duplicates within train (with their labels) and between train and test."""
    train_hashes = _pixel_hashes(dataset.train_x)
    groups = defaultdict(list)
    for row, digest in enumerate(train_hashes):
        groups[digest].append(row)
    within = [rows for rows in groups.values() if len(rows) > 1]
    conflicting = [rows for rows in within if len(set(dataset.train_y[rows])) > 1]
    test_hashes = _pixel_hashes(dataset.test_x)
    across = [i for i, digest in enumerate(test_hashes) if digest in groups]
    return {
        "train_duplicate_groups": len(within),
        "train_duplicate_rows": sum(len(rows) - 1 for rows in within),
        "train_conflicting_label_groups": len(conflicting),
        "test_images_also_in_train": len(across),
    }


def class_counts_table(dataset: Dataset) -> Table:
    counts = np.bincount(dataset.train_y, minlength=dataset.num_classes)
    table = Table(title=f"train: {len(dataset.train_y):,} images in {dataset.num_classes} classes")
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    for name, count in zip(dataset.classes, counts):
        table.add_row(name, f"{count:,}", f"{count / counts.sum():.1%}")
    return table


def sample_grid(dataset: Dataset, path: Path, per_class: int = 8) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(0)
    rows = dataset.num_classes
    fig, axes = plt.subplots(rows, per_class, figsize=(per_class * 1.1, rows * 1.15), squeeze=False)
    for c, name in enumerate(dataset.classes):
        members = np.flatnonzero(dataset.train_y == c)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
        for j in range(per_class):
            ax = axes[c, j]
            ax.axis("off")
            if j < len(chosen):
                ax.imshow(dataset.train_x[chosen[j]])
        axes[c, 0].set_title(name, fontsize=8, loc="left")
    save_figure(path, fig)
    plt.close(fig)
    return path


def report(dataset: Dataset, grid_path: Path) -> dict:
    console.print(class_counts_table(dataset))
    stats = dataset.stats
    duplicates = find_duplicates(dataset)
    console.print(f"test: {len(dataset.test_ids):,} images; submission target: "
                  f"{dataset.submission.target_kind} ({dataset.submission.path.name})")
    console.print("image sizes (h x w): " + ", ".join(f"{s} x{n:,}" for s, n in stats["sizes"].items()))
    console.print("image modes: " + ", ".join(f"{m} x{n:,}" for m, n in stats["modes"].items()))
    console.print(
        f"exact duplicates: {duplicates['train_duplicate_rows']} within train "
        f"({duplicates['train_conflicting_label_groups']} groups with conflicting labels), "
        f"{duplicates['test_images_also_in_train']} test images also in train"
    )
    bad, skipped = stats.get("bad_files", []), stats.get("skipped_files", [])
    console.print(f"unreadable files: {len(bad)}" + (f" ({', '.join(bad[:5])})" if bad else ""))
    console.print(f"non-image files skipped: {len(skipped)}" + (f" ({', '.join(skipped[:5])})" if skipped else ""))
    console.print(f"fingerprint: {dataset.fingerprint}")
    sample_grid(dataset, grid_path)
    console.print(f"sample grid: {grid_path}")
    counts = np.bincount(dataset.train_y, minlength=dataset.num_classes)
    return {
        "classes": dict(zip(dataset.classes, counts.tolist())),
        "test_images": len(dataset.test_ids),
        "duplicates": duplicates,
        "fingerprint": dataset.fingerprint,
    } | {k: stats[k] for k in ("sizes", "modes", "resized", "bad_files", "skipped_files")}


def check_data(workspace, grid_path: Path) -> dict:
    """`comp data check` on the workspace's data folder."""
    return report(workspace.dataset(), grid_path)
