"""Test-time augmentation: predict several views of each image and average.

A policy is a list of views; a view is (flip, dx, dy): a horizontal flip and an integer shift
in pixels with zero fill, the same transforms training saw, so the net knows them.
"""

from __future__ import annotations

import numpy as np

TTA_POLICIES: dict[str, list[tuple[bool, int, int]]] = {
    "none": [(False, 0, 0)],
    "flip": [(False, 0, 0), (True, 0, 0)],
    # airbench's policy: both flips, each also shifted by one or two pixels.
    "flip-shift": [(f, dx, dy) for f in (False, True) for dx, dy in ((0, 0), (1, 1), (-1, -1), (2, 0), (0, -2))],
}


def policy_for_augment(augment: str) -> str:
    """TTA only with views the net was trained on: flips if it saw flips, shifts if it saw crops."""
    from .augment import parse_presets

    params = parse_presets(augment)
    if not params.get("flip"):
        return "none"
    return "flip-shift" if params.get("crop_pad") or params.get("shift") else "flip"


def view(images: np.ndarray, flip: bool, dx: int, dy: int) -> np.ndarray:
    """One TTA view of a uint8 batch (N,H,W,C)."""
    out = images[:, :, ::-1] if flip else images
    if dx or dy:
        h, w = images.shape[1:3]
        pad = max(abs(dx), abs(dy))
        padded = np.pad(out, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        out = padded[:, pad - dy:pad - dy + h, pad - dx:pad - dx + w]
    return np.ascontiguousarray(out)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def predict_logits(net, images: np.ndarray, policy: str, batch_size: int = 512) -> np.ndarray:
    """Logits of every view: (views, N, classes)."""
    return np.stack([
        np.asarray(net.predict(view(images, *v), batch_size=batch_size, verbose=0), dtype=np.float32)
        for v in TTA_POLICIES[policy]
    ])


def average_probs(view_logits: np.ndarray) -> np.ndarray:
    """Average the views' probabilities (N, classes)."""
    return softmax(view_logits).mean(axis=0)


def predict_probs(net, images: np.ndarray, policy: str = "none", batch_size: int = 512) -> np.ndarray:
    return average_probs(predict_logits(net, images, policy, batch_size))
