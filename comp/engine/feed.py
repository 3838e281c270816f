"""Feeding fit the fold's rows: lazy row views, the device store, batch order and the input pipelines."""

from __future__ import annotations

import keras
import numpy as np
from keras import ops
from sklearn.utils.class_weight import compute_class_weight
from comp.core.backend import accelerator
from comp.engine.devices import process_rows


# -- the fold's rows ---------------------------------------------------------------------------


class FoldRows:
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


# On TensorFlow (the CPU backend) each fit step is a Python call into a tf.function; running 8
# steps per call amortises that overhead, worth ~10% for the small CNN. Callbacks then see every
# 8th batch (only the progress bar uses batch hooks). JAX keeps 1: its GPU numbers were measured so.
TF_STEPS_PER_EXECUTION = 8
TF_PREFETCH_BATCHES = 2 * TF_STEPS_PER_EXECUTION  # tf_batches: two executions ahead, ~50 MB at batch 1024


def store_capacity(rows: int) -> int:
    return -(-rows // STORE_ROWS_MULTIPLE) * STORE_ROWS_MULTIPLE


class FoldStore(keras.layers.Layer):
    """The fold's training images (uint8) and labels as device variables, filled once per fold.

    The train step gathers its batch from here by row number, so no pixel crosses from the host
    during an epoch. The capacity (rows, rounded up) is part of the compiled program's shapes,
    hence the rounding: every fold of a split fits the same program. Never in a checkpoint: the
    rows are the fold's data, not training state.
    """

    def __init__(self, capacity: int, image_shape, label_shape: tuple = (), **kwargs):
        super().__init__(**kwargs)
        self.images = self.add_weight(shape=(capacity, *image_shape), dtype="uint8", initializer="zeros",
                                      trainable=False, name="images")
        # label_shape (): class numbers; (L,): multi-hot rows of a multi-label set.
        self.labels = self.add_weight(shape=(capacity, *label_shape), dtype="int32", initializer="zeros",
                                      trainable=False, name="labels")
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
        padded_labels = np.zeros((capacity, *self.labels.shape[1:]), np.int32)
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

    With `row_weights` (--sampler balanced) an epoch's rows are drawn with replacement in
    proportion to them instead (as PyTorch's WeightedRandomSampler draws), as many as a shuffle
    would give: the same steps per epoch, classes met equally often.
    """

    def __init__(self, rows: int, batch_size: int, seed: int, row_weights: np.ndarray | None = None):
        super().__init__()
        self.rows, self.seed = rows, seed
        self.row_probs = None if row_weights is None else np.asarray(row_weights, np.float64) / np.sum(row_weights)
        self.batch_size = min(batch_size, rows)
        self.steps = rows // self.batch_size
        self.epoch = 0
        self._batches: tuple[int, np.ndarray] | None = None  # (epoch, its batches), drawn once per epoch

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def batch_rows(self) -> np.ndarray:
        """(steps, batch_size) row indices of the current epoch's batches."""
        if self._batches is None or self._batches[0] != self.epoch:
            rng = np.random.default_rng([self.seed, self.epoch])
            if self.row_probs is None:
                order = rng.permutation(self.rows)
            else:
                order = rng.choice(self.rows, size=self.steps * self.batch_size, replace=True, p=self.row_probs)
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
        if self.per_dispatch == 1:  # several processes: this one's block of the global batch
            return ({"rows": process_rows(rows[0])},)
        valid = np.arange(self.per_dispatch) < len(rows)
        rows = np.concatenate([rows, np.repeat(rows[:1], self.per_dispatch - len(rows), axis=0)])
        return ({"rows": rows, "valid": valid},)


class ShuffledBatches(keras.utils.PyDataset):
    """Batches of {pixels, labels} gathered on the host, in the order of `self.order` (pass it to
    fit as a callback)."""

    def __init__(self, images, labels, batch_size: int, seed: int, row_weights: np.ndarray | None = None):
        super().__init__()
        self.images, self.labels = images, labels
        self.order = BatchOrder(len(labels), batch_size, seed, row_weights)

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
    """Optimizer steps per fit batch: a scan of several on a JAX accelerator, one elsewhere and when
    data parallel (a distribution splits a batch's first axis, which a scan's batch holds steps on)."""
    if keras.backend.backend() != "jax" or keras.distribution.distribution() is not None:
        return 1
    return JAX_STEPS_PER_DISPATCH if accelerator() else JAX_CPU_STEPS_PER_DISPATCH


def balanced_row_weights(labels: np.ndarray) -> np.ndarray:
    """Each row's draw weight for --sampler balanced: 1 / its class's row count, so every class
    present is drawn equally often."""
    counts = np.bincount(labels)
    return 1.0 / counts[labels]


def balanced_class_weights(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """--class-weight balanced: scikit-learn's "balanced" weights, rows / (classes * class rows),
    of the classes in the fold's training rows; a class absent from them weighs 0 (no row has it)."""
    present = np.unique(labels)
    weights = np.zeros(num_classes, np.float32)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return weights


def training_inputs(images, labels, batch_size: int, seed: int, store: FoldStore | None = None,
                    sampler: str = "shuffle") -> tuple[dict, int]:
    """fit() arguments for the training rows (their BatchOrder among the callbacks), and the
    optimizer steps per epoch. `sampler`: shuffle (every row once an epoch) or balanced.

    With a store: the rows go to the device once and batches are row numbers (RowBatches).
    Else TensorFlow gets a tf.data pipeline (C++, no Python per batch) while the rows fit
    TF_IN_MEMORY_BYTES, and ShuffledBatches otherwise, as the other backends do (read from the
    cache batch by batch). Every path draws the same batches.
    """
    row_weights = balanced_row_weights(labels) if sampler == "balanced" else None
    order = BatchOrder(len(labels), batch_size, seed, row_weights)
    row_bytes = int(np.prod(images.shape[1:])) * np.dtype(images.dtype).itemsize
    if store is not None:
        store.fill(images, labels)
        x = RowBatches(order, steps_per_dispatch())
    elif keras.backend.backend() == "tensorflow" and len(labels) * row_bytes <= TF_IN_MEMORY_BYTES:
        x = tf_batches(np.asarray(images), labels, order)
    else:
        x = ShuffledBatches(images, labels, batch_size, seed, row_weights)
        order = x.order
    return {"x": x, "shuffle": False, "callbacks": [order]}, order.steps
