"""Decision rules pay on rows never used for their fit, and choose_rule keeps them only then."""

from __future__ import annotations

import json

import numpy as np
import pytest

from comp.core.decision import (RULES, Identity, OrdinalThresholds, PriorCorrection, Rule, Temperature,
                                choose_rule, cross_fit, rules_for, softmax)
from comp.core.metrics import score
from comp.core.errors import CompError

CLASS_COUNTS = np.array([400, 328, 256, 184, 112, 40])


def imbalanced_set(seed: int, signal: float = 2.0, bias: float = 1.5):
    """6 classes with 400..40 rows; noisy logits pushed towards the frequent classes (as a model
    trained on imbalanced data is); fold ids 0..4."""
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(len(CLASS_COUNTS)), CLASS_COUNTS))
    logits = rng.normal(0, 1.0, (len(labels), len(CLASS_COUNTS)))
    logits[np.arange(len(labels)), labels] += signal
    logits += bias * np.log(CLASS_COUNTS / CLASS_COUNTS.max())
    return labels, softmax(logits), rng.integers(0, 5, len(labels))


def calibrated_set(seed: int, rows: int = 1500, num_classes: int = 5):
    """Balanced classes drawn from the very probabilities predicted: nothing to correct."""
    rng = np.random.default_rng(seed)
    probs = softmax(rng.normal(0, 1.5, (rows, num_classes)))
    labels = (probs.cumsum(1) > rng.random((rows, 1))).argmax(1)
    return labels, probs, rng.integers(0, 5, rows)


def overconfident_set(seed: int, rows: int = 1500, num_classes: int = 4, sharpen: float = 4.0):
    """Probabilities whose logits are `sharpen` times too large: right ranking, too sure."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, rows)
    logits = rng.normal(0, 1, (rows, num_classes))
    logits[np.arange(rows), labels] += 1.2
    return labels, softmax(logits * sharpen), rng.integers(0, 5, rows)


def ordinal_set(seed: int, rows: int = 1500, num_classes: int = 5, shrink: float = 0.0):
    """Ordinal grades: a noisy reading of a latent score, probabilities spread over nearby grades,
    end grades rarer. `shrink` pulls the reading towards the middle grade, as a model trained
    on such data tends to."""
    rng = np.random.default_rng(seed)
    latent = np.clip(rng.normal(num_classes / 2, 1.2, rows), 0, num_classes - 1e-9)
    labels = latent.astype(int)
    reading = latent + rng.normal(0, 0.8, rows)
    reading = num_classes / 2 + (reading - num_classes / 2) * (1 - shrink)
    centres = np.arange(num_classes) + 0.5
    probs = softmax(-((reading[:, None] - centres) ** 2) / (2 * 0.9 ** 2))
    return labels, probs, rng.integers(0, 5, rows)


# ----- PriorCorrection -----

def test_cross_fitted_prior_correction_raises_held_out_macro_f1():
    labels, probs, folds = imbalanced_set(0)
    plain = score("f1_macro", labels, probs)
    held_out = score("f1_macro", labels, cross_fit(PriorCorrection, probs, labels, folds, "f1_macro"))
    assert held_out > plain + 0.05


def test_prior_correction_fitted_on_oof_improves_a_separate_test_set():
    labels, probs, _ = imbalanced_set(0)
    test_labels, test_probs, _ = imbalanced_set(1)
    rule = PriorCorrection().fit(probs, labels, "f1_macro")
    assert score("f1_macro", test_labels, rule.apply(test_probs)) > score("f1_macro", test_labels, test_probs) + 0.05
    assert rule.weights[-1] > rule.weights[0]  # the rarest class is pushed up, the most frequent down
    assert np.allclose(rule.apply(test_probs).sum(1), 1)


def test_prior_correction_also_raises_balanced_accuracy():
    labels, probs, folds = imbalanced_set(2)
    held_out = cross_fit(PriorCorrection, probs, labels, folds, "balanced_accuracy")
    assert score("balanced_accuracy", labels, held_out) > score("balanced_accuracy", labels, probs) + 0.05


# ----- Temperature -----

def test_temperature_lowers_held_out_log_loss_on_overconfident_probabilities():
    labels, probs, folds = overconfident_set(3)
    plain = score("log_loss", labels, probs)
    held_out = score("log_loss", labels, cross_fit(Temperature, probs, labels, folds, "log_loss"))
    assert held_out < plain - 0.3
    rule = Temperature().fit(probs, labels, "log_loss")
    assert rule.temperature > 2  # softens what was sharpened four-fold
    test_labels, test_probs, _ = overconfident_set(4)
    assert score("log_loss", test_labels, rule.apply(test_probs)) < score("log_loss", test_labels, test_probs) - 0.3


def test_temperature_keeps_the_argmax():
    labels, probs, _ = overconfident_set(5)
    rule = Temperature(temperature=2.5, floor=1e-3)
    assert np.array_equal(rule.apply(probs).argmax(1), probs.argmax(1))
    assert rule.apply(probs).min() >= 1e-3 * 0.99


# ----- OrdinalThresholds -----

@pytest.mark.parametrize("seed", [6, 7, 8])
def test_ordinal_thresholds_do_not_lower_qwk(seed):
    """Where the argmax is already the nearest grade, cross-fitted thresholds stay within noise."""
    labels, probs, folds = ordinal_set(seed)
    plain = score("qwk", labels, probs)
    assert score("qwk", labels, cross_fit(OrdinalThresholds, probs, labels, folds, "qwk")) >= plain - 0.005
    rule = OrdinalThresholds().fit(probs, labels, "qwk")
    assert score("qwk", labels, rule.apply(probs)) >= plain  # in-sample, the fitted cuts match the argmax at least
    assert np.all(np.diff(rule.thresholds) > 0)


@pytest.mark.parametrize("seed", [6, 7])
def test_ordinal_thresholds_raise_qwk_when_predictions_shrink_to_the_middle(seed):
    labels, probs, folds = ordinal_set(seed, shrink=0.3)
    plain = score("qwk", labels, probs)
    assert score("qwk", labels, cross_fit(OrdinalThresholds, probs, labels, folds, "qwk")) > plain + 0.01
    rule = OrdinalThresholds().fit(probs, labels, "qwk")
    test_labels, test_probs, _ = ordinal_set(seed + 100, shrink=0.3)
    assert score("qwk", test_labels, rule.apply(test_probs)) > score("qwk", test_labels, test_probs) + 0.01


def test_ordinal_thresholds_apply_gives_one_hot_decisions():
    rule = OrdinalThresholds(thresholds=[0.5, 1.5])
    probs = np.array([[0.6, 0.3, 0.1], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]])  # expected 0.5, 1.6, 1.0
    assert rule.apply(probs).tolist() == [[0, 1, 0], [0, 0, 1], [0, 1, 0]]


# ----- cross_fit honesty -----

class FitSpy(Identity):
    """Records the rows each fit sees (their first probability identifies them)."""
    seen: list[set] = []

    def fit(self, probs, labels, metric):
        FitSpy.seen.append(set(probs[:, 0].tolist()))
        return self


def test_cross_fit_never_fits_on_the_fold_it_applies_to():
    rng = np.random.default_rng(8)
    probs = softmax(rng.normal(size=(100, 3)))
    labels, folds = rng.integers(0, 3, 100), np.arange(100) % 4
    FitSpy.seen = []
    held_out = cross_fit(FitSpy, probs, labels, folds, "accuracy")
    assert len(FitSpy.seen) == 4 and np.allclose(held_out, probs)
    for fold, seen in zip(range(4), FitSpy.seen):
        assert seen == set(probs[folds != fold, 0].tolist())


def test_cross_fit_needs_two_folds():
    labels, probs, _ = calibrated_set(9, rows=50)
    with pytest.raises(CompError, match="two folds"):
        cross_fit(PriorCorrection, probs, labels, np.zeros(50, int), "f1_macro")


# ----- choose_rule -----

def test_choose_rule_keeps_prior_correction_where_it_pays():
    labels, probs, folds = imbalanced_set(0)
    choice = choose_rule(probs, labels, folds, "f1_macro", resamples=300)
    assert choice.kept and choice.rule_name == "prior_correction"
    assert isinstance(choice.fitted_rule, PriorCorrection) and choice.fitted_rule.weights is not None
    assert choice.crossfit_score > choice.plain_score
    assert 0 < choice.gain_interval[0] < choice.gain_interval[1]
    assert choice.gain_share >= 0.95


def test_choose_rule_keeps_temperature_on_overconfident_log_loss():
    labels, probs, folds = overconfident_set(3)
    choice = choose_rule(probs, labels, folds, "log_loss", resamples=300)
    assert choice.kept and choice.rule_name == "temperature"
    assert choice.crossfit_score < choice.plain_score and choice.gain_interval[0] > 0


def test_choose_rule_keeps_ordinal_thresholds_for_qwk_where_they_pay():
    labels, probs, folds = ordinal_set(6, shrink=0.3)
    choice = choose_rule(probs, labels, folds, "qwk", resamples=300)
    assert choice.kept and choice.rule_name == "ordinal_thresholds" and choice.gain_interval[0] > 0


@pytest.mark.parametrize("metric", ["f1_macro", "accuracy", "log_loss"])
def test_choose_rule_keeps_identity_on_calibrated_balanced_data(metric):
    labels, probs, folds = calibrated_set(5)
    choice = choose_rule(probs, labels, folds, metric, resamples=300)
    assert not choice.kept and choice.rule_name == "identity" and isinstance(choice.fitted_rule, Identity)
    assert choice.candidate != "identity"  # a rule was tried and refused
    assert choice.gain_interval[0] < 0 < choice.gain_interval[1] or choice.gain_interval[1] <= 0
    assert choice.plain_score == pytest.approx(score(metric, labels, probs))


def test_choose_rule_with_no_candidate_returns_identity():
    labels, probs, folds = calibrated_set(5, num_classes=2)
    choice = choose_rule(probs, labels, folds, "roc_auc", resamples=50)
    assert (choice.rule_name, choice.kept, choice.candidate) == ("identity", False, "identity")
    assert choice.crossfit_score == choice.plain_score


# ----- registry and serialisation -----

def test_rules_for_each_metric():
    assert rules_for("f1_macro") == [Identity, PriorCorrection]
    assert rules_for("balanced_accuracy") == [Identity, PriorCorrection]
    assert rules_for("log_loss") == [Identity, Temperature]
    assert rules_for("qwk") == [Identity, OrdinalThresholds]
    assert rules_for("roc_auc") == [Identity]
    with pytest.raises(CompError):
        rules_for("nope")


@pytest.mark.parametrize("rule", [Identity(), PriorCorrection(weights=[0.5, 1.0, 2.0]),
                                  Temperature(temperature=1.7, floor=1e-4), OrdinalThresholds(thresholds=[0.4, 1.6])])
def test_rules_round_trip_through_json(rule):
    probs = softmax(np.random.default_rng(10).normal(size=(20, 3)))
    text = rule.to_json()
    assert json.loads(text)["rule"] == rule.name and RULES[rule.name] is type(rule)
    for loader in (Rule.from_json, type(rule).from_json):
        restored = loader(text)
        assert type(restored) is type(rule) and restored.describe() == rule.describe()
        assert np.allclose(restored.apply(probs), rule.apply(probs))


def test_from_json_refuses_another_rule():
    with pytest.raises(CompError):
        Temperature.from_json(PriorCorrection(weights=[1.0, 1.0]).to_json())
    with pytest.raises(CompError):
        Rule.from_json('{"rule": "magic"}')


@pytest.mark.parametrize("rule_cls", [PriorCorrection, OrdinalThresholds])
def test_an_unfitted_rule_says_so(rule_cls):
    with pytest.raises(CompError, match="not fitted"):
        rule_cls().apply(np.full((2, 3), 1 / 3))
