"""Error bars for out-of-fold accuracies: the percentile bootstrap over OOF rows.

An OOF accuracy is measured on one draw of rows; another draw from the same source would score
a little differently. Resampling the rows with replacement many times shows how much: the middle
95% of the resampled accuracies is the interval. Every prediction compared (runs, the ensemble) is
resampled on the SAME row indices, so the difference of two of them on one resample is a paired
difference: the rows both get wrong or both get right cancel, and the interval of a difference is
much narrower than two overlapping intervals suggest. A gain is "real" when that interval
excludes 0.

Resampling is done on correctness patterns: a row is reduced to which predictions got it right
(a few bits), so a resample needs one gather and one bincount, whatever the number of runs. The
result is exactly that of resampling rows (same indices, same counts), just cheaper.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

RESAMPLES = 2000  # enough that a 95% interval's ends move by about 0.0001 between seeds at 50,000 rows
SEED = 0  # fixed, so a rerun (and every command on the same rows) prints the same intervals
CONFIDENCE = 0.95
# Resamples drawn at once: bounds the index block to CHUNK x rows (50 x 50,000 int32 = 10 MB).
# Fixed, because the random stream is consumed in these blocks: the same seed gives the same
# resamples only when the blocks are the same.
CHUNK = 50


class Interval(NamedTuple):
    """An estimate and its bootstrap interval (NaN when there is nothing to resample)."""

    estimate: float
    low: float
    high: float

    @property
    def real(self) -> bool:
        """For a difference: the interval excludes 0, so the gain (or loss) is not chance."""
        return bool(self.low > 0 or self.high < 0)

    @property
    def known(self) -> bool:
        return bool(np.isfinite(self.low) and np.isfinite(self.high))


UNKNOWN = Interval(float("nan"), float("nan"), float("nan"))


def resampled_accuracies(correct: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """(predictions, rows) booleans -> (predictions, resamples) accuracies, all on the same resampled rows.

    The row indices depend only on the row count and the seed, so one prediction's resampled
    accuracies are the same whichever other predictions it is resampled with.
    """
    correct = np.atleast_2d(np.asarray(correct, dtype=bool))
    count, rows = correct.shape
    if rows == 0:
        return np.full((count, resamples), np.nan)
    patterns, pattern_of_row = np.unique(correct.T, axis=0, return_inverse=True)  # (P, count), (rows,)
    pattern_of_row = pattern_of_row.reshape(-1).astype(np.int64)
    hits_per_pattern = patterns.astype(np.float64)  # exact: sums of counts stay far below 2**53
    rng = np.random.default_rng(seed)
    hits = np.empty((resamples, count))
    for start in range(0, resamples, CHUNK):
        block = min(CHUNK, resamples - start)
        drawn = pattern_of_row[rng.integers(0, rows, size=(block, rows), dtype=np.int32)]
        drawn += np.arange(block)[:, None] * len(patterns)  # one bincount for the whole block
        counts = np.bincount(drawn.ravel(), minlength=block * len(patterns)).reshape(block, len(patterns))
        hits[start:start + block] = counts @ hits_per_pattern
    return (hits / rows).T


def percentile_interval(estimate: float, samples: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    if not np.isfinite(samples).all():
        return Interval(float(estimate), float("nan"), float("nan"))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high))


class ErrorBars:
    """Accuracies of several predictions on the same OOF rows, each with its interval, and the
    paired interval of any difference between two of them."""

    def __init__(self, correct: np.ndarray, resamples: int = RESAMPLES, seed: int = SEED):
        correct = np.atleast_2d(np.asarray(correct, dtype=bool))
        self.rows = correct.shape[1]
        self.accuracies = correct.mean(axis=1) if self.rows else np.full(len(correct), np.nan)
        self.samples = resampled_accuracies(correct, resamples, seed)

    def accuracy(self, i: int) -> Interval:
        return percentile_interval(self.accuracies[i], self.samples[i])

    def difference(self, i: int, j: int) -> Interval:
        """Prediction i minus prediction j, resample by resample (paired)."""
        return percentile_interval(self.accuracies[i] - self.accuracies[j], self.samples[i] - self.samples[j])


def correct_rows(probs: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """(predictions, rows): whether each prediction's top class is the label. Multi-label (labels a
    0/1 matrix): (predictions, rows x labels), whether each cell is decided right at 0.5."""
    if np.ndim(labels) == 2:
        return np.stack([((p >= 0.5) == labels.astype(bool)).ravel() for p in probs])
    return np.stack([p.argmax(1) == labels for p in probs])


# -- how intervals read in tables and messages ----------------------------------------------


def format_interval(interval: Interval) -> str:
    """0.917-0.922 (three decimals: the leaderboard's)."""
    return f"{interval.low:.3f}-{interval.high:.3f}" if interval.known else "-"


def format_difference(interval: Interval, compact: bool = False) -> str:
    """-0.022..-0.017, real: the paired interval of a difference and whether it excludes 0
    (compact, for 80-column tables: -.022..-.017 real, and nothing after an interval holding 0)."""
    if not interval.known:
        return "-"
    low, high = f"{interval.low:+.3f}", f"{interval.high:+.3f}"
    if compact:
        low, high = (text.replace("0.", ".", 1) for text in (low, high))
        return f"{low}..{high}{' real' if interval.real else ''}"
    return f"{low}..{high}, {'real' if interval.real else 'could be chance'}"


DIFFERENCE_LEGEND = ("paired 95% bootstrap interval of the accuracy difference on the same OOF rows; "
                     "real: it excludes 0")


# -- intervals of any metric (comp.core.metrics) ------------------------------------------------

METRIC_RESAMPLES = 1000  # each resample rescored by the metric itself: fewer than the accuracy's pattern trick
METRIC_MIN_RESAMPLES = 200
# Cells (rows x predictions, x classes for one-vs-rest AUC's ranking) scored in all: on large sets the
# resample count shrinks towards METRIC_MIN_RESAMPLES so an ensemble's error bars stay seconds, not minutes.
METRIC_WORK_CELLS = 1e8


def metric_resamples(metric, rows: int, predictions: int, classes: int) -> int:
    """How many resamples MetricBars draws: METRIC_RESAMPLES up to METRIC_WORK_CELLS of scoring, fewer above
    (never below METRIC_MIN_RESAMPLES); a function of the sizes only, so reruns print the same."""
    ranked = classes if metric.needs == "binary_prob" and classes > 2 else 1
    cells = max(1, rows * predictions * ranked)
    return int(min(METRIC_RESAMPLES, max(METRIC_MIN_RESAMPLES, METRIC_WORK_CELLS // cells)))


class MetricBars:
    """The competition's metric of several predictions on the same OOF rows, each with its bootstrap
    interval, and the paired interval of a gain between two (positive = better, whatever the
    metric's direction). A resample on which the metric is undefined (roc_auc with one class drawn)
    leaves the intervals unknown."""

    def __init__(self, metric: str, labels: np.ndarray, probs: list[np.ndarray], resamples: int | None = None,
                 seed: int = SEED):
        from comp.core.errors import CompError
        from comp.core.metrics import LOG_LOSS_EPS, metric_for, prepare, score

        labels = np.asarray(labels)
        self.metric = metric_for(metric, labels)
        rows = len(labels)
        self.estimates = np.array([score(self.metric, labels, p) for p in probs])
        classes = probs[0].shape[1]
        if resamples is None:
            resamples = metric_resamples(self.metric, rows, len(probs), classes)
        # What the metric reads, prepared once (argmax labels, top-k lists, ...): a resample then
        # gathers those rows only. Log-loss is a mean over rows: its per-row losses are gathered.
        if self.metric.name == "log_loss":
            per_row = []
            for p in probs:
                clipped = np.clip(np.asarray(p, dtype=float), LOG_LOSS_EPS, 1 - LOG_LOSS_EPS)
                clipped = clipped / clipped.sum(1, keepdims=True)
                per_row.append(-np.log(clipped[np.arange(rows), labels]))
            def measure(i, drawn):
                return float(per_row[i][drawn].mean())
        else:
            prepared = [prepare(self.metric.needs, np.asarray(p, dtype=float)) for p in probs]
            def measure(i, drawn):
                return self.metric.fn(labels[drawn], prepared[i][drawn], classes)
        self.samples = np.full((len(probs), resamples), np.nan)
        rng = np.random.default_rng(seed)
        for r in range(resamples):
            drawn = rng.integers(0, rows, rows)
            for i in range(len(probs)):
                try:
                    self.samples[i, r] = measure(i, drawn)
                except CompError:
                    break

    def interval(self, i: int) -> Interval:
        return percentile_interval(self.estimates[i], self.samples[i])

    def gain(self, i: int, j: int) -> Interval:
        """How much better prediction i is than j, resample by resample (paired)."""
        sign = 1 if self.metric.greater_is_better else -1
        return percentile_interval(sign * (self.estimates[i] - self.estimates[j]),
                                   sign * (self.samples[i] - self.samples[j]))


IMBALANCED_RATIO = 3.0  # largest class / smallest from here up: the imbalance options are worth trying


def imbalance_ratio(labels: np.ndarray, num_classes: int) -> float:
    """Rows of the largest class over rows of the smallest (1.0: balanced; a class without rows counts as 1).
    Multi-label (labels a 0/1 matrix): rows carrying the commonest label over the rarest's."""
    counts = labels.sum(0) if np.ndim(labels) == 2 else np.bincount(labels, minlength=num_classes)
    return float(counts.max() / max(counts.min(), 1))
