"""The leaderboard CSV: written in the sample's exact shape, checked by re-reading, never overwritten.

    submissions/<name>.csv     ids and order of sample_submission.csv, its column names, the
                               target as class names or integers, whichever the sample uses
    submissions/index.csv      one row per submission written: time, file, runs, weights,
                               method, TTA, OOF accuracy (the history of what was sent)

`comp score SUBMISSION --answers FILE` grades a submission against known answers (the demo
set ships answers.csv), so the whole loop can be practised offline.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from .data import SubmissionFormat, read_id_csv
from .errors import CompError
from .fileio import atomic_path, save_csv
from .workspace import Workspace

INDEX_NAME = "index.csv"
INDEX_COLUMNS = ["time", "file", "runs", "weights", "method", "tta", "oof_accuracy", "oof_rows", "fingerprint"]


# -- targets ---------------------------------------------------------------------------------


def target_values(classes: list[str], target_kind: str) -> list:
    """What the CSV holds for each class index.

    "name": the class name. "int": the class name as an integer when every name is one (a
    folder called 7 means target 7, whatever its index), else the class index.
    """
    if target_kind == "name":
        return list(classes)
    if all(c.strip().lstrip("-").isdigit() for c in classes):
        return [int(c) for c in classes]
    return list(range(len(classes)))


def submission_frame(fmt: SubmissionFormat, classes: list[str], predicted: np.ndarray) -> pd.DataFrame:
    """One row per sample id, in the sample's order, with the sample's column names."""
    if len(predicted) != len(fmt.ids):
        raise CompError(f"{len(predicted)} test predictions for {len(fmt.ids)} ids in {fmt.path}; "
                        "the runs were made on another test set")
    values = target_values(classes, fmt.target_kind)
    return pd.DataFrame({fmt.id_column: fmt.ids, fmt.target_column: [values[i] for i in predicted]})


# -- writing and checking ----------------------------------------------------------------------


def validate_submission(path: Path, fmt: SubmissionFormat, classes: list[str]) -> None:
    """Re-read the file as a scorer would: same columns, ids and order; every target valid."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != [fmt.id_column, fmt.target_column]:
        raise CompError(f"{path}: columns {list(frame.columns)}, the sample has {[fmt.id_column, fmt.target_column]}")
    ids = frame[fmt.id_column].str.strip().tolist()
    if ids != fmt.ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, fmt.ids)) if a != b), min(len(ids), len(fmt.ids)))
        raise CompError(f"{path}: ids differ from {fmt.path.name} from row {first + 1} "
                        f"({len(ids)} rows written, {len(fmt.ids)} expected)")
    allowed = {str(v) for v in target_values(classes, fmt.target_kind)}
    targets = frame[fmt.target_column].str.strip()
    bad = targets[~targets.isin(allowed)]
    if len(bad):
        raise CompError(f"{path}: {len(bad)} target(s) are not valid values (e.g. {bad.iloc[0]!r}); "
                        f"allowed: {', '.join(sorted(allowed))}")


def write_submission(path: Path, frame: pd.DataFrame, fmt: SubmissionFormat, classes: list[str],
                     force: bool = False) -> Path:
    """Write atomically, after checking the written bytes; refuse to replace a file unless force."""
    if path.exists() and not force:
        raise CompError(f"{path}: already exists; choose another --out, or pass --force to replace it")
    with atomic_path(path, suffix=".csv") as tmp:
        frame.to_csv(tmp, index=False)
        validate_submission(tmp, fmt, classes)  # a file that fails never takes the real name
    return path


def append_index(workspace: Workspace, entry: dict) -> Path:
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


def score_submission(submission: Path, answers: Path) -> dict:
    sub = _read_two_columns(submission, "the submission")
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
