"""comp auto: the plan from measured speeds (fake timings here), its promise, shrinking and resuming."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from comp.stages import auto
from comp.stages.auto import (Clock, Plan, Probe, fold_deadlines, full_fit_deadline, full_fits_that_fit, make_plan,
                              parse_duration)
from comp.cli import main
from comp.core.errors import CompError
from comp.core.fileio import read_json

from .conftest import make_competition

POLICIES = [("flip-shift", 10), ("flip", 2), ("none", 1)]


def cifar_like_probes(speed: float = 1.0) -> dict[float, Probe]:
    """Speeds of the order measured for `fast` on this 2-core CPU: cost grows with the square of width."""
    return {w: Probe(w, speed * 500 / w ** 2, 8.0, speed * 2500 / w ** 2, 3.0) for w in (1.0, 0.75, 0.5, 0.25)}


@pytest.mark.parametrize("text,seconds", [("90s", 90), ("10m", 600), ("1h", 3600), ("1h30m", 5400), ("45", 45),
                                          (120, 120)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "-5m", "0", "10x"])
def test_bad_durations_say_how_to_write_one(text):
    with pytest.raises(CompError, match="--time"):
        parse_duration(text)


@pytest.mark.parametrize("budget", [300, 600, 1800, 3600, 4 * 3600])
def test_a_plan_ends_within_the_budget_by_its_estimate(budget):
    plan = make_plan(budget, 30.0, 50_000, 10_000, cifar_like_probes(), POLICIES)
    assert plan.total_seconds <= auto.SAFETY * budget
    assert plan.epochs <= auto.MAX_EPOCHS and plan.full_fits <= auto.MAX_FULL_FITS


def test_more_time_buys_a_wider_net_then_more_folds_and_full_fits():
    plans = [make_plan(budget, 0.0, 50_000, 10_000, cifar_like_probes(), POLICIES)
             for budget in (900, 3600, 6 * 3600)]
    assert [p.width for p in plans] == sorted(p.width for p in plans)  # never narrower with more time
    short, hour, long = plans
    assert short.width < 1.0 and hour.width == 1.0
    assert long.folds == 5 and long.full_fits >= 1 and long.epochs >= hour.epochs
    # Every plan reaches the highest epoch floor it can: the widest net that gets 12 epochs wins.
    assert hour.epochs >= auto.EPOCH_FLOORS[0]


def test_the_folds_come_first_then_a_full_data_fit_once_they_have_enough_epochs():
    probes = {1.0: Probe(1.0, 360.0, 20.0, 700.0, 5.0)}  # airbench94 in bfloat16 on this 2-core CPU
    hour = make_plan(3600, 80.0, 50_000, 10_000, probes, POLICIES, fold_choices=(2,))
    assert hour.full_fits == 0 and auto.EPOCH_FLOORS[0] <= hour.epochs < auto.MAX_EPOCHS
    assert any("no full-data fit" in note for note in hour.notes)  # the plan table says why
    two = make_plan(2 * 3600, 80.0, 50_000, 10_000, probes, POLICIES, fold_choices=(2,))
    assert two.full_fits == 1 and auto.FULL_FIT_FROM_EPOCHS <= two.epochs < auto.MAX_EPOCHS
    assert any("full-data fit at the same" in note for note in two.notes)
    # The fit took time the folds alone would have had: without it they would train longer.
    folds_only = math.floor((auto.SAFETY * 2 * 3600 - 80 - auto.ENSEMBLE_SECONDS
                             - 2 * auto.fold_seconds(probes[1.0], 25_000, 35_000, 0, 2)) / (50_000 / 360))
    assert two.epochs < min(folds_only, auto.MAX_EPOCHS)
    assert two.total_seconds <= auto.SAFETY * 2 * 3600
    assert two.total_seconds == pytest.approx(80 + 2 * two.fold_seconds + two.full_fit_seconds + auto.ENSEMBLE_SECONDS)


def test_a_full_data_fit_has_a_deadline_inside_the_budget():
    plan = Plan(1.0, 3, 12, "flip", 1, fold_seconds=600, full_fit_seconds=900, total_seconds=3000,
                budget_seconds=3600)
    clock = SimpleNamespace(budget=3600.0, left=lambda: 1500.0)
    deadline = full_fit_deadline(1000.0, clock, plan, seed=0)
    assert list(deadline) == ["3"]  # train_fold numbers full-data fit 0 after folds 0-2
    assert deadline["3"] + auto.PREDICT_SHARE * 900 + auto.ENSEMBLE_SECONDS <= 1000.0 + 1500.0


def test_expensive_predictions_cut_the_tta_views():
    cheap = make_plan(3600, 0.0, 50_000, 10_000, cifar_like_probes(), POLICIES)
    slow_predict = {w: Probe(w, p.train_images_per_second, 8.0, p.train_images_per_second / 4, 3.0)
                    for w, p in cifar_like_probes().items()}
    costly = make_plan(3600, 0.0, 50_000, 10_000, slow_predict, POLICIES)
    assert cheap.tta == "flip-shift" and costly.tta in ("flip", "none")


def test_a_budget_too_short_is_refused_in_one_line():
    with pytest.raises(CompError, match="too short for this data"):
        make_plan(30, 0.0, 50_000, 10_000, cifar_like_probes(), POLICIES)


def test_the_existing_split_fixes_the_fold_count():
    plan = make_plan(3600, 0.0, 50_000, 10_000, cifar_like_probes(), POLICIES, fold_choices=(5,))
    assert plan.folds == 5


def test_when_only_two_folds_would_fit_one_fold_of_five_trains_on_more_rows():
    probes = {1.0: Probe(1.0, 305.0, 20.0, 550.0, 5.0)}  # airbench94 in bfloat16 on this 2-core CPU
    hour = make_plan(3600, 100.0, 50_000, 10_000, probes, POLICIES)
    assert (hour.folds, hour.run_folds, hour.trained_folds) == (auto.HOLDOUT_K, 1, 1)
    assert auto.EPOCH_FLOORS[0] <= hour.epochs and hour.total_seconds <= auto.SAFETY * 3600
    assert any("holdout of 10,000 rows" in note for note in hour.notes)
    assert hour.total_seconds == pytest.approx(100 + hour.fold_seconds + hour.full_fits * hour.full_fit_seconds
                                               + auto.ENSEMBLE_SECONDS)
    # Its one fold trains on 40,000 rows for about as long as two folds of 25,000 would: more epochs, not fewer.
    two = make_plan(3600, 100.0, 50_000, 10_000, probes, POLICIES, fold_choices=(2,))
    assert (two.folds, two.run_folds) == (2, 0) and hour.epochs >= two.epochs
    # A workdir already split five ways (comp train's default, or an earlier holdout) holds one out too.
    assert make_plan(3600, 100.0, 50_000, 10_000, probes, POLICIES, fold_choices=(5,)) == hour
    # Time enough for every fold of a split: that comes first (the estimate on every row).
    assert make_plan(6 * 3600, 100.0, 50_000, 10_000, probes, POLICIES).run_folds == 0
    # A fold of five under HOLDOUT_MIN_ROWS rows is too small an estimate: every fold trains.
    small = {1.0: Probe(1.0, 30.0, 20.0, 55.0, 5.0)}
    assert make_plan(3600, 100.0, 20_000, 2_000, small, POLICIES).run_folds == 0


def test_a_holdout_fold_keeps_twice_its_predictions_estimate_not_a_share_of_the_hour():
    plan = Plan(1.0, 5, 20, "flip", 0, fold_seconds=3000, full_fit_seconds=0, total_seconds=3100,
                budget_seconds=3600, run_folds=1, predict_seconds=70.0)
    clock = SimpleNamespace(budget=3600.0, left=lambda: 3500.0)
    deadlines = fold_deadlines(1000.0, clock, plan)
    left = clock.left() - (1 - auto.FOLDS_END_BY) * 3600 - auto.ENSEMBLE_SECONDS
    assert list(deadlines) == ["0"] and deadlines["0"] == pytest.approx(1000.0 + left - 140.0)


class FakeRun:
    def __init__(self, seconds):
        self.summary = {"seconds": seconds}


def test_full_fits_shrink_when_the_folds_ran_slower_than_planned():
    plan = Plan(1.0, 3, 12, "flip", 3, fold_seconds=600, full_fit_seconds=900, total_seconds=3000,
                budget_seconds=6000)
    on_time = Clock(6000, spent_before=2000, started=0)
    on_time.spent = lambda: 2000.0  # the folds took what was planned: 3 x 600 s (+ measuring)
    assert full_fits_that_fit(plan, FakeRun(1800), on_time) == 3
    late = Clock(6000, spent_before=0, started=0)
    late.spent = lambda: 4400.0  # the folds took twice as long: 1,400 s left before FOLDS_END_BY and the ensemble
    assert full_fits_that_fit(plan, FakeRun(1800), late) == 1  # 1.56 fits of 900 s
    # A fit of 1,800 s with 1,400 s left still runs (78% of its time: its deadline shrinks its schedule)...
    assert full_fits_that_fit(plan, FakeRun(3600), late) == 1
    very_late = Clock(6000, spent_before=0, started=0)
    very_late.spent = lambda: 5200.0  # ...not with 600 s left (a third of its time)
    assert full_fits_that_fit(plan, FakeRun(3600), very_late) == 0


def test_fold_deadlines_share_the_time_left_and_end_inside_the_budget():
    plan = Plan(1.0, 2, 12, "flip", 0, fold_seconds=600, full_fit_seconds=0, total_seconds=1200,
                budget_seconds=3600)
    clock = SimpleNamespace(budget=3600.0, left=lambda: 3000.0)  # a Clock 600 s into its hour
    now = 1000.0
    deadlines = fold_deadlines(now, clock, plan)
    left = clock.left() - (1 - auto.FOLDS_END_BY) * 3600 - auto.ENSEMBLE_SECONDS
    slot = left / 2
    assert list(deadlines) == ["0", "1"]
    assert deadlines["0"] == pytest.approx(now + (1 - auto.PREDICT_SHARE) * slot)
    assert deadlines["1"] == pytest.approx(now + (2 - auto.PREDICT_SHARE) * slot)
    assert deadlines["1"] + auto.PREDICT_SHARE * slot == pytest.approx(now + left)  # predictions fit before the end
    assert now + left + auto.ENSEMBLE_SECONDS <= now + clock.left()


@pytest.mark.slow
def test_auto_writes_a_submission_within_its_budget_and_a_rerun_continues_the_plan(tmp_path, capsys):
    data = make_competition(tmp_path / "d", num_classes=3, per_class=40, test_count=12)
    work = tmp_path / "w"
    args = ["auto", "--time", "3m", "--data", str(data), "--workdir", str(work)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "plan for 3.0m" in out and "achieved:" in out
    state = read_json(work / "folds" / "auto" / "plan-180s.json")
    assert state["spent_seconds"] <= 1.2 * 180  # a gross overrun only: the 105% promise is a benchmark, alone
    assert set(state["stages"]) >= {"data", "measure", "train folds", "ensemble"}
    csv = (work / "submissions" / "auto-3.0m.csv").read_text().splitlines()
    assert len(csv) == 13
    # The same command again: the plan and its finished folds are kept, nothing trains again.
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "continuing the plan" in out and "finished earlier" in out
    assert read_json(work / "folds" / "auto" / "plan-180s.json")["plan"] == state["plan"]
