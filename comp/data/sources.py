"""The competition data layer: find the files, decode them once, cache the arrays.

Three layouts are understood:
    DACON      train/<class>/*.jpg, test/*.jpg, sample_submission.csv
    Kaggle     train/*.jpg + a labels CSV (id,label), test/*.jpg, sample_submission.csv
    pixel CSV  train.csv ([id,]label,pixel0,...), test.csv, sample_submission.csv (comp.data.pixels)

Every stage calls `load_dataset` (or `open_source(...).load(...)` when it must know the
fingerprint before it knows the image size), which returns uint8 arrays (N,H,W,C) at the chosen
image size (C is 3, or 1 for a grayscale pixel CSV) plus the facts the later stages need to refuse mixing runs made on other data: the
class list and a fingerprint. The images are decoded once per size and resize mode by worker
processes into a memory-mapped cache (comp.data.cache, comp.data.decode) and read from it as needed.

Whatever is wrong with a folder is collected as a list of `Problem`s in one pass (`find_problems`,
shown as a table by `comp data check`); a load stops on the first error with one line that
counts the others, and prints one line per kind of warning.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd

from comp.data.cache import (
    IMAGES,
    JOURNAL,
    Rows,
    append_journal,
    cache_folder,
    compact_rows,
    create_mapped,
    decode_lock,
    forget_chunks,
    open_mapped,
    read_cache,
    read_journal,
    write_meta,
)
from comp.config.run_config import check_field, image_hw
from comp.core.console import console, info, is_quiet, warn
from comp.data.decode import SIXTEEN_BIT_MODES, chunked, decode_chunks, probe_sizes
from comp.data.pixels import PixelError, PixelTable, find_pixel_csv, pixel_arrays, read_pixel_layout
from comp.core.errors import CompError
from comp.core.fileio import read_json, write_json, write_text

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
LABEL_CSV_NAMES = ("train.csv", "trainLabels.csv", "train_labels.csv", "labels.csv")
# The labels CSV's columns are found by name (lower case, without "_", "-" and spaces), never by position:
# Kaggle's CSVs often hold more (id,fold,label; image_id,width,height,label) or another order (label,id).
ID_COLUMN_NAMES = ("id", "imageid", "image", "img", "imgid", "filename", "file", "fname", "imagename", "imagefile",
                   "imagepath", "path", "name")
LABEL_COLUMN_NAMES = ("label", "labels", "target", "class", "classname", "category", "categoryid", "classid", "y")
# Or named by the user: --id-column / --label-column (children inherit them through these variables).
ID_COLUMN_ENV, LABEL_COLUMN_ENV = "COMP_ID_COLUMN", "COMP_LABEL_COLUMN"
# Where the labels come from when train/ holds no class folders (--labels-from, inherited the same way):
# "csv" (a labels CSV), "name" (the file names: the text before the first "." or "_") or "name:REGEX"
# (searched in each file name; its first group, else the whole match, is the label). Unset: the labels
# CSV, else the file names when they look like labels (`_name_label_prefixes`).
LABELS_FROM_ENV = "COMP_LABELS_FROM"
NAME_PATTERN = r"^([^._]+)[._]"  # "cat" of cat.123.jpg, "dog" of dog_7.png
# A one-hot labels CSV (id,<class>,<class>,...: one 1 a row) holds these values in its class columns.
ONE_HOT_VALUES = {"0": 0, "1": 1, "0.0": 0, "1.0": 1}
ONE_HOT_SHARE = 0.9  # of the cells besides the id that must be 0 or 1 for a CSV without a label column to be one-hot
SAMPLE_CSV_NAMES = ("sample_submission.csv", "sampleSubmission.csv", "sample_submission.CSV")
LIMIT_SEED = 0  # --limit subsamples with a fixed seed so every stage sees the same rows
# Files that are not images but that a competition folder often holds; skipped silently.
QUIET_SKIPS = {".DS_Store", "Thumbs.db", "desktop.ini"}
HASH_WORKERS = 8  # reading files and blake2b release the GIL; a few threads per core keep the disk busy
DIGEST_BYTES = 16  # blake2b-128 per file: accidental collisions are out of reach at any dataset size
DIGEST_CACHE_VERSION = 1  # bump when the per-file digest changes
# A file changed this recently may change again within one tick of its file system's clock (1-2 s
# on some) and keep its size and times: its digest is not remembered, so the next load reads it again.
RACY_NS = 2_000_000_000
SHOWN_EXAMPLES = 5  # file names quoted in a one-line warning

# The default image size ("auto"): a set whose images share one size up to NATIVE_MAX px trains at
# that size (CIFAR's 32 px); any other set at DEFAULT_SIDE (photos of many sizes: enough detail for
# the nets, and 4.9 GB of cache for 100,000 images).
NATIVE_MAX = 64
DEFAULT_SIDE = 128
NATIVE_SHARE = 0.99  # "share one size": this share of the images or more (a few strays are resized to it)
SIZES_VERSION = 1  # bump when the remembered native sizes change meaning
# What reaching 8-bit RGB does to an image of each mode, for the line that says what was converted.
MODE_NOTES = {
    "1": "black and white, expanded to RGB",
    "L": "grayscale, expanded to RGB",
    "LA": "grayscale, expanded to RGB, alpha dropped",
    "P": "palette, expanded to RGB",
    "PA": "palette, expanded to RGB, alpha dropped",
    "RGBA": "alpha dropped",
    "CMYK": "CMYK, converted to RGB",
    "YCbCr": "converted to RGB",
    "I": "integer grayscale, scaled to 8 bits when above 255, expanded to RGB",
    "F": "float grayscale, clipped to 0..255, expanded to RGB",
    **{mode: "16-bit grayscale, scaled to 8 bits, expanded to RGB" for mode in SIXTEEN_BIT_MODES},
}

# -- problems ------------------------------------------------------------------------------

ERROR, WARNING = "error", "warning"  # an error stops every command that loads the data
# Kinds of problem: `comp data check` groups its table by kind; a load warns once per kind.
MISSING = "missing"
UNREADABLE = "unreadable folder"
EMPTY_CLASS = "empty class folder"
ONE_CLASS = "one class only"
BAD_CSV = "malformed CSV"
LABEL_WITHOUT_IMAGE = "labels CSV id without image"
CLASSES_NOT_IN_SAMPLE = "classes unlike the sample submission's"
EMPTY_LABEL = "empty label"
ID_WITHOUT_IMAGE = "test id without image"
IMAGE_WITHOUT_ID = "test image without id"
DAMAGED = "damaged image"
NO_TRAIN_IMAGES = "no readable train images"
NON_IMAGE = "non-image files skipped"
BAD_LINK = "unreadable links skipped"
UNLABELED = "train images not in the labels CSV, not used"
OUTSIDE_CLASSES = "images outside the class folders, not used"
DAMAGED_SKIPPED = "damaged images skipped (--skip-bad)"
NAME_LABELS = "labels taken from the file names"
NAME_WITHOUT_LABEL = "file name without a label"
BAD_ONE_HOT = "one-hot row without exactly one 1"
MULTI_LABEL = "multi-label targets"


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a competition folder: what, where, and how to fix it."""

    severity: str  # ERROR or WARNING
    kind: str  # one of the kinds above
    path: Path  # the file or folder at fault
    detail: str  # what is wrong with this one
    fix: str

    def line(self) -> str:
        return f"{self.path}: {self.detail}; {self.fix}"


def errors_in(problems: list[Problem]) -> list[Problem]:
    return [p for p in problems if p.severity == ERROR]


def stop_on_errors(problems: list[Problem], data_dir: Path, found: str = "") -> None:
    """Raise one CompError naming the first error and counting the others (`found`: when they were found)."""
    errors = errors_in(problems)
    if not errors:
        return
    others = f" ({len(errors) - 1} more error(s){found};" if len(errors) > 1 else " ("
    raise CompError(f"{errors[0].line()}{others} `comp data check --data {data_dir}` lists every problem)")


def warn_about(problems: list[Problem], data_dir: Path) -> None:
    """One warning line per kind: how many files, the first few, and the fix."""
    by_kind: dict[str, list[Problem]] = {}
    for problem in problems:
        if problem.severity == WARNING:
            by_kind.setdefault(problem.kind, []).append(problem)
    for kind, group in by_kind.items():
        shown = ", ".join(relative_name(p.path, data_dir) for p in group[:SHOWN_EXAMPLES])
        more = f" and {len(group) - SHOWN_EXAMPLES} more" if len(group) > SHOWN_EXAMPLES else ""
        warn(f"{kind}: {len(group)} ({shown}{more}); {group[0].fix}")


def relative_name(path: Path, data_dir: Path) -> str:
    """A path as shown to the user: relative to the data folder when inside it."""
    try:
        return str(path.relative_to(data_dir)) or "."
    except ValueError:
        return str(path)


# -- what a folder holds -------------------------------------------------------------------


@dataclass
class SubmissionFormat:
    """What sample_submission.csv tells about the file the leaderboard wants."""

    path: Path
    id_column: str
    target_column: str  # the one target column; for "probs", the first class column
    target_kind: str  # "name" (class names), "int" (integers), "probs" (a probability column per class),
    #                   "fraction" (one probability column, e.g. P(dog): not written, see comp.stages.submission)
    ids: list[str]  # stripped, to match test file names
    raw_ids: list[str]  # exactly as the sample writes them: what the submission must carry
    columns: list[str]  # every column of the sample, in its order
    one_hot: bool = False  # "probs" whose sample holds integers 0/1: one 1 a row (the argmax) is written


@dataclass
class Dataset:
    """The decoded competition data at one image size.

    The images are read-only views of the memory-mapped cache (or, under --limit, `Rows` of
    it): indexing them reads those rows into an ndarray; nothing reads the whole set at once.
    """

    data_dir: Path
    classes: list[str]
    train_x: np.ndarray | Rows  # (N,H,W,C) uint8: C is 3 (RGB), or 1 for a grayscale pixel CSV
    train_y: np.ndarray  # (N,) int64 class index; multi-label: (N, L) uint8 multi-hot (comp.data.multilabel)
    test_x: np.ndarray  # (M,H,W,C) uint8, in sample_submission order
    test_ids: list[str]
    submission: SubmissionFormat
    fingerprint: str
    rows: np.ndarray  # indices of these train rows in the full train set (differs under --limit)
    limit: int = 0
    resize: str = "squash"  # how images of another aspect were fitted (comp.data.decode.RESIZE_MODES)
    size_note: str | None = None  # why "auto" chose this size
    stats: dict = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def multilabel(self) -> bool:
        """Several labels a row (train_y a multi-hot matrix), trained with sigmoid outputs."""
        return self.train_y.ndim == 2

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.train_x.shape[1:])


@dataclass
class Layout:
    """The files a data folder holds, before any image is decoded, and what is wrong with it."""

    data_dir: Path
    classes: list[str]
    train_files: list[Path]
    train_labels: np.ndarray
    test_files: list[Path]
    submission: SubmissionFormat | None
    skipped: list[Path]
    problems: list[Problem] = field(default_factory=list)
    pixels: PixelTable | None = None  # a pixel-CSV folder: its images are rows of train/test CSVs

    @property
    def files(self) -> list[Path]:
        """The files whose content is the data: the images, or a pixel CSV folder's two CSVs."""
        if self.pixels is not None:
            return self.pixels.files
        return [*self.train_files, *self.test_files]

    @cached_property
    def names(self) -> list[str]:
        """`files` relative to the data folder, as text. Sliced, not `Path.relative_to`: that costs
        a second per 100,000 files."""
        prefix = os.path.join(str(self.data_dir), "")
        return [str(p)[len(prefix):] if str(p).startswith(prefix) else str(p.relative_to(self.data_dir))
                for p in self.files]


@dataclass
class DataCheck:
    """What `inspect_data` found: every problem, and the dataset when no error keeps it from loading."""

    problems: list[Problem]
    dataset: Dataset | None


# -- finding the files ---------------------------------------------------------------------


def _is_image(path: Path) -> bool:
    return _is_image_name(path.name)


def _is_image_name(name: str) -> bool:
    dot = name.rfind(".")  # os.path.splitext's extension, without its cost a call (a leading dot starts no extension)
    return dot > 0 and name[dot:].lower() in IMAGE_EXTENSIONS and name[:dot].strip(".") != ""


def _child(folder: Path, name: str) -> Path:
    """`folder / name` for a name read from the folder's listing (public pathlib only: its private
    listing shortcut would save ~0.15 s of a check of 60,000 files)."""
    return folder / name


def _entries(folder: Path, problems: list[Problem]) -> list[os.DirEntry]:
    """The entries of `folder` by name; an unlistable folder is an error."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda entry: entry.name)
    except OSError as err:
        problems.append(Problem(ERROR, UNREADABLE, folder, f"cannot be listed ({err.strerror})",
                                "fix its permissions or remove it"))
        return []


def _link_problem(path: Path, reason: str) -> Problem:
    return Problem(WARNING, BAD_LINK, path, f"a link that leads to no file ({reason})",
                   "remove the link or point it at an image")


def _list_files(folder: Path, problems: list[Problem]) -> list[Path]:
    """Image files directly in `folder`, sorted; stray files and dead or looping links become warnings."""
    images = []
    for entry in _entries(folder, problems):
        path = _child(folder, entry.name)
        try:
            is_file, is_dir = entry.is_file(), entry.is_dir()
        except OSError as err:  # a symlink loop raises ELOOP here
            problems.append(_link_problem(path, err.strerror))
            continue
        if is_dir:
            continue
        if not is_file:
            if entry.is_symlink():
                problems.append(_link_problem(path, "its target does not exist"))
            continue
        if _is_image_name(entry.name):
            images.append(path)
        elif entry.name not in QUIET_SKIPS:
            problems.append(Problem(WARNING, NON_IMAGE, path, "not an image file", "remove it, or ignore this"))
    return images


def _read_id_frame(path: Path, columns: str) -> tuple[pd.DataFrame | None, str | None]:
    """(the first two columns as stripped text, None), or (None, what is wrong with the file).

    Read as text with no NaN guessing, so ids like 0001 keep their zeros and a class named "NA"
    stays one.
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        return None, f"not a readable CSV ({err})"
    if frame.shape[1] < 2 or len(frame) == 0:
        return None, f"needs {columns}, one row per image"
    frame = frame.iloc[:, :2].apply(lambda column: column.str.strip())
    ids = frame.iloc[:, 0]
    repeated = ids[ids.duplicated()].unique()
    if len(repeated):
        return None, f"repeated ids (e.g. {', '.join(repeated[:3])}); each id must appear once"
    return frame, None


def read_id_csv(path: Path, columns: str, fix: str) -> pd.DataFrame:
    """The first two columns (an id, then a target or label) of a CSV, as stripped text, one row per id.

    Used for a submission and an answers file; raises CompError when the file is malformed.
    """
    frame, wrong = _read_id_frame(path, columns)
    if wrong:
        raise CompError(f"{path}: {wrong}; {fix}")
    return frame


def read_submission_format(data_dir: Path, problems: list[Problem]) -> SubmissionFormat | None:
    """id,target (class names or integers) or id,<class>,<class>,... (Kaggle's probability format);
    None (with the problem recorded) when it cannot be read."""
    path = next((data_dir / n for n in SAMPLE_CSV_NAMES if (data_dir / n).is_file()), None)
    if path is None:
        problems.append(Problem(ERROR, MISSING, data_dir / "sample_submission.csv", "missing",
                                "copy it from the competition download"))
        return None
    frame, wrong = _read_id_frame(path, "an id column and a target column")
    if wrong:
        problems.append(Problem(ERROR, BAD_CSV, path, wrong, "re-download it"))
        return None
    raw = pd.read_csv(path, dtype=str, keep_default_na=False)  # unstripped ids and every column
    id_column, target_column = frame.columns[0], frame.columns[1]
    targets = frame[target_column]
    if raw.shape[1] > 2:
        target_kind = "probs"
    elif targets.str.fullmatch(r"-?\d+").all():
        target_kind = "int"
    else:  # "fraction": one probability column (e.g. P(dog) as 0.5), which comp.stages.submission refuses
        target_kind = "fraction" if targets.str.fullmatch(r"\d*\.\d+").all() else "name"
    one_hot = target_kind == "probs" and bool(raw.iloc[:, 1:].apply(lambda column: column.str.strip())
                                              .isin(("0", "1")).to_numpy().all())
    return SubmissionFormat(path, id_column, target_column, target_kind, frame[id_column].tolist(),
                            raw[id_column].tolist(), list(raw.columns), one_hot)


def _stem_key(name: str) -> str:
    """A file name as an id compares: without an image extension, and a number as its value."""
    stem, extension = os.path.splitext(name)
    stem = stem if extension.lower() in IMAGE_EXTENSIONS else name
    return str(int(stem)) if stem.isascii() and stem.isdigit() else stem


def _id_key(text: str) -> str:
    """`0000`, `0000.jpg`, `0` and `test/0000.jpg` name the same image: compare the last part of the
    path, without an image extension, and numbers as numbers. (Strings, not Paths: a Path costs
    microseconds, and a check compares tens of thousands of ids.)"""
    return _stem_key(text.replace("\\", "/").rsplit("/", 1)[-1])


def _path_keys(text: str) -> list[str]:
    """The keys an id of a labels CSV may name its image by, the longest first: `./train/x/1.jpg`
    names train/x/1.jpg ("train/x/1"), x/1.jpg inside train/ ("x/1"), or a file 1.jpg ("1")."""
    parts = [part for part in text.replace("\\", "/").split("/") if part not in ("", ".")] or [""]
    parts[-1] = _stem_key(parts[-1])
    return ["/".join(parts[start:]) for start in range(len(parts))]


def match_test_files(test_dir: Path, submission: SubmissionFormat, problems: list[Problem]) -> list[Path]:
    """Test files in the order of sample_submission.csv (those found); ids and files without a partner are errors."""
    images = _list_files(test_dir, problems)
    image_keys = [_id_key(path.name) for path in images]
    by_key: dict[str, Path] = {}
    for key, path in zip(image_keys, images):
        by_key.setdefault(key, path)
    keys = [_id_key(i) for i in submission.ids]
    for id_, key in zip(submission.ids, keys):
        if key not in by_key:
            problems.append(Problem(ERROR, ID_WITHOUT_IMAGE, submission.path, f"id {id_} has no image in {test_dir}",
                                    "the ids must match test file names"))
    used = set(keys)
    for key, path in zip(image_keys, images):
        if key not in used:
            problems.append(Problem(ERROR, IMAGE_WITHOUT_ID, path, f"no id in {submission.path.name}",
                                    "remove the image or add its id"))
    return [by_key[k] for k in keys if k in by_key]


def _class_folders(train_dir: Path, problems: list[Problem]) -> tuple[list[Path], list[Path]]:
    """(class folders, images lying beside them) in train/; a folder link back into train/ is skipped."""
    folders, loose = [], []
    inside = train_dir.resolve()
    for entry in _entries(train_dir, problems):
        path = Path(entry.path)
        if entry.name.startswith("."):
            continue
        try:
            is_dir, is_file = entry.is_dir(), entry.is_file()
        except OSError as err:  # a symlink loop raises ELOOP here
            problems.append(_link_problem(path, err.strerror))
            continue
        if is_dir and inside.is_relative_to(path.resolve()):
            problems.append(_link_problem(path, "it loops back to a folder that holds it"))
        elif is_dir:
            folders.append(path)
        elif is_file and _is_image(path):
            loose.append(path)
    return folders, loose


def _scan_class_folders(train_dir: Path, class_dirs: list[Path], loose: list[Path], problems: list[Problem]):
    classes, files, labels = [], [], []
    for folder in class_dirs:
        images = _list_files(folder, problems)
        if not images:
            problems.append(Problem(ERROR, EMPTY_CLASS, folder, "class folder has no images",
                                    "remove the folder or add its images"))
            continue
        files += images
        labels += [len(classes)] * len(images)
        classes.append(folder.name)
    for path in loose:
        problems.append(Problem(WARNING, OUTSIDE_CLASSES, path, "an image in train/ beside the class folders",
                                "move it into its class folder to train on it"))
    return classes, files, labels


def _column_key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in "_- ")


def label_csv_columns(columns: list[str], id_column: str | None = None,
                      label_column: str | None = None) -> tuple[str | None, str | None, str | None]:
    """(id column, label column, None), or (None, None, what is wrong): each found by its name
    (ID_COLUMN_NAMES, LABEL_COLUMN_NAMES), or as given; with two columns, one found names the other."""
    listed = ", ".join(map(str, columns))
    chosen = {}
    for role, given, names in (("id", id_column, ID_COLUMN_NAMES), ("label", label_column, LABEL_COLUMN_NAMES)):
        if given:
            if given not in columns:
                return None, None, f"has no column {given!r} (--{role}-column); its columns: {listed}"
            chosen[role] = [given]
        else:
            chosen[role] = [c for c in columns if _column_key(c) in names]
    if len(columns) == 2:  # one column found by name: the other is the other role
        for role, other in (("id", "label"), ("label", "id")):
            if not chosen[role] and len(chosen[other]) == 1:
                chosen[role] = [c for c in columns if c != chosen[other][0]]
    for role in ("id", "label"):
        found = [c for c in chosen[role] if c not in chosen["label" if role == "id" else "id"]] or chosen[role]
        if len(found) != 1:
            what = f"several {role} columns ({', '.join(found)})" if found else f"no {role} column"
            return None, None, (f"{what} among its columns: {listed}; name them with --id-column and "
                                "--label-column (e.g. id and label)")
        chosen[role] = found
    if chosen["id"][0] == chosen["label"][0]:
        return None, None, f"the id and label columns are both {chosen['id'][0]!r}; its columns: {listed}"
    return chosen["id"][0], chosen["label"][0], None


def _read_labels_frame(path: Path, id_column: str | None, label_column: str | None):
    """(id,label frame as stripped text, None, problems of single rows), or (None, what is wrong, []):
    the columns found by name; a one-hot CSV (id,<class>,<class>,...) becomes id,label too, a row
    that is not one 1 and 0s labelled None and recorded as a problem."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError) as err:
        return None, f"not a readable CSV ({err})", []
    if frame.shape[1] < 2 or len(frame) == 0:
        return None, "needs an id column and a label column, one row per image", []
    problems = []
    id_col, label_col, wrong = label_csv_columns([str(c) for c in frame.columns], id_column, label_column)
    one_hot = _one_hot_columns(frame, id_column) if wrong and not label_column else None
    if one_hot:
        frame, problems = _one_hot_labels(frame.apply(lambda column: column.str.strip()), *one_hot, path)
    elif wrong:
        return None, wrong, []
    else:
        frame = frame[[id_col, label_col]].apply(lambda column: column.str.strip())
    ids = frame.iloc[:, 0]
    repeated = ids[ids.duplicated()].unique()
    if len(repeated):
        return None, f"repeated ids (e.g. {', '.join(repeated[:3])}); each id must appear once", []
    return frame, None, problems


def _one_hot_columns(frame: pd.DataFrame, id_column: str | None) -> tuple[str, list[str]] | None:
    """(id column, class columns) of a one-hot CSV (Plant Pathology 2020's image_id,healthy,
    multiple_diseases,rust,scab), or None: one id column (given, else found by name), and besides
    it at least two columns nearly all 0 or 1 (the odd cell is a damaged row, reported as such)."""
    columns = [str(c) for c in frame.columns]
    ids = [id_column] if id_column in columns else [c for c in columns if _column_key(c) in ID_COLUMN_NAMES]
    if len(ids) != 1:
        return None
    classes = [c for c in columns if c != ids[0]]
    cells = frame[classes].apply(lambda column: column.str.strip())
    if len(classes) < 2 or cells.isin(list(ONE_HOT_VALUES)).to_numpy().mean() < ONE_HOT_SHARE:
        return None
    return ids[0], classes


def _one_hot_labels(frame: pd.DataFrame, id_col: str, classes: list[str], path: Path):
    """(id,label frame: each row's label the column of its one 1, None for a bad row, problems of the bad rows)."""
    cells = frame[classes]
    values = cells.apply(lambda column: column.map(ONE_HOT_VALUES)).to_numpy(np.float64)  # NaN: not 0 or 1
    labels: list[str | None] = []
    problems = []
    for row, (id_, marks) in enumerate(zip(frame[id_col], values)):
        marked = [classes[i] for i in np.flatnonzero(marks == 1)]
        where = f"row {row + 1} (id {id_})"
        if np.isnan(marks).any():
            column = classes[int(np.argmax(np.isnan(marks)))]
            problems.append(Problem(ERROR, BAD_ONE_HOT, path, f"{where}: {column} is {cells.iat[row, classes.index(column)]!r}, "
                                    "not 0 or 1", "a one-hot CSV holds 0 or 1 in each class column, one 1 a row"))
        elif len(marked) > 1:
            problems.append(multi_label_problem(path, where, marked))
        elif not marked:
            problems.append(Problem(ERROR, BAD_ONE_HOT, path, f"{where} has no class marked 1 (of {', '.join(classes)})",
                                    "mark its class with 1, or remove the row"))
        labels.append(marked[0] if len(marked) == 1 and not np.isnan(marks).any() else None)
    return pd.DataFrame({id_col: frame[id_col].to_numpy(), "label": labels}), problems


def multi_label_problem(path: Path, where: str, marked: list[str]) -> Problem:
    """A row with several 1s in a CSV that is not read as multi-label (comp.data.multilabel reads
    it so only when every class cell is 0 or 1): an error that names its classes."""
    return Problem(ERROR, MULTI_LABEL, path, f"{where} has {len(marked)} classes marked 1 ({', '.join(marked)}): "
                   "multi-label targets", "they are read as such when every class cell is 0 or 1 (fix the others); "
                   "for one label a row keep one 1")


def classes_unlike_sample(classes: list[str], submission: SubmissionFormat | None, spaced: bool = False) -> str | None:
    """What does not match between the learned classes and the sample submission's target values, or None.
    `spaced`: multi-label, a target cell may list several labels separated by spaces."""
    if submission is None or not classes:
        return None
    if submission.target_kind == "probs":
        wanted = {c.strip() for c in submission.columns if c != submission.id_column}
        unknown, absent = sorted(wanted - set(classes)), sorted(set(classes) - wanted)
        parts = ([f"its class column(s) {', '.join(unknown[:SHOWN_EXAMPLES])} are not classes of the train set"]
                 if unknown else []) + ([f"it has no column for the class(es) {', '.join(absent[:SHOWN_EXAMPLES])}"]
                                        if absent else [])
        return f"{'; '.join(parts)} (classes learned: {', '.join(classes[:SHOWN_EXAMPLES])})" if parts else None
    try:
        values = set(pd.read_csv(submission.path, dtype=str, keep_default_na=False)[submission.target_column]
                     .str.strip()) - {""}
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, KeyError):
        return None
    if spaced:
        values = {word for value in values for word in value.split()}
    if submission.target_kind == "int" and not all(c.lstrip("-").isdigit() for c in classes):
        return None  # integers stand for the class index: nothing to compare
    if submission.target_kind in ("name", "int") and not values <= set(classes):
        strange = sorted(values - set(classes))
        return (f"its {submission.target_column} values ({', '.join(strange[:SHOWN_EXAMPLES])}) are not among the "
                f"classes learned ({', '.join(classes[:SHOWN_EXAMPLES])})")
    return None


def labels_from() -> tuple[str, re.Pattern | None]:
    """--labels-from as read from COMP_LABELS_FROM: ("", None) unset, ("csv", None), or ("name",
    the pattern whose first group, else whole match, is the label); CompError for anything else."""
    given = os.environ.get(LABELS_FROM_ENV, "").strip()
    source, _, pattern = given.partition(":")
    if not given or given == "csv":
        return given, None
    if source != "name":
        raise CompError(f"--labels-from {given}: expected csv, name, or name:REGEX (a regular expression searched in "
                        "each train file name; its first group is the label)")
    try:
        return "name", re.compile(pattern or NAME_PATTERN)
    except re.error as err:
        raise CompError(f"--labels-from {given}: not a regular expression ({err}); e.g. name:^([a-z]+)_") from None


def _name_label_prefixes(images: list[Path]) -> Counter | None:
    """Images per prefix when the file names look like labels (Dogs vs Cats: cat.123.jpg, dog.7.jpg),
    else None: every name without its extension starts with a word (letters among its characters)
    and a "." or "_", and the words are 2 to half as many as the images. DACON's TRAIN_00001.jpg
    (one word) and numbered or hashed names are not labels."""
    prefixes = Counter()
    pattern = re.compile(NAME_PATTERN)
    for path in images:
        match = pattern.match(os.path.splitext(path.name)[0])
        if match is None or not any(ch.isalpha() for ch in match.group(1)):
            return None
        prefixes[match.group(1)] += 1
    return prefixes if 2 <= len(prefixes) <= len(images) // 2 else None


def _scan_name_labels(images: list[Path], pattern: re.Pattern, problems: list[Problem]):
    """Classes, files and labels from the train file names (--labels-from name[:REGEX])."""
    rows = []
    for path in images:
        match = pattern.search(path.name)
        label = (match.group(1) if pattern.groups else match.group(0)) if match else None
        if label:
            rows.append((path, label.strip()))
        else:
            problems.append(Problem(ERROR, NAME_WITHOUT_LABEL, path, f"no label in its name by the pattern "
                                    f"{pattern.pattern!r}", "rename it, or pass --labels-from name:REGEX whose first "
                                    "group is the label"))
    classes = sorted({name for _, name in rows})
    index = {name: i for i, name in enumerate(classes)}
    return classes, [path for path, _ in rows], [index[name] for _, name in rows]


def _labels_csv(data_dir: Path) -> Path | None:
    return next((data_dir / n for n in LABEL_CSV_NAMES if (data_dir / n).is_file()), None)


def _list_tree(train_dir: Path, problems: list[Problem]) -> list[Path]:
    """Image files in `train_dir` and its sub-folders (a labels CSV whose ids are paths into them)."""
    images = _list_files(train_dir, problems)
    for entry in _entries(train_dir, problems):
        if not entry.name.startswith(".") and entry.is_dir() and not entry.is_symlink():
            images += _list_tree(Path(entry.path), problems)
    return images


def csv_addresses_folders(data_dir: Path, class_dirs: list[Path]) -> bool:
    """Whether the labels CSV's ids are paths into train/'s folders (`train/x/1.jpg`, `x/1.jpg`):
    then the folders hold the images and the CSV their labels, rather than folders being classes."""
    csv_path = _labels_csv(data_dir)
    if csv_path is None:
        return False
    frame, wrong, _ = _read_labels_frame(csv_path, os.environ.get(ID_COLUMN_ENV) or None,
                                         os.environ.get(LABEL_COLUMN_ENV) or None)
    if wrong:
        return False
    folders = {folder.name for folder in class_dirs}
    for id_ in frame.iloc[:, 0]:
        keys = _path_keys(id_)
        if len(keys) > 1 and any(key.split("/", 1)[0] in folders for key in keys[:-1]):
            return True
    return False


def _file_index(train_dir: Path, images: list[Path]) -> dict[str, Path]:
    """Each train image by the keys an id may name it by: its path in train/ without the extension
    ("x/1"), and its bare name ("1") unless two images share it."""
    index: dict[str, Path] = {}
    bare: Counter = Counter(_id_key(p.name) for p in images)
    prefix = os.path.join(str(train_dir), "")
    for path in images:
        inside = str(path)[len(prefix):]
        if os.sep in inside:
            index[_path_keys(inside)[0]] = path
        if bare[_id_key(path.name)] == 1 or os.sep not in inside:
            index.setdefault(_id_key(path.name), path)
    return index


def _find_image(index: dict[str, Path], id_: str) -> Path | None:
    return next((index[key] for key in _path_keys(id_) if key in index), None)


def sample_classes_problem(submission: SubmissionFormat, unlike: str) -> Problem:
    """The sample's targets unlike the classes learned: a warning for a label column (a class the test
    set may lack), an error for class columns (a column for a class never seen cannot be filled)."""
    if submission.target_kind == "probs":
        return Problem(ERROR, CLASSES_NOT_IN_SAMPLE, submission.path, unlike,
                       "its class columns must be the train set's classes: check the labels CSV's class columns "
                       "or --label-column (--labels-from for file-name labels)")
    return Problem(WARNING, CLASSES_NOT_IN_SAMPLE, submission.path, unlike,
                   f"{unlike}: check that the labels come from the right column (--label-column)")


def _scan_labels_csv(data_dir: Path, train_dir: Path, problems: list[Problem], nested: bool = False):
    """Classes, files and labels from a labels CSV (or the file names: `labels_from`); train images
    it does not list are warned about. `nested`: its ids are paths into train/'s folders."""
    source, pattern = labels_from()
    csv_path = _labels_csv(data_dir) if source != "name" else None
    images = _list_tree(train_dir, problems) if nested else _list_files(train_dir, problems)
    if csv_path is None and source == "":
        prefixes = _name_label_prefixes(images)
        if prefixes:
            classes = f"{len(prefixes)} classes: {', '.join(sorted(prefixes)[:SHOWN_EXAMPLES])}" + \
                (", ..." if len(prefixes) > SHOWN_EXAMPLES else "")
            problems.append(Problem(WARNING, NAME_LABELS, train_dir, "no labels CSV, and the file names start with a "
                                    "few words: each image's label is the text before the first . or _ of its name",
                                    f"{classes}; pass --labels-from name:REGEX to read them otherwise, or add a "
                                    "labels CSV"))
            pattern = re.compile(NAME_PATTERN)
    if pattern is not None:
        return _scan_name_labels(images, pattern, problems)
    if csv_path is None:
        problems.append(Problem(ERROR, MISSING, train_dir,
                                f"holds no class folders and {data_dir} has no labels CSV ({', '.join(LABEL_CSV_NAMES)})",
                                "use train/<class>/*.jpg, add a labels CSV with columns id,label, or pass "
                                "--labels-from name when the file names hold the labels (cat.1.jpg)"))
        return [], [], []
    multilabel = _scan_multilabel_csv(csv_path, train_dir, images, problems)  # None: single-label
    if multilabel is not None:
        return multilabel
    frame, wrong, row_problems = _read_labels_frame(csv_path, os.environ.get(ID_COLUMN_ENV) or None,
                                                    os.environ.get(LABEL_COLUMN_ENV) or None)
    if wrong:
        problems.append(Problem(ERROR, BAD_CSV, csv_path, wrong, "fix the CSV"))
        return [], [], []
    problems += row_problems
    index = _file_index(train_dir, images)
    rows, found = [], set()
    for id_, name in zip(frame.iloc[:, 0], frame.iloc[:, 1]):
        path = _find_image(index, id_)
        if path is None:
            problems.append(Problem(ERROR, LABEL_WITHOUT_IMAGE, csv_path, f"id {id_} has no image in {train_dir}",
                                    "fix the CSV or add the image"))
            continue
        found.add(path)
        if not isinstance(name, str):
            continue  # a bad one-hot row (None, NaN to pandas): its problem is recorded
        if not name:
            problems.append(Problem(ERROR, EMPTY_LABEL, csv_path, f"id {id_} has an empty label",
                                    "give every row a class name"))
        else:
            rows.append((path, name))
    for path in images:
        if path not in found:
            problems.append(Problem(WARNING, UNLABELED, path, f"not in {csv_path.name}",
                                    f"add the images to {csv_path.name} to train on them"))
    classes = sorted({name for _, name in rows})
    index = {name: i for i, name in enumerate(classes)}
    return classes, [path for path, _ in rows], [index[name] for _, name in rows]


def _scan_multilabel_csv(csv_path: Path, train_dir: Path, images: list[Path], problems: list[Problem]):
    """(label names, files, multi-hot matrix) of a multi-label labels CSV (comp.data.multilabel) matched
    to the train images, each unmatched id or image a Problem; None when the CSV is not multi-label."""
    from comp.data.multilabel import read_multilabel

    targets = read_multilabel(csv_path, (*ID_COLUMN_NAMES, "index"), LABEL_COLUMN_NAMES,
                              os.environ.get(ID_COLUMN_ENV) or None, os.environ.get(LABEL_COLUMN_ENV) or None)
    if targets is None:
        return None
    by_key = {_id_key(p.name): p for p in images}
    files, kept = [], []
    for row, id_ in enumerate(targets.ids):
        if _id_key(id_) in by_key:
            files.append(by_key[_id_key(id_)])
            kept.append(row)
        else:
            problems.append(Problem(ERROR, LABEL_WITHOUT_IMAGE, csv_path,
                                    f"id {id_} (row {row + 2}) has no image in {train_dir}",
                                    "fix the CSV or add the image"))
    listed = {_id_key(i) for i in targets.ids}
    for path in images:
        if _id_key(path.name) not in listed:
            problems.append(Problem(WARNING, UNLABELED, path, f"not in {csv_path.name}",
                                    f"add the images to {csv_path.name} to train on them"))
    return targets.classes, files, targets.matrix[kept]


def _pixel_problems(errors: list[PixelError]) -> list[Problem]:
    return [Problem(ERROR, error.kind, error.path, error.detail, error.fix) for error in errors]


def _scan_pixel_csv(data_dir: Path, train_csv: Path) -> Layout:
    """A pixel-CSV folder (comp.data.pixels): classes and labels from the train CSV's label column,
    the test rows matched to the sample's ids; no pixel is read here."""
    problems: list[Problem] = []
    submission = read_submission_format(data_dir, problems)
    table, classes, labels, errors = read_pixel_layout(
        data_dir, train_csv, submission.path if submission else None, submission.ids if submission else [],
        {"id": ID_COLUMN_NAMES, "label": LABEL_COLUMN_NAMES},
        {"id": os.environ.get(ID_COLUMN_ENV) or None, "label": os.environ.get(LABEL_COLUMN_ENV) or None},
        _column_key, _id_key)
    problems += _pixel_problems(errors)
    if len(classes) == 1:
        problems.append(Problem(ERROR, ONE_CLASS, train_csv, f"only one class ({classes[0]})",
                                "a classifier needs at least two"))
    unlike = classes_unlike_sample(classes, submission) if len(classes) > 1 else None
    if unlike:
        problems.append(Problem(WARNING, CLASSES_NOT_IN_SAMPLE, submission.path, unlike,
                                f"{unlike}: check that the labels come from the right column (--label-column)"))
    return Layout(data_dir, classes, [], labels, [], submission, [], problems, pixels=table)


def scan(data_dir: Path) -> Layout:
    """Find train, test and the submission format, recording every problem met on the way."""
    data_dir = Path(data_dir)
    pixel_csv = find_pixel_csv(data_dir, LABEL_CSV_NAMES)
    if pixel_csv is not None:
        return _scan_pixel_csv(data_dir, pixel_csv)
    train_dir, test_dir = data_dir / "train", data_dir / "test"
    problems: list[Problem] = []
    classes, files, labels = [], [], []
    from_csv = False
    if train_dir.is_dir():
        class_dirs, loose = _class_folders(train_dir, problems)
        nested = bool(class_dirs) and csv_addresses_folders(data_dir, class_dirs)
        if class_dirs and not nested:
            classes, files, labels = _scan_class_folders(train_dir, class_dirs, loose, problems)
        else:
            classes, files, labels = _scan_labels_csv(data_dir, train_dir, problems, nested)
            from_csv = True
        if len(classes) == 1:
            problems.append(Problem(ERROR, ONE_CLASS, train_dir, f"only one class ({classes[0]})",
                                    "a classifier needs at least two"))
    else:
        problems.append(Problem(ERROR, MISSING, train_dir, "missing",
                                "the competition folder needs train/<class>/*.jpg (is --data the unpacked download?)"))
    submission = read_submission_format(data_dir, problems)
    unlike = classes_unlike_sample(classes, submission, spaced=np.ndim(labels) == 2) \
        if from_csv and len(classes) > 1 else None
    if unlike:
        problems.append(sample_classes_problem(submission, unlike))
    test_files = []
    if not test_dir.is_dir():
        problems.append(Problem(ERROR, MISSING, test_dir, "missing",
                                "the competition folder needs test/*.jpg (is --data the unpacked download?)"))
    elif submission is not None:
        test_files = match_test_files(test_dir, submission, problems)
    skipped = [p.path for p in problems if p.kind == NON_IMAGE]
    # Class numbers (N,), or a multi-label CSV's multi-hot matrix (N, L) uint8 as it came (comp.data.multilabel).
    labels = labels if isinstance(labels, np.ndarray) and labels.ndim == 2 else np.asarray(labels, dtype=np.int64)
    return Layout(data_dir, classes, files, labels, test_files, submission, skipped, problems)


# -- fingerprint: the content of every file ------------------------------------------------


def _file_digest(path: Path) -> str | None:
    try:
        return hashlib.blake2b(path.read_bytes(), digest_size=DIGEST_BYTES).hexdigest()
    except OSError:
        return None  # unreadable: the decode pass reports the file as damaged


def _stat_key(path: Path) -> list[int] | None:
    """What must stay equal for a remembered digest to be trusted: size, mtime and ctime in ns."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _digest_cache_path(cache_dir: Path, data_dir: Path) -> Path:
    folder_id = hashlib.sha1(str(data_dir.resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"digests-{folder_id}.json"


def _read_digest_cache(path: Path | None) -> dict:
    try:
        saved = read_json(path) if path and path.exists() else {}
    except (OSError, ValueError):
        return {}  # a damaged cache only costs re-reading the files
    return saved.get("files", {}) if saved.get("version") == DIGEST_CACHE_VERSION else {}


def _hash_files(paths: list[Path]) -> list[str | None]:
    if not paths:
        return []
    with ThreadPoolExecutor(HASH_WORKERS) as pool:
        if is_quiet() or len(paths) < 1000:
            return list(pool.map(_file_digest, paths, chunksize=64))
        with console.status(f"hashing {len(paths):,} new or changed files"):
            return list(pool.map(_file_digest, paths, chunksize=64))


def content_digests(layout: Layout, cache_dir: Path | None) -> list[str]:
    """A digest of each file's bytes, in `layout.files` order ("unreadable" for a file that cannot be read).

    Remembered in `cache_dir` per file, keyed by its path in the data folder, size, mtime and
    ctime, so a second load reads no file again; a copy or re-extraction is read once and keeps
    the same digests.
    """
    cache_path = _digest_cache_path(cache_dir, layout.data_dir) if cache_dir else None
    known = _read_digest_cache(cache_path)
    paths, names = layout.files, layout.names
    keys = [_stat_key(p) for p in paths]
    current = {n: known[n] for n, k in zip(names, keys) if k is not None and known.get(n, [])[:3] == k}
    stale = [i for i, n in enumerate(names) if n not in current]
    settled_before = time.time_ns() - RACY_NS
    digests = {n: entry[3] for n, entry in current.items()}
    for i, digest in zip(stale, _hash_files([paths[i] for i in stale])):
        digests[names[i]] = digest or "unreadable"
        if digest is not None and keys[i] is not None and max(keys[i][1:]) < settled_before:
            current[names[i]] = [*keys[i], digest]
    if cache_path and current != known:
        cache_dir.mkdir(parents=True, exist_ok=True)
        write_text(cache_path, json.dumps({"version": DIGEST_CACHE_VERSION, "files": current}, separators=(",", ":")))
    return [digests[n] for n in names]


def data_fingerprint(layout: Layout, digests: list[str]) -> str:
    """A hash of the classes, the labels, the sample submission and every file's name and content.

    It survives a copy or re-extraction of the same data and changes when a file is added,
    removed, renamed, relabelled or rewritten (even to the same size).
    """
    data_hash = hashlib.sha1()
    data_hash.update("\n".join(layout.classes).encode())
    data_hash.update(layout.train_labels.tobytes())
    data_hash.update(layout.submission.path.read_bytes())
    for name, digest in zip(layout.names, digests):
        data_hash.update(f"{name}\0{digest}\n".encode())
    return data_hash.hexdigest()[:16]
# -- the image size ------------------------------------------------------------------------------


def native_sizes(source: "Source") -> Counter:
    """How many files have each (height, width), read from their headers (remembered per fingerprint)."""
    table = source.layout.pixels
    if table is not None:  # every row of a pixel CSV has the one size its column count gives
        return Counter({table.size: len(table.train_names) + len(table.test_rows)})
    path = source.cache_dir / f"sizes-{source.fingerprint}.json" if source.cache_dir else None
    try:
        saved = read_json(path) if path and path.exists() else {}
    except (OSError, ValueError):
        saved = {}  # a damaged record only costs reading the headers again
    if saved.get("version") == SIZES_VERSION:
        return Counter({tuple(map(int, size.split("x"))): count for size, count in saved["sizes"].items()})
    sizes = Counter(size for size in probe_sizes(source.layout.files) if size is not None)
    if path:
        write_json(path, {"version": SIZES_VERSION, "sizes": {f"{h}x{w}": n for (h, w), n in sizes.most_common()}})
    return sizes


def auto_size(sizes: dict[tuple[int, int], int]) -> tuple[tuple[int, int], str]:
    """The default image size for files of these native sizes (counts), and the line that says why."""
    sizes = Counter(sizes)
    total = sum(sizes.values())
    choose = "--image-size N or HxW to choose, --resize squash|crop|pad for the aspect"
    if sizes:
        (height, width), count = sizes.most_common(1)[0]
        if count >= NATIVE_SHARE * total and max(height, width) <= NATIVE_MAX:
            others = f"; the {total - count:,} of other sizes are resized to it" if count < total else ""
            return (height, width), (f"image size {height}x{width}: the images' own (the default up to "
                                     f"{NATIVE_MAX} px{others}; {choose})")
    heights = [h for h, _ in sizes]
    widths = [w for _, w in sizes]
    seen = (f"{len(sizes)} sizes, heights {min(heights)}-{max(heights)}, widths {min(widths)}-{max(widths)}"
            if len(sizes) > 1 else f"{next(iter(sizes))[0]}x{next(iter(sizes))[1]}" if sizes else "no readable size")
    return (DEFAULT_SIDE, DEFAULT_SIDE), (f"image size {DEFAULT_SIDE}x{DEFAULT_SIDE}: the default for images of "
                                          f"{seen} (own size only when all share one up to {NATIVE_MAX} px); {choose}")


def target_size(source: "Source", image_size) -> tuple[tuple[int, int], str | None]:
    """(height, width) to decode at, and for "auto" the line that says what was chosen and why."""
    chosen = image_hw(image_size)
    return (chosen, None) if chosen else auto_size(native_sizes(source))


# -- decoding into the cache ---------------------------------------------------------------------


def conversion_summary(modes: dict[str, int], rotated: int) -> str | None:
    """One line saying which images were converted to 8-bit RGB (and how), and how many were turned upright."""
    parts = [f"{count:,} {mode} ({MODE_NOTES.get(mode, 'converted to RGB')})"
             for mode, count in modes.items() if mode != "RGB"]
    if rotated:
        parts.append(f"{rotated:,} turned upright by their EXIF orientation")
    return "converted once, then cached: " + ", ".join(parts) if parts else None


def _damaged(layout: Layout, records: list[list]) -> list[tuple[str, str]]:
    """(name in the data folder, reason) of each of `layout.files` that did not decode."""
    return [(name, record[4]) for name, record in zip(layout.names, records) if record[4] is not None]


def decode_stats(layout: Layout, records: list[list], target_hw: tuple[int, int], resize: str) -> dict:
    """What decoding found (native sizes, modes, EXIF turns, resizes, damaged files); says it once."""
    decoded = [record for record in records if record[4] is None]
    sizes = Counter((height, width) for _, height, width, _, _ in decoded)
    modes = Counter(record[0] for record in decoded)
    rotated = sum(bool(record[3]) for record in decoded)
    resized = sum(count for size, count in sizes.items() if size != tuple(target_hw))
    bad = _damaged(layout, records)
    summary = conversion_summary(dict(modes.most_common()), rotated)
    if summary:
        info(summary)
    if resized:
        info(f"resized {resized:,} image(s) of other sizes to {target_hw[0]}x{target_hw[1]} ({resize})")
    return {
        "sizes": {f"{h}x{w}": n for (h, w), n in sizes.most_common()},
        "modes": dict(modes.most_common()),
        "rotated": rotated,
        "resized": resized,
        "bad_files": [name for name, _ in bad],
        "bad_reasons": [reason for _, reason in bad],
    }


def _cache_facts(layout: Layout, records: list[list], target_hw, resize: str) -> tuple[dict, np.ndarray]:
    """(the cache's meta, which train rows decoded): labels and names of the kept train rows, stats."""
    train_count = len(layout.train_files)
    keep = np.array([record[4] is None for record in records[:train_count]], dtype=bool)
    meta = {
        "shape": [len(records), *target_hw, 3],
        "train_count": train_count,
        "kept_count": int(keep.sum()),
        "test_count": len(layout.test_files),
        "train_y": layout.train_labels[keep].tolist(),
        "train_files": [name for name, k in zip(layout.names, keep) if k],  # train names come first
        "resize": resize,
        "stats": decode_stats(layout, records, target_hw, resize),
    }
    return meta, keep


def _decode_to_cache(layout: Layout, folder: Path, target_hw: tuple[int, int], resize: str) -> dict:
    """Decode every file into `folder` (resuming the chunks a former decode finished); its arrays."""
    images_path = folder / IMAGES
    shape = (len(layout.files), *target_hw, 3)
    chunks = chunked(layout.files)
    if not _has_shape(images_path, shape):
        (folder / JOURNAL).unlink(missing_ok=True)
        create_mapped(images_path, shape, f"the decoded images at {target_hw[0]}x{target_hw[1]}")
    done = read_journal(folder, chunks)
    todo = [chunk for chunk in chunks if chunk[0] not in done]
    done_files = sum(len(done[start]) for start in done)
    resumed = f", resuming after {done_files:,}" if done_files else ""
    what = f"{len(layout.files):,} images at {target_hw[0]}x{target_hw[1]}{resumed}"
    started = time.time()
    done |= decode_chunks(todo, images_path, target_hw, resize, what, done_files,
                          on_chunk=lambda start, records: append_journal(folder, start, records))
    info(f"decoded {len(layout.files) - done_files:,} images at {target_hw[0]}x{target_hw[1]} ({resize}) in "
         f"{time.time() - started:.1f}s into {folder}")
    records = [record for start, _ in chunks for record in done[start]]
    meta, keep = _cache_facts(layout, records, target_hw, resize)
    if not keep.all():  # damaged train images: the rows after them move down over them
        first_moved, train_count = int(np.argmin(keep)), len(keep)
        untouched = {start for start, paths in chunks if start + len(paths) <= first_moved or start >= train_count}
        # Forgotten first: if the move is interrupted, the chunks whose rows it touches are decoded again.
        forget_chunks(folder, done, keep=untouched.__contains__)
        compact_rows(images_path, keep)
    write_meta(folder, meta)
    return read_cache(folder)


def _has_shape(path: Path, shape: tuple[int, ...]) -> bool:
    try:
        return path.exists() and open_mapped(path).shape == shape
    except (OSError, ValueError):
        return False


def _decode_in_memory(layout: Layout, target_hw: tuple[int, int], resize: str) -> dict:
    """Without a cache folder: decode into memory (tests, one-off API calls)."""
    images = np.zeros((len(layout.files), *target_hw, 3), np.uint8)
    done = decode_chunks(chunked(layout.files), images, target_hw, resize, f"{len(layout.files):,} images")
    meta, keep = _cache_facts(layout, [record for start in sorted(done) for record in done[start]], target_hw, resize)
    return meta | {"train_x": images[:len(keep)][keep], "test_x": images[len(keep):],
                   "train_y": np.asarray(meta["train_y"], dtype=np.int64)}


def decoded_arrays(source: "Source", target_hw: tuple[int, int], resize: str) -> dict:
    """train_x, train_y, test_x and the cache's facts at this size: from the cache, else decoded into it."""
    if source.cache_dir is None:
        return _decode_in_memory(source.layout, target_hw, resize)
    folder = cache_folder(source.cache_dir, source.fingerprint, target_hw, resize)
    cached = read_cache(folder)
    if cached is not None:
        return cached
    with decode_lock(folder):  # another process may have finished it while this one waited
        return read_cache(folder) or _decode_to_cache(source.layout, folder, target_hw, resize)


def damage_problems(data_dir: Path, bad: list[tuple[str, str]], skip_bad: bool) -> list[Problem]:
    """Damaged images (relative name, reason): errors, or warnings when --skip-bad leaves them out."""
    problems = []
    for name, reason in bad:
        path = data_dir / name
        if not skip_bad:
            problems.append(Problem(ERROR, DAMAGED, path, f"truncated or corrupt image ({reason})",
                                    "replace or delete it, or pass --skip-bad"))
            continue
        what = "predicted from a blank image" if Path(name).parts[0] == "test" else "left out of training"
        problems.append(Problem(WARNING, DAMAGED_SKIPPED, path, f"damaged ({reason}); {what}",
                                "replace it to use it (damaged test images are predicted from a blank image)"))
    return problems


# -- loading -------------------------------------------------------------------------------


@dataclass
class Source:
    """A scanned data folder without layout errors, and its content fingerprint: what a stage
    knows before any image is decoded (enough to choose a config), and how to load it at a size."""

    layout: Layout
    fingerprint: str
    cache_dir: Path | None
    skip_bad: bool = False

    def load(self, image_size="auto", resize: str = "squash", limit: int = 0, say_size: bool = True) -> Dataset:
        """The dataset at `image_size` (N, "HxW" or "auto") fitted by `resize`, subsampled by `limit`.

        Stops with one line on the first error; warns once per kind of warning. `say_size`:
        print the line that says which size "auto" chose.
        """
        dataset, damage = self.decode(image_size, resize, say_size)
        problems = self.layout.problems + damage
        stop_on_errors(problems, self.layout.data_dir)
        warn_about(problems, self.layout.data_dir)
        return apply_limit(dataset, limit)

    def decode(self, image_size="auto", resize: str = "squash",
               say_size: bool = True) -> tuple[Dataset | None, list[Problem]]:
        """The dataset (from the cache, else decoded into it) and the problems only decoding finds
        (no dataset when a pixel CSV has bad rows)."""
        image_size = check_field("image_size", image_size, "options")
        resize = check_field("resize", resize, "options")
        target_hw, note = target_size(self, image_size)
        if note and say_size:
            info(note)
        arrays, problems = self.arrays(target_hw, resize)
        if arrays is None:
            return None, problems
        stats = arrays["stats"]
        dataset = Dataset(
            data_dir=self.layout.data_dir,
            classes=self.layout.classes,
            train_x=arrays["train_x"],
            train_y=arrays["train_y"].astype(np.uint8) if arrays["train_y"].ndim == 2 else arrays["train_y"],
            test_x=arrays["test_x"],
            test_ids=self.layout.submission.ids,
            submission=self.layout.submission,
            fingerprint=self.fingerprint,
            rows=np.arange(len(arrays["train_y"])),
            resize=resize,
            size_note=note,
            # Skipped files are not in the fingerprint, so they are taken from this scan, not the cache.
            stats=stats | {"train_files": arrays["train_files"],
                           "skipped_files": [relative_name(p, self.layout.data_dir) for p in self.layout.skipped]},
        )
        return dataset, problems

    def arrays(self, target_hw: tuple[int, int], resize: str) -> tuple[dict | None, list[Problem]]:
        """The decoded arrays and facts (`decoded_arrays`), and the problems decoding found."""
        table = self.layout.pixels
        if table is not None:
            arrays, errors = pixel_arrays(table, self.layout.train_labels, self.cache_dir, self.fingerprint,
                                          target_hw, resize)
            return arrays, _pixel_problems(errors)
        arrays = decoded_arrays(self, target_hw, resize)
        stats = arrays["stats"]
        problems = damage_problems(self.layout.data_dir, list(zip(stats["bad_files"], stats["bad_reasons"])),
                                   self.skip_bad)
        if self.skip_bad and len(arrays["train_y"]) == 0:
            problems.append(Problem(ERROR, NO_TRAIN_IMAGES, self.layout.data_dir / "train",
                                    "no train image could be decoded", "replace the damaged images"))
        return arrays, problems


def source_of(layout: Layout, cache_dir: Path | None, skip_bad: bool = False) -> Source:
    cache_dir = Path(cache_dir) if cache_dir else None
    return Source(layout, data_fingerprint(layout, content_digests(layout, cache_dir)), cache_dir, skip_bad)


def open_source(data_dir: Path, cache_dir: Path | None, skip_bad: bool = False) -> Source:
    """Scan a data folder and fingerprint its content; stops with one line on a layout error
    (before reading any image)."""
    layout = scan(Path(data_dir))
    stop_on_errors(layout.problems, layout.data_dir, found=" found before decoding")
    return source_of(layout, cache_dir, skip_bad)


def inspect_data(data_dir: Path, cache_dir: Path | None, skip_bad: bool = False, image_size="auto",
                 resize: str = "squash") -> DataCheck:
    """Every problem of a folder in one pass, decoding each image once (or reading the cache).

    When the files cannot be put in order (an error in the layout), the images found are still
    decoded so that damaged ones are listed too; no dataset is returned then.
    """
    layout = scan(Path(data_dir))
    if errors_in(layout.problems) and layout.pixels is not None:  # its rows are checked when decoded
        return DataCheck(layout.problems, None)
    if errors_in(layout.problems):
        found = decode_chunks(chunked(layout.files), None, None, "squash", f"{len(layout.files):,} images found")
        records = [record for start in sorted(found) for record in found[start]]
        damage = damage_problems(layout.data_dir, _damaged(layout, records), skip_bad)
        return DataCheck(layout.problems + damage, None)
    dataset, damage = source_of(layout, cache_dir, skip_bad).decode(image_size, resize)
    problems = layout.problems + damage
    return DataCheck(problems, None if errors_in(problems) else dataset)


def find_problems(data_dir: Path, cache_dir: Path | None = None, skip_bad: bool = False) -> list[Problem]:
    return inspect_data(data_dir, cache_dir, skip_bad).problems


def load_dataset(data_dir: Path, cache_dir: Path | None, limit: int = 0, skip_bad: bool = False,
                 image_size="auto", resize: str = "squash", say_size: bool = True) -> Dataset:
    """Scan, decode (or read the cache) at `image_size`, and subsample with --limit. The entry
    point of every stage that has no Source yet."""
    return open_source(data_dir, cache_dir, skip_bad).load(image_size, resize, limit, say_size)


# -- subsampling ---------------------------------------------------------------------------


def limit_rows(labels: np.ndarray, limit: int) -> np.ndarray:
    """A deterministic stratified subsample of row indices (all rows when limit is 0 or too big)."""
    if not limit or limit >= len(labels):
        return np.arange(len(labels))
    if labels.ndim == 2:  # multi-label: no class to stratify by; a seeded random subsample
        return np.sort(np.random.default_rng(LIMIT_SEED).permutation(len(labels))[:limit])
    from sklearn.model_selection import train_test_split

    num_classes = len(np.unique(labels))
    if limit < 2 * num_classes:
        raise CompError(f"--limit {limit}: too small for {num_classes} classes; use at least {2 * num_classes}")
    rows, _ = train_test_split(np.arange(len(labels)), train_size=limit, stratify=labels, random_state=LIMIT_SEED)
    return np.sort(rows)


def apply_limit(dataset: Dataset, limit: int) -> Dataset:
    """The stratified subsample of --limit; its images are a view of the rows (read when indexed), not a copy."""
    rows = limit_rows(dataset.train_y, limit)
    if len(rows) == len(dataset.train_y):
        return dataset
    images = dataset.train_x
    dataset.train_x = Rows(images.base, images.index[rows]) if isinstance(images, Rows) else Rows(images, rows)
    dataset.train_y, dataset.rows = dataset.train_y[rows], rows
    dataset.limit = limit
    return dataset


def workdir_source(workdir) -> "Source":
    """The workdir's data folder scanned and fingerprinted (a comp.core.paths.Workdir), nothing decoded."""
    data_dir = workdir.data_dir  # resolved (and remembered) before the columns
    workdir.use_columns()
    return open_source(data_dir, workdir.cache, skip_bad=workdir.skip_bad)


def workdir_dataset(workdir, limit: int = 0, image_size="auto", resize: str = "squash") -> "Dataset":
    """The workdir's data decoded at `image_size` (cached), optionally a stratified subsample."""
    return workdir_source(workdir).load(image_size, resize, limit)
