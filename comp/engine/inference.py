"""Batched inference: every TTA view of a batch in one compiled call, over large batches.

A `Predictor` wraps a net in `ViewsNet`, whose call makes the views of a batch on the device
(flip, and shift by pad-and-slice) and runs the net on all of them: (views, batch, classes)
logits per call, so a policy of 10 views costs one call per batch rather than ten, and no view
of the whole set is ever copied on the host. Batches are sliced from the images as needed (a
memory-mapped set is read batch by batch), the last one padded to the full size: one program.

On JAX the calls are a jitted `stateless_call`, dispatched without waiting and read back at the
end (`predict_on_batch` syncs and writes every variable back on each call: 3.2 ms against
0.9 ms per call). Keras's `Model.predict` is avoided everywhere: it hands every batch's output to
a thread pool for its callbacks, and on JAX that pool was seen to stall for minutes.
"""

from __future__ import annotations

import numpy as np
from comp.core.backend import accelerator
from comp.engine.devices import data_parallel, sharded, to_host

# Net inputs per compiled call on a GPU (images x views): large calls keep it busy, few calls
# keep the host out of the way. On a CPU the caller's batch stands: memory, not calls, limits there.
GPU_CALL_ROWS = 8192


def call_rows(batch_size: int) -> int:
    """Net inputs per predict call on this machine for a run of `batch_size`."""
    return max(batch_size, GPU_CALL_ROWS) if accelerator() else batch_size


def shift_view(images, flip: bool, dx: int, dy: int, fill: str = "zero"):
    """tta.view in keras.ops: mirrored, then moved dx right and dy down; what the shift uncovers is
    zero or (fill="reflect") mirrored without repeating the edge pixel. Static per view."""
    from keras import ops

    out = ops.flip(images, axis=2) if flip else images
    if not (dx or dy):
        return out
    height, width = images.shape[1], images.shape[2]
    pad = max(abs(dx), abs(dy))
    padded = ops.pad(out, [[0, 0], [pad, pad], [pad, pad], [0, 0]], mode="reflect" if fill == "reflect" else "constant")
    return padded[:, pad - dy:pad - dy + height, pad - dx:pad - dx + width, :]


def _views_net(net, views: tuple, fill: str):
    import keras
    from keras import ops

    class ViewsNet(keras.Model):
        """pixels (batch, H, W, C) -> logits of every view (views, batch, classes)."""

        def __init__(self, **kwargs):
            super().__init__(dtype="float32", **kwargs)  # views exact in float32; the net keeps its policy
            self.net = net
            self.built = True

        def call(self, pixels):
            images = ops.cast(pixels, "float32")
            return ops.stack([ops.cast(self.net(shift_view(images, *v, fill=fill)), "float32") for v in views])

    return ViewsNet(name="views")


class Predictor:
    """Logits of `views` of images through `net`: (views, N, classes) float32."""

    def __init__(self, net, views, fill: str = "zero", rows_per_call: int = 512):
        self.views = tuple(tuple(v) for v in views)
        self.model = _views_net(net, self.views, fill)
        devices = data_parallel()  # a call's images split evenly over the devices
        self.batch = max(devices, rows_per_call // len(self.views) // devices * devices)  # images per call
        self._jitted = None

    def _batches(self, images):
        for start in range(0, len(images), self.batch):
            batch = np.asarray(images[start:start + self.batch])
            rows = len(batch)
            if rows < self.batch:  # one shape, one program
                batch = np.concatenate([batch, np.zeros((self.batch - rows, *batch.shape[1:]), batch.dtype)])
            yield batch, rows

    def _jax_call(self):
        if self._jitted is None:
            import jax

            model = self.model
            self._jitted = jax.jit(lambda trainable, other, x: model.stateless_call(trainable, other, x)[0])
        return self._jitted

    def __call__(self, images) -> np.ndarray:
        import keras

        classes = self.model.net.output_shape[-1]
        if len(images) == 0:
            return np.zeros((len(self.views), 0, classes), np.float32)
        if keras.backend.backend() == "jax":
            call = self._jax_call()
            trainable = [v.value for v in self.model.trainable_variables]
            other = [v.value for v in self.model.non_trainable_variables]
            pending = [(call(trainable, other, sharded(batch)), rows) for batch, rows in self._batches(images)]
            outputs = [to_host(out)[:, :rows] for out, rows in pending]
        else:
            outputs = [np.asarray(self.model.predict_on_batch(batch))[:, :rows] for batch, rows in self._batches(images)]
        return np.concatenate(outputs, axis=1).astype(np.float32, copy=False)


_last: tuple | None = None  # (net, views, fill, rows_per_call, Predictor): consecutive calls share a program


def predictor_for(net, views, fill: str = "zero", rows_per_call: int = 512) -> Predictor:
    """A Predictor, the same one as the last call's for the same net and views (a fold's
    validation and test predictions compile once)."""
    global _last
    key = (tuple(tuple(v) for v in views), fill, rows_per_call)
    if _last is None or _last[0] is not net or _last[1] != key:
        _last = (net, key, Predictor(net, views, fill, rows_per_call))
    return _last[2]


def predict_outputs(net, images: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """The net's outputs for every image, (N, classes) float32: logits for comp's nets (see
    comp.nets.models), probabilities for the transfer track's softmax heads."""
    return predictor_for(net, [(False, 0, 0)], rows_per_call=max(1, batch_size))(images)[0]
