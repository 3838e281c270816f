"""Batched inference with the compiled predict step, without Keras's predict() loop.

`Model.predict` hands every batch's output to a thread pool for its callbacks; on JAX that pool
was seen to stall for minutes (threads spinning in convert_to_numpy). `predict_on_batch` runs
the same compiled function with none of that. The last batch is padded to the full batch size,
so JAX compiles the predict step once instead of once more for the ragged remainder.
"""

from __future__ import annotations

import numpy as np


def predict_outputs(net, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The net's outputs for every image, (N, classes) float32: logits for comp's nets (see
    comp.models), probabilities for the transfer track's softmax heads."""
    batch_size = max(1, min(batch_size, len(images)))
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start:start + batch_size]
        rows = len(batch)
        if rows < batch_size:
            batch = np.concatenate([batch, np.zeros((batch_size - rows, *batch.shape[1:]), batch.dtype)])
        outputs.append(np.asarray(net.predict_on_batch(batch), dtype=np.float32)[:rows])
    return np.concatenate(outputs) if outputs else np.zeros((0, net.output_shape[-1]), np.float32)
