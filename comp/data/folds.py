"""The K-fold split: written once to folds/folds.csv and reused by every run and trial.

The split belongs to one dataset (its fingerprint is in folds/folds.json). When the workdir is
pointed at another dataset, the old split is moved to folds/splits/<fingerprint>/ and brought
back when that dataset returns, so runs made on either stay valid.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from comp.core.console import info
from comp.core.errors import CompError
from comp.core.fileio import read_json, save_csv, write_json
from comp.core.paths import Workdir


@dataclass
class Split:
    folds: np.ndarray  # fold index of every row of the full train set
    k: int
    seed: int
    fingerprint: str
    hash: str

    def rows(self, fold: int, subset: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(train positions, validation positions) within `subset` (row indices of the full set)."""
        in_fold = self.folds[subset] == fold
        return np.flatnonzero(~in_fold), np.flatnonzero(in_fold)

    def covered(self, subset: np.ndarray, folds: list[int]) -> np.ndarray:
        """Positions within `subset` that `folds` validate on, in order: the rows a run of those folds
        has out-of-fold predictions for (all of them when the run trains every fold)."""
        return np.flatnonzero(np.isin(self.folds[subset], folds))


def _hash(folds: np.ndarray, k: int) -> str:
    return hashlib.sha1(folds.astype(np.int8).tobytes() + bytes([k])).hexdigest()[:12]


def make_multilabel_split(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Folds of a multi-hot matrix by iterative stratification (Sechidis et al. 2011): each label's
    rows, rarest label first, dealt to the folds that still lack most of it, so every fold holds
    about 1/k of every label's rows (a plain StratifiedKFold cannot stratify several labels)."""
    from iterstrat.ml_stratifiers import MultilabelStratifiedKFold

    if len(labels) < k:
        raise CompError(f"--folds {k}: only {len(labels)} labelled rows; use --folds {max(2, len(labels))}")
    folds = np.empty(len(labels), dtype=np.int64)
    splitter = MultilabelStratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    for fold, (_, val) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        folds[val] = fold
    return folds


def label_cells(labels: np.ndarray) -> list[str]:
    """A multi-hot matrix as folds.csv writes it: each row's label numbers separated by spaces."""
    return [" ".join(map(str, np.flatnonzero(row))) for row in labels]


def read_label_cells(cells, num_labels: int) -> np.ndarray:
    """label_cells read back: the multi-hot matrix (rows, num_labels) uint8."""
    matrix = np.zeros((len(cells), num_labels), np.uint8)
    for r, cell in enumerate(cells):
        if isinstance(cell, str) and cell.strip():
            matrix[r, [int(i) for i in cell.split()]] = 1
    return matrix


def make_split(labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    from sklearn.model_selection import StratifiedKFold

    if labels.ndim == 2:
        return make_multilabel_split(labels, k, seed)
    smallest = np.bincount(labels).min()
    if smallest < k:
        raise CompError(f"--folds {k}: the smallest class has only {smallest} images; use --folds {max(2, smallest)}")
    folds = np.empty(len(labels), dtype=np.int64)
    for fold, (_, val) in enumerate(StratifiedKFold(k, shuffle=True, random_state=seed).split(labels, labels)):
        folds[val] = fold
    return folds


def _swap_in(workspace: Workdir, fingerprint: str) -> None:
    """Park the current split (another dataset's) and bring back this dataset's, if any."""
    current = read_json(workspace.folds / "folds.json")
    parked = workspace.folds / "splits" / current["fingerprint"]
    parked.mkdir(parents=True, exist_ok=True)
    for name in ("folds.csv", "folds.json"):
        shutil.move(workspace.folds / name, parked / name)
    info(f"folds/folds.csv belonged to another dataset; kept it in {parked}")
    wanted = workspace.folds / "splits" / fingerprint
    if (wanted / "folds.json").exists():
        for name in ("folds.csv", "folds.json"):
            shutil.move(wanted / name, workspace.folds / name)
        shutil.rmtree(wanted, ignore_errors=True)


def read_split(meta_path: Path, rows: int) -> Split:
    """A split ensure_split wrote (folds.json and the folds.csv beside it), checked against its hash."""
    meta = read_json(meta_path)
    csv_path = meta_path.with_name("folds.csv")
    folds = pd.read_csv(csv_path)["fold"].to_numpy()
    if len(folds) != rows or _hash(folds, meta["k"]) != meta["hash"]:
        raise CompError(f"{csv_path}: edited or damaged (hash mismatch); restore it or pass --resplit")
    return Split(folds, meta["k"], meta["seed"], meta["fingerprint"], meta["hash"])


def existing_k(workspace: Workdir, fingerprint: str) -> int | None:
    """How many folds this data's split has, if one was written (current or parked), else None."""
    for meta_path in (workspace.folds / "folds.json", workspace.folds / "splits" / fingerprint / "folds.json"):
        if meta_path.exists():
            meta = read_json(meta_path)
            if meta.get("fingerprint") == fingerprint:
                return int(meta["k"])
    return None


def ensure_split(workspace: Workdir, labels: np.ndarray, fingerprint: str, k: int, seed: int,
                 train_files: list[str] | None = None, resplit: bool = False) -> Split:
    """Read folds/folds.csv, or write it for this dataset on first use."""
    meta_path, csv_path = workspace.folds / "folds.json", workspace.folds / "folds.csv"
    if meta_path.exists() and read_json(meta_path)["fingerprint"] != fingerprint:
        _swap_in(workspace, fingerprint)
    if meta_path.exists() and csv_path.exists() and not resplit:
        meta = read_json(meta_path)
        if meta["k"] != k:
            raise CompError(
                f"{csv_path}: this data's split has {meta['k']} folds, not {k}; pass --folds {meta['k']}, "
                "or --resplit to write a new split (runs on the old one will no longer ensemble with new ones)"
            )
        return read_split(meta_path, len(labels))
    folds = make_split(labels, k, seed)
    # Multi-label: a "labels" column of label numbers (read back by comp.store.runs.oof_labels).
    targets = {"labels": label_cells(labels)} if labels.ndim == 2 else {"label": labels}
    frame = pd.DataFrame({"row": np.arange(len(labels)), **targets, "fold": folds})
    if train_files is not None:
        frame.insert(1, "file", train_files)
    save_csv(csv_path, frame)
    split_hash = _hash(folds, k)
    write_json(meta_path, {"fingerprint": fingerprint, "k": k, "seed": seed, "hash": split_hash, "rows": len(labels)})
    how = "iteratively stratified (multi-label)" if labels.ndim == 2 else "stratified"
    info(f"wrote {csv_path}: {k} {how} folds of {len(labels):,} rows (seed {seed})")
    return Split(folds, k, seed, fingerprint, split_hash)


def parse_fold_selection(text: str | None, k: int, run_folds: int = 0) -> list[int]:
    """`all`, `0` or `0,2` -> sorted fold indices, each checked against the split's k folds and, for
    a holdout run (`run_folds` = N < k), against the N it trains: "all" is those."""
    trained = list(range(run_folds or k))
    if text is None or text.strip().lower() in ("", "all"):
        return trained
    try:
        chosen = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise CompError(f"--fold {text}: use all, a fold number, or a list like 0,2") from None
    bad = [f for f in chosen if not 0 <= f < k]
    if bad or not chosen:
        raise CompError(f"--fold {text}: {f'fold {bad[0]} does not exist; ' if bad else ''}folds are 0..{k - 1}")
    if chosen[-1] >= len(trained):
        which = "fold 0" if run_folds == 1 else f"folds 0..{run_folds - 1}"
        raise CompError(f"--fold {text}: this run trains {which} of {k} only (run_folds = {run_folds}); choose "
                        "among them, or set run_folds to 0 for all")
    return chosen
