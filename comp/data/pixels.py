"""Pixel CSVs: images shipped as rows of integers, the third data layout.

    DIR/train.csv               [id,]label,pixel0,...   side x side columns (grayscale) or 3 x side x side (RGB)
    DIR/test.csv                [id,]pixel0,...         no label; without an id column its rows are the
                                                        sample's ids in order (Kaggle's Digit Recognizer)
    DIR/sample_submission.csv   id,label

DACON's Fashion-MNIST (`index,label,pixel1..pixel784`), its 컴퓨터비전 학습 (`id,digit,letter,0..783`)
and Kaggle's Digit Recognizer (`label,pixel0..pixel783`) ship this way. The layout is found from the
files: no train/ folder, and a train CSV whose header names pixel columns (`pixel0`, `px12`, `0`).

The pixels are parsed by numpy's C reader (np.loadtxt: 2.6 times pandas' speed on these files) straight
into uint8, a batch of lines at a time, and written into the same memory-mapped cache as decoded image
files (comp.data.cache): no image file is written.
Grayscale stays one channel there; the nets are built for the data's channel count. A batch that does
not parse is read again line by line to say which rows are wrong and why.

This module knows nothing of comp.data.sources (which imports it): what is wrong comes back as
`PixelError`s, which sources turns into its `Problem`s.
"""

from __future__ import annotations

import csv
import io
import mmap
import re
import time
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np
import pandas as pd

from comp.core.console import info
from comp.data.cache import IMAGES, cache_folder, create_mapped, decode_lock, read_cache, write_meta
from comp.data.decode import decode_progress, fit

TEST_CSV_NAMES = ("test.csv", "test_data.csv")
# A pixel column's name: letters (or none) then the pixel's number: pixel0, pixel784, px_12, 0.
PIXEL_NAME = re.compile(r"[A-Za-z_]*(\d+)")
MIN_PIXEL_COLUMNS = 4  # fewer pixel-named columns than a 2x2 image: not a pixel CSV
PIXEL_ID_NAMES = ("index",)  # DACON's id column, beside the id names of labels CSVs
BATCH_ROWS = 2048  # lines parsed per call: memory stays bounded, the progress bar moves
LEADING_FIELDS = 8  # id and label columns among a row's first fields are read without parsing the pixels
LEADING_BYTES = 256  # the start of a line read for them (more when they do not fit)
ORDER_SAMPLE = 256  # train rows that decide an RGB CSV's channel order
HWC, CHW = "hwc", "chw"
ORDER_NOTES = {HWC: "pixel by pixel (r,g,b,r,g,b,...)", CHW: "channel by channel (all r, all g, all b)"}

# Kinds of problem (comp data check groups its table by them).
NOT_SQUARE = "pixel count not side x side"
NO_LABEL_COLUMN = "no label column"
NO_TEST_CSV = "no test CSV"
UNLIKE_TEST = "test CSV unlike the train CSV"
WRONG_LENGTH = "row of the wrong length"
BAD_PIXEL = "pixel not an integer 0..255"
UNREADABLE_ROWS = "unreadable rows"
TEST_ID_NOT_IN_SAMPLE = "test.csv id not in the sample"
SAMPLE_ID_WITHOUT_ROW = "sample id without a test.csv row"
EMPTY_LABEL = "empty label"
BAD_CSV = "malformed CSV"
FIXES = {
    WRONG_LENGTH: "every row needs a value for each column of the header; fix or remove the row",
    BAD_PIXEL: "pixels are whole numbers 0..255; fix the value or remove the row",
}


class PixelError(NamedTuple):
    """One error in a pixel CSV: comp.data.sources makes it a Problem of severity error."""

    kind: str
    path: Path
    detail: str
    fix: str


@dataclass
class PixelTable:
    """A pixel-CSV competition as scanned: its files, which columns hold what, and the test rows'
    order (the sample's). Nothing of the pixels is read until they are decoded."""

    train_csv: Path
    test_csv: Path
    id_column: str | None  # train's; None: Digit Recognizer's train.csv has none
    label_column: str
    pixel_columns: list[str]  # train's, in pixel order
    test_id_column: str | None
    test_pixel_columns: list[str]
    side: int
    channels: int  # 1 (grayscale) or 3 (RGB)
    train_names: list[str]  # each train row's id (or "row N"): what folds.csv shows
    test_rows: np.ndarray  # the test.csv row of each sample id, in the sample's order
    ignored_columns: list[str]

    @property
    def files(self) -> list[Path]:
        """The files whose content is the data (their digests enter the fingerprint)."""
        return [self.train_csv, self.test_csv]

    @property
    def size(self) -> tuple[int, int]:
        return self.side, self.side

    def describe(self, order: str | None = None) -> str:
        colour = "grayscale" if self.channels == 1 else "RGB"
        ids = f"ids from column {self.test_id_column}" if self.test_id_column else "test rows in the sample's id order"
        channels = f", channels {ORDER_NOTES[order]}" if order and self.channels == 3 else ""
        ignored = (f"; column{'s' if len(self.ignored_columns) > 1 else ''} {', '.join(self.ignored_columns)} "
                   "ignored" if self.ignored_columns else "")
        return (f"pixel CSV ({self.train_csv.name}, {self.test_csv.name}): {self.side}x{self.side} {colour} "
                f"({len(self.pixel_columns):,} pixel columns{channels}), labels from column {self.label_column}, "
                f"{ids}{ignored}")


# -- finding the layout ----------------------------------------------------------------------------


def header_of(path: Path) -> list[str] | None:
    """A CSV's column names, from its first line alone (None when it cannot be read)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            return [name.strip() for name in next(csv.reader(handle), [])]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None


def pixel_named(columns: list[str]) -> list[str]:
    return [c for c in columns if PIXEL_NAME.fullmatch(c)]


def find_pixel_csv(data_dir: Path, csv_names: tuple[str, ...]) -> Path | None:
    """The train CSV of a pixel-CSV folder: no train/ folder, and a train CSV naming pixel columns."""
    if (data_dir / "train").is_dir():
        return None
    for name in csv_names:
        path = data_dir / name
        if path.is_file() and len(pixel_named(header_of(path) or [])) >= MIN_PIXEL_COLUMNS:
            return path
    return None


def square_shape(count: int) -> tuple[int, int] | None:
    """(side, channels) of `count` pixels: side x side grayscale or 3 x side x side RGB; None if neither."""
    for channels in (1, 3):
        side = int(round((count / channels) ** 0.5))
        if count % channels == 0 and side * side * channels == count and side > 0:
            return side, channels
    return None


def _pixel_order(columns: list[str]) -> list[str]:
    """Pixel columns by their number when the numbers name each pixel once, else as the file has them."""
    numbers = [int(PIXEL_NAME.fullmatch(c).group(1)) for c in columns]
    return [c for _, c in sorted(zip(numbers, columns))] if len(set(numbers)) == len(numbers) else columns


def _named(columns: list[str], given: str | None, names: tuple[str, ...], key: Callable[[str], str]) -> list[str]:
    if given:
        return [given] if given in columns else []
    return [c for c in columns if key(c) in names and not PIXEL_NAME.fullmatch(c)]


def column_roles(train_csv: Path, test_csv: Path, train_columns: list[str], test_columns: list[str],
                 names: dict[str, tuple[str, ...]], given: dict[str, str | None],
                 key: Callable[[str], str]) -> tuple[dict | None, PixelError | None]:
    """Which columns are the id, the label and the pixels, in each CSV.

    The id and label are found by name (`names["id"]`, `names["label"]`, as labels CSVs name
    them; or as given by --id-column / --label-column), else the label is the one column of the
    train CSV that the test CSV lacks (DACON's `digit`). The id is optional: without one the
    test rows are the sample's ids in order."""
    labels = _named(train_columns, given["label"], names["label"], key)
    if not labels and not given["label"]:
        absent = [c for c in train_columns if c not in test_columns and not PIXEL_NAME.fullmatch(c)
                  and key(c) not in names["id"] + PIXEL_ID_NAMES]
        labels = absent if len(absent) == 1 else []
    if len(labels) != 1:
        others = ", ".join(c for c in train_columns if not PIXEL_NAME.fullmatch(c)) or "none"
        what = (f"no column {given['label']!r}" if given["label"] else
                f"several label columns ({', '.join(labels)})" if labels else "no label column")
        return None, PixelError(NO_LABEL_COLUMN, train_csv, f"{what} beside its pixel columns (its other columns: "
                                f"{others})", "name it with --label-column, or add a label column")
    label = labels[0]
    id_names = names["id"] + PIXEL_ID_NAMES
    train_id = next(iter(c for c in _named(train_columns, given["id"], id_names, key) if c != label), None)
    test_id = train_id if train_id in test_columns else next(iter(_named(test_columns, given["id"], id_names, key)),
                                                             None)
    pixels = [c for c in pixel_named(train_columns) if c not in (train_id, label)]
    test_pixels = [c for c in pixel_named(test_columns) if c != test_id]
    if len(test_pixels) != len(pixels):
        return None, PixelError(UNLIKE_TEST, test_csv, f"has {len(test_pixels):,} pixel columns, {train_csv.name} "
                                f"{len(pixels):,}", "use the competition's own test CSV")
    return {"id": train_id, "label": label, "pixels": _pixel_order(pixels), "test_id": test_id,
            "test_pixels": _pixel_order(test_pixels),
            "ignored": [c for c in train_columns if c not in (train_id, label, *pixels)]}, None


def _leading_columns(path: Path, positions: list[int]) -> list[list[str]] | None:
    """The values at `positions` of every non-blank line, reading only the start of each line (ids
    and labels lead the rows; the pixels after them are skipped by a memchr for the line's end).
    None when a line quotes, is shorter or is not UTF-8: pandas reads those."""
    last = max(positions)
    with open(path, "rb") as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return None
    values: list[list[bytes]] = [[] for _ in positions]
    start = data.find(b"\n") + 1
    while 0 < start < len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        head = data[start:min(end, start + LEADING_BYTES)]
        if head.count(b",") <= last and end > start + LEADING_BYTES:
            head = data[start:end]  # long ids: the whole line
        start = end + 1
        if not head.strip():
            continue  # a blank line: skipped, as pandas skips it
        fields = head.split(b",", last + 1)
        if b'"' in head or len(fields) <= last:
            return None
        for column, position in zip(values, positions):
            column.append(fields[position])
    try:
        return [[value.decode("utf-8").strip() for value in column] for column in values]
    except UnicodeDecodeError:
        return None


def _read_columns(path: Path, columns: list[str]) -> tuple[pd.DataFrame | None, str | None]:
    """Some columns of a CSV as stripped text, one row per non-blank line.

    Read from the start of each line when they come first (CIFAR-10's 50,000 rows of 3,072 pixels:
    0.2 s where pandas, tokenising every field, takes 0.9 s); else by pandas, converting only these."""
    header = header_of(path) or []
    if all(c in header for c in columns) and max(header.index(c) for c in columns) < LEADING_FIELDS:
        try:
            found = _leading_columns(path, [header.index(c) for c in columns])
        except OSError as err:
            return None, f"not readable ({err.strerror})"
        if found is not None:
            return pd.DataFrame(dict(zip(columns, found)), columns=columns, dtype=str), None
    try:
        frame = pd.read_csv(path, usecols=columns, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError, ValueError) as err:
        return None, f"not a readable CSV ({' '.join(str(err).split())})"
    return frame.apply(lambda column: column.str.strip()), None


def class_order(names) -> list[str]:
    """The classes sorted, as numbers when every one is a whole number (0, 1, ..., 10 rather than 0, 1, 10)."""
    names = set(names)
    if all(re.fullmatch(r"-?\d+", n) for n in names):
        return sorted(names, key=int)
    return sorted(names)


def read_train_labels(train_csv: Path, roles: dict) -> tuple[list[str], np.ndarray, list[str], list[PixelError]]:
    """(classes, each row's class index, each row's name, errors) from the label (and id) column."""
    wanted = [roles["label"], *([roles["id"]] if roles["id"] else [])]
    frame, wrong = _read_columns(train_csv, wanted)
    if wrong:
        return [], np.zeros(0, np.int64), [], [PixelError(BAD_CSV, train_csv, wrong, "fix the CSV")]
    labels = frame[roles["label"]]
    errors = [PixelError(EMPTY_LABEL, train_csv, f"row {row + 1} (line {row + 2}) has an empty {roles['label']}",
                         "give every row a label") for row in np.flatnonzero(labels.eq("").to_numpy())]
    classes = class_order(labels[labels.ne("")])
    index = {name: i for i, name in enumerate(classes)}
    codes = labels.map(index).fillna(-1).to_numpy(np.int64)
    names = frame[roles["id"]].tolist() if roles["id"] else [f"row {n + 1}" for n in range(len(frame))]
    return classes, codes, names, errors


def match_test_rows(test_csv: Path, roles: dict, sample_path: Path, sample_ids: list[str],
                    id_key: Callable[[str], str]) -> tuple[np.ndarray, list[PixelError]]:
    """The test CSV's row of each sample id, in the sample's order; ids without a partner are errors.

    Without an id column the test rows are the sample's ids in order, and the counts must agree."""
    column = roles["test_id"] or roles["test_pixels"][0]
    frame, wrong = _read_columns(test_csv, [column])
    if wrong:
        return np.zeros(0, np.int64), [PixelError(BAD_CSV, test_csv, wrong, "fix the CSV")]
    if roles["test_id"] is None:
        if len(frame) != len(sample_ids):
            return np.zeros(0, np.int64), [PixelError(
                SAMPLE_ID_WITHOUT_ROW, test_csv, f"has {len(frame):,} rows and no id column, and {sample_path.name} "
                f"{len(sample_ids):,} ids: without ids, its rows are the sample's ids in order",
                "use the competition's own test CSV and sample, or add an id column")]
        return np.arange(len(frame)), []
    keys = [id_key(i) for i in frame[column]]
    rows: dict[str, int] = {}
    errors = []
    for row, (id_, key) in enumerate(zip(frame[column], keys)):
        if key in rows:
            errors.append(PixelError(BAD_CSV, test_csv, f"row {row + 1} (line {row + 2}): id {id_} is repeated",
                                     "each test id must appear once"))
        rows.setdefault(key, row)
    wanted = [id_key(i) for i in sample_ids]
    listed = set(wanted)
    errors += [PixelError(TEST_ID_NOT_IN_SAMPLE, test_csv, f"row {row + 1} (line {row + 2}): id {id_} is not in "
                          f"{sample_path.name}", "the test ids must be the sample's; remove the row or add its id")
               for row, (id_, key) in enumerate(zip(frame[column], keys)) if key not in listed]
    errors += [PixelError(SAMPLE_ID_WITHOUT_ROW, sample_path, f"id {id_} has no row in {test_csv.name}",
                          f"the sample's ids must be {test_csv.name}'s {column} values")
               for id_, key in zip(sample_ids, wanted) if key not in rows]
    return np.array([rows.get(key, -1) for key in wanted], np.int64), errors


def read_pixel_layout(data_dir: Path, train_csv: Path, sample_path: Path | None, sample_ids: list[str],
                      names: dict[str, tuple[str, ...]], given: dict[str, str | None], key: Callable[[str], str],
                      id_key: Callable[[str], str]) -> tuple[PixelTable | None, list[str], np.ndarray, list[PixelError]]:
    """(the table, classes, each train row's class index, errors) from the headers, the label and id
    columns and the sample's ids; the pixels themselves are read when decoded (`pixel_arrays`).

    `names`/`given`: the id and label column names to look for, or as the user named them; `key`
    normalises a column name for that look-up; `id_key` makes ids comparable (0001 = 1)."""
    no_labels = np.zeros(0, np.int64)
    test_csv = next((data_dir / n for n in TEST_CSV_NAMES if (data_dir / n).is_file()), None)
    if test_csv is None:
        return None, [], no_labels, [PixelError(NO_TEST_CSV, data_dir / TEST_CSV_NAMES[0], f"missing (beside "
                                                f"{train_csv.name}, a pixel CSV)", "copy it from the competition download")]
    roles, wrong = column_roles(train_csv, test_csv, header_of(train_csv) or [], header_of(test_csv) or [],
                                names, given, key)
    if wrong:
        return None, [], no_labels, [wrong]
    shape = square_shape(len(roles["pixels"]))
    if shape is None:
        count, pixels = len(roles["pixels"]), roles["pixels"]
        return None, [], no_labels, [PixelError(
            NOT_SQUARE, train_csv, f"has {count:,} pixel columns ({pixels[0]}..{pixels[-1]}): not side x side "
            "(grayscale) nor 3 x side x side (RGB)", "every image needs side x side pixel columns (784 for 28x28) "
            "or 3 times that for RGB; add the missing columns or remove the extra ones")]
    classes, labels, train_names, errors = read_train_labels(train_csv, roles)
    test_rows, unmatched = (match_test_rows(test_csv, roles, sample_path, sample_ids, id_key) if sample_path
                            else (np.zeros(0, np.int64), []))
    table = PixelTable(train_csv, test_csv, roles["id"], roles["label"], roles["pixels"], roles["test_id"],
                       roles["test_pixels"], *shape, train_names, test_rows, roles["ignored"])
    return table, classes, labels, errors + unmatched


# -- reading the pixels ----------------------------------------------------------------------------


def _pixel_value_ok(text: str) -> bool:
    """What the uint8 parse accepts: a whole number from 0 to 255."""
    try:
        return 0 <= int(text) <= 255
    except ValueError:
        return False


def field_count(line: bytes) -> int:
    """Values on a line: its commas counted (fast), or the CSV module's count when it quotes."""
    if b'"' in line:
        return len(next(csv.reader([line.decode("utf-8", "replace")]), []))
    return line.count(b",") + 1


def line_problem(line: bytes, header: list[str], pixel_positions: list[int]) -> tuple[str, str] | None:
    """(kind, what is wrong) with one line of a pixel CSV, or None when it is fine."""
    fields = next(csv.reader([line.decode("utf-8", "replace")]), [])
    if len(fields) != len(header):
        return WRONG_LENGTH, f"{len(fields):,} values, and the header has {len(header):,} columns"
    for position in pixel_positions:
        if not _pixel_value_ok(fields[position].strip()):
            return BAD_PIXEL, f"{header[position]} is {fields[position]!r}, not an integer 0..255"
    return None


def _batches(handle, rows: int) -> Iterator[tuple[list[int], list[bytes]]]:
    """(line numbers, lines) of the non-blank lines after the header, `rows` at a time (the label and
    id columns are read skipping blank lines too, so the rows counted agree)."""
    number = 1
    while True:
        raw = list(islice(handle, rows))
        if not raw:
            return
        numbers, lines = [], []
        for line in raw:
            number += 1
            if line.strip():
                numbers.append(number)
                lines.append(line if line.endswith(b"\n") else line + b"\n")
        if lines:
            yield numbers, lines


def pixel_batches(path: Path, pixel_columns: list[str], errors: list[PixelError],
                  rows: int = BATCH_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """(first data row, uint8 pixels (rows, columns) in `pixel_columns` order) per batch of lines.

    A batch that does not parse, or has a line of another length than the header (which np.loadtxt
    would read without a word: it takes only the pixel columns), is checked line by line: each
    wrong row is added to `errors` and the batch is not yielded (the caller then has no complete
    array to keep)."""
    with open(path, "rb") as handle:
        header_line = handle.readline()
        header = [name.strip() for name in next(csv.reader([header_line.decode("utf-8-sig", "replace")]))]
        positions = [header.index(c) for c in pixel_columns]
        first = 0
        for numbers, lines in _batches(handle, rows):
            try:
                if any(field_count(line) != len(header) for line in lines):
                    raise ValueError("a line of another length than the header")
                pixels = np.loadtxt(io.BytesIO(b"".join(lines)), delimiter=",", quotechar='"', dtype=np.uint8,
                                    usecols=positions, ndmin=2)
                if len(pixels) != len(lines):
                    raise ValueError(f"{len(pixels)} rows parsed from {len(lines)} lines")
                yield first, pixels
            except ValueError as err:
                found = [(number, first + offset, line_problem(line, header, positions))
                         for offset, (number, line) in enumerate(zip(numbers, lines))]
                bad = [(number, row, problem) for number, row, problem in found if problem]
                errors += [PixelError(kind, path, f"row {row + 1} (line {number}): {detail}", FIXES[kind])
                           for number, row, (kind, detail) in bad]
                if not bad:
                    errors.append(PixelError(UNREADABLE_ROWS, path, f"lines {numbers[0]}-{numbers[-1]} cannot be read "
                                             f"as pixels ({' '.join(str(err).split())})", "fix these lines"))
            first += len(lines)




def to_images(pixels: np.ndarray, side: int, channels: int, order: str = HWC) -> np.ndarray:
    """(rows, side, side, channels) from flat rows: grayscale as is, RGB pixel by pixel or channel by channel."""
    if channels == 1 or order == HWC:
        return pixels.reshape(len(pixels), side, side, channels)
    return pixels.reshape(len(pixels), channels, side, side).transpose(0, 2, 3, 1)


def roughness(images: np.ndarray) -> float:
    """Mean difference between neighbouring pixels: small for photos read in the right order."""
    images = images.astype(np.int16)
    return float(np.abs(np.diff(images, axis=1)).mean() + np.abs(np.diff(images, axis=2)).mean())


def channel_order(pixels: np.ndarray, side: int) -> str:
    """How an RGB row lists its values: the reading under which neighbouring pixels differ least.

    Competitions write both: numpy's reshape of (H, W, 3) images (r,g,b per pixel) and CIFAR's own
    rows (1,024 reds, then greens, then blues)."""
    sample = pixels[:ORDER_SAMPLE]
    return min((HWC, CHW), key=lambda order: roughness(to_images(sample, side, 3, order)))


def fitted(images: np.ndarray, target_hw: tuple[int, int], resize: str) -> np.ndarray:
    """The images at `target_hw`, resized as image files are (comp.data.decode.fit: PIL, bilinear)."""
    from PIL import Image

    if images.shape[1:3] == tuple(target_hw):
        return images
    channels = images.shape[-1]
    out = np.empty((len(images), *target_hw, channels), np.uint8)
    for i, image in enumerate(images):
        resized = fit(Image.fromarray(image[..., 0] if channels == 1 else image), target_hw, resize)
        out[i] = np.asarray(resized).reshape(*target_hw, channels)
    return out


def write_pixels(table: PixelTable, out: np.ndarray, target_hw: tuple[int, int], resize: str) -> tuple[str, list[PixelError]]:
    """Parse both CSVs into `out` (train rows first, then test rows in the sample's order); (the RGB
    channel order found, errors). Rows are written as batches parse; with errors, `out` is incomplete."""
    errors: list[PixelError] = []
    train_count = len(table.train_names)
    destination = np.empty(len(table.test_rows), np.int64)
    destination[table.test_rows] = np.arange(len(table.test_rows))  # test.csv row -> its place in the sample
    order = HWC
    with decode_progress(len(out), 0, f"{len(out):,} pixel rows") as advance:
        for first, pixels in pixel_batches(table.train_csv, table.pixel_columns, errors):
            if first == 0 and table.channels == 3:
                order = channel_order(pixels, table.side)
            if not errors:
                out[first:first + len(pixels)] = fitted(to_images(pixels, table.side, table.channels, order),
                                                        target_hw, resize)
            advance(len(pixels))
        for first, pixels in pixel_batches(table.test_csv, table.test_pixel_columns, errors):
            if not errors:
                rows = train_count + destination[first:first + len(pixels)]
                out[rows] = fitted(to_images(pixels, table.side, table.channels, order), target_hw, resize)
            advance(len(pixels))
    return order, errors


def _meta(table: PixelTable, train_y: np.ndarray, target_hw: tuple[int, int], resize: str, order: str) -> dict:
    """The cache's facts, in the form image files give them (comp.data.sources reads both alike)."""
    count = len(table.train_names) + len(table.test_rows)
    resized = count if tuple(target_hw) != table.size else 0
    return {
        "shape": [count, *target_hw, table.channels],
        "train_count": len(table.train_names),
        "kept_count": len(table.train_names),
        "test_count": len(table.test_rows),
        "train_y": train_y.tolist(),
        "train_files": table.train_names,
        "resize": resize,
        "stats": {
            "sizes": {f"{table.side}x{table.side}": count},
            "modes": {"L" if table.channels == 1 else "RGB": count},
            "rotated": 0,
            "resized": resized,
            "bad_files": [],
            "bad_reasons": [],
            "layout": table.describe(order),
            "channel_order": order if table.channels == 3 else None,
        },
    }


def _decoded(table: PixelTable, out: np.ndarray, target_hw, resize: str, train_y: np.ndarray,
             where: str) -> tuple[dict | None, list[PixelError]]:
    started = time.time()
    order, errors = write_pixels(table, out, target_hw, resize)
    if errors:
        return None, errors
    resized = f", resized from {table.side}x{table.side} ({resize})" if tuple(target_hw) != table.size else ""
    info(f"decoded {len(out):,} pixel rows at {target_hw[0]}x{target_hw[1]}{resized} in {time.time() - started:.1f}s"
         f"{where}")
    return _meta(table, train_y, target_hw, resize, order), []


def pixel_arrays(table: PixelTable, train_y: np.ndarray, cache_dir: Path | None, fingerprint: str,
                 target_hw: tuple[int, int], resize: str) -> tuple[dict | None, list[PixelError]]:
    """train_x, train_y, test_x and the cache's facts, from the cache or parsed into it (None and the
    errors when a CSV has bad rows: no cache is kept then, so the next command reads them again)."""
    shape = (len(table.train_names) + len(table.test_rows), *target_hw, table.channels)
    train_count = len(table.train_names)
    if cache_dir is None:  # tests, one-off API calls: in memory
        images = np.zeros(shape, np.uint8)
        meta, errors = _decoded(table, images, target_hw, resize, train_y, "")
        if meta is None:
            return None, errors
        return meta | {"train_x": images[:train_count], "test_x": images[train_count:], "train_y": train_y}, []
    folder = cache_folder(cache_dir, fingerprint, target_hw, resize)
    cached = read_cache(folder)
    if cached is not None:
        return cached, []
    with decode_lock(folder):
        cached = read_cache(folder)
        if cached is not None:
            return cached, []
        create_mapped(folder / IMAGES, shape, f"the pixels at {target_hw[0]}x{target_hw[1]}")
        images = np.load(folder / IMAGES, mmap_mode="r+")
        meta, errors = _decoded(table, images, target_hw, resize, train_y, f" into {folder}")
        images.flush()
        del images
        if meta is None:
            (folder / IMAGES).unlink()  # no half-written cache left taking the disk
            return None, errors
        write_meta(folder, meta)  # last: its presence says the cache is complete
        return read_cache(folder), []
