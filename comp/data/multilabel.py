"""Multi-label targets: several labels a row, read from the labels CSV in either form it ships in.

    0/1 columns    id,a,b,c,...      one column per label, 0 or 1 (DACON 제2회 컴퓨터비전: 26 letters)
    space-separated id,labels        "scab frog_eye_leaf_spot" (Plant Pathology 2021, iMet)

A CSV is multi-label when some row has more than one label: two 1s among the 0/1 columns, or a
label cell whose words are labels seen elsewhere (so a single class named "Common wheat" stays one
class). A CSV with exactly one 1 a row is a one-hot single-label CSV, not this.

The dataset then carries a multi-hot target matrix (N, L) uint8 in `train_y` in place of class
numbers (`Dataset.multilabel`); every later stage tells the two apart by the targets' rank (2: one
row of 0/1 per image), so the engine, the metrics and the decision rules need no other flag.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

BINARY_VALUES = {"0", "1", "0.0", "1.0"}


@dataclass
class MultilabelTargets:
    """What a multi-label labels CSV holds: the ids (as written), the label names and the matrix."""

    ids: list[str]
    classes: list[str]
    matrix: np.ndarray  # (rows, labels) uint8
    form: str  # "columns" (0/1 columns) or "spaces" (space-separated labels)


def _key(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch not in "_- ")


def _id_column(frame: pd.DataFrame, id_names: tuple[str, ...], given: str | None) -> str:
    if given and given in frame.columns:
        return given
    return next((c for c in frame.columns if _key(c) in id_names), frame.columns[0])


def binary_columns(frame: pd.DataFrame, id_column: str) -> list[str]:
    """The columns other than the id whose every value is 0 or 1."""
    return [c for c in frame.columns if c != id_column and frame[c].isin(BINARY_VALUES).all()]


def from_binary_columns(frame: pd.DataFrame, id_column: str) -> MultilabelTargets | None:
    """0/1 label columns with more than one 1 in some row; None when the CSV is not that."""
    columns = binary_columns(frame, id_column)
    if len(columns) < 2:
        return None
    matrix = frame[columns].astype(float).to_numpy().astype(np.uint8)
    if matrix.sum(1).max() <= 1:
        return None  # one-hot (or empty rows): single-label
    return MultilabelTargets(frame[id_column].tolist(), [str(c) for c in columns], matrix, "columns")


def spaced_labels_are_multilabel(values: pd.Series) -> bool:
    """Whether some cell lists several labels: a cell of several words, each of which is also found
    in another distinct cell (Plant Pathology's "scab frog_eye_leaf_spot" beside "scab"). Class
    names with a space ("Common Chickweed", "Common wheat") have a word no other cell holds."""
    distinct = pd.Series(values.unique())
    words = distinct.str.split()
    several = words[words.str.len() > 1]
    if several.empty:
        return False
    seen_in = {}
    for cell, cell_words in zip(distinct, words):
        for word in set(cell_words):
            seen_in.setdefault(word, set()).add(cell)
    return any(all(len(seen_in[w]) > 1 for w in cell_words) for cell_words in several)


def from_spaced_labels(frame: pd.DataFrame, id_column: str, label_column: str) -> MultilabelTargets | None:
    """A label column of space-separated labels with several in some row; None when not that."""
    values = frame[label_column].str.strip()
    if not spaced_labels_are_multilabel(values):
        return None
    words = values.str.split()
    classes = sorted({w for row in words for w in row}, key=_label_order)
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(frame), len(classes)), np.uint8)
    for r, row in enumerate(words):
        matrix[r, [index[w] for w in row]] = 1
    return MultilabelTargets(frame[id_column].tolist(), classes, matrix, "spaces")


def _label_order(name: str) -> tuple:
    """Integer labels (iMet's attribute ids) by value, then names."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def read_multilabel(path, id_names: tuple[str, ...], label_names: tuple[str, ...], id_column: str | None = None,
                    label_column: str | None = None) -> MultilabelTargets | None:
    """The multi-label targets of a labels CSV, or None when it is not multi-label (or unreadable:
    the single-label reader then says what is wrong with it)."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError, OSError):
        return None
    if frame.shape[1] < 2 or len(frame) == 0 or frame.columns.duplicated().any():
        return None
    frame = frame.apply(lambda column: column.str.strip())
    id_col = _id_column(frame, id_names, id_column)
    if frame[id_col].duplicated().any():
        return None  # the single-label reader names the repeated ids
    labels = [label_column] if label_column in frame.columns else \
        [c for c in frame.columns if c != id_col and _key(c) in label_names]
    if not labels and label_column is None:  # no label column: the labels may be 0/1 columns
        return from_binary_columns(frame, id_col)
    if len(labels) != 1:
        return None
    return from_spaced_labels(frame, id_col, labels[0])


def label_counts_line(matrix: np.ndarray) -> str:
    """How many labels the rows carry: the mean, and the share of rows with none and with several."""
    per_row = matrix.sum(1)
    return (f"{per_row.mean():.2f} labels a row on average ({np.mean(per_row == 0):.0%} with none, "
            f"{np.mean(per_row > 1):.0%} with several)")

