"""The competition data layer: find the files, decode them once, cache the arrays.

Two layouts are understood:
    DACON   train/<class>/*.jpg, test/*.jpg, sample_submission.csv
    Kaggle  train/*.jpg + a labels CSV (id,label), test/*.jpg, sample_submission.csv

Every stage calls `load_dataset`, which returns uint8 arrays (N,H,W,3) plus the facts the
later stages need to refuse mixing runs made on other data: the class list and a fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .console import console, is_quiet, warn
from .errors import CompError
from .fileio import atomic_path, read_json, write_json

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LABEL_CSV_NAMES = ("train.csv", "trainLabels.csv", "train_labels.csv", "labels.csv")
SAMPLE_CSV_NAMES = ("sample_submission.csv", "sampleSubmission.csv", "sample_submission.CSV")
CACHE_VERSION = 1  # bump when the cached arrays' meaning changes
LIMIT_SEED = 0  # --limit subsamples with a fixed seed so every stage sees the same rows
# Files that are not images but that a competition folder often holds; skipped silently.
QUIET_SKIPS = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass
class SubmissionFormat:
    """What sample_submission.csv tells about the file the leaderboard wants."""

    path: Path
    id_column: str
    target_column: str  # the one target column; for "probs", the first class column
    target_kind: str  # "name" (class names), "int" (integers), "probs" (a probability column per class),
    #                   "fraction" (one probability column, e.g. P(dog): not written, see comp.submission)
    ids: list[str]  # stripped, to match test file names
    raw_ids: list[str]  # exactly as the sample writes them: what the submission must carry
    columns: list[str]  # every column of the sample, in its order


@dataclass
class Dataset:
    data_dir: Path
    classes: list[str]
    train_x: np.ndarray  # (N,H,W,3) uint8
    train_y: np.ndarray  # (N,) int64 class index
    test_x: np.ndarray  # (M,H,W,3) uint8, in sample_submission order
    test_ids: list[str]
    submission: SubmissionFormat
    fingerprint: str
    rows: np.ndarray  # indices of these train rows in the full train set (differs under --limit)
    limit: int = 0
    stats: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])


@dataclass
class Layout:
    """The files a data folder holds, before any image is decoded."""

    data_dir: Path
    classes: list[str]
    train_files: list[Path]
    train_labels: np.ndarray
    test_files: list[Path]
    submission: SubmissionFormat
    skipped: list[Path]


# -- finding the files ---------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _list_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(images, other files) directly in `folder`, sorted by name."""
    images, others = [], []
    with os.scandir(folder) as entries:
        for entry in entries:
            if not entry.is_file():
                continue
            path = Path(entry.path)
            if _is_image(path):
                images.append(path)
            elif entry.name not in QUIET_SKIPS:
                others.append(path)
    return sorted(images), sorted(others)


def read_id_csv(path: Path, columns: str, fix: str) -> pd.DataFrame:
    """The first two columns (an id, then a target or label) of a CSV, as stripped text, one row per id.

    Used for sample_submission.csv, a labels CSV, a submission and an answers file. Read as text
    with no NaN guessing, so ids like 0001 keep their zeros and a class named "NA" stays one.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as err:
        raise CompError(f"{path}: not a readable CSV ({err}); {fix}") from None
    if frame.shape[1] < 2 or len(frame) == 0:
        raise CompError(f"{path}: needs {columns}, one row per image; {fix}")
    frame = frame.iloc[:, :2].apply(lambda column: column.str.strip())
    ids = frame.iloc[:, 0]
    repeated = ids[ids.duplicated()].unique()
    if len(repeated):
        raise CompError(f"{path}: repeated ids (e.g. {', '.join(repeated[:3])}); each id must appear once. {fix}")
    return frame


def read_submission_format(data_dir: Path) -> SubmissionFormat:
    """id,target (class names or integers) or id,<class>,<class>,... (Kaggle's probability format)."""
    path = next((data_dir / n for n in SAMPLE_CSV_NAMES if (data_dir / n).is_file()), None)
    if path is None:
        raise CompError(f"{data_dir}/sample_submission.csv: missing; copy it from the competition download")
    frame = read_id_csv(path, "an id column and a target column", "re-download it")
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)  # unstripped ids and every column
    id_column, target_column = frame.columns[0], frame.columns[1]
    targets = frame[target_column]
    if raw.shape[1] > 2:
        target_kind = "probs"
    elif targets.str.fullmatch(r"-?\d+").all():
        target_kind = "int"
    else:  # "fraction": one probability column (e.g. P(dog) as 0.5), which comp.submission refuses
        target_kind = "fraction" if targets.str.fullmatch(r"\d*\.\d+").all() else "name"
    return SubmissionFormat(path, id_column, target_column, target_kind, frame[id_column].tolist(),
                            raw[id_column].tolist(), list(raw.columns))


def _id_key(text: str) -> str:
    """`0000`, `0000.jpg` and `0` name the same test image: compare stems, and numbers as numbers."""
    stem = Path(text).stem if _is_image(Path(text)) else text
    return str(int(stem)) if stem.isdigit() else stem


def match_test_files(test_dir: Path, submission: SubmissionFormat) -> tuple[list[Path], list[Path]]:
    """Test files in the order of sample_submission.csv; (files, skipped non-images)."""
    images, others = _list_files(test_dir)
    by_key: dict[str, Path] = {}
    for path in images:
        by_key.setdefault(_id_key(path.name), path)
    keys = [_id_key(i) for i in submission.ids]
    missing = [i for i, k in zip(submission.ids, keys) if k not in by_key]
    if missing:
        raise CompError(
            f"{submission.path}: {len(missing)} id(s) have no image in {test_dir} "
            f"(e.g. {', '.join(missing[:3])}); the ids must match test file names"
        )
    used = set(keys)
    orphans = [p for p in images if _id_key(p.name) not in used]
    if orphans:
        raise CompError(
            f"{test_dir}: {len(orphans)} image(s) have no id in {submission.path.name} "
            f"(e.g. {', '.join(p.name for p in orphans[:3])}); remove them or add their ids"
        )
    return [by_key[k] for k in keys], others


def _scan_class_folders(train_dir: Path, class_dirs: list[Path]):
    classes = sorted(d.name for d in class_dirs)
    files, labels, skipped = [], [], []
    for index, name in enumerate(classes):
        images, others = _list_files(train_dir / name)
        skipped += others
        if not images:
            raise CompError(f"{train_dir / name}: class folder has no images; remove the folder or add its images")
        files += images
        labels += [index] * len(images)
    return classes, files, labels, skipped


def _scan_labels_csv(data_dir: Path, train_dir: Path):
    csv_path = next((data_dir / n for n in LABEL_CSV_NAMES if (data_dir / n).is_file()), None)
    if csv_path is None:
        raise CompError(
            f"{train_dir}: holds no class folders and {data_dir} has no labels CSV "
            f"({', '.join(LABEL_CSV_NAMES)}); use train/<class>/*.jpg or add a labels CSV with columns id,label"
        )
    frame = read_id_csv(csv_path, "two columns, id and label", "fix the CSV")
    images, skipped = _list_files(train_dir)
    by_key = {_id_key(p.name): p for p in images}
    ids, names = frame.iloc[:, 0], frame.iloc[:, 1]
    missing = [i for i in ids if _id_key(i) not in by_key]
    if missing:
        raise CompError(
            f"{csv_path}: {len(missing)} id(s) have no image in {train_dir} (e.g. {', '.join(missing[:3])}); fix the CSV"
        )
    classes = sorted(set(names))
    index = {name: i for i, name in enumerate(classes)}
    files = [by_key[_id_key(i)] for i in ids]
    return classes, files, [index[n] for n in names], skipped


def scan(data_dir: Path) -> Layout:
    """Find train, test and the submission format; raise CompError on a malformed folder."""
    data_dir = Path(data_dir)
    train_dir, test_dir = data_dir / "train", data_dir / "test"
    for folder, what in ((train_dir, "train/<class>/*.jpg"), (test_dir, "test/*.jpg")):
        if not folder.is_dir():
            raise CompError(f"{folder}: missing; the competition folder needs {what} (is --data the unpacked download?)")
    class_dirs = [Path(e.path) for e in os.scandir(train_dir) if e.is_dir() and not e.name.startswith(".")]
    if class_dirs:
        classes, files, labels, skipped = _scan_class_folders(train_dir, class_dirs)
    else:
        classes, files, labels, skipped = _scan_labels_csv(data_dir, train_dir)
    if len(classes) < 2:
        raise CompError(f"{train_dir}: only one class ({classes[0]}); a classifier needs at least two")
    submission = read_submission_format(data_dir)
    test_files, test_skipped = match_test_files(test_dir, submission)
    skipped += test_skipped
    if skipped:
        shown = ", ".join(str(p.relative_to(data_dir)) for p in skipped[:5])
        more = f" and {len(skipped) - 5} more" if len(skipped) > 5 else ""
        warn(f"skipped {len(skipped)} non-image file(s): {shown}{more}")
    return Layout(data_dir, classes, files, np.asarray(labels, dtype=np.int64), test_files, submission, skipped)


# -- fingerprint and cache -----------------------------------------------------------------


def _stat_rows(layout: Layout):
    for path in [*layout.train_files, *layout.test_files]:
        st = path.stat()
        yield str(path.relative_to(layout.data_dir)), st.st_size, st.st_mtime_ns


def fingerprints(layout: Layout, skip_bad: bool) -> tuple[str, str]:
    """(data fingerprint, cache key).

    The fingerprint hashes names, sizes, labels and the sample submission: it survives a
    copy or re-extraction of the same data and changes when files are added, removed,
    relabelled or rewritten to another size. The cache key adds modification times, so a
    touched file is decoded again.
    """
    data_hash, cache_hash = hashlib.sha1(), hashlib.sha1()
    data_hash.update("\n".join(layout.classes).encode())
    data_hash.update(layout.train_labels.tobytes())
    data_hash.update(layout.submission.path.read_bytes())
    for name, size, mtime in _stat_rows(layout):
        data_hash.update(f"{name}\0{size}\n".encode())
        cache_hash.update(f"{name}\0{mtime}\n".encode())
    fingerprint = data_hash.hexdigest()[:16]
    cache_hash.update(f"{fingerprint} v{CACHE_VERSION} skip_bad={skip_bad}".encode())
    return fingerprint, cache_hash.hexdigest()[:16]


# -- decoding ------------------------------------------------------------------------------


def _decode(path: Path):
    """(RGB uint8 array or None, original mode, original (w,h), error text or None)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            mode, size = image.mode, image.size
            image.load()
            rgb = image.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8), mode, size, None
    except Exception as err:  # PIL raises many types for a damaged file; all mean the same here
        return None, None, None, f"{type(err).__name__}: {err}"


def decode_all(paths: list[Path], what: str) -> list:
    workers = min(8, (os.cpu_count() or 2) * 2)  # decoding releases the GIL; a few threads per core
    results = []
    with ThreadPoolExecutor(workers) as pool:
        if is_quiet():
            return list(pool.map(_decode, paths, chunksize=256))
        with console.status(f"decoding {len(paths):,} {what} images"):
            results = list(pool.map(_decode, paths, chunksize=256))
    return results


def stack_images(decoded: list, target_hw: tuple[int, int]) -> tuple[np.ndarray, int]:
    """Stack arrays, resizing those of another size; returns (array, how many were resized)."""
    from PIL import Image

    out = np.zeros((len(decoded), *target_hw, 3), dtype=np.uint8)
    resized = 0
    for i, array in enumerate(decoded):
        if array is None:
            continue
        if array.shape[:2] != target_hw:
            array = np.asarray(Image.fromarray(array).resize(target_hw[::-1], Image.BILINEAR))
            resized += 1
        out[i] = array
    return out, resized


def decode_layout(layout: Layout, skip_bad: bool) -> dict:
    train = decode_all(layout.train_files, "train")
    test = decode_all(layout.test_files, "test")
    bad = [(p, r[3]) for p, r in zip([*layout.train_files, *layout.test_files], [*train, *test]) if r[0] is None]
    if bad and not skip_bad:
        path, reason = bad[0]
        others = f" ({len(bad) - 1} more damaged)" if len(bad) > 1 else ""
        raise CompError(
            f"{path}: truncated or corrupt image ({reason}){others}; replace or delete it, or pass --skip-bad"
        )
    if bad:
        names = ", ".join(str(p.relative_to(layout.data_dir)) for p, _ in bad[:5])
        warn(f"--skip-bad: skipped {len(bad)} damaged image(s): {names} (damaged test images are predicted as blank)")
    sizes = Counter((r[2][1], r[2][0]) for r in [*train, *test] if r[0] is not None)
    modes = Counter(r[1] for r in [*train, *test] if r[0] is not None)
    target_hw = sizes.most_common(1)[0][0]
    keep = np.array([r[0] is not None for r in train])
    train_x, resized_train = stack_images([r[0] for r, k in zip(train, keep) if k], target_hw)
    test_x, resized_test = stack_images([r[0] for r in test], target_hw)
    resized = resized_train + resized_test
    if resized:
        warn(f"resized {resized} image(s) of other sizes to the most common size {target_hw[0]}x{target_hw[1]}")
    return {
        "train_x": train_x,
        "train_y": layout.train_labels[keep],
        "test_x": test_x,
        "train_files": [str(p.relative_to(layout.data_dir)) for p, k in zip(layout.train_files, keep) if k],
        "stats": {
            "sizes": {f"{h}x{w}": n for (h, w), n in sizes.most_common()},
            "modes": dict(modes.most_common()),
            "resized": resized,
            "bad_files": [str(p.relative_to(layout.data_dir)) for p, _ in bad],
            "skipped_files": [str(p.relative_to(layout.data_dir)) for p in layout.skipped],
        },
    }


def load_dataset(data_dir: Path, cache_dir: Path | None, limit: int = 0, skip_bad: bool = False) -> Dataset:
    """Scan, decode (or read the cache), and subsample with --limit. The entry point of every stage."""
    layout = scan(Path(data_dir))
    fingerprint, cache_key = fingerprints(layout, skip_bad)
    arrays = _read_cache(cache_dir, cache_key) if cache_dir else None
    if arrays is None:
        arrays = decode_layout(layout, skip_bad)
        if cache_dir:
            _write_cache(cache_dir, cache_key, arrays)
    dataset = Dataset(
        data_dir=layout.data_dir,
        classes=layout.classes,
        train_x=arrays["train_x"],
        train_y=arrays["train_y"].astype(np.int64),
        test_x=arrays["test_x"],
        test_ids=layout.submission.ids,
        submission=layout.submission,
        fingerprint=fingerprint,
        rows=np.arange(len(arrays["train_y"])),
        stats=arrays["stats"] | {"train_files": arrays["train_files"]},
    )
    return apply_limit(dataset, limit)


def _read_cache(cache_dir: Path, key: str) -> dict | None:
    arrays_path, meta_path = cache_dir / f"{key}.npz", cache_dir / f"{key}.json"
    if not (arrays_path.exists() and meta_path.exists()):
        return None
    try:
        with np.load(arrays_path) as npz:
            arrays = {name: npz[name] for name in ("train_x", "train_y", "test_x")}
        meta = read_json(meta_path)
    except (OSError, ValueError, KeyError):
        warn(f"{arrays_path}: unreadable cache, decoding again")
        return None
    return arrays | meta


def _write_cache(cache_dir: Path, key: str, arrays: dict) -> None:
    cache_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(cache_dir / f"{key}.npz", suffix=".npz") as tmp:
        # Uncompressed: the second load must take well under 2 s for 60,000 images.
        np.savez(tmp, train_x=arrays["train_x"], train_y=arrays["train_y"], test_x=arrays["test_x"])
    write_json(cache_dir / f"{key}.json", {"stats": arrays["stats"], "train_files": arrays["train_files"]})


# -- subsampling ---------------------------------------------------------------------------


def limit_rows(labels: np.ndarray, limit: int) -> np.ndarray:
    """A deterministic stratified subsample of row indices (all rows when limit is 0 or too big)."""
    if not limit or limit >= len(labels):
        return np.arange(len(labels))
    from sklearn.model_selection import train_test_split

    num_classes = len(np.unique(labels))
    if limit < 2 * num_classes:
        raise CompError(f"--limit {limit}: too small for {num_classes} classes; use at least {2 * num_classes}")
    rows, _ = train_test_split(np.arange(len(labels)), train_size=limit, stratify=labels, random_state=LIMIT_SEED)
    return np.sort(rows)


def apply_limit(dataset: Dataset, limit: int) -> Dataset:
    rows = limit_rows(dataset.train_y, limit)
    if len(rows) == len(dataset.train_y):
        return dataset
    dataset.train_x, dataset.train_y, dataset.rows = dataset.train_x[rows], dataset.train_y[rows], rows
    dataset.limit = limit
    return dataset
