"""Every metric equals scikit-learn's on random inputs: several seeds, binary and multiclass,
and a class absent from the rows."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sklearn import metrics as skm

from comp.core.metrics import (METRICS, better, f1_macro_multilabel, f1_micro_multilabel,
                               f1_samples, get_metric, score, suggest_metric, worst_value)
from comp.core.errors import CompError

SEEDS = [0, 1, 2, 3]
# (classes, the class left out of the true labels or None)
SHAPES = [(2, None), (5, None), (6, 3), (4, 0)]


def random_case(seed: int, num_classes: int, absent: int | None, rows: int = 300):
    """Softmax probabilities loosely related to random labels; `absent` never appears as a label."""
    rng = np.random.default_rng(seed)
    allowed = [c for c in range(num_classes) if c != absent]
    labels = rng.choice(allowed, size=rows)
    logits = rng.normal(0, 1.5, (rows, num_classes))
    logits[np.arange(rows), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return labels, probs


CASES = [(seed, c, absent) for seed in SEEDS for c, absent in SHAPES]


def label_reference(name, labels, predicted, num_classes):
    classes = list(range(num_classes))
    if name == "accuracy":
        return skm.accuracy_score(labels, predicted)
    if name == "balanced_accuracy":
        return skm.balanced_accuracy_score(labels, predicted)
    if name == "qwk":
        return skm.cohen_kappa_score(labels, predicted, weights="quadratic", labels=classes)
    average = name.split("_")[1]
    return skm.f1_score(labels, predicted, labels=classes, average=average, zero_division=0)


@pytest.mark.filterwarnings("ignore::UserWarning")  # sklearn warns of classes predicted but absent
@pytest.mark.parametrize("name", ["accuracy", "balanced_accuracy", "f1_macro", "f1_weighted", "f1_micro", "qwk"])
@pytest.mark.parametrize("seed,num_classes,absent", CASES)
def test_label_metrics_equal_sklearn(name, seed, num_classes, absent):
    labels, probs = random_case(seed, num_classes, absent)
    expected = label_reference(name, labels, probs.argmax(1), num_classes)
    assert score(name, labels, probs) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("seed,num_classes,absent", CASES)
def test_log_loss_equals_sklearn(seed, num_classes, absent):
    labels, probs = random_case(seed, num_classes, absent)
    expected = skm.log_loss(labels, y_proba=probs, labels=list(range(num_classes)))
    assert score("log_loss", labels, probs) == pytest.approx(expected, rel=1e-12)


def test_log_loss_clips_zeros_as_kaggle():
    """A zero on the true class costs -log(1e-15) after renormalising, not infinity."""
    labels = np.array([0, 1])
    probs = np.array([[0.0, 1.0], [0.5, 0.5]])
    clipped = np.array([[1e-15, 1 - 1e-15], [0.5, 0.5]])
    expected = -(np.log(1e-15 / clipped[0].sum()) + np.log(0.5)) / 2
    assert score("log_loss", labels, probs) == pytest.approx(expected, rel=1e-12)
    assert math.isfinite(score("log_loss", labels, probs))


@pytest.mark.parametrize("seed,num_classes,absent", CASES)
def test_roc_auc_equals_sklearn(seed, num_classes, absent):
    labels, probs = random_case(seed, num_classes, absent)
    if num_classes == 2:
        expected = skm.roc_auc_score(labels, probs[:, 1])
    elif absent is None:
        expected = skm.roc_auc_score(labels, probs, multi_class="ovr", average="macro")
    else:  # sklearn refuses an absent class; the metric skips it from the macro average
        present = np.unique(labels)
        expected = np.mean([skm.roc_auc_score(labels == c, probs[:, c]) for c in present])
    assert score("roc_auc", labels, probs) == pytest.approx(expected, abs=1e-12)


def test_roc_auc_counts_ties_as_sklearn():
    labels = np.array([0, 1, 1, 0, 1, 0])
    positive = np.array([0.2, 0.2, 0.7, 0.7, 0.9, 0.1])
    probs = np.stack([1 - positive, positive], 1)
    assert score("roc_auc", labels, probs) == pytest.approx(skm.roc_auc_score(labels, positive))


def test_roc_auc_with_one_class_is_a_comp_error():
    with pytest.raises(CompError, match="at least two classes"):
        score("roc_auc", np.array([1, 1, 1]), np.full((3, 3), 1 / 3))


def reference_map_at_k(labels, probs, k):
    """Kaggle's definition written as a loop: 1/rank of the true label within the top k."""
    total = 0.0
    for label, row in zip(labels, probs):
        guesses = sorted(range(len(row)), key=lambda c: -row[c])[:k]
        total += 1 / (guesses.index(label) + 1) if label in guesses else 0.0
    return total / len(labels)


@pytest.mark.parametrize("k", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed,num_classes,absent", CASES)
def test_map_at_k_equals_kaggle(k, seed, num_classes, absent):
    labels, probs = random_case(seed, num_classes, absent)
    assert score(f"map@{k}", labels, probs) == pytest.approx(reference_map_at_k(labels, probs, k), abs=1e-12)


def test_map_at_1_is_accuracy():
    labels, probs = random_case(7, 8, None)
    assert score("map@1", labels, probs) == pytest.approx(score("accuracy", labels, probs))


@pytest.mark.parametrize("seed", SEEDS)
def test_multilabel_f1_equals_sklearn(seed):
    rng = np.random.default_rng(seed)
    truth = (rng.random((200, 5)) < 0.3).astype(int)
    truth[:, 4] = 0  # a class never true
    probs = np.clip(truth * 0.4 + rng.random((200, 5)) * 0.7, 0, 1)
    predicted = (probs >= 0.5).astype(int)
    for fn, average in [(f1_samples, "samples"), (f1_micro_multilabel, "micro"), (f1_macro_multilabel, "macro")]:
        expected = skm.f1_score(truth, predicted, average=average, zero_division=0)
        assert fn(truth, predicted) == pytest.approx(expected, abs=1e-12)
        assert score(fn.__name__, truth, probs) == pytest.approx(expected, abs=1e-12)


def test_registry_entries_are_consistent():
    assert {"accuracy", "log_loss", "roc_auc", "qwk", "map@5", "f1_macro"} <= set(METRICS)
    for name, metric in METRICS.items():
        assert metric.name == name
        assert metric.needs in {"labels", "probs", "binary_prob", "topk", "multilabel", "multilabel_probs"}
        assert metric.summary
    assert get_metric("log_loss").greater_is_better is False


def test_unknown_metric_is_a_comp_error_naming_the_valid_ones():
    with pytest.raises(CompError) as raised:
        get_metric("f2_score")
    assert "f2_score" in str(raised.value) and "f1_macro" in str(raised.value) and "map@5" in str(raised.value)
    with pytest.raises(CompError):
        score("nope", np.array([0]), np.array([[1.0, 0.0]]))


def test_mismatched_shapes_are_a_comp_error():
    with pytest.raises(CompError, match="rows"):
        score("accuracy", np.array([0, 1, 0]), np.full((2, 2), 0.5))


@pytest.mark.parametrize("labels", [[0, 3], [-1, 0], [0.0, 1.0]])
def test_labels_outside_the_classes_are_a_comp_error(labels):
    with pytest.raises(CompError, match="labels must be integers"):
        score("f1_macro", np.array(labels), np.full((2, 3), 1 / 3))


def test_a_label_matrix_is_multilabel_truth_and_must_match_the_probabilities():
    # A 2-D truth is a multi-hot matrix (comp.data.multilabel): f1_macro means its multi-label form.
    with pytest.raises(CompError, match="multi-label truth must be a 0/1 matrix"):
        score("f1_macro", np.array([[0, 1], [1, 0]]), np.full((2, 3), 1 / 3))


def test_multilabel_truth_must_match_the_probabilities():
    with pytest.raises(CompError, match="0/1 matrix"):
        score("f1_samples", np.array([0, 1]), np.full((2, 3), 0.5))


def test_better_and_worst_follow_the_direction():
    assert better("accuracy", 0.9, 0.8) and not better("accuracy", 0.8, 0.8)
    assert better("log_loss", 0.3, 0.5) and not better("log_loss", 0.5, 0.3)
    assert worst_value("accuracy") == -math.inf and worst_value("log_loss") == math.inf
    assert better("qwk", -0.5, worst_value("qwk"))


def test_suggest_metric_reads_the_sample_submission():
    assert suggest_metric(["id", "cat", "dog", "fox"], ["int", "float", "float", "float"], 3)[0] == "log_loss"
    assert suggest_metric(["id", "target"], ["int", "float"], 2)[0] == "roc_auc"
    assert suggest_metric(["image", "labels"], ["text", "space_separated"], 50)[0] == "map@5"
    name, reason = suggest_metric(["id", "label"], ["int", "int"], 10)
    assert name == "accuracy" and reason
