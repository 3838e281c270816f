"""Competition metrics, one registry entry each, computed in numpy so that decision rules can
call them thousands of times; every value equals scikit-learn's (tests/test_metrics.py).

    score("f1_macro", labels, probs)   # labels: int array [n]; probs: float array [n, C]

`score` turns the probabilities into what the metric reads (`Metric.needs`): argmax labels,
the positive class's probability, the top-k labels, the probabilities themselves, or, for the
multi-label metrics, a 0/1 matrix (probability >= 0.5; there `labels` is a 0/1 matrix too).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from comp.core.errors import CompError

LOG_LOSS_EPS = 1e-15  # Kaggle's clip: a probability of exactly 0 would cost an infinite loss
MAP_MAX_K = 5
MULTILABEL_THRESHOLD = 0.5


@dataclass(frozen=True)
class Metric:
    """One metric: its direction, what it reads from the probabilities, and its function.

    `fn(labels, prepared, num_classes) -> float` where `prepared` is what `needs` names:
    "labels" (argmax labels [n]), "probs" ([n, C]), "binary_prob" ([n] positive-class
    probability on two classes, else [n, C]), "topk" (labels [n, <=5], best first),
    "multilabel" (0/1 matrix [n, C]) or "multilabel_probs" (per-label probabilities [n, C]).
    """
    name: str
    greater_is_better: bool
    needs: str
    summary: str
    fn: Callable[[np.ndarray, np.ndarray, int], float]


# ----- label metrics (confusion counts, classes fixed to range(C)) -----

def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts [true, predicted] over classes range(C); one bincount, so cheap inside search loops."""
    flat = labels.astype(np.int64) * num_classes + predicted.astype(np.int64)
    return np.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def per_class_f1(matrix: np.ndarray) -> np.ndarray:
    """F1 of each class, 0 where the class is neither true nor predicted (zero_division=0)."""
    true_pos = np.diag(matrix).astype(float)
    denominator = matrix.sum(0) + matrix.sum(1)  # 2TP + FP + FN
    return np.divide(2 * true_pos, denominator, out=np.zeros_like(true_pos), where=denominator > 0)


def accuracy(labels, predicted, num_classes) -> float:
    return float(np.mean(labels == predicted))


def balanced_accuracy(labels, predicted, num_classes) -> float:
    """Mean recall over the classes present in `labels` (absent ones have no recall to average)."""
    matrix = confusion(labels, predicted, num_classes)
    support = matrix.sum(1)
    present = support > 0
    return float(np.mean(np.diag(matrix)[present] / support[present]))


def f1_macro(labels, predicted, num_classes) -> float:
    return float(per_class_f1(confusion(labels, predicted, num_classes)).mean())


def f1_weighted(labels, predicted, num_classes) -> float:
    matrix = confusion(labels, predicted, num_classes)
    return float(np.average(per_class_f1(matrix), weights=matrix.sum(1)))


def f1_micro(labels, predicted, num_classes) -> float:
    """Pooled 2TP / (2TP + FP + FN); equals accuracy when every label lies in range(C)."""
    matrix = confusion(labels, predicted, num_classes)
    true_pos = np.trace(matrix)
    denominator = 2 * matrix.sum()
    return float(2 * true_pos / denominator) if denominator else 0.0


def qwk(labels, predicted, num_classes) -> float:
    """Quadratic weighted kappa, classes ordinal by value; 0.0 where it is undefined (one class)."""
    observed = confusion(labels, predicted, num_classes).astype(float)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    grid = np.arange(num_classes)
    weights = (grid[:, None] - grid[None, :]) ** 2
    disagreement = (weights * expected).sum()
    return float(1 - (weights * observed).sum() / disagreement) if disagreement else 0.0


# ----- probability metrics -----

def log_loss(labels, probs, num_classes) -> float:
    """Kaggle's log loss: clip to [1e-15, 1 - 1e-15], renormalise rows, mean -log p(true)."""
    clipped = np.clip(probs, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    clipped = clipped / clipped.sum(1, keepdims=True)
    return float(-np.mean(np.log(clipped[np.arange(len(labels)), labels])))


def binary_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic (average ranks give ties half credit, as sklearn)."""
    positives = int(is_positive.sum())
    negatives = len(is_positive) - positives
    from scipy.stats import rankdata  # 1.5 s to import: here, not at every command's start

    ranks = rankdata(scores)
    return float((ranks[is_positive].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def roc_auc(labels, prepared, num_classes) -> float:
    """Binary: AUC of the positive class's probability. Multiclass: one-vs-rest macro AUC over
    the classes present in `labels` (an absent class has no positives to rank)."""
    present = np.unique(labels)
    if len(present) < 2:
        raise CompError(f"roc_auc needs at least two classes among the true labels; found {present.tolist()}")
    if prepared.ndim == 1:
        return binary_auc(labels == 1, prepared)
    return float(np.mean([binary_auc(labels == c, prepared[:, c]) for c in present]))


def map_at_k(k: int) -> Callable[[np.ndarray, np.ndarray, int], float]:
    """Kaggle's MAP@k with one true label: 1/rank when it is among the top k, else 0."""
    def mean_average_precision(labels, top_labels, num_classes) -> float:
        hits = top_labels[:, :k] == labels[:, None]
        ranks = np.arange(1, hits.shape[1] + 1)
        return float((hits / ranks).sum(1).mean())
    return mean_average_precision


# ----- multi-label F1 on 0/1 matrices -----

def f1_samples(labels, predicted, num_classes=None) -> float:
    """Mean over rows of the row's F1; a row with nothing true and nothing predicted scores 0."""
    labels, predicted = labels.astype(bool), predicted.astype(bool)
    overlap = (labels & predicted).sum(1)
    sizes = labels.sum(1) + predicted.sum(1)
    return float(np.mean(np.divide(2 * overlap, sizes, out=np.zeros(len(sizes)), where=sizes > 0)))


def f1_micro_multilabel(labels, predicted, num_classes=None) -> float:
    labels, predicted = labels.astype(bool), predicted.astype(bool)
    denominator = labels.sum() + predicted.sum()
    return float(2 * (labels & predicted).sum() / denominator) if denominator else 0.0


def f1_macro_multilabel(labels, predicted, num_classes=None) -> float:
    labels, predicted = labels.astype(bool), predicted.astype(bool)
    overlap = (labels & predicted).sum(0).astype(float)
    sizes = labels.sum(0) + predicted.sum(0)
    return float(np.mean(np.divide(2 * overlap, sizes, out=np.zeros_like(overlap), where=sizes > 0)))


def label_accuracy(labels, predicted, num_classes=None) -> float:
    """Share of (row, label) cells decided right: Keras's binary accuracy at threshold 0.5."""
    return float(np.mean(labels.astype(bool) == predicted.astype(bool)))


def binary_log_loss(labels, probs, num_classes=None) -> float:
    """Mean binary cross-entropy over (row, label) cells, clipped as log_loss (the mean column-wise log
    loss of multi-label competitions; the training loss sums over the labels instead)."""
    clipped = np.clip(probs, LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
    truth = labels.astype(bool)
    return float(-np.mean(np.where(truth, np.log(clipped), np.log1p(-clipped))))


# A single-label metric named on multi-label targets (a multi-hot truth matrix) means its multi-label form.
MULTILABEL_FORMS = {"accuracy": "label_accuracy", "f1_micro": "f1_micro_multilabel",
                    "f1_macro": "f1_macro_multilabel", "log_loss": "binary_log_loss"}


def _registry() -> dict[str, Metric]:
    entries = [
        Metric("accuracy", True, "labels", "share of rows whose argmax is the true class", accuracy),
        Metric("balanced_accuracy", True, "labels", "mean recall over the true classes", balanced_accuracy),
        Metric("f1_macro", True, "labels", "unweighted mean of per-class F1 (rare classes count fully)", f1_macro),
        Metric("f1_weighted", True, "labels", "per-class F1 weighted by class support", f1_weighted),
        Metric("f1_micro", True, "labels", "pooled F1 over all rows (equals accuracy)", f1_micro),
        Metric("log_loss", False, "probs", "mean -log p(true class), clipped at 1e-15 as Kaggle", log_loss),
        Metric("roc_auc", True, "binary_prob", "ROC AUC; one-vs-rest macro over present classes", roc_auc),
        Metric("qwk", True, "labels", "quadratic weighted Cohen's kappa, classes ordinal", qwk),
    ]
    entries += [Metric(f"map@{k}", True, "topk", f"mean average precision of the top {k} labels", map_at_k(k))
                for k in range(1, MAP_MAX_K + 1)]
    entries += [
        Metric("f1_samples", True, "multilabel", "multi-label F1 averaged over rows", f1_samples),
        Metric("f1_micro_multilabel", True, "multilabel", "multi-label F1 pooled over cells", f1_micro_multilabel),
        Metric("f1_macro_multilabel", True, "multilabel", "multi-label F1 averaged over classes", f1_macro_multilabel),
        Metric("label_accuracy", True, "multilabel", "multi-label: share of (row, label) cells right", label_accuracy),
        Metric("binary_log_loss", False, "multilabel_probs", "multi-label: mean binary cross-entropy over cells",
               binary_log_loss),
    ]
    return {metric.name: metric for metric in entries}


METRICS: dict[str, Metric] = _registry()


def get_metric(name: str | Metric) -> Metric:
    """The registry entry; an unknown name is a user error that lists the valid ones."""
    if isinstance(name, Metric):
        return name
    if name not in METRICS:
        raise CompError(f"unknown metric {name!r}; valid metrics: {', '.join(METRICS)}")
    return METRICS[name]


def is_multilabel_metric(metric: Metric) -> bool:
    return metric.needs.startswith("multilabel")


def metric_for(name: str | Metric, labels) -> Metric:
    """The registry entry that scores these targets: for a multi-hot truth matrix a single-label
    name means its multi-label form (MULTILABEL_FORMS); one without such a form is refused."""
    metric = get_metric(name)
    if np.ndim(labels) != 2 or is_multilabel_metric(metric):
        return metric
    if metric.name not in MULTILABEL_FORMS:
        usable = ", ".join([*MULTILABEL_FORMS, "f1_samples"])
        raise CompError(f"--metric {metric.name} does not score multi-label targets (several labels a row); "
                        f"choose one of {usable}")
    return METRICS[MULTILABEL_FORMS[metric.name]]


def prepare(needs: str, probs: np.ndarray) -> np.ndarray:
    """Probabilities [n, C] turned into what a metric reads (see `Metric`)."""
    if needs == "labels":
        return probs.argmax(1)
    if needs in ("probs", "multilabel_probs"):
        return probs
    if needs == "binary_prob":
        return probs[:, 1] if probs.shape[1] == 2 else probs
    if needs == "topk":
        return np.argsort(-probs, axis=1, kind="stable")[:, :MAP_MAX_K]
    if needs == "multilabel":
        return (probs >= MULTILABEL_THRESHOLD).astype(np.int8)
    raise CompError(f"unknown metric input {needs!r}")


def score(name: str | Metric, labels: np.ndarray, probs: np.ndarray) -> float:
    """The metric of probabilities against the true labels: the one entry point every stage uses."""
    labels, probs = np.asarray(labels), np.asarray(probs, dtype=float)
    metric = metric_for(name, labels)
    check_inputs(metric, labels, probs)
    return metric.fn(labels, prepare(metric.needs, probs), probs.shape[1])


def check_inputs(metric: Metric, labels: np.ndarray, probs: np.ndarray) -> None:
    """Shapes and label range, checked once here so that the metric functions stay plain."""
    if probs.ndim != 2 or len(probs) != len(labels) or len(labels) == 0:
        raise CompError(f"{metric.name}: probabilities must be [rows, classes] with one row a label; "
                        f"got {probs.shape} against {len(labels)} labels")
    if is_multilabel_metric(metric):
        if labels.shape != probs.shape:
            raise CompError(f"{metric.name}: multi-label truth must be a 0/1 matrix shaped like the "
                            f"probabilities {probs.shape}; got {labels.shape}")
        return
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.min() < 0 \
            or labels.max() >= probs.shape[1]:
        raise CompError(f"{metric.name}: labels must be integers in 0..{probs.shape[1] - 1} "
                        f"(one per row, a column of the probabilities)")


def better(name: str | Metric, a: float, b: float) -> bool:
    """Whether score `a` is strictly better than `b` in the metric's direction."""
    return a > b if get_metric(name).greater_is_better else a < b


def worst_value(name: str | Metric) -> float:
    """A value every real score beats: the start of a search for the best."""
    return -math.inf if get_metric(name).greater_is_better else math.inf


def suggest_metric(sample_columns: Sequence[str], value_kinds: Sequence[str],
                   num_classes: int) -> tuple[str, str]:
    """A guess at the competition's metric from its sample submission, with the reason.

    `value_kinds` is parallel to `sample_columns`, one of "float", "int", "text" or
    "space_separated" each; the first column is the row id and is ignored. Only a guess:
    the competition's page decides.
    """
    if len(sample_columns) != len(value_kinds):
        raise CompError(f"suggest_metric: {len(sample_columns)} columns but {len(value_kinds)} value kinds")
    kinds = list(value_kinds)[1:]
    floats = kinds.count("float")
    if num_classes >= 2 and floats == num_classes:
        return "log_loss", f"one probability column per class ({floats} float columns)"
    if num_classes == 2 and floats == 1:
        return "roc_auc", "one float column on a two-class set: a score for the positive class"
    if "space_separated" in kinds:
        return f"map@{MAP_MAX_K}", "space-separated labels: a ranked guess list per row"
    return "accuracy", "one label column: the predicted class"
