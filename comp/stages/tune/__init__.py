"""`comp tune`: an Optuna search over the run config -- resumable, prunable, distributable.

    ws.tune(model="resnet", epochs=8, trials=20)          search; the same call again goes on
    ws.train(study.best_config, folds="all")               train what it found on every fold

One trial (trial.py): the sampler picks values for the searched parameters (space.py:
`default_space`, narrowed or widened by a space file), they are laid over the fixed config (the
same config, file and overrides as train), and that config trains fold 0 -- or the first K folds
with `cv_folds=K` -- through the usual `train_fold`. Validation accuracy is reported after every
epoch so the pruner can stop a trial that is already behind; the trial's score is the mean
validation accuracy of its folds.

    folds/optuna.db            the studies (SQLite); a postgresql:// storage shares one across machines
    folds/<study>/best.json    the best trial as a config file that train takes as is
    folds/<study>/trials.csv   every trial: state, score, parameters, per-fold numbers
    folds/<study>/history.png  optimization history; importance.png: which parameters mattered

A worker killed mid-trial (kill -9, a lost machine) stops writing its heartbeat; the next trial
that any worker of the study starts marks that trial FAIL and queues a copy of its parameters
(storage.py). A trial's child process killed by a signal is marked FAIL at once by its parent,
which goes on with the next trial. Ctrl-C re-queues the interrupted trial.
"""

from __future__ import annotations

import gc
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from comp.config.run_config import RunConfig
from comp.core.console import info, warn
from comp.core.errors import CompError
from comp.core.fileio import read_json
from comp.core.stats import imbalance_ratio
from comp.stages.tune.trial import Search, TrialFailed, objective
from comp.stages.tune.results import after_trial, finish
from comp.stages.tune.space import Space, build_space, print_space, searchable_kinds
from comp.stages.tune.storage import (
    HEARTBEAT_SECONDS,
    check_study,
    create_study,
    display_url,
    make_pruner,
    open_storage,
    requeue,
    storage_url,
    study_name_for,
)
from comp.data.sources import workdir_source

DEFAULT_TRIALS = 20


@dataclass
class Study:
    """A study's handle: where it lives and what it found (read from its files, so always current)."""

    name: str
    url: str
    path: Path  # folds/<study>: best.json, trials.csv, plots

    @property
    def optuna(self):
        """The optuna.Study itself, for Optuna's own API and plots."""
        import optuna

        return optuna.load_study(study_name=self.name, storage=self.url)

    @property
    def best(self) -> dict | None:
        path = self.path / "best.json"
        return read_json(path) if path.exists() else None

    @property
    def best_config(self) -> RunConfig | None:
        """The best trial's config, without the search's budget (as `train` takes it from best.json)."""
        from comp.stages.train import TUNING_BUDGET

        best = self.best
        if best is None:
            return None
        from comp.config.run_config import IGNORED_KEYS

        values = {k: v for k, v in best.items() if k not in IGNORED_KEYS and k not in TUNING_BUDGET}
        return RunConfig.from_dict(values, str(self.path / "best.json"))

    @property
    def best_value(self) -> float | None:
        best = self.best
        return None if best is None else best["value"]

    @property
    def trials(self):
        """Every trial as a pandas DataFrame (Optuna's trials_dataframe)."""
        return self.optuna.trials_dataframe(attrs=("number", "state", "value", "params", "duration"))


# -- the search -------------------------------------------------------------------------------


def check_budget(trials: int, timeout: float | None, cv_folds: int, heartbeat: int) -> None:
    if trials < 0:
        raise CompError(f"--trials {trials}: give 0 or more")
    if timeout is not None and timeout <= 0:
        raise CompError(f"--timeout {timeout:g}: give a positive number of seconds")
    if cv_folds < 1:
        raise CompError(f"--cv-folds {cv_folds}: give 1 or more")
    if heartbeat < 1:
        raise CompError(f"--heartbeat {heartbeat}: give 1 or more seconds")


def objective_folds(cv_folds: int, k: int) -> list[int]:
    if cv_folds > k:
        raise CompError(f"--cv-folds {cv_folds}: the split has only {k} folds; use --cv-folds {k} or less")
    return list(range(cv_folds))


def fixed_names(overrides: dict) -> set[str]:
    """Searchable parameters given as overrides (flags): fixed at that value instead of searched."""
    given = {name for name, value in overrides.items() if value is not None}
    if overrides.get("depth"):
        given.add("depth_scale")
    return given & set(searchable_kinds())


def tta_pinned(config, overrides: dict) -> bool:
    """Did the user choose the test-time augmentation (override or config)? Then trials keep it."""
    from comp.stages.train import config_values

    if overrides.get("tta") not in (None, "auto"):
        return True
    values, _ = config_values(config)
    return bool(values) and values.get("tta", "auto") != "auto"


def prepare_search(workspace, config, overrides: dict, cv_folds: int, space) -> Search:
    """The base config, data, split, objective folds and search space a study of this call uses."""
    from comp.data.sources import apply_limit
    from comp.stages.train import resolve_config, split_for

    source = workdir_source(workspace)
    # A bare tune starts from the model's defaults, not the newest best.json as a bare train does:
    # each rerun would otherwise move the search space (the learning-rate range is centred on the base).
    base = resolve_config(workspace, source.fingerprint, config, overrides, use_latest_best=False)
    dataset = source.load(base.image_size, base.resize)
    split = split_for(workspace, dataset, base)
    dataset = apply_limit(dataset, base.limit)
    folds = objective_folds(cv_folds, split.k)
    train_rows = len(split.rows(folds[0], dataset.rows)[0])
    # Multi-label: class weights and the balanced sampler weigh single-label classes; never searched.
    imbalance = 1.0 if dataset.multilabel else imbalance_ratio(dataset.train_y, dataset.num_classes)
    search_space = build_space(base, train_rows, space, fixed_names(overrides), tta_pinned(config, overrides),
                               imbalance)
    return Search(search_space, dataset, split, folds, current={}, metric=workspace.metric)


def quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial replaces Optuna's
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, multivariate


def open_study(search: Search, url: str, name: str, pruner: str, heartbeat: int):
    """(storage, study): the study created or continued, checked to score trials as this search does."""
    space = search.space
    storage = open_storage(url, heartbeat)
    from comp.core.metrics import get_metric

    direction = "maximize" if get_metric(search.metric).greater_is_better else "minimize"
    study = create_study(storage, name, make_pruner(pruner, len(search.folds) * space.base.fit_epochs),
                         seed=space.base.seed, direction=direction)
    # The metric only when it is not accuracy: studies from before it was recorded measured accuracy.
    metric = {"metric": search.metric} if search.metric != "accuracy" else {}
    check_study(study, {"fingerprint": search.dataset.fingerprint, "folds_hash": search.split.hash,
                        "folds": search.folds, "model": space.base.model, "epochs": space.base.epochs,
                        "limit": space.base.limit, **metric}, url)
    return storage, study


def run_trials(study, search: Search, study_dir: Path, trials: int, timeout: float | None) -> list[str]:
    """Trials in this process; the state of each ("COMPLETE", "PRUNED", "FAIL")."""
    outcomes: list[str] = []
    try:
        study.optimize(lambda trial: objective(trial, search), n_trials=trials, timeout=timeout,
                       catch=(TrialFailed,), callbacks=[after_trial(search, study_dir, outcomes)], gc_after_trial=True)
    except KeyboardInterrupt:
        requeue(study, search.current.get("number"))
        raise
    return outcomes


def trial_task(workspace_root: Path, data_dir: Path, skip_bad: bool, space: Space, cv_folds: int, url: str,
               name: str, pruner: str, heartbeat: int, metric: str = "accuracy") -> str:
    """One trial in a child process (comp.core.isolate): the study reached through its storage, exactly
    as a worker on another machine reaches it. Returns the trial's state."""
    from comp.data.sources import apply_limit
    from comp.stages.train import split_for
    from comp.core.paths import Workdir

    quiet_optuna()
    workspace = Workdir(workspace_root, data_dir, skip_bad=skip_bad, remember=False)
    dataset = workdir_source(workspace).load(space.base.image_size, space.base.resize, say_size=False)
    split = split_for(workspace, dataset, space.base)
    search = Search(space, apply_limit(dataset, space.base.limit), split, objective_folds(cv_folds, split.k),
                    current={}, metric=metric)
    _, study = open_study(search, url, name, pruner, heartbeat)
    outcomes = run_trials(study, search, workspace.folds / name, 1, None)
    gc.collect()
    return outcomes[0] if outcomes else "NONE"


def mark_killed(storage, study_name: str, number: int | None, reason: str) -> None:
    """A trial whose process died: FAIL now, with the reason, through the storage's public API."""
    from optuna.trial import TrialState

    if number is None:
        return
    trial_id = storage.get_trial_id_from_study_id_trial_number(storage.get_study_id_from_name(study_name), number)
    if storage.get_trial(trial_id).state == TrialState.RUNNING:
        storage.set_trial_user_attr(trial_id, "error", reason)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)


def run_trials_in_children(storage, workspace, search: Search, cv_folds: int, url: str, name: str, pruner: str,
                           heartbeat: int, trials: int, timeout: float | None) -> list[str]:
    """On TensorFlow, each trial in its own child process (see comp.core.isolate)."""
    from comp.core.isolate import ChildDied, call_in_child

    outcomes, started = [], time.time()
    for _ in range(trials):
        if timeout and time.time() - started >= timeout:
            break
        current: dict = {}
        try:
            outcomes.append(call_in_child(trial_task, workspace.root, workspace.data_dir, workspace.skip_bad,
                                          search.space, cv_folds, url, name, pruner, heartbeat, search.metric,
                                          what="trial", log_dir=workspace.folds / "logs",
                                          on_message=lambda number: current.update(number=number)))
        except ChildDied as died:
            number = current.get("number")
            reason = f"trial {number if number is not None else '?'}: {died.reason}"
            warn(f"{reason}; marked failed, the study goes on")
            mark_killed(storage, name, number, died.reason)
            outcomes.append("FAIL")
    return outcomes


def tune(workspace, config=None, overrides: dict | None = None, *, trials: int = DEFAULT_TRIALS,
         timeout: float | None = None, cv_folds: int = 1, pruner: str = "median", space=None,
         storage: str | None = None, study_name: str | None = None, heartbeat: int | None = None,
         isolate: bool | None = None) -> Study:
    """Run `trials` trials of the study (created or continued); the Study."""
    from comp.core.isolate import isolate_by_default

    overrides = dict(overrides or {})
    heartbeat = heartbeat or HEARTBEAT_SECONDS
    check_budget(trials, timeout, cv_folds, heartbeat)
    quiet_optuna()
    search = prepare_search(workspace, config, overrides, cv_folds, space)
    base = search.space.base
    name = study_name_for(study_name, base)
    url = storage_url(storage, workspace)
    storage_handle, study = open_study(search, url, name, pruner, heartbeat)
    study_dir = workspace.folds / name
    info(f"study [bold]{name}[/bold] in {display_url(url)}: {len(study.trials)} trials so far; this worker runs "
         f"{trials} more{f' (or stops after {timeout:g}s)' if timeout else ''}, {base.model}, {base.epochs} epochs on "
         f"fold{'s' if len(search.folds) > 1 else ''} {','.join(map(str, search.folds))} of {search.split.k}, "
         f"{len(search.dataset.rows):,} rows; trials scored by {search.metric}")
    print_space(search.space)
    started = time.time()
    isolate = isolate_by_default() if isolate is None else isolate
    if trials and isolate:
        outcomes = run_trials_in_children(storage_handle, workspace, search, cv_folds, url, name, pruner, heartbeat, trials,
                                          timeout)
    elif trials:
        outcomes = run_trials(study, search, study_dir, trials, timeout)
    else:
        outcomes = []
    gc.collect()
    finish(study, study_dir, url)
    info(f"done in {time.time() - started:.0f}s")
    if outcomes and all(state == "FAIL" for state in outcomes):
        raise CompError(f"all {len(outcomes)} trials of this run failed (errors above); fix the cause and rerun")
    return Study(name, url, study_dir)


__all__ = ["Study", "tune", "prepare_search", "DEFAULT_TRIALS"]
