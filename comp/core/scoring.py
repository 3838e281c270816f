"""The two scores every stage reports for predicted probabilities: accuracy and log-loss."""

from __future__ import annotations

import numpy as np

LOSS_FLOOR = 1e-7  # a probability rounded to zero would make the log-loss infinite


def accuracy(probs: np.ndarray, labels: np.ndarray) -> float:
    return float((probs.argmax(1) == labels).mean())


def log_loss(probs: np.ndarray, labels: np.ndarray) -> float:
    """Mean cross-entropy of the true class's probability."""
    return float(-np.log(np.clip(probs[np.arange(len(labels)), labels], LOSS_FLOOR, 1)).mean())
