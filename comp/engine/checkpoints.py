"""Fold checkpoints: weights, optimizer and random states saved crash-safe, checked and resumed."""

from __future__ import annotations

import shutil
from pathlib import Path

import keras
import numpy as np
from rich.markup import escape

from comp.core.console import warn
from comp.core.errors import CompError, one_line, retrain_fold_fix
from comp.core.fileio import DAMAGED_FILE_ERRORS, read_json, write_json
from comp.engine.step import TrainingModel


# -- checkpoints -------------------------------------------------------------------------------


def random_state_variables(model) -> list:
    """The SeedGenerator states (augmentation, mixing, dropout): what Layer.variables holds beyond
    Layer.weights. save_weights keeps weights only; without these a resumed fold would replay
    the random draws of its first epochs."""
    weights = {id(w) for w in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def _save_arrays(path: Path, variables) -> None:
    np.savez(path, *[keras.ops.convert_to_numpy(v) for v in variables])


def _load_arrays(path: Path, variables) -> None:
    with np.load(path) as saved:
        values = [saved[f"arr_{i}"] for i in range(len(saved.files))]
    shapes = [tuple(v.shape) for v in variables]
    if [tuple(value.shape) for value in values] != shapes:
        raise ValueError(f"{path.name} holds {len(values)} arrays that do not match the model's {len(shapes)}")
    for variable, value in zip(variables, values):
        variable.assign(value)


def _save_checkpoint(fold_dir: Path, model: TrainingModel, state: dict) -> None:
    """Weights, optimizer state, random states and progress, swapped in as one folder (crash-safe)."""
    new, current, old = fold_dir / "checkpoint.new", fold_dir / "checkpoint", fold_dir / "checkpoint.old"
    shutil.rmtree(new, ignore_errors=True)
    new.mkdir(parents=True)
    model.save_weights(new / "model.weights.h5")
    _save_arrays(new / "optimizer.npz", model.optimizer.variables)
    _save_arrays(new / "random.npz", random_state_variables(model))
    write_json(new / "state.json", state)  # written last: its presence means "complete"
    shutil.rmtree(old, ignore_errors=True)
    if current.exists():
        current.rename(old)
    new.rename(current)
    shutil.rmtree(old, ignore_errors=True)


def _checkpoint_damage(checkpoint: Path) -> str | None:
    """Why `checkpoint` cannot be loaded (a file missing, cut short or corrupt), or None.

    Reads every file whole before the model is touched, so a damaged checkpoint never half-loads.
    """
    import h5py

    def read_dataset(_name, item):
        if isinstance(item, h5py.Dataset):
            item[()]  # noqa: B018 -- reading is the check

    try:
        read_json(checkpoint / "state.json")
        with h5py.File(checkpoint / "model.weights.h5", "r") as weights:
            weights.visititems(read_dataset)
        for name in ("optimizer.npz", "random.npz"):
            with np.load(checkpoint / name) as saved:
                for key in saved.files:
                    saved[key]  # noqa: B018
    except (*DAMAGED_FILE_ERRORS, RuntimeError) as err:  # h5py raises RuntimeError on some bad metadata
        return one_line(err, 160)
    return None


def _load_checkpoint(checkpoint: Path, model: TrainingModel, fold: int) -> dict:
    """The checkpoint into `model`; one line with the fix when it was written for another model
    (e.g. by an older comp whose net had other variables): loading it partly would be silent damage."""
    try:
        model.load_weights(checkpoint / "model.weights.h5")
        _load_arrays(checkpoint / "optimizer.npz", model.optimizer.variables)
        _load_arrays(checkpoint / "random.npz", random_state_variables(model))
    except ValueError as err:
        raise CompError(f"{checkpoint}: does not fit this run's model ({one_line(err, 160)}); it was written by "
                        f"another version of comp: {retrain_fold_fix(checkpoint.parent.parent, fold)}") from None
    return read_json(checkpoint / "state.json")


def _find_checkpoint(fold_dir: Path) -> Path | None:
    """The newest complete checkpoint folder (state.json is written last), or None."""
    for name in ("checkpoint", "checkpoint.old"):  # .old survives a crash between the two renames
        if (fold_dir / name / "state.json").exists():
            return fold_dir / name
    return None


def _resume(fold_dir: Path, model: TrainingModel, fold: int) -> dict | None:
    """Load the newest readable checkpoint into `model` and return its state; None: start afresh.

    The previous buffer (checkpoint.old) stands in for a damaged newest one (a full disk, a copy
    cut short). A damaged checkpoint is said and removed, so it cannot stop the fold on every rerun.
    """
    damaged = []
    while (checkpoint := _find_checkpoint(fold_dir)) and checkpoint not in damaged:
        problem = _checkpoint_damage(checkpoint)
        if problem is None:
            if checkpoint.name != "checkpoint":  # the older buffer becomes the current one again
                shutil.rmtree(fold_dir / "checkpoint", ignore_errors=True)  # an incomplete one in its way
                checkpoint = checkpoint.rename(fold_dir / "checkpoint")
            return _load_checkpoint(checkpoint, model, fold)
        warn(f"{checkpoint}: damaged ({escape(problem)}); removed it")
        shutil.rmtree(checkpoint, ignore_errors=True)
        damaged.append(checkpoint)
    if damaged:
        warn(f"fold {fold}: no readable checkpoint left; training it again from the first epoch")
    return None
