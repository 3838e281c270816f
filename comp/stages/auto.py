"""`comp auto --time 60m`: the best leaderboard CSV this machine can make in a time budget.

    ws.auto("60m")            measure, plan, train, ensemble; -> Submission
    comp auto --time 10m      the same from the shell

1. Measure (`probe`): a short training run of each candidate width on a slice of the real data,
   timing its compile, its steady epochs (images/s) and its test-time predictions. The numbers are
   cached per machine, backend, image size and config (folds/auto/probes.json), so a rerun skips it.
2. Plan (`make_plan`, a pure function of the budget, the data's size and the measured speeds):
   the widest net that still gets at least `EPOCH_FLOORS[0]` epochs on as many folds as allow it,
   then lower floors; when only two folds would fit, one fold of five (a holdout: its model sees 80%
   of the rows, not 50%) if that fold holds enough rows for the estimate; the TTA policy cut back
   when predictions would take too large a share. The
   folds come first (the out-of-fold estimate, the blend weights); once they can have
   FULL_FIT_FROM_EPOCHS epochs with a full-data fit beside them, the fit gets its share (better
   test predictions), and past MAX_EPOCHS the time left buys more fits. The plan table says why.
   Everything must end by SAFETY of the budget by the estimate: the rest absorbs a slow step.
3. Run it, watching the clock: each fold trains to a deadline, its share of the time left (a fold
   whose next epoch would end past it stops after this one, its schedule shrunk so it still ends
   annealed, said: measured speeds can be optimistic), and before each full-data fit the plan is
   re-estimated from the pace the folds actually had; the fits that would not end in time are
   dropped (said, never silent), and the one that runs has a deadline of its own.
4. Ensemble into submissions/ as `comp ensemble` does.

The plan and the time spent are kept in folds/auto/plan-<budget>.json: interrupted, the same command
(same budget) continues the plan with the time that is left, and finished folds are not redone.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

from comp.core.console import console, info, warn
from comp.core.errors import CompError
from comp.core.fileio import read_json, write_json
from comp.data.sources import workdir_dataset
from comp.stages.ensemble import ensemble
from comp.stages.train import fit_batch, train_config

MODEL = "airbench94"  # fast's net with airbench's exact recipe: +1.2 points over `fast` at equal CPU epochs, 6 TTA views not 10 (bench/RESULTS.md)
GPU_PRESET = "gpu"  # on a GPU: the machine preset (fast-large, JAX, bf16), the best recipe measured on an H200
WIDTHS = (1.0, 0.75, 0.5, 0.25)  # candidate channel widths, widest first
FOLD_CHOICES = (5, 3, 2)  # K-fold splits tried, most rows per fold first
HOLDOUT_K = 5  # when only 2 folds would fit, one fold of this split instead: its model trains on 80% of the rows,
# 2 folds' on 50% (CIFAR-10: 5 folds of `fast` at 16 epochs 0.900 OOF on an H200, 2 folds of airbench94 at 15
# on this CPU 0.883; the 60-minute runs in bench/RESULTS.md)
HOLDOUT_MIN_ROWS = 5000  # ...only when that fold holds this many rows: its accuracy's 95% interval is then
# within about 0.8 points (at 90%), tight enough for the estimate and the blend; smaller data trains every fold
EPOCH_FLOORS = (12, 8, 4, 2)  # a plan takes the widest net that reaches the first floor it can
MAX_EPOCHS = 24  # past fast's own 16, epochs buy little (24 vs 16: +0.4 points, bench/RESULTS.md)
FULL_FIT_FROM_EPOCHS = 12  # once the folds can have this many epochs with a full-data fit beside them, the fit
# gets the time: its test predictions come from K/(K-1) times the rows, worth more than more fold epochs
# (bench/RESULTS.md, "full fit or fold epochs"); below it the folds take everything (the honest estimate first)
MAX_FULL_FITS = 3  # full-data fits beyond the folds; each later one adds less to the submission
FULL_FIT_MIN_SHARE = 0.75  # a planned full-data fit still runs when this share of its time is left: its deadline
# shrinks its schedule to fit (annealed all the same), better than leaving the time unused after slow folds
SAFETY = 0.92  # plans end by this share of the budget by their estimate (the deadlines guard the rest: a slow
# fold anneals early; 0.85 left 23% of the hour unused, the probe being pessimistic, bench/RESULTS.md)
FOLDS_END_BY = 0.97  # whatever the estimate, fold training stops in time to end by this share (trainer deadlines)
ENSEMBLE_SECONDS = 20.0  # loading the runs, blending, writing and checking the CSV (measured: seconds)
PREDICT_SHARE = 0.15  # TTA may take at most this share of a fold's time, else fewer views
PROBE_ROWS = 2048  # rows a probe trains on (fewer when the data has fewer)
SHORT_BUDGET_SECONDS = 1200  # under this, only the widest and half width are measured (a probe costs ~10-30 s)
PROBE_EPOCHS = 2  # the first includes the compile; the second is a steady epoch


# -- the budget --------------------------------------------------------------------------------


def parse_duration(text) -> float:
    """'90s', '10m', '1h', '1h30m' or a number of seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"\s*(?:(\d+(?:\.\d+)?)h)?\s*(?:(\d+(?:\.\d+)?)m)?\s*(?:(\d+(?:\.\d+)?)s?)?\s*",
                             str(text).lower())
        if not parts or not any(parts.groups()):
            raise CompError(f"--time {text}: give a duration like 90s, 10m, 1h or 1h30m")
        hours, minutes, secs = (float(g) if g else 0.0 for g in parts.groups())
        seconds = hours * 3600 + minutes * 60 + secs
    if not seconds > 0:
        raise CompError(f"--time {text}: the budget must be more than zero")
    return seconds


def describe_seconds(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{seconds:.0f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.2f}h"


# -- measuring -----------------------------------------------------------------------------------


@dataclass
class Probe:
    """What one candidate config costs on this machine."""

    width: float
    train_images_per_second: float  # steady training epochs
    compile_seconds: float  # the first epoch's extra time (tracing, compiling)
    predict_images_per_second: float  # one view of one image through the net, TTA included
    fold_overhead_seconds: float  # building the model, writing files: per fold, beyond the above


def probe_key(backend: str, device: str, image_shape, width: float, config_hash: str) -> str:
    return f"{backend}|{device}|{'x'.join(map(str, image_shape))}|w{width:g}|{config_hash}"


def measure(workspace, dataset, config, folder: Path) -> Probe:
    """Train `config` for PROBE_EPOCHS on a slice of the data (in this process) and time its parts."""
    import numpy as np

    from comp.engine.trainer import train_fold
    from comp.config.tta_policy import views_for

    rows = min(PROBE_ROWS, len(dataset.train_y) * 2 // 3)
    order = np.random.default_rng(0).permutation(len(dataset.train_y))
    train, val = np.sort(order[:rows]), np.sort(order[rows:rows + max(64, rows // 4)])
    test = dataset.test_x[:max(64, rows // 4)]
    probe_config = config.replace(epochs=PROBE_EPOCHS)
    started = time.perf_counter()
    result = train_fold(probe_config, dataset.train_x[train], dataset.train_y[train], dataset.train_x[val],
                        dataset.train_y[val], dataset.num_classes, 0, fold_dir=folder, test_x=test)
    total = time.perf_counter() - started
    import pandas as pd

    history = pd.read_csv(folder / "history.csv")
    first, steady = float(history["seconds"].iloc[0]), float(history["seconds"].iloc[-1])
    batch = min(config.batch_size, rows)
    trained = (rows // batch) * batch
    views = len(views_for(config.tta))
    predicted = (len(val) + len(test)) * views
    fit_seconds = float(history["seconds"].sum())
    after_fit = max(1e-3, total - fit_seconds)
    return Probe(width=config.width, train_images_per_second=trained / max(steady, 1e-3),
                 compile_seconds=max(0.0, first - steady),
                 predict_images_per_second=predicted / after_fit,
                 fold_overhead_seconds=max(0.0, result.seconds - fit_seconds - after_fit))


def probe(workspace, dataset, base_config, widths=WIDTHS) -> dict[float, Probe]:
    """Each candidate width measured once per machine (cached in folds/auto/probes.json)."""
    import keras

    from comp.core.backend import accelerator
    from comp.core.fileio import remove_tree

    cache_path = workspace.folds / "auto" / "probes.json"
    cached = read_json(cache_path) if cache_path.exists() else {}
    device = accelerator() or "cpu"
    probes = {}
    for width in widths:
        config = base_config.replace(width=width)
        key = probe_key(keras.backend.backend(), device, dataset.image_shape, width, config.identity_hash())
        if key not in cached:
            folder = workspace.folds / "auto" / "probe"
            remove_tree(folder, inside=workspace.folds)  # a probe killed earlier leaves its folder
            started = time.time()
            cached[key] = asdict(measure(workspace, dataset, config, folder))
            remove_tree(folder, inside=workspace.folds)
            write_json(cache_path, cached)
            info(f"measured width {width:g}: {cached[key]['train_images_per_second']:,.0f} images/s training, "
                 f"{cached[key]['predict_images_per_second']:,.0f} views/s predicting "
                 f"({time.time() - started:.0f}s)")
        probes[width] = Probe(**cached[key])
    return probes


# -- planning ----------------------------------------------------------------------------------


@dataclass
class Plan:
    width: float
    folds: int  # K of the K-fold split
    epochs: int
    tta: str
    full_fits: int
    fold_seconds: float  # estimated per fold
    full_fit_seconds: float  # estimated per full-data fit
    total_seconds: float  # everything planned, by the estimate
    budget_seconds: float
    notes: list[str] = field(default_factory=list)
    run_folds: int = 0  # folds trained: 0 = all K; 1 = a holdout (fold 0 alone)
    predict_seconds: float = 0.0  # estimated per fold: its validation rows and the test set, every TTA view

    @property
    def trained_folds(self) -> int:
        return self.run_folds or self.folds


def predict_seconds(probe: Probe, predict_rows: int, views: int) -> float:
    return predict_rows * views / probe.predict_images_per_second


def fold_seconds(probe: Probe, train_rows: int, predict_rows: int, epochs: int, views: int) -> float:
    return (probe.compile_seconds + probe.fold_overhead_seconds + epochs * train_rows / probe.train_images_per_second
            + predict_seconds(probe, predict_rows, views))


def choose_tta(probe: Probe, train_rows: int, predict_rows: int, epochs: int, policies: list[tuple[str, int]]) -> str:
    """The richest TTA policy whose predictions stay within PREDICT_SHARE of the fold's time."""
    for policy, views in policies:
        total = fold_seconds(probe, train_rows, predict_rows, epochs, views)
        if predict_seconds(probe, predict_rows, views) <= PREDICT_SHARE * total:
            return policy
    return policies[-1][0]


def epochs_that_fit(available: float, fixed: float, per_epoch: float) -> int:
    """Whole epochs (at most MAX_EPOCHS) that `available` seconds pay for beyond `fixed` ones."""
    return min(MAX_EPOCHS, math.floor((available - fixed) / per_epoch)) if available > fixed else 0


def fold_designs(rows: int, fold_choices: tuple[int, ...]) -> list[tuple[int, int]]:
    """(K, folds trained) in the order a plan tries them: every fold of each K in `fold_choices`, and
    before the last (the fewest rows a model) one HOLDOUT_K fold when it holds HOLDOUT_MIN_ROWS rows."""
    designs = [(k, k) for k in fold_choices if rows // k >= 2]
    if HOLDOUT_K in fold_choices and rows // HOLDOUT_K >= HOLDOUT_MIN_ROWS:
        designs.insert(max(len(designs) - 1, 1), (HOLDOUT_K, 1))  # after (5, 5) alone: a workdir split 5 ways
    return designs


def make_plan(budget_seconds: float, spent_seconds: float, rows: int, test_rows: int, probes: dict[float, Probe],
              tta_policies: list[tuple[str, int]], fold_choices: tuple[int, ...] = FOLD_CHOICES) -> Plan:
    """The plan for what is left of the budget (see the module docstring); `fold_choices` (K) is
    one value when the data already has its split. CompError when even the smallest candidate
    cannot finish in time."""
    available = SAFETY * budget_seconds - spent_seconds - ENSEMBLE_SECONDS
    for floor in EPOCH_FLOORS:
        for width in sorted(probes, reverse=True):
            probe = probes[width]
            for k, trained in fold_designs(rows, fold_choices):
                train_rows, val_rows = rows - rows // k, rows // k
                # The policy is chosen at the floor's epochs, then epochs fill what the folds may take.
                tta = choose_tta(probe, train_rows, val_rows + test_rows, floor, tta_policies)
                views = dict(tta_policies)[tta]
                fixed = trained * fold_seconds(probe, train_rows, val_rows + test_rows, 0, views)
                per_epoch = trained * train_rows / probe.train_images_per_second
                epochs = epochs_that_fit(available, fixed, per_epoch)
                if epochs < floor:
                    continue
                if trained == k:
                    notes = [f"{k} folds: the widest net with at least {floor} epochs on them (the out-of-fold "
                             "estimate and the blend weights)"]
                else:
                    notes = [f"fold 0 of {k} alone (a holdout of {val_rows:,} rows): every fold of a split "
                             f"would not get {floor} epochs, and its model trains on {train_rows:,} rows, not "
                             f"{rows - rows // 2:,} as on 2 folds"]
                # The same epochs on one full-data fit beside the folds: what would the folds keep?
                with_full = epochs_that_fit(available, fixed + fold_seconds(probe, rows, test_rows, 0, views),
                                            per_epoch + rows / probe.train_images_per_second)
                if with_full >= FULL_FIT_FROM_EPOCHS:
                    epochs = with_full
                    notes.append(f"a full-data fit at the same {epochs} epochs: the test predictions from all "
                                 f"{rows:,} rows, not {train_rows:,}, pay more than fold epochs past "
                                 f"{FULL_FIT_FROM_EPOCHS}")
                elif epochs < MAX_EPOCHS:
                    notes.append(f"no full-data fit: beside one, the folds would get {with_full} epochs "
                                 f"(under {FULL_FIT_FROM_EPOCHS}); the estimate comes first")
                per_fold = fold_seconds(probe, train_rows, val_rows + test_rows, epochs, views)
                per_full = fold_seconds(probe, rows, test_rows, epochs, views)
                left = available - trained * per_fold
                full_fits = max(0, min(MAX_FULL_FITS, math.floor(left / per_full + 1e-9)))
                if epochs == MAX_EPOCHS and full_fits > (with_full >= FULL_FIT_FROM_EPOCHS):
                    notes.append(f"epochs at their cap ({MAX_EPOCHS}): the time left buys {full_fits} full-data "
                                 "fit(s) in all")
                total = spent_seconds + trained * per_fold + full_fits * per_full + ENSEMBLE_SECONDS
                return Plan(width, k, epochs, tta, full_fits, per_fold, per_full, total, budget_seconds, notes,
                            0 if trained == k else trained, predict_seconds(probe, val_rows + test_rows, views))
    smallest = min(probes)
    raise CompError(f"--time {describe_seconds(budget_seconds)}: too short for this data on this machine "
                    f"(even width {smallest:g} cannot train {EPOCH_FLOORS[-1]} epochs on the fewest folds); give more time "
                    "or use --limit")


def plan_table(plan: Plan, rows: int):
    from rich.table import Table

    table = Table(title=f"plan for {describe_seconds(plan.budget_seconds)} ({rows:,} train rows)")
    for column in ("stage", "what", "estimate"):
        table.add_column(column, justify="right" if column == "estimate" else "left")
    folds = f"{plan.folds} folds" if not plan.run_folds else f"fold 0 of {plan.folds} (holdout)"
    table.add_row("train", f"{MODEL} width {plan.width:g}, {plan.epochs} epochs, {folds}, TTA {plan.tta}",
                  describe_seconds(plan.trained_folds * plan.fold_seconds))
    if plan.full_fits:
        table.add_row("full-data fits", f"{plan.full_fits} seed(s) on every row (the submission's test predictions)",
                      describe_seconds(plan.full_fits * plan.full_fit_seconds))
    table.add_row("ensemble", "OOF-scored blend -> submissions/", describe_seconds(ENSEMBLE_SECONDS))
    table.add_row("total", f"by the estimate ({SAFETY:.0%} of the budget is the aim)",
                  describe_seconds(plan.total_seconds))
    table.caption = "\n".join(f"why: {note}" for note in plan.notes)
    return table


# -- running it ------------------------------------------------------------------------------


@dataclass
class Clock:
    """Time spent on a plan across sessions: what earlier sessions recorded plus this one's."""

    budget: float
    spent_before: float
    started: float = field(default_factory=time.time)

    def spent(self) -> float:
        return self.spent_before + time.time() - self.started

    def left(self) -> float:
        return self.budget - self.spent()


def tta_policies(config) -> list[tuple[str, int]]:
    """The model's own TTA policy first, then cheaper ones, each with its number of views."""
    from comp.config.tta_policy import views_for

    names = list(dict.fromkeys([config.tta, "flip", "none"]))
    return [(name, len(views_for(name))) for name in names if name == "none" or len(views_for(name)) <= len(views_for(config.tta))]


def base_config(workspace, dataset):
    """The model's recipe (the GPU preset on a GPU), its batch fitted to the data's size."""
    from comp.core.backend import accelerator
    from comp.stages.train import resolve_config

    preset = GPU_PRESET if accelerator() else None
    # On a CPU, precision auto: bfloat16 where the CPU computes it natively (airbench94 1.35-1.41x
    # the images a second at equal accuracy on this project's CPU, bench/RESULTS.md), else float32.
    overrides = {} if preset else {"model": MODEL, "precision": "auto"}
    config = resolve_config(workspace, dataset.fingerprint, None, overrides, preset, use_latest_best=False)
    if config.keep == "last" and not config.patience:
        # Nothing reads per-epoch validation here: a fold's OOF rows are predicted once, at its end
        # (validating 10,000 rows every epoch cost 15% of a CPU fold's time).
        config = config.replace(val_every=0)
    return fit_batch(config, len(dataset.train_y) // 2)  # the fewest rows a fold trains on (2 folds)


def run_auto(workspace, budget, out=None, force: bool = False, started_at: float | None = None):
    """Measure, plan, train and ensemble within `budget` ('60m', seconds...). -> Submission.

    The time spent is written into the state file after every stage and when interrupted (Ctrl-C,
    an error), so a rerun continues the plan (without measuring again) with what is really left.
    `started_at`: when the command started (the CLI: before importing Keras), counted in the budget.
    """
    budget_seconds = parse_duration(budget)
    if out is not None:
        workspace.submission_path(out)  # a missing folder is refused now, not after the training
    state_path = workspace.folds / "auto" / f"plan-{budget_seconds:.0f}s.json"
    state = read_json(state_path) if state_path.exists() else {"budget_seconds": budget_seconds, "spent_seconds": 0.0,
                                                                  "stages": {}}
    clock = Clock(budget_seconds, state["spent_seconds"], **({"started": started_at} if started_at else {}))
    if state["spent_seconds"]:
        info(f"continuing the plan in {state_path}: {describe_seconds(state['spent_seconds'])} spent, "
             f"{describe_seconds(clock.left())} left")
    stage = {"name": "data", "since": clock.started}  # the stage under way: its time is recorded whatever happens

    def record(name: str, since: float) -> None:
        state["stages"][name] = state["stages"].get(name, 0.0) + time.time() - since
        state["spent_seconds"] = clock.spent()
        stage["name"], stage["since"] = None, time.time()
        write_json(state_path, state)

    def begin(name: str) -> float:
        stage["name"], stage["since"] = name, time.time()
        return stage["since"]

    try:
        return _run_plan(workspace, budget_seconds, out, force, state, state_path, clock, record, begin)
    finally:
        if stage["name"] is not None:  # interrupted or failed inside a stage: its time is spent all the same
            try:
                record(stage["name"], stage["since"])
            except OSError:
                pass  # a full disk: the state keeps the time of the last finished stage


def _run_plan(workspace, budget_seconds, out, force, state, state_path, clock, record, begin):
    """run_auto's stages; `begin(stage)` and `record(stage, since)` keep the state file's time."""
    from comp.data.folds import existing_k

    started = begin("data")
    dataset = workdir_dataset(workspace)
    record("data", started)
    started = begin("measure")
    base = base_config(workspace, dataset)
    k = existing_k(workspace, dataset.fingerprint)
    if "plan" not in state:  # a plan made earlier is continued as it is: nothing to measure again
        widths = WIDTHS if budget_seconds >= SHORT_BUDGET_SECONDS else (1.0, 0.5)

        def plan_from(probes):
            return make_plan(budget_seconds, clock.spent(), len(dataset.train_y), len(dataset.test_x), probes,
                             tta_policies(base), (k,) if k else FOLD_CHOICES)

        # The widest net first: when it reaches the first epoch floor, that is the plan whatever the
        # narrower ones measure (make_plan tries it first), so they are not measured.
        probes = probe(workspace, dataset, base, widths[:1])
        try:
            plan = plan_from(probes)
        except CompError:
            plan = None
        if plan is None or plan.epochs < EPOCH_FLOORS[0]:
            plan = plan_from(probe(workspace, dataset, base, widths))
        state["plan"] = asdict(plan)
    record("measure", started)
    plan = Plan(**state["plan"])
    console.print(plan_table(plan, len(dataset.train_y)))
    config = base.replace(width=plan.width, epochs=plan.epochs, folds=plan.folds, run_folds=plan.run_folds,
                          tta=plan.tta)

    started = begin("train folds")
    with training_deadlines(fold_deadlines(started, clock, plan)):
        run = train_config(workspace, config, folds="all")
    record("train folds", started)
    fits = full_fits_that_fit(plan, run, clock)
    started = begin("full-data fits")
    for seeds in range(1, fits + 1):
        with training_deadlines(full_fit_deadline(time.time(), clock, plan, seeds - 1)):
            train_config(workspace, config, full=seeds)
        record("full-data fits", started)
        started = begin("full-data fits")
        if seeds < fits and full_fits_that_fit(plan, run, clock, done=seeds) <= seeds:
            warn(f"the full-data fits run slower than planned: stopping after {seeds} of {fits} to stay in the budget")
            break
    started = begin("ensemble")
    name = out or f"auto-{describe_seconds(budget_seconds)}.csv"
    # A rerun of a finished plan writes the same CSV again (same runs): replacing it is expected.
    submission = ensemble(workspace, [run.name], out=name, force=force or state.get("ensembled", False))
    record("ensemble", started)
    state["ensembled"] = True
    write_json(state_path, state)
    console.print(stages_table(state, budget_seconds))
    return submission


def training_time_left(clock: Clock) -> float:
    """Seconds training may still take: until FOLDS_END_BY of the budget, less the ensemble."""
    return clock.left() - (1 - FOLDS_END_BY) * clock.budget - ENSEMBLE_SECONDS


@contextmanager
def training_deadlines(deadlines: dict[str, float]):
    """DEADLINES_ENV set to `deadlines` for the training inside (fold children inherit it)."""
    from comp.engine.callbacks import DEADLINES_ENV  # imports keras: here, not at module top

    os.environ[DEADLINES_ENV] = json.dumps(deadlines)
    try:
        yield
    finally:
        os.environ.pop(DEADLINES_ENV, None)


def fold_deadlines(now: float, clock: Clock, plan: Plan) -> dict[str, float]:
    """Each fold's training deadline (unix seconds): the folds share the time left before
    FOLDS_END_BY of the budget (less the ensemble) in equal slots, one after the other, and each
    slot keeps time for the fold's predictions: twice their estimate (plans made before it was kept:
    PREDICT_SHARE of the slot). A fold that finishes early leaves its time to the next."""
    slot = max(0.0, training_time_left(clock)) / max(1, plan.trained_folds)
    keep = min(PREDICT_SHARE * slot, 2 * plan.predict_seconds) if plan.predict_seconds else PREDICT_SHARE * slot
    return {str(fold): now + (fold + 1) * slot - keep for fold in range(plan.trained_folds)}


def full_fit_deadline(now: float, clock: Clock, plan: Plan, seed: int) -> dict[str, float]:
    """Full-data fit `seed`'s training deadline, keyed as train_fold numbers it (after the folds):
    the time left before FOLDS_END_BY of the budget, less the ensemble and PREDICT_SHARE of the
    fit for its test predictions. A fit slower than its estimate anneals early instead of
    overrunning the budget."""
    left = training_time_left(clock)
    return {str(plan.folds + seed): now + max(0.0, left - PREDICT_SHARE * plan.full_fit_seconds)}


def full_fits_that_fit(plan: Plan, run, clock: Clock, done: int = 0) -> int:
    """How many full-data fits (in all, `done` of them finished) end in time at the pace the folds had;
    the last may have only FULL_FIT_MIN_SHARE of its time (its deadline shrinks its schedule)."""
    summary = run.summary
    per_fold = summary.get("seconds", plan.fold_seconds * plan.trained_folds) / plan.trained_folds
    per_full = per_fold * plan.folds / max(1, plan.folds - 1)  # every row instead of (K-1)/K of them
    left = training_time_left(clock)
    more = max(0, math.floor(left / per_full + 1 - FULL_FIT_MIN_SHARE)) if per_full > 0 else 0
    fits = min(plan.full_fits, done + more)
    if fits < plan.full_fits:
        warn(f"planned {plan.full_fits} full-data fit(s), {fits} fit in the time left "
             f"({describe_seconds(left)}; the folds took {describe_seconds(per_fold)} each)")
    return fits


def stages_table(state: dict, budget: float):
    from rich.table import Table

    table = Table(title=f"achieved: {describe_seconds(state['spent_seconds'])} of {describe_seconds(budget)} "
                        f"({state['spent_seconds'] / budget:.0%})")
    table.add_column("stage")
    table.add_column("time", justify="right")
    for stage, seconds in state["stages"].items():
        table.add_row(stage, describe_seconds(seconds))
    return table
