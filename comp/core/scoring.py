"""The two scores every stage reports for predicted probabilities: accuracy and log-loss."""

from __future__ import annotations

import numpy as np

LOSS_FLOOR = 1e-7  # a probability rounded to zero would make the log-loss infinite


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    """Share of rows whose argmax is the label; multi-label (labels a 0/1 matrix): share of
    (row, label) cells decided right at probability 0.5."""
    if np.ndim(labels) == 2:
        return float(((probs >= 0.5) == labels.astype(bool)).mean())
    return float((probs.argmax(1) == labels).mean())


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the true class's probability; multi-label: the binary cross-entropy
    summed over the labels, averaged over the rows (the training loss, comp.engine.step)."""
    if np.ndim(labels) == 2:
        clipped = np.clip(probs, LOSS_FLOOR, 1 - LOSS_FLOOR)
        cells = np.where(labels.astype(bool), np.log(clipped), np.log1p(-clipped))
        return float(-cells.sum(1).mean())
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], LOSS_FLOOR, 1)).mean())
