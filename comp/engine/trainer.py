"""Training one fold: the compiled step (augment -> mix -> net -> loss), checkpoints, artifacts.

Imports keras at module level: import this module only after the backend is chosen.

The step lives in `TrainingModel`, a thin keras.Model around the plain net. Its call takes a
batch (pixels and labels, or row numbers into the fold's rows held on the device), augments
and mixes it on the device when training, and returns the logits, the (mixed) targets and the
labels, so `compute_loss` can use soft targets. Only the plain net is saved as model.keras;
the wrapper exists for fit().

Compile once: everything fitted on a fold's rows (normalisation, whitening) is a variable, so
every fold, seed and trial of one config traces the same programs. `prepare_engine` keeps the
last config's compiled model in the process and, for the next fold, only loads that fold's
freshly built initial state into it (the persistent cache covers new processes).
"""

from __future__ import annotations

import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import keras
import numpy as np
import pandas as pd
from keras import ops
from rich.markup import escape

from comp.nets import layers as _registered_layers  # noqa: F401 -- comp's layers, for load_model
from comp.engine.augment import make_augment_layer, make_mix_layer
from comp.config.run_config import RunConfig
from comp.core.console import warn
from comp.core.errors import CompError, one_line, retrain_fold_fix
from comp.core.fileio import DAMAGED_FILE_ERRORS, atomic_path, read_json, save_csv, save_npy, write_json
from comp.nets.saving import load_keras_model
from comp.engine.keras_private import variable_index
from comp.nets.layers import AirbenchBatchNorm
from comp.nets.lookahead import LOOKAHEAD_EVERY, lookahead_pull
from comp.engine.inference import Predictor, call_rows
from comp.nets.models import build_model
from comp.core.scoring import accuracy as score_accuracy, log_loss
from comp.engine.tta import average_views, view_fill
from comp.config.tta_policy import views_for

# A checkpoint (weights + optimizer state, tens of MB for the big nets) is written at an epoch's
# end once this many seconds passed since the last one: a kill loses at most this much work,
# and GPU epochs of a second or two do not spend their time writing files.
CHECKPOINT_SECONDS = float(os.environ.get("COMP_CHECKPOINT_SECONDS", "30"))
# Training deadlines per fold, {"fold": unix seconds} as JSON (comp auto sets it for its folds): a
# fold whose next epoch would end past its deadline stops after this one, said, so a plan that runs
# slower than measured still keeps its time budget.
DEADLINES_ENV = "COMP_FOLD_DEADLINES"

PRECISION_POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}


def smoothed_cross_entropy(logits, targets, label_smoothing: float, num_classes: int):
    """Mean cross-entropy of logits against (soft) targets smoothed toward uniform (keras.ops)."""
    logits, targets = ops.cast(logits, "float32"), ops.cast(targets, "float32")
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return ops.mean(-ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1))


class TrainingModel(keras.Model):
    """fit() wrapper: augmentation and mixup inside the compiled train step.

    A batch is {"pixels", "labels"} (uint8 images and class numbers from the host) or {"rows"}:
    row numbers into `store`, the fold's rows already on the device. On JAX a batch of rows may
    hold several steps ({"rows": (k, batch), "valid": (k,)}): they run in one dispatch, a scan
    of the one-step program (see train_step).
    """

    def __init__(self, net, augment, mix, num_classes: int, label_smoothing: float, store=None, **kwargs):
        super().__init__(**kwargs)
        self.net, self.augment, self.mix, self.store = net, augment, mix, store
        self.num_classes, self.label_smoothing = num_classes, label_smoothing
        # The model's own metric (not compile's): it exists before the first batch, so fit never
        # has to trace the model on a sample batch to build it.
        self.accuracy_metric = keras.metrics.SparseCategoricalAccuracy(name="accuracy")
        self.built = True  # the net is a built functional model; augment, mix and store build in __init__

    def build(self, input_shape=None):
        pass  # built in __init__: fit must never trace the model on a sample batch to build it

    def pixels_and_labels(self, batch):
        if "rows" in batch:
            return self.store.gather(batch["rows"])
        return batch["pixels"], batch["labels"]

    def call(self, inputs, training=False):
        pixels, labels = self.pixels_and_labels(inputs)
        images = ops.cast(pixels, "float32")  # data travels as uint8; cast on the device
        targets = ops.one_hot(labels, self.num_classes)
        if training:
            images = self.augment(images, training=True)
            images, targets = self.mix(images, targets, training=True)
        return {"logits": self.net(images, training=training), "targets": targets, "labels": labels}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        return smoothed_cross_entropy(y_pred["logits"], y_pred["targets"], self.label_smoothing, self.num_classes)

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


# -- the fold's rows ---------------------------------------------------------------------------


class Rows:
    """Rows `positions` of a (memory-mapped) image array, read only when asked: a slice or a
    gather reads just those rows, so a fold's rows need not be copied out of the cache whole
    (np.asarray(rows) still does, for the tf.data pipeline). What train_fold takes as images."""

    def __init__(self, array, positions):
        self.array, self.positions = array, np.asarray(positions)
        self.shape, self.dtype = (len(self.positions), *array.shape[1:]), array.dtype

    def __len__(self):
        return len(self.positions)

    def __getitem__(self, index):
        return self.array[self.positions[index]]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.array[self.positions], dtype=dtype)



STORE_ROWS_MULTIPLE = 1024  # the device store's rows, rounded up: folds of a split differ by a row or so
FILL_CHUNK = 8192  # rows read from the cache and sent to the device at a time (75 MB of 32x32 RGB)
# Steps per dispatch on JAX with an accelerator: the host then speaks to the device once per this
# many steps. A scan compiles one step whatever the count; 8 keeps a short epoch's padding (skipped
# steps) small. On JAX's CPU one: XLA:CPU ran the scanned steps 18x slower than single ones
# (`fast` width 0.25, 4,000 rows: 113 s against 6.1 s an epoch; bench/RESULTS.md).
JAX_STEPS_PER_DISPATCH = 8
JAX_CPU_STEPS_PER_DISPATCH = 1


def store_capacity(rows: int) -> int:
    return -(-rows // STORE_ROWS_MULTIPLE) * STORE_ROWS_MULTIPLE


class FoldStore(keras.layers.Layer):
    """The fold's training images (uint8) and labels as device variables, filled once per fold.

    The train step gathers its batch from here by row number, so no pixel crosses from the host
    during an epoch. The capacity (rows, rounded up) is part of the compiled program's shapes,
    hence the rounding: every fold of a split fits the same program. Never in a checkpoint: the
    rows are the fold's data, not training state.
    """

    def __init__(self, capacity: int, image_shape, **kwargs):
        super().__init__(**kwargs)
        self.images = self.add_weight(shape=(capacity, *image_shape), dtype="uint8", initializer="zeros",
                                      trainable=False, name="images")
        self.labels = self.add_weight(shape=(capacity,), dtype="int32", initializer="zeros", trainable=False,
                                      name="labels")
        self.built = True

    def fill(self, images, labels: np.ndarray) -> None:
        """The rows to the device, a chunk at a time (the host never holds them all); the rows
        past len(labels) hold zeros or old rows (never read). Every chunk has one shape and the
        labels go whole, so a fold of another row count fills with the programs of the last."""
        rows, capacity = len(labels), self.labels.shape[0]
        if rows > capacity:
            raise ValueError(f"{rows} rows do not fit a store of {capacity}")
        chunk_rows = min(FILL_CHUNK, capacity)
        corner = [0] * (len(self.images.shape) - 1)
        for start in range(0, rows, chunk_rows):
            start = min(start, capacity - chunk_rows)  # the last chunk ends at the capacity
            chunk = np.asarray(images[start:start + chunk_rows])
            if len(chunk) < chunk_rows:  # the rows end inside this chunk: padded to the one shape
                chunk = np.concatenate([chunk, np.zeros((chunk_rows - len(chunk), *chunk.shape[1:]), np.uint8)])
            self.images.assign(ops.slice_update(self.images.value, [start] + corner,
                                                ops.convert_to_tensor(chunk, "uint8")))
        padded_labels = np.zeros(capacity, np.int32)
        padded_labels[:rows] = labels
        self.labels.assign(ops.convert_to_tensor(padded_labels, "int32"))

    def gather(self, rows):
        return ops.take(self.images, rows, axis=0), ops.take(self.labels, rows, axis=0)

    def save_own_variables(self, store):
        pass

    def load_own_variables(self, store):
        pass


class BatchOrder(keras.callbacks.Callback):
    """Which rows make each batch of an epoch: a pure function of (seed, epoch).

    A fold resumed at epoch k (fit from initial_epoch=k) draws the very batches an uninterrupted
    one drew in epoch k, whatever ran before; fit names the epoch (on_epoch_begin) before the
    epoch's first batch is read. Full batches only: equal batch shapes mean one compiled step
    (a ragged last batch would compile a second one on JAX), and the rows left over differ from
    epoch to epoch, so every row is still seen. Rows are sorted within a batch (faster reads).
    Every input path (device rows, tf.data, ShuffledBatches) reads its batches from here.
    """

    def __init__(self, rows: int, batch_size: int, seed: int):
        super().__init__()
        self.rows, self.seed = rows, seed
        self.batch_size = min(batch_size, rows)
        self.steps = rows // self.batch_size
        self.epoch = 0
        self._batches: tuple[int, np.ndarray] | None = None  # (epoch, its batches), drawn once per epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def batch_rows(self) -> np.ndarray:
        """(steps, batch_size) row indices of the current epoch's batches."""
        if self._batches is None or self._batches[0] != self.epoch:
            order = np.random.default_rng([self.seed, self.epoch]).permutation(self.rows)
            batches = order[:self.steps * self.batch_size].reshape(self.steps, self.batch_size)
            self._batches = (self.epoch, np.sort(batches, axis=1))
        return self._batches[1]


class RowBatches(keras.utils.PyDataset):
    """The epoch's batches as row numbers into a FoldStore, `steps_per_dispatch` steps a batch.

    With one step a batch is {"rows": (batch,)}; with k, {"rows": (k, batch), "valid": (k,)},
    the epoch's last one padded with repeats of a real batch marked not valid (skipped).
    """

    def __init__(self, order: BatchOrder, steps_per_dispatch: int):
        super().__init__()
        self.order, self.per_dispatch = order, max(1, min(steps_per_dispatch, order.steps))

    def __len__(self):
        return -(-self.order.steps // self.per_dispatch)

    def __getitem__(self, index):
        rows = self.order.batch_rows()[index * self.per_dispatch:(index + 1) * self.per_dispatch].astype(np.int32)
        if self.per_dispatch == 1:
            return ({"rows": rows[0]},)
        valid = np.arange(self.per_dispatch) < len(rows)
        rows = np.concatenate([rows, np.repeat(rows[:1], self.per_dispatch - len(rows), axis=0)])
        return ({"rows": rows, "valid": valid},)


class ShuffledBatches(keras.utils.PyDataset):
    """Batches of {pixels, labels} gathered on the host, in the order of `self.order` (pass it to
    fit as a callback)."""

    def __init__(self, images, labels, batch_size: int, seed: int):
        super().__init__()
        self.images, self.labels = images, labels
        self.order = BatchOrder(len(labels), batch_size, seed)

    def __len__(self):
        return self.order.steps

    def __getitem__(self, index):
        rows = self.order.batch_rows()[index]
        return ({"pixels": self.images[rows], "labels": self.labels[rows].astype(np.int32)},)


def tf_batches(images, labels, order: BatchOrder):
    """The same batches as ShuffledBatches as a tf.data pipeline: Keras's own for arrays (the
    arrays held as one tensor, each batch gathered in C++), with BatchOrder's rows in place of its
    tf.random.shuffle, which a resumed fit cannot replay.

    Only the epoch's row indices come from Python, once an epoch: a generator holding the images
    would be registered globally by tf.data and leak its copy of them on every fold.
    """
    import tensorflow as tf

    epoch_rows = tf.data.Dataset.from_generator(
        lambda: iter([order.batch_rows()]),  # called as each epoch's iteration starts
        output_signature=tf.TensorSpec((order.steps, order.batch_size), tf.int64))
    rows = epoch_rows.unbatch().apply(tf.data.experimental.assert_cardinality(order.steps))
    arrays = tf.data.Dataset.from_tensors((images, labels.astype(np.int32))).repeat()

    def gather(batch_rows, data):
        pixels, classes = (tf.gather(array, batch_rows) for array in data)
        return ({"pixels": pixels, "labels": classes},)

    # No AUTOTUNE: its tuning thread sleeps up to a minute between rounds, and fit's end-of-epoch
    # deletion of the iterator waits for it. Epochs of ~90 s took ~141 s one time in two on this
    # CPU (bench/tf_data_teardown.py). A gather of one batch costs microseconds: one call at a
    # time, a few batches ahead, keeps the step fed.
    options = tf.data.Options()
    options.autotune.enabled = False
    return tf.data.Dataset.zip((rows, arrays)).map(gather).prefetch(TF_PREFETCH_BATCHES).with_options(options)


# tf.data holds the fold's rows as one in-memory tensor; above this many bytes of rows, TensorFlow
# reads its batches from the (memory-mapped) cache instead (ShuffledBatches), so RAM stays bounded.
TF_IN_MEMORY_BYTES = 2 * 1024 ** 3


def uses_device_rows() -> bool:
    """Whether training reads its batches from a FoldStore (JAX) or from the host (TensorFlow:
    its tf.data pipeline measured faster on a CPU, bench/RESULTS.md; torch: ShuffledBatches)."""
    return keras.backend.backend() == "jax"


def steps_per_dispatch() -> int:
    from comp.core.backend import accelerator

    if keras.backend.backend() != "jax":
        return 1
    return JAX_STEPS_PER_DISPATCH if accelerator() else JAX_CPU_STEPS_PER_DISPATCH


def training_inputs(images, labels, batch_size: int, seed: int, store: FoldStore | None = None) -> tuple[dict, int]:
    """fit() arguments for the training rows (their BatchOrder among the callbacks), and the
    optimizer steps per epoch.

    With a store: the rows go to the device once and batches are row numbers (RowBatches).
    Else TensorFlow gets a tf.data pipeline (C++, no Python per batch) while the rows fit
    TF_IN_MEMORY_BYTES, and ShuffledBatches otherwise, as the other backends do (read from the
    cache batch by batch). Every path draws the same batches.
    """
    order = BatchOrder(len(labels), batch_size, seed)
    row_bytes = int(np.prod(images.shape[1:])) * np.dtype(images.dtype).itemsize
    if store is not None:
        store.fill(images, labels)
        x = RowBatches(order, steps_per_dispatch())
    elif keras.backend.backend() == "tensorflow" and len(labels) * row_bytes <= TF_IN_MEMORY_BYTES:
        x = tf_batches(np.asarray(images), labels, order)
    else:
        x = ShuffledBatches(images, labels, batch_size, seed)
        order = x.order
    return {"x": x, "shuffle": False, "callbacks": [order]}, order.steps

# -- optimiser and schedule --------------------------------------------------------------------


ONE_CYCLE_START = 0.2  # airbench's triangle starts from a fifth of the peak (no dead first steps)


class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
    """Linear ramp from START*peak to the peak, then linear decay to end*peak (airbench's triangle).

    Step s (from 0) of T: 0.2 + 0.8 s/W before the peak step W, then 1 - (1 - end)(s - W)/(T - W),
    held at end*peak after T: airbench's get_lr, which its LambdaLR evaluates at the same s.
    """

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, end: float = 0.07):
        self.peak, self.warmup_steps, self.total_steps = peak, max(1, warmup_steps), max(2, total_steps)
        self.end = end

    def __call__(self, step):
        step = ops.cast(step, "float32")
        up = ONE_CYCLE_START + (1.0 - ONE_CYCLE_START) * step / self.warmup_steps
        progress_down = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        down = 1.0 - (1.0 - self.end) * ops.minimum(1.0, progress_down)
        return self.peak * ops.where(step < self.warmup_steps, up, down)

    def get_config(self):
        return {"peak": self.peak, "warmup_steps": self.warmup_steps, "total_steps": self.total_steps,
                "end": self.end}


def make_schedule(config: RunConfig, steps_per_epoch: int):
    total = config.total_steps(steps_per_epoch)
    warmup = int(config.warmup_epochs * steps_per_epoch)
    if config.schedule == "cosine":
        return keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=config.lr * 1e-2 if warmup else config.lr,
            decay_steps=max(1, total - warmup), alpha=0.0,
            warmup_target=config.lr if warmup else None, warmup_steps=warmup)
    if config.schedule == "onecycle":
        return OneCycle(config.lr, warmup or int(config.lr_peak_at * total), total, config.lr_end)
    return config.lr


def is_batchnorm_bias(variable) -> bool:
    """BatchNorm's beta: the nets' only bias apart from a whitening layer's (airbench's "norm" group)."""
    return variable.name == "beta"


def is_whitening_bias(variable) -> bool:
    return variable.path.split("/")[-2:] == ["whiten", "bias"]


class TorchSGD(keras.optimizers.Optimizer):
    """PyTorch's SGD with Nesterov momentum, as airbench runs it, from Keras's public optimizer API.

    Per variable v with gradient g (of the mean loss), at step t:
        d = g + l2_v * v;   buf = momentum * buf + d;   v -= lr_t * scale_v * (d + momentum * buf)
    Two things set it apart from keras.optimizers.SGD(nesterov=True), and airbench was tuned with
    both: the learning rate multiplies the whole step, not each gradient as it enters the buffer
    (they differ while the lr changes, i.e. always under airbench's schedule), and weight decay is
    an L2 term that goes through the momentum (Keras's is decoupled: 1/(1 - momentum) = 6.7x weaker
    per unit at momentum 0.85).

    scale_v = `bias_lr_scale` for BatchNorm biases, 1 otherwise; l2_v = `l2` / scale_v, so that a
    bias's decay per step equals the other weights' (airbench's "scales lr but not weight decay").
    A whitening-layer bias stops (no step, no decay, no momentum) from step `whiten_bias_steps`, and
    every variable from step `total_steps`: the steps that finish a fractional last epoch do nothing.
    """

    def __init__(self, learning_rate, momentum: float = 0.85, l2: float = 0.0, bias_lr_scale: float = 1.0,
                 whiten_bias_steps: int | None = None, total_steps: int | None = None, name="torch_sgd", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.momentum, self.l2, self.bias_lr_scale = momentum, l2, bias_lr_scale
        self.whiten_bias_steps, self.total_steps = whiten_bias_steps, total_steps

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")
        # Per variable (in build order): (lr multiplier, L2 coefficient, step from which it stays).
        self.rules = []
        for variable in variables:
            scale = self.bias_lr_scale if is_batchnorm_bias(variable) else 1.0
            stop = self.whiten_bias_steps if is_whitening_bias(variable) else None
            stops = [s for s in (stop, self.total_steps) if s is not None]
            self.rules.append((scale, self.l2 / scale, min(stops) if stops else None))

    def update_step(self, gradient, variable, learning_rate):
        # Keras's documented way to find a variable's slots (its Optimizer docstring's SGD example).
        index = variable_index(self, variable)
        scale, l2, stop = self.rules[index]
        buffer = self.momentums[index]
        gradient = ops.cast(gradient, variable.dtype)
        decayed = gradient + l2 * variable if l2 else gradient
        new_buffer = self.momentum * buffer + decayed
        new_variable = variable - ops.cast(learning_rate * scale, variable.dtype) * (decayed + self.momentum * new_buffer)
        if stop is not None:
            moving = self.iterations < stop
            new_buffer = ops.where(moving, new_buffer, ops.convert_to_tensor(buffer))
            new_variable = ops.where(moving, new_variable, ops.convert_to_tensor(variable))
        self.assign(buffer, new_buffer)
        self.assign(variable, new_variable)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "l2": self.l2, "bias_lr_scale": self.bias_lr_scale,
                "whiten_bias_steps": self.whiten_bias_steps, "total_steps": self.total_steps}


def with_lookahead(optimizer_class, decay: float, total_steps: int):
    """`optimizer_class` plus airbench's lookahead weight averaging (schedule: comp.nets.lookahead).

    Each variable's average is an optimizer slot (stored and checkpointed with the others),
    updated in the public `update_step` right after the variable's own step: elementwise, so
    variable by variable equals airbench's whole-net sync. After the last step the weights are
    the last average (`finalize_variable_values`, as airbench ends).
    """

    class Lookahead(optimizer_class):
        def build(self, variables):
            if self.built:
                return
            super().build(variables)
            self.lookahead_averages = self.add_optimizer_variables(variables, "lookahead")

        def update_step(self, gradient, variable, learning_rate):
            super().update_step(gradient, variable, learning_rate)
            average = self.lookahead_averages[variable_index(self, variable)]
            sync, pull = lookahead_pull(self.iterations + 1, decay, total_steps)  # the step being applied, from 1
            new_average = average + ops.cast(pull, variable.dtype) * (variable - average)
            self.assign(average, new_average)
            self.assign(variable, variable + ops.cast(sync, variable.dtype) * (new_average - variable))

        def finalize_variable_values(self, var_list):
            super().finalize_variable_values(var_list)
            # Before the first sync the average is still empty (zeros): keep the weights.
            if int(ops.convert_to_numpy(self.iterations)) >= LOOKAHEAD_EVERY:
                for variable, average in zip(var_list, self.lookahead_averages):
                    variable.assign(average)

    return Lookahead


def with_bias_lr_scale(optimizer_class, scale: float):
    """`optimizer_class` whose steps on BatchNorm biases are `scale` times larger.

    For SGD with momentum, scaling a variable's gradient is scaling its learning rate; decoupled
    weight decay does not see the gradient, so biases still decay like every other weight.
    This is airbench's bias_scaler: the nets have no other bias, and BN biases set the
    activation thresholds, which must move much faster than the scale-free conv weights.
    """

    class BiasScaled(optimizer_class):
        def build(self, variables):
            if self.built:
                return
            super().build(variables)
            self.scaled = [is_batchnorm_bias(variable) for variable in variables]

        def update_step(self, gradient, variable, learning_rate):
            if self.scaled[variable_index(self, variable)]:
                gradient = gradient * scale
            super().update_step(gradient, variable, learning_rate)

    return BiasScaled


def make_optimizer(config: RunConfig, steps_per_epoch: int):
    lr = make_schedule(config, steps_per_epoch)
    total = config.total_steps(steps_per_epoch)
    decay = config.weight_decay or None
    if config.optimizer == "sgd-torch":
        whiten_bias_steps = math.ceil(round(config.whiten_bias_epochs * steps_per_epoch, 6))
        optimizer_class, options = TorchSGD, {
            "momentum": config.momentum, "l2": config.weight_decay, "bias_lr_scale": config.bias_lr_scale,
            "whiten_bias_steps": whiten_bias_steps, "total_steps": total}
        decay = None  # the L2 term above, not Keras's decoupled decay
    elif config.optimizer == "sgd":
        optimizer_class, options = keras.optimizers.SGD, {"momentum": config.momentum, "nesterov": True}
        if config.bias_lr_scale != 1.0:
            optimizer_class = with_bias_lr_scale(optimizer_class, config.bias_lr_scale)
    elif config.optimizer == "adamw":
        optimizer_class, options = keras.optimizers.AdamW, {}
        decay = config.weight_decay or 1e-4
    else:
        optimizer_class, options = keras.optimizers.Adam, {}
    if config.lookahead:
        optimizer_class = with_lookahead(optimizer_class, config.lookahead, total)
    elif config.ema:
        options |= {"use_ema": True, "ema_momentum": config.ema}
    return optimizer_class(lr, weight_decay=decay, **options)


def jit_compile_setting(config: RunConfig):
    """RunConfig.jit (auto | on | off) as the value Model.compile takes."""
    return {"auto": "auto", "on": True, "off": False}[config.jit]


# On TensorFlow (the CPU backend) each fit step is a Python call into a tf.function; running 8
# steps per call amortises that overhead, worth ~10% for the small CNN. Callbacks then see every
# 8th batch (only the progress bar uses batch hooks). JAX keeps 1: its GPU numbers were measured so.
TF_STEPS_PER_EXECUTION = 8
TF_PREFETCH_BATCHES = 2 * TF_STEPS_PER_EXECUTION  # tf_batches: two executions ahead, ~50 MB at batch 1024


def compile_training_model(model: TrainingModel, config: RunConfig, steps_per_epoch: int) -> None:
    """The one compile call for training (train_fold and the throughput benchmark share it).

    The optimizer's variables are made here, not by fit's first step: a checkpoint can be loaded
    into them, and fit then has nothing left to build by tracing the model on a sample batch.
    """
    steps_per_execution = TF_STEPS_PER_EXECUTION if keras.backend.backend() == "tensorflow" else 1
    model.compile(optimizer=make_optimizer(config, steps_per_epoch), jit_compile=jit_compile_setting(config),
                  steps_per_execution=steps_per_execution)
    model.optimizer.build(model.trainable_variables)


# -- BatchNorm statistics of averaged weights -----------------------------------------------------

RECALIBRATION_BATCHES = 10  # batches (5,120 images at 512) whose statistics replace the running ones


def batch_norm_layers(layer) -> list:
    """Every BatchNormalization inside `layer`, nested models included."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [layer]
    return [norm for child in getattr(layer, "layers", []) for norm in batch_norm_layers(child)]


class BatchStatistics(keras.Model):
    """Per BatchNorm layer of the net: the mean and variance of its input over one training batch,
    augmented and mixed as in training. What the layer's running statistics estimate, in one
    compiled call per batch (the same program for every fold)."""

    def __init__(self, model: TrainingModel, norms: list, **kwargs):
        super().__init__(**kwargs)
        self.training_model = model
        # The net's own graph, cut at the BatchNorm inputs: layers shared, nothing copied.
        self.features = keras.Model(model.net.inputs, [norm.input for norm in norms])
        self.built = True

    def call(self, batch):
        model = self.training_model
        pixels, labels = model.pixels_and_labels(batch)
        images = model.augment(ops.cast(pixels, "float32"), training=True)
        images, _ = model.mix(images, ops.one_hot(labels, model.num_classes), training=True)
        features = self.features(images, training=True)  # BatchNorm normalises with batch statistics
        moments = []
        for x in features if isinstance(features, (list, tuple)) else [features]:
            x = ops.cast(x, "float32")
            axes = tuple(range(len(x.shape) - 1))
            moments.append(ops.stack([ops.mean(x, axis=axes), ops.var(x, axis=axes)]))
        return moments


def recalibrate_batchnorm(model: TrainingModel, images, labels, batch_size: int, seed: int,
                          statistics: BatchStatistics | None = None) -> BatchStatistics | None:
    """Re-estimate the BatchNorm running statistics for the averaged weights a fold ends on.

    BN's running statistics were collected step by step from the raw weights, but lookahead
    and EMA end on an average of them that never produced those statistics (airbench averages
    the statistics along with the weights). A few training batches, augmented and mixed as in
    training, averaged with equal weight give statistics of the kept weights. Clean images would
    be wrong: the net learned to normalise augmented batches. On a CPU check (bench/RESULTS.md)
    this added 0.2 to 0.4 points of validation accuracy to `fast`.

    Returns the compiled `statistics` model, for the next fold of the same engine to reuse.
    """
    norms = [norm for norm in batch_norm_layers(model.net) if not isinstance(norm, AirbenchBatchNorm)]  # averaged already
    batch = min(batch_size, len(labels))
    if not norms or batch < 2:
        return statistics
    statistics = statistics or BatchStatistics(model, norms)
    order = np.random.default_rng(seed).permutation(len(labels))
    sums = None
    batches = min(RECALIBRATION_BATCHES, len(labels) // batch)
    for i in range(batches):
        rows = np.sort(order[i * batch:(i + 1) * batch])
        moments = statistics.predict_on_batch({"pixels": images[rows], "labels": labels[rows].astype(np.int32)})
        moments = [np.asarray(m, np.float64) for m in (moments if isinstance(moments, (list, tuple)) else [moments])]
        sums = moments if sums is None else [s + m for s, m in zip(sums, moments)]
    for norm, total in zip(norms, sums):
        norm.moving_mean.assign((total[0] / batches).astype(np.float32))
        norm.moving_variance.assign((total[1] / batches).astype(np.float32))
    return statistics


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



# -- callbacks ---------------------------------------------------------------------------------


class TrainingDiverged(CompError):
    """The loss became NaN or infinite: the fold stops; what it wrote before stays valid."""


def check_finite_loss(logs: dict, fold: int, epoch: int, lr: float) -> None:
    """Raise TrainingDiverged when the epoch's training or validation loss is not finite.

    Checked once an epoch, from the logs fit already reads back at an epoch's end: reading the
    loss every batch would sync a GPU at every step. The epoch's mean loss is NaN or infinite
    as soon as one batch's was, and a last step that broke the weights shows in val_loss.
    """
    for key in ("loss", "val_loss"):
        if key in logs and not math.isfinite(logs[key]):
            raise TrainingDiverged(f"fold {fold}: training diverged in epoch {epoch + 1} ({key} = {logs[key]}); "
                                   f"{_lower_lr_fix(lr)}")


def _lower_lr_fix(lr: float) -> str:
    suggestion = f", e.g. --lr {lr / 10:g}" if math.isfinite(lr) and lr > 0 else ""
    return f"lower the learning rate (now {lr:g}{suggestion}) and train again"


def check_finite_probs(probs: dict[str, np.ndarray], rows: str, fold: int, lr: float) -> None:
    """Refuse probabilities that are not finite (weights broken by a last step, or by averaging)
    before any is written: the fold is not marked done, and nothing downstream reads NaN."""
    for policy, values in probs.items():
        if not np.isfinite(values).all():
            raise TrainingDiverged(f"fold {fold}: the trained model gives non-finite {rows} probabilities "
                                   f"(TTA {policy}); {_lower_lr_fix(lr)}")


@dataclass
class Validation:
    """The per-epoch validation: the plain (no TTA) logits of the validation rows from the
    compiled predict program, scored on the host like the training loss (label smoothing too)."""

    predict: Predictor
    images: np.ndarray
    labels: np.ndarray
    label_smoothing: float
    every: int  # RunConfig.val_every: after every this many epochs and the last; 0 = never
    last_epoch: int

    def due(self, epoch: int) -> bool:
        return bool(self.every) and ((epoch + 1) % self.every == 0 or epoch + 1 == self.last_epoch)

    def __call__(self) -> dict:
        logits = self.predict(self.images)[0].astype(np.float64)
        # smoothed_cross_entropy in NumPy: on the host, eager device ops would each compile a program.
        num_classes = logits.shape[-1]
        targets = np.eye(num_classes)[self.labels] * (1.0 - self.label_smoothing) + self.label_smoothing / num_classes
        shifted = logits - logits.max(axis=-1, keepdims=True)
        log_probs = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
        loss = float(np.mean(-np.sum(targets * log_probs, axis=-1)))
        return {"val_loss": loss, "val_accuracy": float(np.mean(logits.argmax(axis=-1) == self.labels))}


def training_deadline(fold: int) -> float | None:
    """Fold `fold`'s training deadline from DEADLINES_ENV, or None."""
    import json

    text = os.environ.get(DEADLINES_ENV)
    return json.loads(text).get(str(fold)) if text else None


class FoldCallback(keras.callbacks.Callback):
    """Per epoch: validation (when due), divergence check, history, best-model snapshot,
    checkpoint, early stopping, progress, tune hook."""

    # The batch hook only moves a progress bar and never reads the logs, so Keras may keep
    # dispatching steps asynchronously (reading logs every batch would sync a GPU each step).
    async_safe = True

    def __init__(self, fold, fold_dir, net, state, config, on_epoch, progress, validation: Validation,
                 steps_per_batch: int = 1):
        super().__init__()
        self.fold, self.fold_dir, self.net, self.state, self.config = fold, fold_dir, net, state, config
        self.on_epoch, self.progress, self.validation = on_epoch, progress, validation
        self.steps_per_batch = steps_per_batch  # optimizer steps in one of fit's batches (JAX: a scan)
        self.started = self.last_checkpoint = time.time()
        self.best_weights = None  # keep=best: the best epoch's weights, if that epoch ran in this process
        self.deadline = training_deadline(fold)

    def on_epoch_begin(self, epoch, logs=None):
        self.started = time.time()
        if self.progress:
            self.progress.epoch_begin(epoch)

    def on_train_batch_end(self, batch, logs=None):
        if self.progress:
            self.progress.batch_end(min((batch + 1) * self.steps_per_batch, self.progress.steps) - 1)

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        if self.validation.due(epoch):
            logs |= self.validation()
        check_finite_loss(logs, self.fold, epoch, self.config.lr)  # before anything of this epoch is kept
        row = {"epoch": epoch + 1, **logs, "lr": _current_lr(self.model.optimizer),
               "seconds": round(time.time() - self.started, 3)}
        state = self.state
        state["history"].append(row)
        state["epoch"] = epoch + 1
        val_accuracy = logs.get("val_accuracy", -1.0)
        improved = val_accuracy > state["best_val_accuracy"]
        if improved:
            state["best_val_accuracy"], state["best_epoch"], state["wait"] = val_accuracy, epoch + 1, 0
        else:
            state["wait"] += 1
        if improved and self.config.keep == "best":
            self.best_weights = self.net.get_weights()  # tune (no fold_dir) keeps the same epoch as train
            if self.fold_dir:  # for a resume that outlives this process
                with atomic_path(self.fold_dir / "model.keras", suffix=".keras") as tmp:
                    self.net.save(tmp)
        last = self.validation.last_epoch
        if self.deadline and epoch + 1 < last and time.time() + row["seconds"] > self.deadline:
            self.model.stop_training = True  # fit still ends as usual: averaged weights, predictions
            state["stopped_for_time"] = epoch + 1
            warn(f"fold {self.fold}: stopped after epoch {epoch + 1} of {last}: another would end past its "
                 f"time budget")
        if self.fold_dir:
            save_csv(self.fold_dir / "history.csv", pd.DataFrame(state["history"]))
            if time.time() - self.last_checkpoint >= CHECKPOINT_SECONDS:
                _save_checkpoint(self.fold_dir, self.model, state)
                self.last_checkpoint = time.time()
        if self.progress:
            self.progress.epoch_end(epoch, row)
        if self.config.patience and state["wait"] >= self.config.patience:
            self.model.stop_training = True
        if self.on_epoch:
            self.on_epoch(epoch, row)  # may raise (e.g. optuna.TrialPruned) to stop the fold


def _current_lr(optimizer) -> float:
    lr = optimizer.learning_rate
    return float(keras.ops.convert_to_numpy(lr))


# -- one fold ----------------------------------------------------------------------------------


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


def set_precision(precision: str) -> None:
    keras.config.set_dtype_policy(PRECISION_POLICIES[precision])


# Folds and full-data fits one seed may have. Fold f of seed s draws every stream (initial weights,
# batch order, augmentation) from s * FOLDS_PER_SEED + f: with s + f, a run of seed s + 1 (a seed
# ensemble) repeated seed s's initial weights and batch order one fold later, and its full-data
# fit i those of seed s's fit i + 1, on the very same rows.
FOLDS_PER_SEED = 1000


def fold_seed(config: RunConfig, fold: int) -> int:
    """The seed of fold `fold`'s random streams: distinct for every (seed, fold), reproducible."""
    return config.seed * FOLDS_PER_SEED + fold


def build_training_model(config: RunConfig, image_shape, num_classes: int, sample_images, fold: int,
                         steps_per_epoch: int = 1, store: FoldStore | None = None):
    seed = fold_seed(config, fold)
    net = build_model(config, image_shape, num_classes, sample_images, steps_per_epoch)
    augment = make_augment_layer(config.augment, seed, steps_per_epoch)
    mix = make_mix_layer(config.mixup, config.cutmix, seed + 1)
    augment.dtype_policy = keras.DTypePolicy("float32")  # augment in float32 even under bf16
    mix.dtype_policy = keras.DTypePolicy("float32")
    return TrainingModel(net, augment, mix, num_classes, config.label_smoothing, store), net


# -- the engine: one compiled model per config, reused by its folds ---------------------------------

# RunConfig fields no compiled program depends on: folds, seeds and trials that differ only in
# these share an engine. (Their data's shapes and steps per epoch are part of the key too.)
NOT_COMPILED = ("name", "seed", "folds", "limit", "tta", "patience", "keep", "val_every")


@dataclass
class Engine:
    """A compiled TrainingModel and the predict programs of its net, for one program key."""

    key: tuple
    model: TrainingModel
    net: keras.Model
    predictors: dict = field(default_factory=dict)  # (policy, rows per call) -> Predictor
    statistics: BatchStatistics | None = None  # BatchNorm recalibration's compiled call

    def predictor(self, policy: str, rows_per_call: int) -> Predictor:
        if (policy, rows_per_call) not in self.predictors:
            self.predictors[policy, rows_per_call] = Predictor(self.net, views_for(policy), view_fill(policy),
                                                               rows_per_call)
        return self.predictors[policy, rows_per_call]


_engine: Engine | None = None  # the last config's engine in this process


def program_key(config: RunConfig, image_shape, num_classes: int, steps_per_epoch: int, store_rows: int) -> tuple:
    compiled = {k: v for k, v in config.to_dict().items() if k not in NOT_COMPILED}
    return (keras.backend.backend(), repr(sorted(compiled.items())), tuple(image_shape), num_classes,
            steps_per_epoch, store_capacity(store_rows) if store_rows else 0)


def copy_initial_state(source: TrainingModel, target: TrainingModel) -> None:
    """Every variable of a freshly built and compiled model into `target`, a model of the same
    program: weights (whitening and normalisation included), random streams, counters and the
    optimizer's slots. Not the store, which holds data."""
    pairs = [pair for part in ("net", "augment", "mix")
             for pair in zip(getattr(source, part).variables, getattr(target, part).variables, strict=True)]
    pairs += zip(source.optimizer.variables, target.optimizer.variables, strict=True)
    for fresh, kept in pairs:
        if tuple(fresh.shape) != tuple(kept.shape):
            raise RuntimeError(f"engine reuse: {fresh.path} {fresh.shape} does not match {kept.path} {kept.shape}")
        kept.assign(fresh.value)
    target.reset_metrics()


def prepare_engine(config: RunConfig, image_shape, num_classes: int, sample_images, fold: int,
                   steps_per_epoch: int, store_rows: int = 0) -> Engine:
    """The compiled model for this fold, holding the fold's initial state: the weights its seed
    draws, whitening and normalisation fitted on `sample_images`, fresh optimizer slots and
    random streams. `store_rows`: the rows a FoldStore must hold (0: no store).

    The last fold's engine when the program key is the same (a freshly built model's state is
    copied in; building traces nothing), else a new one, after clearing the old session.
    """
    global _engine
    key = program_key(config, image_shape, num_classes, steps_per_epoch, store_rows)
    reuse = _engine is not None and _engine.key == key
    if not reuse:
        _engine = None
        keras.backend.clear_session()  # memory stays flat across configs
    keras.utils.set_random_seed(fold_seed(config, fold))
    set_precision(config.precision)
    store = FoldStore(store_capacity(store_rows), image_shape, name="store") if store_rows and not reuse else None
    model, net = build_training_model(config, image_shape, num_classes, sample_images, fold, steps_per_epoch, store)
    compile_training_model(model, config, steps_per_epoch)
    if reuse:
        copy_initial_state(model, _engine.model)
    else:
        _engine = Engine(key, model, net)
    return _engine


# -- compile counts (JAX) --------------------------------------------------------------------------

# JAX's events: a program not compiled in this process yet (XLA compiles it, or reads it from
# the persistent cache), and a persistent-cache read. XLA compiled programs - cache hits.
COMPILE_EVENTS = {"/jax/core/compile/backend_compile_duration": "programs",
                  "/jax/compilation_cache/cache_hits": "cache_hits"}
_compile_counts = {name: 0 for name in COMPILE_EVENTS.values()}
_listening = False


def compile_counts() -> dict[str, int]:
    """Programs made and persistent-cache hits so far in this process (JAX; {} elsewhere)."""
    global _listening
    if keras.backend.backend() != "jax":
        return {}
    if not _listening:
        import jax

        def count(event, *args, **kwargs):
            if event in COMPILE_EVENTS:
                _compile_counts[COMPILE_EVENTS[event]] += 1

        jax.monitoring.register_event_listener(count)
        jax.monitoring.register_event_duration_secs_listener(count)
        _listening = True
    return dict(_compile_counts)


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
    compiles_before = compile_counts()
    try:
        device_rows = len(train_y) if uses_device_rows() else 0
        steps = BatchOrder(len(train_y), config.batch_size, 0).steps
        engine = prepare_engine(config, train_x.shape[1:], num_classes, train_x, fold, steps, device_rows)
        model, net = engine.model, engine.net
        training_data, steps = training_inputs(train_x, train_y, config.batch_size, fold_seed(config, fold),
                                                   model.store)
        state = _resume(fold_dir, model, fold) if fold_dir else None
        resumed = state is not None
        if resumed and progress:
            progress.note(f"fold {fold}: resuming after epoch {state['epoch']}")
        state = state or {"epoch": 0, "best_val_accuracy": -1.0, "best_epoch": 0, "wait": 0, "history": []}
        epochs_before = len(state["history"])
        total_epochs = epochs or config.fit_epochs
        rows_per_call = call_rows(max(config.batch_size, 256))
        validation = Validation(engine.predictor("none", rows_per_call), val_x, val_y, config.label_smoothing,
                                config.val_every, total_epochs)
        callback = FoldCallback(fold, fold_dir, net, state, config, on_epoch, progress, validation,
                                steps_per_dispatch() if model.store is not None else 1)
        if progress:
            progress.fold_begin(fold, total_epochs, steps, state["epoch"])
        fit_started = time.time()
        if state["epoch"] < total_epochs and not (config.patience and state["wait"] >= config.patience):
            callbacks = [*training_data["callbacks"], callback]
            model.fit(**training_data | {"callbacks": callbacks}, epochs=total_epochs, initial_epoch=state["epoch"],
                      verbose=0)
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
        elif fold_dir:
            with atomic_path(fold_dir / "model.keras", suffix=".keras") as tmp:
                net.save(tmp)
        predictor = engine.predictor(config.tta, rows_per_call)
        result = _finish_fold(config, net, val_x, val_y, test_x, fold, fold_dir, state, time.time() - started,
                              predictor, lambda: fold_phases(started, fit_started, fit_ended, state["history"],
                                                             epochs_before, compiles_before))
    finally:
        set_precision("float32")
    return result


def _probs_by_policy(predictor: Predictor, images, policy: str) -> dict[str, np.ndarray]:
    """Probabilities as is ("none") and with the run's TTA policy, from one pass over the views.

    The first view of every policy is the image as is, so the plain prediction is its slice.
    """
    view_logits = predictor(images)
    probs = {"none": average_views(view_logits[:1])}
    if policy != "none":
        probs[policy] = average_views(view_logits, policy=policy)
    return probs


def _finish_fold(config, net, val_x, val_y, test_x, fold, fold_dir, state, seconds,
                 predictor: Predictor | None = None, phases: Callable[[], dict] = dict) -> FoldResult:
    """Predict validation rows (and test) with the kept model, every TTA view of a batch in one
    compiled call; write the artifacts, the curves after everything timed; metrics last."""
    predictor = predictor or Predictor(net, views_for(config.tta), view_fill(config.tta),
                                       call_rows(max(config.batch_size, 256)))
    val_probs = _probs_by_policy(predictor, val_x, config.tta)
    check_finite_probs(val_probs, "validation", fold, config.lr)
    plain = val_probs["none"]
    accuracy, loss = score_accuracy(plain, val_y), log_loss(plain, val_y)
    result = FoldResult(fold, accuracy, loss, state["best_epoch"], state["epoch"], seconds, val_probs.get(config.tta))
    if fold_dir is None:
        result.phases = phases()
        return result
    metrics = {"fold": fold, "val_accuracy": accuracy, "val_loss": loss, "best_epoch": state["best_epoch"],
               "epochs_run": state["epoch"], "seconds": round(seconds, 2), "val_rows": len(val_y)}
    test_probs = _probs_by_policy(predictor, test_x, config.tta) if test_x is not None else {}
    check_finite_probs(test_probs, "test", fold, config.lr)
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


def plot_curves(history: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from comp.core.fileio import save_figure

    frame = pd.DataFrame(history)
    if frame.empty:
        return
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(9, 3.4))
    for key, ax in (("accuracy", ax_acc), ("loss", ax_loss)):
        for prefix, style in (("", "-"), ("val_", "--")):
            if prefix + key in frame:
                ax.plot(frame["epoch"], frame[prefix + key], style, label=("val " if prefix else "train ") + key)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    save_figure(path, fig)
    plt.close(fig)

