"""The leaderboard CSV: written in the sample's exact shape, checked by re-reading, never overwritten.

    submissions/<name>.csv     ids (exactly as written) and order of sample_submission.csv, its
                               column names, and what the sample asks for: the target as class
                               names or integers (id,target), or one probability column per
                               class (id,<class>,<class>,...: Kaggle's probability format)
    submissions/index.csv      one row per submission written: time, file, runs, weights,
                               method, TTA, OOF accuracy (the history of what was sent), and
                               its error bars (comp.core.stats): ci_accuracy with its 95% interval
                               ci_low..ci_high (for method weights: of the checked blend),
                               best_run, and gain (over it) with its paired gain_low..gain_high

`comp score SUBMISSION --answers FILE` grades a submission against known answers (the demo
set ships answers.csv), so the whole loop can be practised offline.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from comp.core.console import warn
from comp.data.sources import SubmissionFormat, read_id_csv
from comp.core.errors import CompError
from comp.core.fileio import atomic_path, save_csv
from comp.core.paths import Workdir

INDEX_NAME = "index.csv"
# New columns go at the end: an older index gains them (empty in its old rows) when a row is appended.
INDEX_COLUMNS = ["time", "file", "runs", "weights", "method", "tta", "oof_accuracy", "oof_rows", "fingerprint",
                 "ci_accuracy", "ci_low", "ci_high", "best_run", "gain", "gain_low", "gain_high", "test_from"]
PROB_FORMAT = "%.6g"  # six significant digits: rows still sum to 1 within 1e-5, files stay small
PROB_SUM_TOLERANCE = 1e-3  # what the after-write check allows a row's probabilities to miss 1 by


# -- targets ---------------------------------------------------------------------------------


def target_values(classes: list[str], target_kind: str) -> list:
    """What the CSV holds for each class index.

    "name": the class name. "int": the class name as an integer when every name is one (a
    folder called 7 means target 7, whatever its index), else the class index.
    """
    if target_kind == "name":
        return list(classes)
    if names_are_ints(classes):
        return [int(c) for c in classes]
    return list(range(len(classes)))


def names_are_ints(classes: list[str]) -> bool:
    return all(c.strip().lstrip("-").isdigit() for c in classes)


def class_columns(fmt: SubmissionFormat, classes: list[str]) -> list[int]:
    """Probability format: the class index of each of the sample's class columns, in its order.

    Refused unless the columns (spaces around them aside) are exactly the class names, each
    once: a column for a class comp does not know, or a class without a column, means the
    probabilities would land under the wrong names.
    """
    columns = [c.strip() for c in fmt.columns[1:]]
    if sorted(columns) != sorted(classes):
        unknown = sorted(set(columns) - set(classes))
        absent = sorted(set(classes) - set(columns))
        parts = ([f"column(s) that are not classes: {', '.join(unknown[:5])}"] if unknown else []) + \
                ([f"class(es) without a column: {', '.join(absent[:5])}"] if absent else [])
        raise CompError(f"{fmt.path}: a probability column per class, but its {len(columns)} class columns are not "
                        f"exactly the {len(classes)} class names ({'; '.join(parts) or 'a column repeats'}); "
                        "name the train folders (or the labels CSV's labels) as the sample's columns")
    index = {name: i for i, name in enumerate(classes)}
    return [index[c] for c in columns]


def check_format(fmt: SubmissionFormat, classes: list[str]) -> None:
    """Refuse a sample comp cannot fill correctly; warn where the target's meaning is a guess."""
    if fmt.target_kind == "fraction":
        raise CompError(f"{fmt.path}: its {fmt.target_column} column holds fractions, a single probability (of "
                        "one class); comp writes class labels (id,target) or a probability column per class "
                        "(id,<class>,...). The runs' test probabilities are in folds/<run>/fold*/test_probs.npy "
                        f"(columns: {', '.join(classes)})")
    if fmt.target_kind == "probs":
        class_columns(fmt, classes)
    if fmt.target_kind == "int" and not names_are_ints(classes):
        mapping = ", ".join(f"{i}={c}" for i, c in enumerate(classes[:5]))
        warn(f"{fmt.path.name} wants integer targets but the classes are names: writing each class's index in "
             f"sorted-name order ({mapping}{', ...' if len(classes) > 5 else ''}); check that the competition "
             "numbers its classes the same way")


def submission_frame(fmt: SubmissionFormat, classes: list[str], probs: np.ndarray) -> pd.DataFrame:
    """One row per sample id (as written there), in its order, in its columns: labels or probabilities."""
    if len(probs) != len(fmt.ids):
        raise CompError(f"{len(probs)} test predictions for {len(fmt.ids)} ids in {fmt.path}; "
                        "the runs were made on another test set")
    if fmt.target_kind == "probs":
        columns = dict(zip(fmt.columns[1:], probs[:, class_columns(fmt, classes)].T))
        return pd.DataFrame({fmt.id_column: fmt.raw_ids, **columns})
    values = target_values(classes, fmt.target_kind)
    return pd.DataFrame({fmt.id_column: fmt.raw_ids, fmt.target_column: [values[i] for i in probs.argmax(1)]})


# -- writing and checking ----------------------------------------------------------------------


def validate_submission(path: Path, fmt: SubmissionFormat, classes: list[str]) -> None:
    """Re-read the file as a scorer would: same columns, ids (as written) and order; every target valid."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != fmt.columns:
        raise CompError(f"{path}: columns {list(frame.columns)}, the sample has {fmt.columns}")
    ids = frame[fmt.id_column].tolist()
    if ids != fmt.raw_ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, fmt.raw_ids)) if a != b), min(len(ids), len(fmt.ids)))
        raise CompError(f"{path}: ids differ from {fmt.path.name} from row {first + 1} "
                        f"({len(ids)} rows written, {len(fmt.ids)} expected)")
    if fmt.target_kind == "probs":
        check_probabilities(path, frame[fmt.columns[1:]])
        return
    allowed = {str(v) for v in target_values(classes, fmt.target_kind)}
    targets = frame[fmt.target_column].str.strip()
    bad = targets[~targets.isin(allowed)]
    if len(bad):
        raise CompError(f"{path}: {len(bad)} target(s) are not valid values (e.g. {bad.iloc[0]!r}); "
                        f"allowed: {', '.join(sorted(allowed))}")


def check_probabilities(path: Path, columns: pd.DataFrame) -> None:
    """Every cell a number in [0, 1], every row summing to 1."""
    values = columns.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise CompError(f"{path}: {int(bad.sum())} cell(s) are not probabilities (e.g. row {row + 1}, "
                        f"{columns.columns[col]}: {columns.iat[row, col]!r})")
    off = np.abs(values.sum(1) - 1) > PROB_SUM_TOLERANCE
    if off.any():
        raise CompError(f"{path}: {int(off.sum())} row(s) do not sum to 1 (e.g. row {np.argmax(off) + 1}: "
                        f"{values[np.argmax(off)].sum():.4f})")


def write_submission(path: Path, frame: pd.DataFrame, fmt: SubmissionFormat, classes: list[str],
                     force: bool = False) -> Path:
    """Write atomically, after checking the written bytes; refuse to replace a file unless force."""
    if path.exists() and not force:
        raise CompError(f"{path}: already exists; choose another --out, or pass --force to replace it")
    with atomic_path(path) as tmp:  # no .csv on the temp name: never mistaken for a submission
        frame.to_csv(tmp, index=False, float_format=PROB_FORMAT)
        validate_submission(tmp, fmt, classes)  # a file that fails never takes the real name
    return path


def append_index(workspace: Workdir, entry: dict) -> Path:
    """Add one row to submissions/index.csv (rewritten whole, atomically)."""
    path = workspace.submissions / INDEX_NAME
    old = pd.read_csv(path, dtype=str, keep_default_na=False) if path.exists() else pd.DataFrame(columns=INDEX_COLUMNS)
    row = {"time": time.strftime("%Y-%m-%d %H:%M:%S"), **entry}
    save_csv(path, pd.concat([old, pd.DataFrame([row])], ignore_index=True))
    return path


# -- comp score ------------------------------------------------------------------------------


def _read_two_columns(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise CompError(f"{path}: no such file ({what})")
    frame = read_id_csv(path, "two columns, id and target", f"fix {what}")
    frame.columns = ["id", "target"]
    return frame


def _same_target(a: pd.Series, b: pd.Series) -> np.ndarray:
    """Equal as text, or as integers when both sides are integers ("07" == "7")."""
    same = (a.to_numpy() == b.to_numpy())
    ints = a.str.fullmatch(r"-?\d+") & b.str.fullmatch(r"-?\d+")
    if ints.any():
        same[ints.to_numpy()] = (a[ints].astype(int).to_numpy() == b[ints].astype(int).to_numpy())
    return same


def predicted_targets(path: Path) -> pd.DataFrame:
    """A submission as id,target: its target column, or in the probability format the column
    (a class name) holding each row's highest probability."""
    frame = _read_two_columns(path, "the submission")
    wide = pd.read_csv(path, dtype=str, keep_default_na=False)
    if wide.shape[1] > 2:
        values = wide.iloc[:, 1:].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        if not np.isfinite(values).all():
            raise CompError(f"{path}: a probability column per class, but not every cell is a number; "
                            "fix the submission")
        frame["target"] = np.array([c.strip() for c in wide.columns[1:]])[values.argmax(1)]
    return frame


def score_submission(submission: Path, answers: Path) -> dict:
    sub = predicted_targets(submission)
    ans = _read_two_columns(answers, "the answers")
    missing = sorted(set(ans["id"]) - set(sub["id"]))
    extra = sorted(set(sub["id"]) - set(ans["id"]))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} answer id(s) missing from the submission (e.g. {', '.join(missing[:3])})")
        if extra:
            parts.append(f"{len(extra)} submission id(s) not in the answers (e.g. {', '.join(extra[:3])})")
        raise CompError(f"{submission}: ids do not match {answers}: {'; '.join(parts)}")
    merged = ans.merge(sub, on="id", suffixes=("_true", "_pred"))
    correct = _same_target(merged["target_true"], merged["target_pred"])
    return {"accuracy": float(correct.mean()), "correct": int(correct.sum()), "rows": len(merged), "answers": answers}
