"""What a study leaves behind: best.json (a train config), trials.csv, plots, and the printed lines."""

from __future__ import annotations

import warnings
from pathlib import Path

from comp.core.console import console, info, warn
from comp.data.sources import Dataset
from comp.core.fileio import save_csv, save_figure, write_json
from comp.data.folds import Split
from comp.stages.tune.storage import display_url

TOP_TRIALS = 10


def format_params(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def write_best(study, study_dir: Path, dataset: Dataset, split: Split) -> dict | None:
    """best.json: the best trial's config, ready for `comp train --config`, and what it was tuned at.

    "tuned" keeps the search's budget (epochs, --limit, the folds that scored it): train takes the
    searched parameters from the file but not that budget, and says so.
    """
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        return None
    if "config" not in best.user_attrs:  # a trial added by another tool
        return None
    config = dict(best.user_attrs["config"], name="")  # empty: comp train derives the run name
    objective = study.user_attrs.get("objective", {})
    document = config | {
        "study": study.study_name,
        "trial": best.number,
        "value": best.value,
        "tuned": {"fingerprint": dataset.fingerprint, "folds_hash": split.hash, "params": best.params,
                  "objective_folds": objective.get("folds"), "epochs": config["epochs"], "limit": config["limit"]},
    }
    write_json(study_dir / "best.json", document)
    return document


def trial_line(trial) -> str:
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    took = f"{trial.duration.total_seconds():.0f}s" if trial.duration else ""  # pruned trials too
    retry_of = trial.system_attrs.get("failed_trial")  # set by the retry of a killed trial
    if retry_of is not None:
        took += f", retry of trial {retry_of}"
    if trial.state == TrialState.COMPLETE:
        folds = ", ".join(f"{s:.4f}" for s in attrs.get("fold_scores", []))
        return f"trial {trial.number}: [bold]{trial.value:.4f}[/bold] (folds {folds}) {took}"
    if trial.state == TrialState.PRUNED:
        at = attrs.get("pruned_at", {})
        return f"trial {trial.number}: pruned at fold {at.get('fold_index', '?')} epoch {at.get('epoch', '?')} {took}"
    return f"trial {trial.number}: {trial.state.name.lower()} {attrs.get('error', '')}"


def after_trial(search, study_dir: Path, outcomes: list):
    """Callback after each trial of this process: one line, and best.json rewritten."""

    def callback(study, trial) -> None:
        outcomes.append(trial.state.name)
        if trial.state.name == "FAIL":
            warn(trial_line(trial))
        else:
            info(trial_line(trial))
        best = write_best(study, study_dir, search.dataset, search.split)
        if best is not None:
            info(f"  best so far: trial {best['trial']}, {best['value']:.4f}")

    return callback


def print_top(study) -> None:
    from rich.table import Table
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    info(f"study {study.study_name}: {len(trials)} trials, " + ", ".join(
        f"{n} {s.name.lower()}" for s, n in counts.items() if n))
    minimize = study.direction.name == "MINIMIZE"
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=not minimize)
    if not done:
        return
    table = Table(title=f"top {min(TOP_TRIALS, len(done))} trials")
    metric = study.user_attrs.get("objective", {}).get("metric", "accuracy")
    for column in ("trial", "val acc" if metric == "accuracy" else f"val {metric}", "folds", "epochs", "seconds",
                   "parameters"):
        table.add_column(column, justify="left" if column == "parameters" else "right")
    for t in done[:TOP_TRIALS]:
        a = t.user_attrs
        table.add_row(str(t.number), f"{t.value:.4f}", " ".join(f"{s:.3f}" for s in a.get("fold_scores", [])),
                      str(sum(a.get("epochs_run", []))), f"{sum(a.get('seconds', [])):.0f}", format_params(t.params))
    console.print(table)


def save_plots(study, study_dir: Path) -> None:
    """History and importance plots; importance needs two finished trials and a searched parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not finished:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plots.plot_optimization_history(study)
        save_figure(study_dir / "history.png", ax.figure)
        plt.close(ax.figure)
        if len(finished) < 2:
            info("parameter importance: needs two finished trials; skipped")
            return
        try:
            ax = plots.plot_param_importances(study)
        except (ValueError, RuntimeError) as err:  # e.g. every parameter fixed, or all trials alike
            info(f"parameter importance skipped: {err}")
            return
        save_figure(study_dir / "importance.png", ax.figure)
        plt.close(ax.figure)


def save_trials(study, study_dir: Path) -> None:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    frame = frame.drop(columns=[c for c in frame.columns if c == "user_attrs_config"])  # in best.json
    save_csv(study_dir / "trials.csv", frame)


def finish(study, study_dir: Path, url: str) -> None:
    print_top(study)
    if study.trials:
        save_trials(study, study_dir)
        save_plots(study, study_dir)
    if (study_dir / "best.json").exists():
        info(f"best config: {study_dir / 'best.json'}  ->  comp train --config {study_dir / 'best.json'} --fold all")
    info(f"dashboard: optuna-dashboard {display_url(url)}")
