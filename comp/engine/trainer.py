"""Training one fold: the fold driver (train_fold) from engine to written artifacts."""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from comp.nets import layers as _registered_layers  # noqa: F401 -- comp's layers, for load_model
from comp.config.run_config import RunConfig
from comp.config.tta_policy import views_for
from comp.core.errors import CompError, retrain_fold_fix
from comp.core.fileio import atomic_path, save_npy, write_json
from comp.core.scoring import accuracy as score_accuracy, log_loss
from comp.engine.batchnorm import recalibrate_batchnorm
from comp.engine.callbacks import FoldCallback, Validation, check_finite_probs
from comp.engine.checkpoints import _resume
from comp.engine.devices import check_same_everywhere, is_peer_failure, is_writer, peer_stopped
from comp.engine.feed import (BatchOrder, balanced_class_weights, steps_per_dispatch, training_inputs,
                              uses_device_rows)
from comp.engine.inference import Predictor, call_rows
from comp.engine.plots import plot_curves
from comp.engine.programs import compile_counts, fold_seed, prepare_engine, set_precision
from comp.engine.tta import average_views, view_fill
from comp.nets.saving import load_keras_model


@dataclass
class FoldResult:
    fold: int
    val_accuracy: float
    val_loss: float
    best_epoch: int
    epochs_run: int
    seconds: float
    val_probs: np.ndarray | None = None
    phases: dict = field(default_factory=dict)  # seconds by phase (fold_phases), and compile counts on JAX


def fold_phases(started: float, fit_started: float, fit_ended: float, history: list[dict], epochs_before: int,
                compiles_before: dict) -> dict:
    """Where a fold's seconds went: setup (engine, store, resume), the first epoch this process
    ran (compiling included), the later epochs, after fit (recalibration, predictions, files) and
    in all, from the start to the written predictions; on JAX also the programs made during the
    fold (see COMPILE_EVENTS) and how many of them the persistent cache gave."""
    epochs = [row["seconds"] for row in history[epochs_before:]]
    now = time.time()
    phases = {"setup": fit_started - started, "first_epoch": epochs[0] if epochs else 0.0,
              "later_epochs": float(sum(epochs[1:])), "later_epoch_count": max(0, len(epochs) - 1),
              "after_fit": now - fit_ended, "total": now - started}
    phases = {k: round(v, 3) if isinstance(v, float) else v for k, v in phases.items()}
    return phases | {k: v - compiles_before.get(k, 0) for k, v in compile_counts().items()}


def train_fold(config: RunConfig, train_x, train_y, val_x, val_y, num_classes: int, fold: int,
               fold_dir: Path | None = None, test_x=None, on_epoch: Callable | None = None,
               progress=None, epochs: int | None = None) -> FoldResult:
    """Train one fold; with fold_dir, resume from and write its artifacts.

    Returns the validation accuracy and loss of the kept model (best epoch or last).
    `on_epoch(epoch, logs)` is called after every epoch and may raise to stop (pruning).
    """
    started = time.time()
    scratch = None
    compiles_before = compile_counts()
    multilabel = np.ndim(train_y) == 2  # multi-hot rows: sigmoid outputs, binary cross-entropy
    if multilabel and (config.class_weight != "none" or config.sampler != "shuffle"):
        raise CompError(f"--class-weight {config.class_weight} / --sampler {config.sampler}: they weigh the classes of "
                        "single-label data; with multi-label targets use --class-weight none --sampler shuffle")
    try:
        device_rows = len(train_y) if uses_device_rows() else 0
        steps = BatchOrder(len(train_y), config.batch_size, 0).steps
        engine = prepare_engine(config, train_x.shape[1:], num_classes, train_x, fold, steps, device_rows, multilabel)
        model, net = engine.model, engine.net
        training_data, steps = training_inputs(train_x, train_y, config.batch_size, fold_seed(config, fold),
                                               model.store, config.sampler)
        if model.class_weights is not None:
            model.set_class_weights(balanced_class_weights(train_y, num_classes))
        state = _resume(fold_dir, model, fold) if fold_dir else None
        resumed = state is not None
        check_same_everywhere(fold, "trains fold")  # several processes train one fold together
        check_same_everywhere(state["epoch"] if resumed else 0, f"fold {fold} resumes after epoch")
        # Several processes: every one reads the fold's checkpoint; only process 0 writes to it. The
        # others save theirs to a scratch folder, dropped at the end: saving runs collectives.
        scratch = tempfile.TemporaryDirectory(prefix="comp-process-") if fold_dir and not is_writer() else None
        written_dir = Path(scratch.name) if scratch else fold_dir
        if resumed and progress:
            progress.note(f"fold {fold}: resuming after epoch {state['epoch']}")
        state = state or {"epoch": 0, "best_val_accuracy": -1.0, "best_epoch": 0, "wait": 0, "history": []}
        epochs_before = len(state["history"])
        total_epochs = epochs or config.fit_epochs
        rows_per_call = call_rows(max(config.batch_size, 256))
        validation = Validation(engine.predictor("none", rows_per_call), val_x, val_y, config.label_smoothing,
                                config.val_every, total_epochs)
        validation.last_epoch = state.get("end_epoch", total_epochs)  # a resumed fold its deadline shrank
        callback = FoldCallback(fold, written_dir, net, state, config, on_epoch, progress, validation,
                                steps_per_dispatch() if model.store is not None else 1, steps)
        if progress:
            progress.fold_begin(fold, total_epochs, steps, state["epoch"])
        fit_started = time.time()
        if state["epoch"] < total_epochs and not (config.patience and state["wait"] >= config.patience):
            callbacks = [*training_data["callbacks"], callback]
            try:
                model.fit(**training_data | {"callbacks": callbacks}, epochs=total_epochs,
                          initial_epoch=state["epoch"], verbose=0)
            except (RuntimeError, ValueError) as error:  # how JAX reports a failed collective
                if is_peer_failure(error):
                    raise peer_stopped(error) from None
                raise
        elif resumed and config.averages_weights:
            # Resumed after the last epoch: fit, which would end on the averaged weights, does not run.
            model.optimizer.finalize_variable_values(model.trainable_variables)
        fit_ended = time.time()
        if config.keep == "last" and config.averages_weights:
            engine.statistics = recalibrate_batchnorm(model, train_x, train_y, config.batch_size,
                                                      fold_seed(config, fold), engine.statistics)
        if config.keep == "best" and callback.best_weights is not None:
            net.set_weights(callback.best_weights)  # with fold_dir, model.keras holds them already
        elif config.keep == "best" and fold_dir:  # the best epoch ran before a resume: into the compiled net
            net.set_weights(load_keras_model(fold_dir / "model.keras",
                                             fix=retrain_fold_fix(fold_dir.parent, fold)).get_weights())
        elif written_dir:
            with atomic_path(written_dir / "model.keras", suffix=".keras") as tmp:
                net.save(tmp)
        predictor = engine.predictor(config.tta, rows_per_call)
        result = _finish_fold(config, net, val_x, val_y, test_x, fold, fold_dir, state, time.time() - started,
                              predictor, scratch is None,
                              lambda: fold_phases(started, fit_started, fit_ended, state["history"], epochs_before,
                                                  compiles_before))
    finally:
        set_precision("float32")
        if scratch is not None:
            scratch.cleanup()
    return result


def _probs_by_policy(predictor: Predictor, images, policy: str, multilabel: bool = False) -> dict[str, np.ndarray]:
    """Probabilities as is ("none") and with the run's TTA policy, from one pass over the views.

    The first view of every policy is the image as is, so the plain prediction is its slice.
    """
    view_logits = predictor(images)
    probs = {"none": average_views(view_logits[:1], multilabel=multilabel)}
    if policy != "none":
        probs[policy] = average_views(view_logits, policy=policy, multilabel=multilabel)
    return probs


def _finish_fold(config, net, val_x, val_y, test_x, fold, fold_dir, state, seconds,
                 predictor: Predictor | None = None, write: bool = True,
                 phases: Callable[[], dict] = dict) -> FoldResult:
    """Predict validation rows (and test) with the kept model, every TTA view of a batch in one
    compiled call; write the artifacts (unless not `write`: a process other than 0 of several, which
    predicts all the same, as the predictions are collectives), the curves after everything timed;
    metrics last."""
    predictor = predictor or Predictor(net, views_for(config.tta), view_fill(config.tta),
                                       call_rows(max(config.batch_size, 256)))
    multilabel = np.ndim(val_y) == 2
    val_probs = _probs_by_policy(predictor, val_x, config.tta, multilabel)
    check_finite_probs(val_probs, "validation", fold, config.lr)
    plain = val_probs["none"]
    accuracy, loss = score_accuracy(plain, val_y), log_loss(plain, val_y)
    result = FoldResult(fold, accuracy, loss, state["best_epoch"], state["epoch"], seconds, val_probs.get(config.tta))
    if fold_dir is None:
        result.phases = phases()
        return result
    metrics = {"fold": fold, "val_accuracy": accuracy, "val_loss": loss, "best_epoch": state["best_epoch"],
               "epochs_run": state["epoch"], "seconds": round(seconds, 2), "val_rows": len(val_y)}
    test_probs = _probs_by_policy(predictor, test_x, config.tta, multilabel) if test_x is not None else {}
    check_finite_probs(test_probs, "test", fold, config.lr)
    if not write:
        result.phases = phases()
        return result
    for policy, probs in val_probs.items():
        suffix = "" if policy == "none" else f".{policy}"
        save_npy(fold_dir / f"val_probs{suffix}.npy", probs.astype(np.float32))
        metrics[f"val_accuracy{suffix}"] = score_accuracy(probs, val_y)
        if policy in test_probs:
            save_npy(fold_dir / f"test_probs{suffix}.npy", test_probs[policy].astype(np.float32))
    result.phases = metrics["phases"] = phases()  # the curves below are not part of training's time
    plot_curves(state["history"], fold_dir / "curves.png", f"fold {fold}")
    write_json(fold_dir / "metrics.json", metrics)  # written last: its presence means "fold done"
    for name in ("checkpoint", "checkpoint.old", "checkpoint.new"):
        shutil.rmtree(fold_dir / name, ignore_errors=True)
    return result
