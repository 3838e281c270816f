"""Pseudo-labelling: confident test predictions of earlier runs become extra training rows.

`comp train --pseudo RUN[,RUN] --threshold P` (RunConfig.pseudo, pseudo_threshold): every fold of the
new run trains on its usual rows plus the test images its teachers predict with probability >= P,
labelled with that prediction. Validation rows never change, and fold k takes its teachers' fold-k
test predictions only -- made by models that never saw fold k's validation rows -- so nothing of
those rows' labels reaches fold k through the pseudo-labels, and the new run's OOF score stays honest.
That needs teachers on the same data, the same fold split and the same train rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from comp.core.errors import CompError
from comp.store.runs import check_same_data, load_run, require_finished
from comp.core.fileio import load_npy


@dataclass
class PseudoLabels:
    rows: np.ndarray  # test rows taken (indices into the test set)
    labels: np.ndarray  # their labels (class indices)


def teacher_names(config) -> list[str]:
    return [name.strip() for name in config.pseudo.split(",") if name.strip()]


def load_teachers(workspace, config, dataset, split) -> list:
    """The teacher runs, checked to be usable per fold; [] without pseudo-labelling."""
    names = teacher_names(config)
    if not names:
        return []
    if getattr(dataset, "multilabel", False):
        raise CompError(f"--pseudo {config.pseudo}: pseudo-labels are single-label (the top class of a test image); "
                        "this data is multi-label: train without --pseudo")
    if config.run_name in names:
        raise CompError(f"--pseudo {config.pseudo}: a run cannot teach itself; name other runs")
    teachers = [load_run(workspace, name) for name in names]
    for teacher in teachers:
        require_finished(teacher)
        check_same_data(teacher, dataset, "pseudo-labels must come from runs on this data")
        if teacher.split_hash != split.hash:
            raise CompError(f"--pseudo {teacher.name}: trained on another fold split ({teacher.split_hash}, this "
                            f"run uses {split.hash}); its fold-k test predictions would carry labels of this "
                            "run's fold-k validation rows. Use teachers trained on the current folds/folds.csv")
        if not np.array_equal(teacher.oof_rows(), dataset.rows[split.covered(dataset.rows, teacher.folds)]):
            raise CompError(f"--pseudo {teacher.name}: trained on other train rows (another --limit); "
                            "use teachers trained on the same rows")
        missing = sorted(set(config.run_fold_indices) - set(teacher.folds))
        if missing:
            raise CompError(f"--pseudo {teacher.name}: a holdout run of {len(teacher.folds)} of {teacher.k} folds has "
                            f"no fold-{missing[0]} test predictions for this run's fold {missing[0]}; use a teacher "
                            "that trained every fold this run trains (or --run-folds to match it)")
    return teachers


def fold_pseudo_labels(teachers: list, fold: int, threshold: float) -> PseudoLabels:
    """Fold `fold`'s pseudo-labels: the mean of the teachers' fold-`fold` test probabilities
    (each with its own TTA policy), kept where the top class reaches `threshold`."""
    probs = np.mean([teacher_fold_test_probs(teacher, fold) for teacher in teachers], axis=0)
    confident = np.flatnonzero(probs.max(axis=1) >= threshold)
    return PseudoLabels(confident, probs[confident].argmax(axis=1))


def teacher_fold_test_probs(teacher, fold: int) -> np.ndarray:

    path = teacher.fold_dir(fold) / f"test_probs{teacher.own_tag}.npy"
    return load_npy(path, f"retrain or re-predict the teacher run {teacher.name}")


def with_pseudo_rows(train_x, train_y, test_x, pseudo: PseudoLabels | None):
    """The fold's training rows with the pseudo-labelled test images appended (copies only when there are any)."""
    if pseudo is None or not len(pseudo.rows):
        return train_x, train_y
    return (np.concatenate([np.asarray(train_x), np.asarray(test_x[pseudo.rows])]),
            np.concatenate([np.asarray(train_y), pseudo.labels.astype(np.asarray(train_y).dtype)]))
