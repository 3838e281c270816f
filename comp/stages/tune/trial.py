"""One trial of `comp tune`: train the sampled config on the objective folds, report every epoch.

The trial's score is the mean over its folds of the competition's metric on the validation rows
(accuracy unless the workdir names another; the study's direction is the metric's); each epoch's
validation accuracy (validation loss when the study minimises) is reported so the pruner can
stop a trial that is already behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comp.core.console import info
from comp.data.sources import Dataset
from comp.core.errors import CompError
from comp.data.folds import Split
from comp.stages.tune.space import Space, apply_params, suggest


class TrialFailed(Exception):
    """A trial's training raised (out of memory, a numeric error): the study goes on without it."""


@dataclass
class Search:
    """Everything a trial needs, loaded once per process."""

    space: Space
    dataset: Dataset
    split: Split
    folds: list[int]
    current: dict  # {"number": trial number running now}, for re-queuing it after Ctrl-C
    metric: str = "accuracy"  # the competition's: the trials' score and the study's direction


def report_step(fold_index: int, epoch: int, epochs: int) -> int:
    """The step at which a trial reports an epoch. Steps restart at each fold otherwise, and
    Optuna keeps only the first value reported at a step: fold 1's epochs would be lost and
    the pruner would compare fold 1 of one trial with fold 0 of another."""
    return fold_index * epochs + epoch


def make_reporter(trial, fold_index: int, epochs: int, last_fold: bool, minimize: bool = False):
    """on_epoch hook for train_fold: report validation accuracy (loss when the study minimises, so
    the pruner compares in the study's direction), stop the trial if it is behind."""
    import optuna

    key = "val_loss" if minimize else "val_accuracy"

    def on_epoch(epoch: int, row: dict) -> None:
        if key not in row:  # val_every skipped this epoch: nothing to report
            return
        step = report_step(fold_index, epoch, epochs)
        trial.report(row[key], step)
        final = last_fold and epoch + 1 >= epochs  # pruning at the very end would only throw the score away
        if not final and trial.should_prune():
            trial.set_user_attr("pruned_at", {"fold_index": fold_index, "epoch": epoch + 1, "step": step})
            raise optuna.TrialPruned(f"{key.replace('_', ' ')} {row[key]:.4f} at fold {fold_index} epoch {epoch + 1}")

    return on_epoch


def _rss_mb() -> float | None:
    """Resident memory now (Linux), recorded per trial to show it stays flat."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def fold_score(metric: str, result, labels: np.ndarray) -> float:
    """A fold's validation score under the competition's metric, from the predictions it returned."""
    from comp.core.metrics import score

    if metric == "accuracy" or result.val_probs is None:
        return result.val_accuracy
    return score(metric, labels, result.val_probs)


def objective(trial, search: Search) -> float:
    """Train the trial's config on the objective folds; return the mean of their validation scores
    under the competition's metric."""
    from comp.core.metrics import get_metric

    import optuna

    from comp.core.isolate import tell_parent
    from comp.core.progress import TrainingProgress
    from comp.engine.callbacks import TrainingDiverged
    from comp.engine.feed import FoldRows
    from comp.engine.trainer import train_fold
    from comp.stages.tune.results import format_params

    search.current["number"] = trial.number
    tell_parent(trial.number)  # a parent whose child dies mid-trial can then name the trial
    config = apply_params(search.space.base, suggest(trial, search.space), search.space.tta_auto)
    trial.set_user_attr("config", config.to_dict())
    dataset, scores, epochs_run, seconds = search.dataset, [], [], []
    for key in ("fold_scores", "epochs_run", "seconds"):  # a retried trial starts with its victim's
        trial.set_user_attr(key, [])
    info(f"trial {trial.number}: {format_params(trial.params)}")
    try:
        with TrainingProgress(len(search.folds), config.fit_epochs, label=f"trial {trial.number}") as progress:
            for index, fold in enumerate(search.folds):
                train_pos, val_pos = search.split.rows(fold, dataset.rows)
                result = train_fold(
                    config, FoldRows(dataset.train_x, train_pos), dataset.train_y[train_pos],
                    FoldRows(dataset.train_x, val_pos), dataset.train_y[val_pos], dataset.num_classes, fold,
                    on_epoch=make_reporter(trial, index, config.fit_epochs, index == len(search.folds) - 1,
                                           not get_metric(search.metric).greater_is_better),
                    progress=progress)
                scores.append(fold_score(search.metric, result, dataset.train_y[val_pos]))
                epochs_run.append(result.epochs_run)
                seconds.append(round(result.seconds, 2))
                # Recorded after every fold, so a pruned trial still shows what it finished.
                trial.set_user_attr("fold_scores", scores)
                trial.set_user_attr("epochs_run", epochs_run)
                trial.set_user_attr("seconds", seconds)
    except TrainingDiverged as err:  # these sampled values blew the loss up: this trial fails, the study goes on
        trial.set_user_attr("error", str(err)[:500])
        raise TrialFailed(str(err)) from err
    except (optuna.TrialPruned, CompError):  # pruned, or bad input: not a failed trial
        raise
    except Exception as err:  # noqa: BLE001 -- any training error fails this trial only
        trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
        raise TrialFailed(f"{type(err).__name__}: {err}") from err
    finally:
        trial.set_user_attr("rss_mb", _rss_mb())
    return float(np.mean(scores))
