"""The leaderboard CSV: written in the sample's exact shape, checked by re-reading, never overwritten.

    submissions/<name>.csv     ids (exactly as written) and order of sample_submission.csv, its
                               column names, and what the sample asks for: the target as class
                               names or integers (id,target), or one probability column per
                               class (id,<class>,<class>,...: Kaggle's probability format; a
                               sample of 0/1 integers there gets a 1 under the predicted class
                               when the metric reads labels)
    submissions/index.csv      one row per submission written: time, file, runs, weights,
                               method, TTA, OOF accuracy (the history of what was sent), and
                               its error bars (comp.core.stats): ci_accuracy with its 95% interval
                               ci_low..ci_high (for method weights: of the checked blend),
                               best_run, and gain (over it) with its paired gain_low..gain_high;
                               the competition's metric (comp.core.metrics) and its OOF value
                               oof_metric (of the blend ci_accuracy is of: nothing fitted on the
                               rows it scores) with its interval metric_low..metric_high, oof_log_loss,
                               the decision rule applied and the metric it earns (oof_metric_rule)

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
                 "ci_accuracy", "ci_low", "ci_high", "best_run", "gain", "gain_low", "gain_high", "test_from",
                 "metric", "oof_metric", "metric_low", "metric_high", "oof_log_loss", "rule", "oof_metric_rule"]
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


def check_multilabel_format(fmt: SubmissionFormat, classes: list[str], metric: str) -> None:
    """Multi-label: the metric must score several labels a row, and the sample hold a column per
    label (0/1 or probabilities) or one column of space-separated labels."""
    from comp.core.metrics import metric_for

    metric_for(metric, np.zeros((1, len(classes))))  # refuses a metric without a multi-label form
    if fmt.target_kind == "fraction":
        raise CompError(f"{fmt.path}: one probability column, but the labels CSV holds several labels a row "
                        f"({', '.join(classes[:5])}); the sample must have a column per label or one column of "
                        "space-separated labels")
    if fmt.target_kind == "probs":
        class_columns(fmt, classes)


def sample_holds_integers(fmt: SubmissionFormat) -> bool:
    """Whether the sample's target columns hold integers (0/1 decisions) rather than probabilities."""
    sample = pd.read_csv(fmt.path, dtype=str, keep_default_na=False)
    return bool(sample[fmt.columns[1:]].apply(lambda c: c.str.strip().str.fullmatch(r"-?\d+").all()).all())


def check_format(fmt: SubmissionFormat, classes: list[str], metric: str = "accuracy", multilabel: bool = False) -> None:
    """Refuse a sample comp cannot fill correctly, or one the competition's metric cannot read (one
    CompError line); warn where the target's meaning is a guess. `multilabel`: several labels a row."""
    from comp.core.metrics import get_metric

    if multilabel:
        check_multilabel_format(fmt, classes, metric)
        return
    chosen = get_metric(metric)
    reads_probs = chosen.needs in ("probs", "binary_prob")
    if chosen.needs.startswith("multilabel"):
        raise CompError(f"--metric {chosen.name} scores several labels a row; this data has one label a row "
                        "(a multi-label labels CSV has 0/1 columns or space-separated labels): "
                        "choose a single-label metric")
    if fmt.target_kind == "fraction":
        if len(classes) != 2 or not reads_probs:
            why = (f"{len(classes)} classes, not two" if len(classes) != 2
                   else f"the metric {chosen.name} scores labels, not probabilities")
            raise CompError(f"{fmt.path}: its {fmt.target_column} column holds fractions, a single probability (of "
                            f"one class), and comp cannot fill it: {why}. With two classes pass --metric roc_auc or "
                            "log_loss (the competition's); comp otherwise writes class labels (id,target) or a "
                            f"probability column per class (id,<class>,...); classes: {', '.join(classes)}")
        positive_class(fmt, classes)
        return
    if fmt.target_kind == "probs":
        if chosen.needs == "topk":
            raise CompError(f"{fmt.path}: a probability column per class, but the metric {chosen.name} scores a "
                            "ranked list of labels a row; pass the competition's --metric (log_loss for this form)")
        class_columns(fmt, classes)
        return
    if reads_probs:
        raise CompError(f"{fmt.path}: one {fmt.target_kind == 'int' and 'integer' or 'label'} a row in "
                        f"{fmt.target_column}, but the metric {chosen.name} scores probabilities; pass the "
                        "competition's --metric (accuracy or f1_macro for this form) or check the sample")
    if fmt.target_kind == "int" and not names_are_ints(classes):
        mapping = ", ".join(f"{i}={c}" for i, c in enumerate(classes[:5]))
        warn(f"{fmt.path.name} wants integer targets but the classes are names: writing each class's index in "
             f"sorted-name order ({mapping}{', ...' if len(classes) > 5 else ''}); check that the competition "
             "numbers its classes the same way")


def positive_class(fmt: SubmissionFormat, classes: list[str]) -> int:
    """One probability column on two classes: the class it is the probability of -- the one the
    column is named after, else the second class (sorted names: 1 of 0/1, dog of cat/dog)."""
    named = fmt.target_column.strip()
    return classes.index(named) if named in classes else 1


def top_k(metric: str) -> int:
    """The k of map@k: how many labels a row the submission lists."""
    from comp.core.metrics import get_metric

    name = get_metric(metric).name
    return int(name.split("@")[1]) if name.startswith("map@") else 1


def multilabel_frame(fmt: SubmissionFormat, classes: list[str], probs: np.ndarray) -> pd.DataFrame:
    """Multi-label, in the sample's form: a column per label holding 0/1 (the sample's cells are
    integers) or the probabilities, else one column of the labels at 0.5 or more, space-separated
    (empty when none is)."""
    from comp.core.metrics import MULTILABEL_THRESHOLD

    decided = probs >= MULTILABEL_THRESHOLD
    if fmt.target_kind == "probs":
        values = decided.astype(np.int64) if sample_holds_integers(fmt) else probs
        return pd.DataFrame({fmt.id_column: fmt.raw_ids,
                             **dict(zip(fmt.columns[1:], values[:, class_columns(fmt, classes)].T))})
    return pd.DataFrame({fmt.id_column: fmt.raw_ids,
                         fmt.target_column: [" ".join(classes[i] for i in np.flatnonzero(row)) for row in decided]})


def submission_frame(fmt: SubmissionFormat, classes: list[str], probs: np.ndarray,
                     metric: str = "accuracy", multilabel: bool = False) -> pd.DataFrame:
    """One row per sample id (as written there), in its order, in its columns: labels, probabilities,
    the positive class's probability (one float column, two classes) or, for map@k, the top k labels
    separated by spaces, best first."""
    from comp.core.metrics import get_metric

    if len(probs) != len(fmt.ids):
        raise CompError(f"{len(probs)} test predictions for {len(fmt.ids)} ids in {fmt.path}; "
                        "the runs were made on another test set")
    if multilabel:
        return multilabel_frame(fmt, classes, probs)
    if fmt.target_kind == "probs":
        values = probs[:, class_columns(fmt, classes)]
        if fmt.one_hot and get_metric(metric).needs == "labels":  # a 1 under the predicted class, as the sample's 0/1
            values = (values.argmax(1)[:, None] == np.arange(values.shape[1])).astype(np.int64)
        return pd.DataFrame({fmt.id_column: fmt.raw_ids, **dict(zip(fmt.columns[1:], values.T))})
    if fmt.target_kind == "fraction":
        return pd.DataFrame({fmt.id_column: fmt.raw_ids, fmt.target_column: probs[:, positive_class(fmt, classes)]})
    values = target_values(classes, fmt.target_kind)
    if get_metric(metric).needs == "topk":
        ranked = np.argsort(-probs, axis=1, kind="stable")[:, :top_k(metric)]
        return pd.DataFrame({fmt.id_column: fmt.raw_ids,
                             fmt.target_column: [" ".join(str(values[i]) for i in row) for row in ranked]})
    return pd.DataFrame({fmt.id_column: fmt.raw_ids, fmt.target_column: [values[i] for i in probs.argmax(1)]})


# -- writing and checking ----------------------------------------------------------------------


def validate_submission(path: Path, fmt: SubmissionFormat, classes: list[str], metric: str = "accuracy",
                        multilabel: bool = False) -> None:
    """Re-read the file as a scorer would: same columns, ids (as written) and order; every target valid."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(frame.columns) != fmt.columns:
        raise CompError(f"{path}: columns {list(frame.columns)}, the sample has {fmt.columns}")
    ids = frame[fmt.id_column].tolist()
    if ids != fmt.raw_ids:
        first = next((i for i, (a, b) in enumerate(zip(ids, fmt.raw_ids)) if a != b), min(len(ids), len(fmt.ids)))
        raise CompError(f"{path}: ids differ from {fmt.path.name} from row {first + 1} "
                        f"({len(ids)} rows written, {len(fmt.ids)} expected)")
    if fmt.target_kind in ("probs", "fraction"):  # multi-label: a column per label, rows need not sum to 1
        check_probabilities(path, frame[fmt.columns[1:]], rows_sum_to_one=fmt.target_kind == "probs" and not multilabel)
        return
    allowed = set(classes) if multilabel else {str(v) for v in target_values(classes, fmt.target_kind)}
    targets = frame[fmt.target_column].str.strip()
    if top_k(metric) > 1 or multilabel:  # map@k, multi-label: every space-separated label must be a class
        targets = targets.str.split().explode().dropna() if multilabel else targets.str.split().explode().fillna("")
    bad = targets[~targets.isin(allowed)]
    if len(bad):
        raise CompError(f"{path}: {len(bad)} target(s) are not valid values (e.g. {bad.iloc[0]!r}); "
                        f"allowed: {', '.join(sorted(allowed))}")


def check_probabilities(path: Path, columns: pd.DataFrame, rows_sum_to_one: bool = True) -> None:
    """Every cell a number in [0, 1], every row summing to 1 (a probability column per class)."""
    values = columns.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
    bad = ~np.isfinite(values) | (values < 0) | (values > 1)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise CompError(f"{path}: {int(bad.sum())} cell(s) are not probabilities (e.g. row {row + 1}, "
                        f"{columns.columns[col]}: {columns.iat[row, col]!r})")
    off = np.abs(values.sum(1) - 1) > PROB_SUM_TOLERANCE
    if rows_sum_to_one and off.any():
        raise CompError(f"{path}: {int(off.sum())} row(s) do not sum to 1 (e.g. row {np.argmax(off) + 1}: "
                        f"{values[np.argmax(off)].sum():.4f})")


def write_submission(path: Path, frame: pd.DataFrame, fmt: SubmissionFormat, classes: list[str],
                     force: bool = False, metric: str = "accuracy", multilabel: bool = False) -> Path:
    """Write atomically, after checking the written bytes; refuse to replace a file unless force."""
    if path.exists() and not force:
        raise CompError(f"{path}: already exists; choose another --out, or pass --force to replace it")
    with atomic_path(path) as tmp:  # no .csv on the temp name: never mistaken for a submission
        frame.to_csv(tmp, index=False, float_format=PROB_FORMAT)
        validate_submission(tmp, fmt, classes, metric, multilabel)  # a file that fails never takes the real name
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


def _key(text: str) -> str:
    """A target as compared: stripped, and an integer as its value ("07" is "7")."""
    text = text.strip()
    return str(int(text)) if text.lstrip("-").isdigit() else text


def _class_order(key: str) -> tuple:
    """Integers by value (qwk reads the classes as ordinal), then names."""
    return (0, int(key), "") if key.lstrip("-").isdigit() else (1, 0, key)


def submission_probs(path: Path, ids: list[str], truth: list[str]) -> tuple[np.ndarray, list[str]]:
    """A submission read as probabilities [answers' rows, classes] and the class keys of its columns:
    a probability column per class as written; one float column (two classes) as the probability of
    the class it is named after, else the second; labels as one-hot rows; space-separated labels
    (map@k) as ranked scores, best first."""
    wide = pd.read_csv(path, dtype=str, keep_default_na=False)
    wide[wide.columns[0]] = wide[wide.columns[0]].str.strip()
    wide = wide.set_index(wide.columns[0]).loc[ids]
    if wide.shape[1] > 1:
        values = wide.apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        if not np.isfinite(values).all():
            raise CompError(f"{path}: a probability column per class, but not every cell is a number; "
                            "fix the submission")
        return values, [_key(c) for c in wide.columns]
    column = wide.iloc[:, 0].str.strip()
    numbers = pd.to_numeric(column, errors="coerce")
    if numbers.notna().all() and not column.str.fullmatch(r"-?\d+").all():  # floats: P(positive class)
        classes = sorted(set(truth), key=_class_order)
        if len(classes) != 2:
            raise CompError(f"{path}: one probability column, but the answers hold {len(classes)} classes, not two")
        named = _key(wide.columns[0])
        positive = classes.index(named) if named in classes else 1
        p = column.astype(float).to_numpy()
        probs = np.empty((len(p), 2))
        probs[:, positive], probs[:, 1 - positive] = p, 1 - p
        return probs, classes
    ranked = [[_key(t) for t in text.split()] or [""] for text in column]
    classes = sorted(set(truth) | {t for row in ranked for t in row}, key=_class_order)
    index = {c: i for i, c in enumerate(classes)}
    probs = np.zeros((len(ranked), len(classes)))
    for r, row in enumerate(ranked):
        for rank, label in enumerate(dict.fromkeys(row)):  # a repeated label keeps its best rank
            probs[r, index[label]] = 1.0 / (rank + 1)
    return probs / probs.sum(1, keepdims=True), classes


def listed_labels(path: Path, ids: list[str], classes: list[str]) -> np.ndarray | None:
    """map@k of a space-separated submission: each row's labels as class indices, best first,
    padded with -1 (a label not listed is never credited); None for the other forms."""
    from comp.core.metrics import MAP_MAX_K

    wide = pd.read_csv(path, dtype=str, keep_default_na=False)
    if wide.shape[1] != 2:
        return None
    wide[wide.columns[0]] = wide[wide.columns[0]].str.strip()
    column = wide.set_index(wide.columns[0]).loc[ids].iloc[:, 0]
    index = {c: i for i, c in enumerate(classes)}
    listed = np.full((len(column), MAP_MAX_K), -1, dtype=np.int64)
    for r, text in enumerate(column):
        row = [index[k] for k in dict.fromkeys(_key(t) for t in text.split()) if k in index][:MAP_MAX_K]
        listed[r, :len(row)] = row
    return listed


def multilabel_answers(answers: Path):
    """The answers as multi-label targets (comp.data.multilabel.MultilabelTargets: a 0/1 column per
    label with several 1s in some row, or space-separated labels), or None when they are single-label."""
    from comp.data.multilabel import read_multilabel
    from comp.data.sources import ID_COLUMN_NAMES, LABEL_COLUMN_NAMES

    return read_multilabel(answers, (*ID_COLUMN_NAMES, "index"), LABEL_COLUMN_NAMES) if answers.is_file() else None


def submitted_labels(path: Path, ids: list[str], classes: list[str]) -> np.ndarray:
    """A multi-label submission as [answers' rows, labels] values: its label columns as written (0/1
    or probabilities), or its space-separated labels as 0/1 (a label the answers lack is ignored)."""
    wide = pd.read_csv(path, dtype=str, keep_default_na=False)
    wide[wide.columns[0]] = wide[wide.columns[0]].str.strip()
    missing = sorted(set(ids) - set(wide.iloc[:, 0]))
    if missing:
        raise CompError(f"{path}: {len(missing)} answer id(s) missing from the submission (e.g. "
                        f"{', '.join(missing[:3])})")
    wide = wide.set_index(wide.columns[0]).loc[ids]
    if wide.shape[1] > 1:
        absent = [c for c in classes if c not in wide.columns]
        if absent:
            raise CompError(f"{path}: no column for the label(s) {', '.join(absent[:5])} of the answers")
        values = wide[classes].apply(pd.to_numeric, errors="coerce").to_numpy(np.float64)
        if not np.isfinite(values).all():
            raise CompError(f"{path}: a column per label, but not every cell is a number; fix the submission")
        return values
    index = {c: i for i, c in enumerate(classes)}
    values = np.zeros((len(ids), len(classes)))
    for r, text in enumerate(wide.iloc[:, 0]):
        values[r, [index[w] for w in text.split() if w in index]] = 1.0
    return values


def score_multilabel_submission(submission: Path, answers: Path, truth, metric: str) -> dict:
    """A multi-label submission against multi-label answers; accuracy and its counts are of
    (row, label) cells."""
    from comp.core.metrics import metric_for, score

    if not submission.is_file():
        raise CompError(f"{submission}: no such file (the submission)")
    ids = [str(i).strip() for i in truth.ids]
    probs = submitted_labels(submission, ids, truth.classes)
    right = (probs >= 0.5) == truth.matrix.astype(bool)
    return {"accuracy": float(right.mean()), "correct": int(right.sum()), "rows": int(right.size),
            "answers": answers, "metric": metric_for(metric, truth.matrix).name,
            "value": float(score(metric, truth.matrix, probs))}


def score_submission(submission: Path, answers: Path, metric: str = "accuracy") -> dict:
    """The submission scored against the answers under the competition's metric, and by accuracy
    (multi-label answers: see score_multilabel_submission)."""
    from comp.core.metrics import get_metric, score

    truth = multilabel_answers(answers)
    if truth is not None:
        return score_multilabel_submission(submission, answers, truth, metric)
    name = get_metric(metric).name
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
    truth = [_key(t) for t in ans["target"]]
    probs, classes = submission_probs(submission, ans["id"].tolist(), truth)
    unknown = sorted(set(truth) - set(classes))
    if unknown:
        raise CompError(f"{submission}: the answers hold class(es) the submission has no column for: "
                        f"{', '.join(unknown[:5])}")
    labels = np.array([classes.index(t) for t in truth], dtype=np.int64)
    correct = probs.argmax(1) == labels
    listed = listed_labels(submission, ans["id"].tolist(), classes) if get_metric(name).needs == "topk" else None
    value = get_metric(name).fn(labels, listed, len(classes)) if listed is not None else score(name, labels, probs)
    return {"accuracy": float(correct.mean()), "correct": int(correct.sum()), "rows": len(labels),
            "answers": answers, "metric": name, "value": float(value)}
