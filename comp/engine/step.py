"""The compiled train step: augment -> mix -> net -> smoothed cross-entropy, in `TrainingModel`."""

from __future__ import annotations

import keras
from keras import ops


# Imports keras at module level: import this module only after the backend is chosen.
#
# The step lives in `TrainingModel`, a thin keras.Model around the plain net. Its call takes a
# batch (pixels and labels, or row numbers into the fold's rows held on the device), augments
# and mixes it on the device when training, and returns the logits, the (mixed) targets and the
# labels, so `compute_loss` can use soft targets. Only the plain net is saved as model.keras;
# the wrapper exists for fit().


def smoothed_cross_entropy(logits, targets, label_smoothing: float, num_classes: int, class_weights=None):
    """Mean cross-entropy of logits against (soft) targets smoothed toward uniform (keras.ops).

    With `class_weights` (num_classes,), each row's loss is weighted by its target's class weight,
    a mixed row's by the mix of its two classes' weights (the targets before smoothing: smoothing
    spreads probability, not importance), as scikit-learn's sample weights would weigh it.
    """
    logits, targets = ops.cast(logits, "float32"), ops.cast(targets, "float32")
    row_weights = None if class_weights is None else ops.sum(targets * ops.cast(class_weights, "float32"), axis=-1)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    losses = -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)
    return ops.mean(losses if row_weights is None else losses * row_weights)


def binary_cross_entropy(logits, targets, label_smoothing: float):
    """Multi-label: the sigmoid cross-entropy of logits against (mixed) 0/1 targets, each smoothed
    toward 1/2, summed over the labels and averaged over the rows (keras.ops). Summed, as the
    softmax cross-entropy sums over the classes: each logit's gradient is then sigmoid(z) - t,
    the scale the nets' learning rates were tuned at (a mean over L labels would cut it L-fold:
    the fast net at its own lr learned next to nothing on 10 labels). From logits, stable for any
    value: max(z, 0) - z t + log(1 + exp(-|z|))."""
    logits, targets = ops.cast(logits, "float32"), ops.cast(targets, "float32")
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / 2
    cells = ops.relu(logits) - logits * targets + ops.log1p(ops.exp(-ops.abs(logits)))
    return ops.mean(ops.sum(cells, axis=-1))


class TrainingModel(keras.Model):
    """fit() wrapper: augmentation and mixup inside the compiled train step.

    A batch is {"pixels", "labels"} (uint8 images and class numbers from the host) or {"rows"}:
    row numbers into `store`, the fold's rows already on the device. On JAX a batch of rows may
    hold several steps ({"rows": (k, batch), "valid": (k,)}): they run in one dispatch, a scan
    of the one-step program (see train_step).
    """

    def __init__(self, net, augment, mix, num_classes: int, label_smoothing: float, store=None,
                 class_weighted: bool = False, multilabel: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.net, self.augment, self.mix, self.store = net, augment, mix, store
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        # --class-weight balanced: the loss weight of each class, a variable the fold fills from its
        # own training rows (set_class_weights), so every fold runs the one compiled program.
        self.class_weights = self.add_weight(shape=(num_classes,), initializer="ones", trainable=False,
                                             name="class_weights") if class_weighted else None
        # Multi-label: labels are multi-hot rows, the outputs sigmoids, the loss binary cross-entropy.
        self.multilabel = multilabel
        # The model's own metric (not compile's): it exists before the first batch, so fit never
        # has to trace the model on a sample batch to build it.
        self.accuracy_metric = (keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0) if multilabel
                                else keras.metrics.SparseCategoricalAccuracy(name="accuracy"))
        self.built = True  # the net is a built functional model; augment, mix and store build in __init__

    def build(self, input_shape=None):
        pass  # built in __init__: fit must never trace the model on a sample batch to build it

    def set_class_weights(self, weights) -> None:
        self.class_weights.assign(ops.convert_to_tensor(weights, "float32"))

    def pixels_and_labels(self, batch):
        if "rows" in batch:
            return self.store.gather(batch["rows"])
        return batch["pixels"], batch["labels"]

    def call(self, inputs, training=False):
        pixels, labels = self.pixels_and_labels(inputs)
        images = ops.cast(pixels, "float32")  # data travels as uint8; cast on the device
        targets = ops.cast(labels, "float32") if self.multilabel else ops.one_hot(labels, self.num_classes)
        if training:
            images = self.augment(images, training=True)
            images, targets = self.mix(images, targets, training=True)
        return {"logits": self.net(images, training=training), "targets": targets, "labels": labels}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        if self.multilabel:
            return binary_cross_entropy(y_pred["logits"], y_pred["targets"], self.label_smoothing)
        return smoothed_cross_entropy(y_pred["logits"], y_pred["targets"], self.label_smoothing, self.num_classes,
                                      self.class_weights)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        self.accuracy_metric.update_state(y_pred["labels"], y_pred["logits"])
        return self.get_metrics_result()

    def train_step(self, *args):
        batch, _, _ = keras.utils.unpack_x_y_sample_weight(args[-1])
        if keras.backend.backend() == "jax" and "valid" in batch:
            return self._scanned_train_steps(args[0], batch)
        return super().train_step(*args)

    def _scanned_train_steps(self, state, data):
        """JAX: the batch's k steps in one dispatch, a scan of Keras's one-step train_step.

        Steps marked not valid (the padding of an epoch's last dispatch) leave the state as it
        was: lax.cond runs only the branch taken, so they cost nothing. The logs are the metrics
        after the last step, as Keras's own step returns them.
        """
        import jax

        one_step = super().train_step

        def step(state, batch):
            rows, valid = batch
            return jax.lax.cond(valid, lambda s: one_step(s, {"rows": rows})[1], lambda s: s, state), None

        state, _ = jax.lax.scan(step, state, (data["rows"], data["valid"]))
        with keras.StatelessScope(state_mapping=list(zip(self.metrics_variables, state[-1]))):
            logs = self.get_metrics_result()
        return logs, state
