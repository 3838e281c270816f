"""Decision rules: how out-of-fold probabilities become the submission, fitted honestly.

A rule learnt on the same rows it is scored on always looks better than it is, so every rule is
judged by cross-fitting (fit on the other folds, apply to the held-out fold) and kept only when a
paired bootstrap over rows says the held-out gain is real (`choose_rule`).

Every rule's `apply(probs)` returns an [n, C] array whose argmax is the decision:
  Identity          the probabilities unchanged;
  PriorCorrection   probabilities times per-class weights, rows renormalised (not calibrated);
  Temperature       calibrated probabilities (softmax of log p / T, floored, renormalised);
  OrdinalThresholds one-hot rows of the decided class (a decision, not a probability);
  LabelThresholds   multi-label: each label's probability moved so that its fitted threshold
                    lands on 0.5, where multi-label metrics cut (order kept within a label).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

from comp.core.metrics import MULTILABEL_THRESHOLD, Metric, get_metric, metric_for, score
from comp.core.errors import CompError

PRIOR_GRID = np.geomspace(1 / 16, 16, 41)  # per-class weights tried; 1 is on the grid
MAX_SWEEPS = 6
TEMPERATURE_LOG_BOUNDS = (-4.0, 4.0)  # T between e^-4 and e^4
FLOOR_GRID = (0.0, 1e-6, 1e-4, 1e-3, 1e-2)
THRESHOLD_STEPS = 41  # candidate positions between a threshold's neighbours
LABEL_THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)  # per-label thresholds tried; 0.5 is on it
GAIN_CONFIDENCE = 0.95


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(1, keepdims=True))
    return shifted / shifted.sum(1, keepdims=True)


def gain(metric: str | Metric, new: float, old: float) -> float:
    """How much better `new` is than `old`, positive when better whatever the metric's direction."""
    return new - old if get_metric(metric).greater_is_better else old - new


class Rule:
    """A decision rule: fit on labelled probabilities, apply to any probabilities."""
    name = "rule"

    def fit(self, probs: np.ndarray, labels: np.ndarray, metric: str | Metric) -> "Rule":
        return self

    def apply(self, probs: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def params(self) -> dict:
        return {}

    def fitted(self, value):
        """`value`, or a clear error where the rule is used before `fit` set it."""
        if value is None:
            raise CompError(f"the {self.name} rule is not fitted: call fit(probs, labels, metric) first")
        return value

    def to_json(self) -> str:
        return json.dumps({"rule": self.name, **self.params()})

    @classmethod
    def from_json(cls, text: str) -> "Rule":
        """The rule a `to_json` text describes (called on `Rule` or on the class itself)."""
        data = json.loads(text)
        rule_cls = RULES.get(data.pop("rule", None))
        if rule_cls is None or (cls is not Rule and rule_cls is not cls):
            raise CompError(f"not a saved {cls.name if cls is not Rule else 'decision'} rule: {text[:80]}")
        return rule_cls(**data)


class Identity(Rule):
    """Plain argmax of the probabilities as they are: the rule every other must beat."""
    name = "identity"

    def apply(self, probs):
        return np.asarray(probs, dtype=float)

    def describe(self):
        return "identity: the probabilities as predicted (argmax decides)"


def coordinate_search(start: np.ndarray, grid, value, metric: str) -> np.ndarray:
    """Coordinate descent on a grid: each entry in turn tried at every grid value and kept where
    `value` gains under the metric's direction; sweeps until one gains nothing (at most MAX_SWEEPS)."""
    point, best = start, value(start)
    for _ in range(MAX_SWEEPS):
        improved = False
        for index in range(len(point)):
            for position in grid:
                candidate = point.copy()
                candidate[index] = position
                candidate_value = value(candidate)
                if gain(metric, candidate_value, best) > 1e-12:
                    best, point, improved = candidate_value, candidate, True
        if not improved:
            break
    return point


class PriorCorrection(Rule):
    """Per-class weights multiplied into the probabilities before the argmax.

    Models trained on imbalanced data under-predict rare classes; a macro-F1 or balanced metric
    rewards predicting them more often. Weights are fitted by coordinate ascent over a log grid.
    """
    name = "prior_correction"

    def __init__(self, weights=None):
        self.weights = None if weights is None else np.asarray(weights, dtype=float)

    def apply(self, probs):
        weighted = np.asarray(probs, dtype=float) * self.fitted(self.weights)
        return weighted / weighted.sum(1, keepdims=True)

    def fit(self, probs, labels, metric):
        log_probs = np.log(np.clip(probs, 1e-300, None))
        log_weights = np.zeros(probs.shape[1])

        def value(candidate):
            return score(metric, labels, softmax(log_probs + candidate))

        log_weights = coordinate_search(log_weights, np.log(PRIOR_GRID), value, metric)
        self.weights = np.exp(log_weights - log_weights.mean())
        return self

    def describe(self):
        return "prior correction: class weights " + ", ".join(f"{w:.3g}" for w in self.fitted(self.weights))

    def params(self):
        return {"weights": self.fitted(self.weights).tolist()}


class Temperature(Rule):
    """Temperature scaling, softmax(log p / T), then a floor under every probability.

    Networks are overconfident; one temperature fitted to minimise log loss fixes most of it,
    and the floor caps what a confidently wrong row can cost.
    """
    name = "temperature"

    def __init__(self, temperature: float = 1.0, floor: float = 0.0):
        self.temperature, self.floor = float(temperature), float(floor)

    @staticmethod
    def scaled(probs, temperature, floor):
        out = np.maximum(softmax(np.log(np.clip(probs, 1e-300, None)) / temperature), floor)
        return out / out.sum(1, keepdims=True)

    def apply(self, probs):
        return self.scaled(np.asarray(probs, dtype=float), self.temperature, self.floor)

    def fit(self, probs, labels, metric):
        """Minimises log loss whatever the metric: calibration is what a temperature is for."""
        result = minimize_scalar(lambda log_t: score("log_loss", labels, self.scaled(probs, np.exp(log_t), 0.0)),
                                 bounds=TEMPERATURE_LOG_BOUNDS, method="bounded")
        self.temperature = float(np.exp(result.x))
        self.floor = min(FLOOR_GRID, key=lambda floor: score(
            "log_loss", labels, self.scaled(probs, self.temperature, floor)))
        return self

    def describe(self):
        return f"temperature: T = {self.temperature:.3g}, floor {self.floor:g}"

    def params(self):
        return {"temperature": self.temperature, "floor": self.floor}


class OrdinalThresholds(Rule):
    """The expected class value sum_k k*p_k cut at fitted thresholds, for ordinal metrics (qwk).

    The argmax ignores that predicting 3 for a true 4 is a smaller mistake than predicting 0;
    the expected value uses the whole distribution, and the cuts are tuned for the metric.
    """
    name = "ordinal_thresholds"

    def __init__(self, thresholds=None):
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=float)

    @staticmethod
    def expected_value(probs):
        return np.asarray(probs, dtype=float) @ np.arange(probs.shape[1])

    def decide(self, expected):
        return np.searchsorted(self.fitted(self.thresholds), expected, side="right")

    def apply(self, probs):
        return np.eye(probs.shape[1])[self.decide(self.expected_value(probs))]

    def fit(self, probs, labels, metric):
        num_classes = probs.shape[1]
        expected = self.expected_value(probs)
        self.thresholds = np.arange(num_classes - 1) + 0.5
        onehot = np.eye(num_classes)

        def value(thresholds):
            return score(metric, labels, onehot[np.searchsorted(thresholds, expected, side="right")])

        best = value(self.thresholds)
        for _ in range(MAX_SWEEPS):
            improved = False
            for i in range(num_classes - 1):
                low = self.thresholds[i - 1] if i > 0 else -0.5
                high = self.thresholds[i + 1] if i < num_classes - 2 else num_classes - 0.5
                for position in np.linspace(low, high, THRESHOLD_STEPS)[1:-1]:
                    candidate = self.thresholds.copy()
                    candidate[i] = position
                    candidate_value = value(candidate)
                    if gain(metric, candidate_value, best) > 1e-12:
                        best, self.thresholds, improved = candidate_value, candidate, True
            if not improved:
                break
        return self

    def describe(self):
        return "ordinal thresholds on the expected class: " + ", ".join(
            f"{t:.3g}" for t in self.fitted(self.thresholds))

    def params(self):
        return {"thresholds": self.fitted(self.thresholds).tolist()}


class LabelThresholds(Rule):
    """Multi-label: a threshold per label, fitted by coordinate ascent over a grid for the metric.

    A net trained with binary cross-entropy is calibrated for each label alone, and 0.5 is the
    best cut for none of the F1s: a rare label is best predicted above a lower probability, and
    F1 rewards recall more than accuracy does. `apply` keeps probabilities: each label's are
    mapped piecewise-linearly so that its threshold lands on 0.5 (0 and 1 stay), where the
    multi-label metrics and the submission cut.
    """
    name = "label_thresholds"

    def __init__(self, thresholds=None):
        self.thresholds = None if thresholds is None else np.asarray(thresholds, dtype=float)

    @staticmethod
    def moved(probs, thresholds):
        probs = np.asarray(probs, dtype=float)
        below = probs * (MULTILABEL_THRESHOLD / thresholds)
        above = 1 - (1 - probs) * ((1 - MULTILABEL_THRESHOLD) / (1 - thresholds))
        return np.where(probs < thresholds, below, above)

    def apply(self, probs):
        return self.moved(probs, self.fitted(self.thresholds))

    def fit(self, probs, labels, metric):
        probs = np.asarray(probs, dtype=float)
        thresholds = np.full(probs.shape[1], MULTILABEL_THRESHOLD)

        def value(candidate):
            return score(metric, labels, (probs >= candidate).astype(float))

        self.thresholds = coordinate_search(thresholds, LABEL_THRESHOLD_GRID, value, metric)
        return self

    def describe(self):
        return "per-label thresholds " + ", ".join(f"{t:.3g}" for t in self.fitted(self.thresholds))

    def params(self):
        return {"thresholds": self.fitted(self.thresholds).tolist()}


RULES: dict[str, type[Rule]] = {cls.name: cls for cls in (Identity, PriorCorrection, Temperature, OrdinalThresholds,
                                                          LabelThresholds)}


def rules_for(metric: str | Metric, multilabel: bool = False) -> list[type[Rule]]:
    """The rules worth trying for a metric, Identity first (the baseline every rule must beat).
    `multilabel`: the truth is a multi-hot matrix; thresholds per label for every metric that cuts."""
    if multilabel:
        chosen = metric_for(metric, np.zeros((1, 1)))
        return [Identity] if chosen.needs == "multilabel_probs" else [Identity, LabelThresholds]
    chosen = get_metric(metric)
    if chosen.name == "qwk":
        return [Identity, OrdinalThresholds]
    if chosen.name == "log_loss":
        return [Identity, Temperature]
    if chosen.needs in ("labels", "topk"):
        return [Identity, PriorCorrection]
    return [Identity]  # AUC reads the ranking per class


def cross_fit(rule_cls: type[Rule], probs: np.ndarray, labels: np.ndarray, folds: np.ndarray,
              metric: str | Metric) -> np.ndarray:
    """Held-out applied probabilities: each fold's rows by a rule fitted on the other folds only.

    `folds` holds one fold id per row; every row is held out once, by its own fold."""
    probs, labels, folds = np.asarray(probs, dtype=float), np.asarray(labels), np.asarray(folds)
    fold_ids = np.unique(folds)
    if len(fold_ids) < 2:
        raise CompError(f"cross-fitting a decision rule needs at least two folds; got {fold_ids.tolist()}")
    held_out = np.empty_like(probs)
    for fold in fold_ids:
        inside = folds == fold
        rule = rule_cls().fit(probs[~inside], labels[~inside], metric)
        held_out[inside] = rule.apply(probs[inside])
    return held_out


def bootstrap_gains(metric, labels, plain, adjusted, resamples: int, seed: int) -> np.ndarray:
    """Gain of `adjusted` over `plain` on the same resampled rows (paired), one per resample."""
    rng = np.random.default_rng(seed)
    gains = np.empty(resamples)
    for i in range(resamples):
        rows = rng.integers(0, len(labels), len(labels))
        gains[i] = gain(metric, score(metric, labels[rows], adjusted[rows]), score(metric, labels[rows], plain[rows]))
    return gains


@dataclass
class Choice:
    """The rule for the submission and the evidence for it.

    `candidate` is the best cross-fitted rule tried; `crossfit_score` and `gain_interval` (the
    95% paired-bootstrap interval of its gain, positive = better) are about it. `rule_name`
    and `fitted_rule` (fitted on all rows, for the test set) are the candidate when `kept`,
    else Identity.
    """
    rule_name: str
    fitted_rule: Rule
    plain_score: float
    crossfit_score: float
    gain_interval: tuple[float, float]
    kept: bool
    candidate: str
    gain_share: float  # the share of resamples in which the candidate gained


def choose_rule(probs: np.ndarray, labels: np.ndarray, folds: np.ndarray, metric: str | Metric,
                resamples: int = 1000, seed: int = 0) -> Choice:
    """The rule kept for the submission: the best cross-fitted candidate, kept only when its
    paired-bootstrap gain over plain probabilities has a positive mean AND is positive in at
    least 95% of resamples (a one-sided 95% test); otherwise Identity, the honest default."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels)
    plain_score = score(metric, labels, probs)
    best = ("identity", plain_score, None)
    for rule_cls in rules_for(metric, labels.ndim == 2)[1:]:
        held_out = cross_fit(rule_cls, probs, labels, folds, metric)
        held_out_score = score(metric, labels, held_out)
        if best[2] is None or gain(metric, held_out_score, best[1]) > 0:
            best = (rule_cls.name, held_out_score, held_out)
    candidate, crossfit_score, held_out = best
    if held_out is None:
        return Choice("identity", Identity(), plain_score, plain_score, (0.0, 0.0), False, "identity", 0.0)
    gains = bootstrap_gains(metric, labels, probs, held_out, resamples, seed)
    share = float(np.mean(gains > 0))
    kept = bool(gains.mean() > 0 and share >= GAIN_CONFIDENCE)
    fitted = RULES[candidate]().fit(probs, labels, metric) if kept else Identity()
    interval = (float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5)))
    return Choice(fitted.name, fitted, plain_score, crossfit_score, interval, kept, candidate, share)
