"""comp.core.stats: bootstrap intervals of OOF accuracies and paired intervals of their differences."""

from __future__ import annotations

import numpy as np
import pytest

from comp.core.stats import CHUNK, ErrorBars, Interval, format_difference, format_interval, resampled_accuracies


def right_rows(rows: int, accuracy: float, seed: int = 0) -> np.ndarray:
    """A prediction's correctness: exactly round(accuracy * rows) rows right, in random places."""
    correct = np.zeros(rows, bool)
    correct[:round(accuracy * rows)] = True
    return np.random.default_rng(seed).permutation(correct)


def width(interval: Interval) -> float:
    return interval.high - interval.low


def test_resampling_is_resampling_rows_with_replacement():
    """The pattern shortcut gives exactly what drawing row indices and averaging gives."""
    correct = np.stack([right_rows(137, 0.7, 1), right_rows(137, 0.6, 2), right_rows(137, 0.9, 3)])
    resamples = 2 * CHUNK + 7  # a partial last block too
    fast = resampled_accuracies(correct, resamples, seed=5)
    rng = np.random.default_rng(5)
    naive = []
    for start in range(0, resamples, CHUNK):
        rows = rng.integers(0, 137, size=(min(CHUNK, resamples - start), 137), dtype=np.int32)
        naive.append(correct[:, rows].mean(axis=-1))
    assert fast.shape == (3, resamples)
    assert np.allclose(fast, np.concatenate(naive, axis=1), rtol=0, atol=1e-12)


def test_interval_contains_the_estimate_and_has_the_binomial_width():
    for rows, accuracy in ((100, 0.8), (10_000, 0.8), (1_000, 0.97), (500, 0.5)):
        interval = ErrorBars(right_rows(rows, accuracy)).accuracy(0)
        assert interval.estimate == pytest.approx(accuracy)
        assert interval.low < interval.estimate < interval.high
        # the normal approximation's 95% width: 2 * 1.96 standard errors of a proportion
        expected = 2 * 1.96 * np.sqrt(accuracy * (1 - accuracy) / rows)
        assert width(interval) == pytest.approx(expected, rel=0.15)


def test_interval_shrinks_with_more_rows():
    few = ErrorBars(right_rows(100, 0.8)).accuracy(0)
    many = ErrorBars(right_rows(10_000, 0.8)).accuracy(0)
    assert width(many) < width(few) / 5  # 100 times the rows: about a tenth of the width


def test_a_difference_of_identical_predictions_is_exactly_zero():
    correct = right_rows(1_000, 0.75)
    bars = ErrorBars(np.stack([correct, correct]))
    assert tuple(bars.difference(1, 0)) == (0.0, 0.0, 0.0)
    assert not bars.difference(1, 0).real
    assert bars.accuracy(0) == bars.accuracy(1)


def test_a_clearly_better_run_is_real_and_a_coin_flip_is_not():
    rows = 2_000
    base = right_rows(rows, 0.80)
    better = base.copy()
    better[np.flatnonzero(~base)[:40]] = True  # 40 more rows right, none lost: +0.02
    bars = ErrorBars(np.stack([base, better]))
    gain = bars.difference(1, 0)
    assert gain.estimate == pytest.approx(0.02) and gain.low > 0 and gain.real
    assert bars.difference(0, 1).high < 0 and bars.difference(0, 1).real  # the loss is real as well
    # Paired: the two runs' own intervals overlap, yet the difference is certain.
    assert bars.accuracy(0).high > bars.accuracy(1).low
    # A coin flip: a second run that trades 60 rows won for 60 rows lost, at random places.
    coin = base.copy()
    rng = np.random.default_rng(1)
    coin[rng.choice(np.flatnonzero(base), 60, replace=False)] = False
    coin[rng.choice(np.flatnonzero(~base), 60, replace=False)] = True
    flip = ErrorBars(np.stack([base, coin])).difference(1, 0)
    assert flip.estimate == 0 and flip.low < 0 < flip.high and not flip.real


def test_the_same_seed_gives_the_same_numbers_whatever_is_resampled_beside():
    a, b = right_rows(3_000, 0.9, 1), right_rows(3_000, 0.7, 2)
    first, again = ErrorBars(np.stack([a, b])), ErrorBars(np.stack([a, b]))
    assert np.array_equal(first.samples, again.samples)
    assert first.accuracy(1) == again.accuracy(1) and first.difference(0, 1) == again.difference(0, 1)
    alone = ErrorBars(a)  # a's resamples do not depend on the runs it is compared with
    assert np.array_equal(alone.samples[0], first.samples[0])
    assert not np.array_equal(ErrorBars(a, seed=1).samples, alone.samples)  # the seed is what fixes them


def test_nothing_to_resample_gives_unknown_intervals():
    interval = ErrorBars(np.zeros((2, 0), bool)).accuracy(0)
    assert not interval.known and format_interval(interval) == "-" and format_difference(interval) == "-"


def test_formats():
    assert format_interval(Interval(0.92, 0.9176, 0.9224)) == "0.918-0.922"
    assert format_difference(Interval(-0.012, -0.0161, -0.0079)) == "-0.016..-0.008, real"
    assert format_difference(Interval(-0.012, -0.0161, -0.0079), compact=True) == "-.016..-.008 real"
    assert format_difference(Interval(0.001, -0.0021, 0.0039)) == "-0.002..+0.004, could be chance"
    assert format_difference(Interval(0.001, -0.0021, 0.0039), compact=True) == "-.002..+.004"
