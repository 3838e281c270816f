"""`comp data check`: the look at the data that competitors always take first.

Every problem of the folder first, as one table; then, when none is an error, the class counts,
sizes, modes, duplicates and a sample grid.
"""

from __future__ import annotations

import hashlib
import io
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np
from rich.table import Table

from comp.data.cache import gigabytes, iter_chunks
from comp.core.console import console
from comp.data.sources import ERROR, Dataset, Problem, apply_limit, errors_in, inspect_data, relative_name
from comp.core.errors import CompError
from comp.core.fileio import atomic_path
from comp.core.stats import IMBALANCED_RATIO, imbalance_ratio

ROWS_PER_KIND = 5  # problems of one kind shown in the table before "... and N more"
COMMON_SIZES = 5  # most common image sizes named in the size summary


HASH_SEED = 0  # the fixed weights of the fast pixel hash


def _fast_hashes(images) -> np.ndarray:
    """A 64-bit hash of each image's pixels, read a few MB at a time: its bytes as 64-bit words
    (zero-padded) dotted with fixed random odd weights, wrapping modulo 2**64 -- one matrix
    product a chunk, where a digest per image cost a Python call each (0.4 s on 60,000). Equal
    images hash equal; unequal ones may collide, so `_pixel_keys` settles the rows that share one."""
    row_bytes = int(np.prod(images.shape[1:])) * np.dtype(images.dtype).itemsize
    words = -(-row_bytes // 8)
    weights = np.random.default_rng(HASH_SEED).integers(1, 2**63, size=words, dtype=np.uint64) | np.uint64(1)
    hashes = [np.zeros(0, np.uint64)]
    for chunk in iter_chunks(images):
        flat = chunk.reshape(len(chunk), -1).view(np.uint8)
        if row_bytes % 8:
            flat = np.pad(flat, ((0, 0), (0, words * 8 - row_bytes)))
        hashes.append(np.ascontiguousarray(flat).view("<u8") @ weights)
    return np.concatenate(hashes)


def _pixel_keys(images, fast: np.ndarray, rows: np.ndarray) -> dict[int, tuple[int, str]]:
    """What tells `rows` apart exactly: the fast hash and a digest of their bytes (read only for these rows)."""
    return {int(row): (int(fast[row]), hashlib.blake2b(np.asarray(images[int(row)]).tobytes(),
                                                        digest_size=12).hexdigest()) for row in rows}


def find_duplicates(dataset: Dataset) -> dict:
    """Exact pixel duplicates within train (with their labels) and between train and test.

    Only rows whose fast hash another row shares can be duplicates: their bytes settle it.
    """
    train_fast, test_fast = _fast_hashes(dataset.train_x), _fast_hashes(dataset.test_x)
    values, counts = np.unique(train_fast, return_counts=True)
    suspects = np.flatnonzero(np.isin(train_fast, values[counts > 1]) | np.isin(train_fast, test_fast))
    groups = defaultdict(list)
    for row, key in _pixel_keys(dataset.train_x, train_fast, suspects).items():
        groups[key].append(row)
    within = [rows for rows in groups.values() if len(rows) > 1]
    conflicting = [rows for rows in within if len(np.unique(dataset.train_y[rows], axis=0)) > 1]
    test_keys = _pixel_keys(dataset.test_x, test_fast, np.flatnonzero(np.isin(test_fast, train_fast)))
    across = [row for row, key in test_keys.items() if key in groups]
    return {
        "train_duplicate_groups": len(within),
        "train_duplicate_rows": sum(len(rows) - 1 for rows in within),
        "train_conflicting_label_groups": len(conflicting),
        "test_images_also_in_train": len(across),
    }


def class_counts(dataset: Dataset) -> np.ndarray:
    """Images of each class; multi-label: images carrying each label."""
    if dataset.multilabel:
        return dataset.train_y.sum(0).astype(np.int64)
    return np.bincount(dataset.train_y, minlength=dataset.num_classes)


def members_of(dataset: Dataset, label: int) -> np.ndarray:
    """Rows of a class, or (multi-label) rows carrying the label."""
    return np.flatnonzero(dataset.train_y[:, label] if dataset.multilabel else dataset.train_y == label)


def class_counts_table(dataset: Dataset) -> Table:
    counts = class_counts(dataset)
    if dataset.multilabel:
        from comp.data.multilabel import label_counts_line

        title = (f"train: {len(dataset.train_y):,} images, multi-label over {dataset.num_classes} labels: "
                 f"{label_counts_line(dataset.train_y)}")
    else:
        title = f"train: {len(dataset.train_y):,} images in {dataset.num_classes} classes"
    table = Table(title=title)
    table.add_column("class")
    table.add_column("images", justify="right")
    table.add_column("share", justify="right")
    for name, count in zip(dataset.classes, counts):
        share = count / (len(dataset.train_y) if dataset.multilabel else counts.sum())  # of images: labels overlap
        table.add_row(name, f"{count:,}", f"{share:.1%}")
    return table


def imbalance_line(ratio: float) -> str:
    if ratio < IMBALANCED_RATIO:
        return f"class imbalance: largest/smallest class {ratio:.1f}x"
    return (f"class imbalance: largest/smallest class {ratio:.1f}x -- imbalanced: try --class-weight balanced or "
            "--sampler balanced, and a metric that weighs classes (e.g. --metric f1_macro) if the leaderboard does")


def show_image(ax, image: np.ndarray) -> None:
    """An (H, W, 3) or grayscale (H, W, 1) uint8 image on a matplotlib axis, as its pixels say."""
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image)


GRID_TILE = 80  # px: the longer side of a sample in the grid (32-px images are enlarged to be seen)
GRID_GAP = 8  # px between samples
GRID_LABEL = 16  # px above each row for its class name


def grid_tile_size(image_shape) -> tuple[int, int]:
    """(width, height) of one sample in the grid: the images' aspect, the longer side GRID_TILE."""
    height, width = image_shape[:2]
    scale = GRID_TILE / max(height, width)
    return max(1, round(width * scale)), max(1, round(height * scale))


def sample_grid(dataset: Dataset, path: Path, per_class: int = 8) -> Path:
    """A PNG of `per_class` random train images per class, one row per class under its name.

    Drawn with Pillow (already loaded to decode): matplotlib's 80 subplots took 1.7 s of a
    2-second `comp data check`.
    """
    from PIL import Image, ImageDraw, ImageFont

    rng = np.random.default_rng(0)
    tile_w, tile_h = grid_tile_size(dataset.image_shape)
    row_h = GRID_LABEL + tile_h + GRID_GAP
    grid = Image.new("RGB", (GRID_GAP + per_class * (tile_w + GRID_GAP), GRID_GAP + dataset.num_classes * row_h),
                     "white")
    draw = ImageDraw.Draw(grid)
    font = ImageFont.load_default(size=12)
    for c, name in enumerate(dataset.classes):
        members = members_of(dataset, c)
        chosen = rng.choice(members, size=min(per_class, len(members)), replace=False)
        top = GRID_GAP + c * row_h
        draw.text((GRID_GAP, top), name, fill="black", font=font)
        for j, row in enumerate(chosen):
            pixels = np.asarray(dataset.train_x[row])
            tile = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)  # grayscale: one channel
            tile = tile.convert("RGB").resize((tile_w, tile_h), Image.BILINEAR)
            grid.paste(tile, (GRID_GAP + j * (tile_w + GRID_GAP), top + GRID_LABEL))
    png = io.BytesIO()
    grid.save(png, format="PNG", compress_level=1)  # the default level 6 took 0.2 s, for 20% smaller
    if not (path.is_file() and path.read_bytes() == png.getvalue()):  # the same grid again: left as it is
        with atomic_path(path, suffix=".png") as tmp:
            tmp.write_bytes(png.getvalue())
    return path


def problems_table(problems: list[Problem], data_dir: Path) -> Table:
    """Errors first, then warnings; the first few of each kind, then how many more."""
    table = Table(title=f"{len(errors_in(problems))} error(s), {len(problems) - len(errors_in(problems))} "
                        f"warning(s) in {data_dir}")
    table.add_column("severity", no_wrap=True)
    table.add_column("file", no_wrap=True, overflow="fold")  # whole names first: problem and fix wrap instead
    table.add_column("problem", overflow="fold")
    table.add_column("fix", overflow="fold")
    by_kind: dict[tuple[str, str], list[Problem]] = defaultdict(list)
    for problem in sorted(problems, key=lambda p: p.severity != ERROR):  # stable: order found within a kind
        by_kind[problem.severity, problem.kind].append(problem)
    for (severity, kind), group in by_kind.items():
        style = "red" if severity == ERROR else "yellow"
        for problem in group[:ROWS_PER_KIND]:
            table.add_row(f"[{style}]{severity}[/{style}]", relative_name(problem.path, data_dir), problem.detail,
                          problem.fix)
        if len(group) > ROWS_PER_KIND:
            table.add_row(f"[{style}]{severity}[/{style}]", f"... and {len(group) - ROWS_PER_KIND} more", kind, "")
    return table


def size_summary(sizes: dict[str, int]) -> str:
    """Image sizes in a line: the range and median of heights and widths, the commonest few, how many distinct."""
    parsed = [(*map(int, size.split("x")), count) for size, count in sizes.items()]
    if len(parsed) == 1:
        return f"image size (h x w): {next(iter(sizes))} (all {parsed[0][2]:,})"
    counts = [count for _, _, count in parsed]
    heights = np.repeat([h for h, _, _ in parsed], counts)
    widths = np.repeat([w for _, w, _ in parsed], counts)
    common = sorted(sizes.items(), key=lambda item: -item[1])[:COMMON_SIZES]
    return (f"image sizes (h x w): {len(parsed)} distinct; height {heights.min()}-{heights.max()} "
            f"(median {np.median(heights):g}), width {widths.min()}-{widths.max()} (median {np.median(widths):g}); "
            f"most common: " + ", ".join(f"{s} x{n:,}" for s, n in common))


def footprint(dataset: Dataset, cache_dir: Path | None) -> dict:
    """Bytes the chosen image size needs: the cache on disk (every file, --limit or not) and what
    training holds in memory (a fold's train and validation rows, and the test set for its TTA views)."""
    per_image = int(np.prod(dataset.image_shape))
    all_files = len(dataset.stats["train_files"]) + len(dataset.test_ids)
    free = shutil.disk_usage(cache_dir).free if cache_dir and Path(cache_dir).exists() else None
    return {"bytes_per_image": per_image, "cache_bytes": per_image * all_files,
            "training_bytes": per_image * (len(dataset.train_y) + len(dataset.test_ids)), "disk_free_bytes": free}


def footprint_line(dataset: Dataset, needs: dict) -> str:
    height, width, _ = dataset.image_shape
    free = f", {gigabytes(needs['disk_free_bytes'])} free" if needs["disk_free_bytes"] is not None else ""
    return (f"image size {height}x{width} ({dataset.resize}): the decoded cache takes {gigabytes(needs['cache_bytes'])} "
            f"on disk{free} ({needs['bytes_per_image']:,} bytes an image), read through a memory mapping; training "
            f"holds a fold's rows and the test set in memory: about {gigabytes(needs['training_bytes'])}")


def check_folder(data_dir: Path, cache_dir: Path | None, grid_path: Path, limit: int = 0,
                 skip_bad: bool = False, image_size="auto", resize: str = "squash", metric: str | None = None) -> dict:
    """List every problem of `data_dir`; raise CompError when any is an error, else report the data
    (at `image_size`, fitted by `resize`: the size decides the disk and memory it needs)."""
    checked = inspect_data(data_dir, cache_dir, skip_bad, image_size, resize)
    if checked.problems:
        console.print(problems_table(checked.problems, Path(data_dir)))
    else:
        console.print(f"no problems found in {data_dir}")
    errors = errors_in(checked.problems)
    if errors:
        raise CompError(f"{len(errors)} error(s) in {data_dir}, listed above; the first: {errors[0].line()}")
    return report(apply_limit(checked.dataset, limit), grid_path, cache_dir, metric)


def value_kind(values) -> str:
    """What a sample column holds, as comp.core.metrics.suggest_metric reads it."""
    import pandas as pd

    text = pd.Series(values, dtype=str).str.strip()
    if text.str.contains(" ").any():
        return "space_separated"
    if text.str.fullmatch(r"-?\d+").all():
        return "int"
    return "float" if pd.to_numeric(text, errors="coerce").notna().all() else "text"


def metric_line(dataset: Dataset, metric: str) -> tuple[str, str]:
    """The competition's metric as the workdir names it, and the one the sample's shape suggests."""
    import pandas as pd

    from comp.core.metrics import get_metric, suggest_metric

    sample = pd.read_csv(dataset.submission.path, dtype=str, keep_default_na=False)
    kinds = [value_kind(sample[c]) for c in sample.columns]
    suggested, why = suggest_metric(list(sample.columns), kinds, dataset.num_classes)
    if dataset.multilabel:
        suggested, why = "f1_samples", ("several labels a row: F1 over labels (f1_samples, f1_micro or f1_macro, "
                                        "as the competition says)")
    chosen = get_metric(metric)
    if dataset.multilabel:  # a single-label name means its multi-label form; one without any is refused
        from comp.core.metrics import metric_for

        chosen = metric_for(metric, dataset.train_y)
    direction = "higher" if chosen.greater_is_better else "lower"
    console.print(f"metric: {chosen.name} ({chosen.summary}; {direction} is better; --metric NAME chooses the "
                  "competition's, remembered in comp.toml)")
    console.print(f"suggested metric: {suggested} ({why}) -- only a suggestion from the sample's shape; "
                  "the competition's page decides")
    return chosen.name, suggested


def report(dataset: Dataset, grid_path: Path, cache_dir: Path | None = None, metric: str | None = None) -> dict:
    console.print(class_counts_table(dataset))
    ratio = imbalance_ratio(dataset.train_y, dataset.num_classes)
    console.print(f"label imbalance: commonest/rarest label {ratio:.1f}x (per-label thresholds in comp ensemble "
                  "answer it)" if dataset.multilabel else imbalance_line(ratio))
    stats = dataset.stats
    if stats.get("layout"):
        console.print(f"layout: {stats['layout']}")
    duplicates = find_duplicates(dataset)
    console.print(f"test: {len(dataset.test_ids):,} images; submission target: "
                  f"{dataset.submission.target_kind} ({dataset.submission.path.name})")
    console.print(size_summary(stats["sizes"]))
    rotated = f"; {stats['rotated']:,} turned upright by EXIF orientation" if stats.get("rotated") else ""
    console.print("image modes: " + ", ".join(f"{m} x{n:,}" for m, n in stats["modes"].items()) + rotated)
    console.print(
        f"exact duplicates: {duplicates['train_duplicate_rows']} within train "
        f"({duplicates['train_conflicting_label_groups']} groups with conflicting labels), "
        f"{duplicates['test_images_also_in_train']} test images also in train"
    )
    console.print(f"fingerprint: {dataset.fingerprint}")
    chosen, suggested = metric_line(dataset, metric or "accuracy")
    needs = footprint(dataset, cache_dir)
    console.print(footprint_line(dataset, needs))
    sample_grid(dataset, grid_path)
    console.print(f"sample grid: {grid_path}")
    counts = class_counts(dataset)
    return {
        "classes": dict(zip(dataset.classes, counts.tolist())),
        "imbalance_ratio": round(ratio, 3),
        **({"task": "multilabel"} if dataset.multilabel else {}),
        "test_images": len(dataset.test_ids),
        "duplicates": duplicates,
        "fingerprint": dataset.fingerprint,
        "image_shape": list(dataset.image_shape),
        "resize": dataset.resize,
        "footprint": needs,
        "metric": chosen,
        "suggested_metric": suggested,
        "layout": stats.get("layout"),
    } | {k: stats[k] for k in ("sizes", "modes", "resized", "bad_files", "skipped_files")}


def check_data(workspace, grid_path: Path, limit: int = 0, image_size="auto", resize: str = "squash") -> dict:
    """`comp data check` on the workspace's data folder."""
    return check_folder(workspace.data_dir, workspace.cache, grid_path, limit=limit, skip_bad=workspace.skip_bad,
                        image_size=image_size, resize=resize, metric=workspace.metric)
