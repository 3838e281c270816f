"""Per-epoch callbacks: validation, divergence checks, history, checkpoints, early stopping and deadlines."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass

import keras
import numpy as np
import pandas as pd

from comp.core.console import warn
from comp.core.errors import CompError
from comp.core.fileio import atomic_path, save_csv
from comp.engine.batchnorm import batch_norm_layers
from comp.engine.checkpoints import _save_checkpoint
from comp.engine.inference import Predictor
from comp.nets.layers import AirbenchBatchNorm


# A checkpoint (weights + optimizer state, tens of MB for the big nets) is written at an epoch's
# end once this many seconds passed since the last one: a kill loses at most this much work,
# and GPU epochs of a second or two do not spend their time writing files.
CHECKPOINT_SECONDS = float(os.environ.get("COMP_CHECKPOINT_SECONDS", "30"))
# Training deadlines per fold, {"fold": unix seconds} as JSON (comp auto sets it for its folds): a
# fold that cannot run all its epochs before its deadline runs fewer, its schedule shrunk to them
# (the schedule clock, FoldCallback.fit_deadline), said, so a plan that runs slower than measured
# still keeps its time budget and every fold still ends annealed.
DEADLINES_ENV = "COMP_FOLD_DEADLINES"


# -- callbacks ---------------------------------------------------------------------------------


class TrainingDiverged(CompError):
    """The loss became NaN or infinite: the fold stops; what it wrote before stays valid."""


def check_finite_loss(logs: dict, fold: int, epoch: int, lr: float) -> None:
    """Raise TrainingDiverged when the epoch's training or validation loss is not finite.

    Checked once an epoch, from the logs fit already reads back at an epoch's end: reading the
    loss every batch would sync a GPU at every step. The epoch's mean loss is NaN or infinite
    as soon as one batch's was, and a last step that broke the weights shows in val_loss.
    """
    for key in ("loss", "val_loss"):
        if key in logs and not math.isfinite(logs[key]):
            raise TrainingDiverged(f"fold {fold}: training diverged in epoch {epoch + 1} ({key} = {logs[key]}); "
                                   f"{_lower_lr_fix(lr)}")


def _lower_lr_fix(lr: float) -> str:
    suggestion = f", e.g. --lr {lr / 10:g}" if math.isfinite(lr) and lr > 0 else ""
    return f"lower the learning rate (now {lr:g}{suggestion}) and train again"


def check_finite_probs(probs: dict[str, np.ndarray], rows: str, fold: int, lr: float) -> None:
    """Refuse probabilities that are not finite (weights broken by a last step, or by averaging)
    before any is written: the fold is not marked done, and nothing downstream reads NaN."""
    for policy, values in probs.items():
        if not np.isfinite(values).all():
            raise TrainingDiverged(f"fold {fold}: the trained model gives non-finite {rows} probabilities "
                                   f"(TTA {policy}); {_lower_lr_fix(lr)}")


@dataclass
class Validation:
    """The per-epoch validation: the plain (no TTA) logits of the validation rows from the
    compiled predict program, scored on the host like the training loss (label smoothing too)."""

    predict: Predictor
    images: np.ndarray
    labels: np.ndarray
    label_smoothing: float
    every: int  # RunConfig.val_every: after every this many epochs and the last; 0 = never
    last_epoch: int  # the fold's last epoch (earlier when a deadline shrinks the fold)

    def __post_init__(self):
        self.planned_last = self.last_epoch

    def due(self, epoch: int) -> bool:
        return bool(self.every) and ((epoch + 1) % self.every == 0 or epoch + 1 == self.last_epoch)

    def __call__(self) -> dict:
        logits = self.predict(self.images)[0].astype(np.float64)
        if np.ndim(self.labels) == 2:
            return self.multilabel_scores(logits)
        # smoothed_cross_entropy in NumPy: on the host, eager device ops would each compile a program.
        num_classes = logits.shape[-1]
        targets = np.eye(num_classes)[self.labels] * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        loss = float(np.mean(-np.sum(targets * log_probs, axis=-1)))
        return {"val_loss": loss, "val_accuracy": float(np.mean(logits.argmax(axis=-1) == self.labels))}

    def multilabel_scores(self, logits: np.ndarray) -> dict:
        """binary_cross_entropy (comp.engine.step) in NumPy, and the share of cells right at 0.5."""
        targets = self.labels * (1.0 - self.label_smoothing) + self.label_smoothing / 2
        loss = np.maximum(logits, 0) - logits * targets + np.log1p(np.exp(-np.abs(logits)))
        return {"val_loss": float(loss.sum(-1).mean()), "val_accuracy": float(np.mean((logits > 0) == (self.labels > 0)))}


def epochs_in_time(deadline: float, epoch_seconds: float, now: float) -> int:
    """Whole epochs of `epoch_seconds` that still end by `deadline`."""
    return max(0, int((deadline - now) // max(epoch_seconds, 1e-3)))


def training_deadline(fold: int) -> float | None:
    """Fold `fold`'s training deadline from DEADLINES_ENV, or None."""
    import json

    text = os.environ.get(DEADLINES_ENV)
    return json.loads(text).get(str(fold)) if text else None


class FoldCallback(keras.callbacks.Callback):
    """Per epoch: validation (when due), divergence check, history, best-model snapshot,
    checkpoint, early stopping, progress, tune hook."""

    # The batch hook only moves a progress bar and never reads the logs, so Keras may keep
    # dispatching steps asynchronously (reading logs every batch would sync a GPU each step).
    async_safe = True

    def __init__(self, fold, fold_dir, net, state, config, on_epoch, progress, validation: Validation,
                 steps_per_batch: int = 1, steps_per_epoch: int = 1):
        super().__init__()
        self.fold, self.fold_dir, self.net, self.state, self.config = fold, fold_dir, net, state, config
        self.on_epoch, self.progress, self.validation = on_epoch, progress, validation
        self.steps_per_batch = steps_per_batch  # optimizer steps in one of fit's batches (JAX: a scan)
        self.steps_per_epoch = steps_per_epoch
        self.started = self.last_checkpoint = time.time()
        self.best_weights = None  # keep=best: the best epoch's weights, if that epoch ran in this process
        self.deadline = training_deadline(fold)
        self.epochs_seen = 0  # epochs this process ran (fit_deadline trusts the pace of later ones)

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()
        if self.progress:
            self.progress.epoch_begin(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if self.progress:
            self.progress.batch_end(min((batch + 1) * self.steps_per_batch, self.progress.steps) - 1)

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if self.validation.due(epoch):
            logs |= self.validation()
        check_finite_loss(logs, self.fold, epoch, self.config.lr)  # before anything of this epoch is kept
        row = {"epoch": epoch + 1, **logs, "lr": _current_lr(self.model.optimizer),
               "seconds": round(time.time() - self.started, 3)}
        state = self.state
        state["history"].append(row)
        state["epoch"] = epoch + 1
        val_accuracy = logs.get("val_accuracy", -1.0)
        improved = val_accuracy > state["best_val_accuracy"]
        if improved:
            state["best_val_accuracy"], state["best_epoch"], state["wait"] = val_accuracy, epoch + 1, 0
        else:
            state["wait"] += 1
        if improved and self.config.keep == "best":
            self.best_weights = self.net.get_weights()  # tune (no fold_dir) keeps the same epoch as train
            if self.fold_dir:  # for a resume that outlives this process
                with atomic_path(self.fold_dir / "model.keras", suffix=".keras") as tmp:
                    self.net.save(tmp)
        if self.deadline:
            self.fit_deadline(epoch)
        if state.get("end_epoch") == epoch + 1:
            self.model.stop_training = True  # fit still ends as usual: averaged weights, predictions
            state["stopped_for_time"] = epoch + 1
        if self.fold_dir:
            save_csv(self.fold_dir / "history.csv", pd.DataFrame(state["history"]))
            if time.time() - self.last_checkpoint >= CHECKPOINT_SECONDS:
                _save_checkpoint(self.fold_dir, self.model, state)
                self.last_checkpoint = time.time()
        if self.progress:
            self.progress.epoch_end(epoch, row)
        if self.config.patience and state["wait"] >= self.config.patience:
            self.model.stop_training = True
        if self.on_epoch:
            self.on_epoch(epoch, row)  # may raise (e.g. optuna.TrialPruned) to stop the fold

    def fit_deadline(self, epoch: int) -> None:
        """Fit the fold's remaining epochs to its deadline: as many as still end in time (at the
        fastest epoch seen), at most the planned ones; the schedule's remaining steps are run
        faster or slower to end exactly there (the schedule clock), so the fold ends annealed."""
        state, planned = self.state, self.validation.planned_last
        fastest = min(row["seconds"] for row in state["history"])
        self.epochs_seen += 1
        if self.epochs_seen == 1 and time.time() + fastest < self.deadline:
            return  # this process's first epoch includes compiling: its pace would cut epochs that fit
        end = min(planned, epoch + 1 + epochs_in_time(self.deadline, fastest, time.time()))
        if end == state.get("end_epoch", planned):
            return
        state["end_epoch"] = self.validation.last_epoch = end
        step = int(keras.ops.convert_to_numpy(self.model.optimizer.iterations))
        clock = self.model.optimizer.schedule_clock
        at = float(keras.ops.convert_to_numpy(clock.step(step)))  # the schedule's step now
        total = clock.total  # in the schedule's steps (those of the engine's first fold)
        # The schedule ends where the last epoch ends, less a fractional last epoch's idle tail.
        tail = max(0, self.config.fit_epochs * self.steps_per_epoch - self.config.total_steps(self.steps_per_epoch))
        end_step = end * self.steps_per_epoch - tail
        if end_step > step and total > at:
            clock.set(step, at, (total - at) / (end_step - step))
            for norm in batch_norm_layers(self.net):  # the BatchNorm statistics' averaging ends there too
                if isinstance(norm, AirbenchBatchNorm):
                    norm.last_step.assign(end_step)
        fits = f"all {planned} epochs fit its time budget again" if end == planned else \
            f"{end} of {planned} epochs fit its time budget"
        warn(f"fold {self.fold}: {fits}; the schedule's remaining "
             f"{max(0, total - at):.0f} steps run in {max(0, end_step - step)}, so the fold still ends annealed")


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))
