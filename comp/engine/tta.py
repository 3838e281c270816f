"""TTA prediction: every view of a policy (comp.config.tta_policy) in one compiled call, and the
averages of the views' logits or probabilities."""

from __future__ import annotations

import numpy as np

from comp.config.tta_policy import AVERAGES, DEFAULT_AVERAGE, WEIGHTED_POLICIES, views_for
from comp.core.errors import CompError
from comp.engine.inference import call_rows, predictor_for


# -- views and prediction ------------------------------------------------------------------


def view_fill(policy: str) -> str:
    """What a policy's shifts uncover: "zero", or "reflect" for the weighted policies that say so."""
    return WEIGHTED_POLICIES[policy].fill if policy in WEIGHTED_POLICIES else "zero"


def view(images: np.ndarray, flip: bool, dx: int, dy: int, fill: str = "zero") -> np.ndarray:
    """One TTA view of a uint8 batch (N,H,W,C): mirrored, then moved dx right and dy down, the
    uncovered border zero or (fill="reflect") mirrored without repeating the edge pixel."""
    out = images[:, :, ::-1] if flip else images
    if dx or dy:
        h, w = images.shape[1:3]
        pad = max(abs(dx), abs(dy))
        padded = np.pad(out, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode="reflect" if fill == "reflect" else "constant")
        out = padded[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]
    return np.ascontiguousarray(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """Each label's own probability (multi-label outputs); tanh form: no overflow for any logit."""
    return 0.5 * (1.0 + np.tanh(0.5 * logits))


def activate(logits: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """Probabilities from logits: softmax over the classes, or a sigmoid per label (multi-label)."""
    return sigmoid(logits) if multilabel else softmax(logits)


def predict_logits(net, images: np.ndarray, policy: str, batch_size: int = 512) -> np.ndarray:
    """Logits of every view: (views, N, classes), every view of a batch in one compiled call of
    `batch_size` net inputs (more on a GPU). The net outputs logits (see comp.nets.models)."""
    return predictor_for(net, views_for(policy), view_fill(policy), call_rows(batch_size))(images)


def average_probs(view_logits: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """Average the views' probabilities (N, classes)."""
    return activate(view_logits, multilabel).mean(axis=0)


def average_logits(view_logits: np.ndarray, multilabel: bool = False) -> np.ndarray:
    """Average the views' logits, then softmax (N, classes): a geometric mean of probabilities
    (multi-label: of each label's odds)."""
    return activate(view_logits.mean(axis=0), multilabel)


def average_views(view_logits: np.ndarray, average: str = DEFAULT_AVERAGE, policy: str | None = None,
                  multilabel: bool = False) -> np.ndarray:
    """(N, classes) probabilities of the views of `policy` (equal weights unless WEIGHTED_POLICIES
    says otherwise: then its weights and its own average); `multilabel`: sigmoids, not softmax."""
    if average not in AVERAGES:
        raise CompError(f"--tta-average {average}: choose one of {', '.join(AVERAGES)}")
    weighting = WEIGHTED_POLICIES.get(policy)
    if weighting:
        return activate(np.tensordot(np.asarray(weighting.weights), view_logits, axes=1), multilabel)
    return average_probs(view_logits, multilabel) if average == "probs" else average_logits(view_logits, multilabel)


def predict_probs(net, images: np.ndarray, policy: str = "none", batch_size: int = 512,
                  average: str = DEFAULT_AVERAGE) -> np.ndarray:
    return average_views(predict_logits(net, images, policy, batch_size), average, policy)
