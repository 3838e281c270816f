"""The training engine: compile once per config, data on the device, few host round trips.

Equivalences (the fast path gives what the slow one gave): pad-and-slice crops equal the
integer affine shift; every TTA view made inside the compiled call equals tta.view; the device
rows, the tf.data pipeline and ShuffledBatches draw the same batches; a reused engine trains a
fold exactly as a fresh one; a scan of k steps equals k single steps. The JAX checks run in a
subprocess (the backend is fixed at keras's first import).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from comp.engine import callbacks, feed, programs, trainer
from comp.engine.augment import crop_and_flip, make_augment_layer
from comp.config.run_config import build_config
from comp.core.errors import CompError
from comp.engine.inference import Predictor
from comp.engine.tta import view, view_fill
from comp.config.tta_policy import views_for

from .conftest import REPO, learnable_images


# -- augmentation: pad-and-slice crops -------------------------------------------------------------


def _affine_shift(images, shift_y, shift_x, flip, fill):
    """The bilinear path's transform for a whole-pixel shift (comp.engine.augment's _affine, no rotation)."""
    ops = keras.ops
    batch, height, width = images.shape[:3]
    ones, zeros = np.ones(batch, np.float32), np.zeros(batch, np.float32)
    sign = np.where(flip, -1.0, 1.0).astype(np.float32)
    cx = (width - 1) / 2.0
    transform = np.stack([sign, zeros, cx - sign * cx + shift_x, zeros, ones, shift_y.astype(np.float32),
                          zeros, zeros], axis=1).astype(np.float32)
    return ops.convert_to_numpy(ops.image.affine_transform(images, transform, interpolation="bilinear",
                                                           fill_mode=fill, fill_value=0.0))


@pytest.mark.parametrize("fill", ["constant", "reflect"])
def test_a_pad_and_slice_crop_equals_the_integer_affine_shift(fill):
    from comp.config.augment_presets import CROP_FILL_MODES

    rng = np.random.default_rng(0)
    pad = 3
    images = rng.integers(0, 256, (12, 9, 11, 3)).astype(np.float32)
    shift_y, shift_x = rng.integers(-pad, pad + 1, 12), rng.integers(-pad, pad + 1, 12)
    flip = rng.integers(0, 2, 12).astype(bool)
    cropped = keras.ops.convert_to_numpy(crop_and_flip(
        images, (shift_y + pad).astype(np.int32), (shift_x + pad).astype(np.int32), flip, pad, CROP_FILL_MODES[fill]))
    np.testing.assert_array_equal(cropped, _affine_shift(images, shift_y, shift_x, flip, fill))
    assert not np.array_equal(cropped, images)  # the offsets did move things


def test_flip_and_crop_presets_take_the_whole_pixel_path_and_rotation_the_affine_one():
    images = np.zeros((2, 8, 8, 3), np.float32)
    assert make_augment_layer("flip-crop", 0)._whole_pixels(images)
    assert make_augment_layer("alt-flip-crop,reflect", 0)._whole_pixels(images)
    assert not make_augment_layer("simple", 0)._whole_pixels(images)  # rotation, zoom, fractional shifts
    assert not make_augment_layer("crop=8", 0)._whole_pixels(images)  # a pad as wide as the image
    out = keras.ops.convert_to_numpy(make_augment_layer("flip-crop", 0)(images + 1, training=True))
    assert out.shape == images.shape and set(np.unique(out)) <= {0.0, 1.0}  # moved pixels and black, nothing between


# -- prediction: every view in one call --------------------------------------------------------------


def _linear_net(shape, classes=4):
    inputs = keras.Input(shape)
    logits = keras.layers.Dense(classes, kernel_initializer=keras.initializers.RandomNormal(seed=1))(
        keras.layers.Flatten()(keras.layers.Rescaling(1 / 255)(inputs)))
    return keras.Model(inputs, logits)


@pytest.mark.parametrize("policy", ["flip-shift", "airbench", "flip+shift2"])
def test_views_made_inside_the_compiled_call_equal_the_numpy_views(policy):
    images = np.random.default_rng(1).integers(0, 256, (7, 6, 5, 3), dtype=np.uint8)
    net = _linear_net(images.shape[1:])
    views = views_for(policy)
    expected = np.stack([np.asarray(net.predict_on_batch(view(images, *v, fill=view_fill(policy)).astype(np.float32)))
                         for v in views])
    predictor = Predictor(net, views, view_fill(policy), rows_per_call=3 * len(views))  # 3 images a call: 3 calls
    np.testing.assert_allclose(predictor(images), expected, rtol=1e-5, atol=1e-5)
    assert view_fill("airbench") == "reflect" and view_fill("flip-shift") == "zero"


# -- batches: device rows, tf.data and the host see the same rows -------------------------------------


def _epoch_batches(dataset, epoch, order):
    order.on_epoch_begin(epoch)
    return [dataset[i][0] for i in range(len(dataset))]


def test_device_rows_host_batches_and_tf_data_draw_the_same_rows_each_epoch():
    rows, batch = 53, 8
    images = np.arange(rows, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 1), np.uint8)
    labels = np.arange(rows) % 3
    host = feed.ShuffledBatches(images, labels, batch, seed=5)
    device = feed.RowBatches(feed.BatchOrder(rows, batch, seed=5), steps_per_dispatch=4)
    tf_order = feed.BatchOrder(rows, batch, seed=5)
    tf_data = feed.tf_batches(images, labels, tf_order)
    seen_over_epochs = set()
    for epoch in range(3):
        from_host = np.stack([b["pixels"][:, 0, 0, 0] for b in _epoch_batches(host, epoch, host.order)])
        chunks = _epoch_batches(device, epoch, device.order)
        from_device = np.concatenate([c["rows"][c["valid"]] for c in chunks])
        tf_order.on_epoch_begin(epoch)
        from_tf = np.stack([b[0]["pixels"].numpy()[:, 0, 0, 0] for b in tf_data.take(tf_order.steps)])
        np.testing.assert_array_equal(from_device, from_host)
        np.testing.assert_array_equal(from_tf, from_host)
        assert len(chunks) == 2 and chunks[-1]["valid"].tolist() == [True, True, False, False]  # 6 steps of 4
        flat = from_host.ravel()
        assert len(flat) == 48 and len(set(flat)) == 48  # full batches, no row twice in an epoch
        seen_over_epochs |= set(flat)
    assert seen_over_epochs == set(range(rows))  # the 5 rows left over differ by epoch


def test_tf_data_pipeline_runs_without_autotune():
    # With AUTOTUNE on, deleting the iterator at each epoch's end waited up to a minute for the
    # tuning thread (bench/tf_data_teardown.py): 90-s epochs took 141 s one time in two.
    pytest.importorskip("tensorflow")
    images, labels = np.zeros((20, 2, 2, 1), np.uint8), np.arange(20) % 2
    order = feed.BatchOrder(20, 4, seed=0)
    dataset = feed.tf_batches(images, labels, order)
    assert dataset.options().autotune.enabled is False
    assert len(list(dataset)) == order.steps == 5


def test_rows_larger_than_the_tf_data_limit_are_read_from_the_cache_batch_by_batch(monkeypatch):
    images = np.arange(24, dtype=np.uint8).reshape(6, 2, 2, 1)
    rows, labels = feed.FoldRows(images, [0, 2, 3, 5]), np.array([0, 1, 2, 0])
    small, _ = feed.training_inputs(rows, labels, 2, seed=0)
    monkeypatch.setattr(feed, "TF_IN_MEMORY_BYTES", 4 * 4 - 1)  # one byte short of the 4 rows
    large, steps = feed.training_inputs(rows, labels, 2, seed=0)
    assert steps == 2 and isinstance(large["x"], feed.ShuffledBatches)  # never one tensor of every row
    assert large["x"].images is rows  # batches gather from the array of the cache, not a copy
    if keras.backend.backend() == "tensorflow":
        assert not isinstance(small["x"], feed.ShuffledBatches)  # fits: tf.data's C++ pipeline


def test_rows_read_from_the_array_only_what_is_asked(monkeypatch):
    array = np.arange(40, dtype=np.uint8).reshape(10, 2, 2, 1)
    rows = feed.FoldRows(array, [1, 3, 4, 8])
    assert len(rows) == 4 and rows.shape == (4, 2, 2, 1) and rows.dtype == np.uint8
    np.testing.assert_array_equal(rows[1:3], array[[3, 4]])
    np.testing.assert_array_equal(rows[np.array([3, 0])], array[[8, 1]])
    np.testing.assert_array_equal(np.asarray(rows), array[[1, 3, 4, 8]])
    # The device store fills chunk by chunk and gathers the rows it was given.
    monkeypatch.setattr(feed, "FILL_CHUNK", 3)
    store = feed.FoldStore(feed.store_capacity(4), (2, 2, 1))
    store.fill(rows, np.array([0, 1, 2, 0]))
    pixels, labels = store.gather(np.array([3, 0, 2], np.int32))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(pixels), array[[8, 1, 4]])
    assert keras.ops.convert_to_numpy(labels).tolist() == [0, 0, 2]


def test_a_fold_trains_the_same_from_rows_of_the_cache_as_from_copies():
    images, labels = _fold_rows()
    config = build_config({}, {"model": "baseline", "width": 0.25, "batch_size": 8, "epochs": 2, "augment": "flip"})
    train, val = np.arange(56), np.arange(56, 72)
    copied = trainer.train_fold(config, images[train], labels[train], images[val], labels[val], 3, 0)
    mapped = trainer.train_fold(config, feed.FoldRows(images, train), labels[train], feed.FoldRows(images, val),
                                labels[val], 3, 0)
    np.testing.assert_allclose(mapped.val_probs, copied.val_probs, rtol=1e-5, atol=1e-6)


# -- the engine: reused across folds, as fresh as a new one -------------------------------------------


def _fold_rows():
    images, labels = learnable_images(3, 24, size=16, seed=2)
    order = np.random.default_rng(2).permutation(len(labels))
    return images[order], labels[order]


def test_a_reused_engine_trains_a_fold_exactly_as_a_fresh_one(monkeypatch):
    images, labels = _fold_rows()
    config = build_config({}, {"model": "fast", "width": 0.125, "batch_size": 8, "epochs": 2})  # lookahead + recalibration
    folds = {k: (images[np.arange(len(labels)) % 3 != k], labels[np.arange(len(labels)) % 3 != k],
                 images[np.arange(len(labels)) % 3 == k], labels[np.arange(len(labels)) % 3 == k]) for k in (0, 1)}
    monkeypatch.setattr(programs, "_engine", None)
    trainer.train_fold(config, *folds[0], 3, 0)
    engine = programs._engine
    reused = trainer.train_fold(config, *folds[1], 3, 1)
    assert programs._engine is engine  # fold 1 ran on fold 0's compiled model
    reused_weights = [keras.ops.convert_to_numpy(w) for w in engine.net.weights]
    monkeypatch.setattr(programs, "_engine", None)
    fresh = trainer.train_fold(config, *folds[1], 3, 1)
    assert programs._engine is not engine
    np.testing.assert_allclose(reused.val_probs, fresh.val_probs, rtol=1e-5, atol=1e-6)
    for a, b in zip(reused_weights, programs._engine.net.weights, strict=True):
        np.testing.assert_allclose(a, keras.ops.convert_to_numpy(b), rtol=1e-5, atol=1e-6)


def test_another_config_gets_its_own_engine_and_a_fold_its_own_normalisation(monkeypatch):
    images, labels = _fold_rows()
    config = build_config({}, {"model": "fast", "width": 0.125, "batch_size": 8, "epochs": 1})
    monkeypatch.setattr(programs, "_engine", None)
    first = programs.prepare_engine(config, images.shape[1:], 3, images[:40], 0, 5)
    mean = keras.ops.convert_to_numpy(first.net.get_layer("normalize").mean).copy()
    assert programs.prepare_engine(config, images.shape[1:], 3, images[40:], 1, 5) is first  # same program
    assert not np.allclose(keras.ops.convert_to_numpy(first.net.get_layer("normalize").mean), mean)  # its own rows
    assert programs.prepare_engine(config.replace(lr=0.5), images.shape[1:], 3, images, 0, 5) is not first
    assert programs.prepare_engine(config.replace(seed=3, tta="none", patience=1, name="x"),
                                   images.shape[1:], 3, images, 0, 5) is programs._engine  # no program reads those


def test_a_run_of_the_next_seed_repeats_no_fold_of_this_one(monkeypatch):
    """A seed ensemble's runs (seed s and s + 1) share no initial weights and no batch order: seed
    s + 1's full-data fit 0 (fold index k) and seed s's fit 1 (k + 1) train on the very same rows."""
    images, _ = _fold_rows()
    config = build_config({}, {"model": "resnet", "width": 0.25, "batch_size": 8, "epochs": 1})

    def initial_weights(seed, fold):
        monkeypatch.setattr(programs, "_engine", None)
        engine = programs.prepare_engine(config.replace(seed=seed), images.shape[1:], 3, images, fold, 5)
        return [keras.ops.convert_to_numpy(w).copy() for w in engine.net.trainable_weights]

    first, second = initial_weights(42, 6), initial_weights(43, 5)
    assert not all(np.array_equal(a, b) for a, b in zip(first, second))
    orders = [feed.BatchOrder(len(images), 8, programs.fold_seed(config.replace(seed=seed), fold)).batch_rows()
              for seed, fold in ((42, 6), (43, 5))]
    assert not np.array_equal(*orders)


# -- validation every N epochs ---------------------------------------------------------------------


def test_validation_runs_every_n_epochs_and_after_the_last(monkeypatch):
    images, labels = _fold_rows()
    config = build_config({}, {"model": "baseline", "width": 0.25, "batch_size": 8, "epochs": 5, "val_every": 2})
    rows = []
    trainer.train_fold(config, images[:56], labels[:56], images[56:], labels[56:], 3, 0,
                       on_epoch=lambda epoch, row: rows.append(row))
    assert ["val_accuracy" in row for row in rows] == [False, True, False, True, True]
    never = trainer.train_fold(config.replace(val_every=0), images[:56], labels[:56], images[56:], labels[56:], 3, 0,
                               on_epoch=lambda epoch, row: rows.append(row))
    assert not any("val_accuracy" in row for row in rows[5:]) and 0 <= never.val_accuracy <= 1


def test_a_fold_past_its_deadline_stops_after_the_epoch_and_still_predicts(monkeypatch, tmp_path):
    import json
    import time

    images, labels = _fold_rows()
    config = build_config({}, {"model": "baseline", "width": 0.25, "batch_size": 8, "epochs": 4})
    monkeypatch.setenv(callbacks.DEADLINES_ENV, json.dumps({"0": time.time() - 1, "1": time.time() + 3600}))
    rows = []
    late = trainer.train_fold(config, images[:56], labels[:56], images[56:], labels[56:], 3, 0,
                              fold_dir=tmp_path / "fold0", test_x=images[:4], on_epoch=lambda e, row: rows.append(row))
    assert len(rows) == 1 and 0 <= late.val_accuracy <= 1  # one epoch, then the usual end of the fold
    assert (tmp_path / "fold0" / "val_probs.npy").exists() and (tmp_path / "fold0" / "test_probs.npy").exists()
    on_time = trainer.train_fold(config, images[:56], labels[:56], images[56:], labels[56:], 3, 1,
                                 on_epoch=lambda e, row: rows.append(row))
    assert len(rows) == 1 + 4 and 0 <= on_time.val_accuracy <= 1  # its deadline is an hour away


def test_a_deadline_that_halves_a_fold_shrinks_its_schedule_to_end_annealed(monkeypatch):
    """Six epochs planned, three fit: the one-cycle schedule's remaining steps run in the three, so
    the last step's learning rate is the schedule's end, and lookahead still ends on its average."""
    import json
    import time

    images, labels = _fold_rows()
    config = build_config({}, {"model": "baseline", "width": 0.25, "batch_size": 8, "epochs": 6, "optimizer": "sgd",
                               "lr": 0.1, "schedule": "onecycle", "lr_end": 0.07, "lookahead": 0.95})
    rows = []
    monkeypatch.setenv(callbacks.DEADLINES_ENV, json.dumps({"0": time.time() + 3600}))
    # Time for three epochs in all, whatever this machine's speed: after epoch e, 2 - e more fit.
    monkeypatch.setattr(callbacks, "epochs_in_time", lambda deadline, seconds, now: 2 - len(rows))
    short = trainer.train_fold(config, images[:56], labels[:56], images[56:], labels[56:], 3, 0,
                               on_epoch=lambda epoch, row: rows.append(row))
    assert len(rows) == 3 and short.epochs_run == 3
    assert rows[-1]["lr"] == pytest.approx(0.1 * 0.07, rel=1e-4)  # annealed: the schedule's last value
    assert rows[0]["lr"] > 0.05  # the first epoch ran on the planned schedule (near the peak)
    monkeypatch.delenv(callbacks.DEADLINES_ENV)
    whole = []
    trainer.train_fold(config, images[:56], labels[:56], images[56:], labels[56:], 3, 0,
                       on_epoch=lambda epoch, row: whole.append(row))
    assert len(whole) == 6 and whole[0]["lr"] == pytest.approx(rows[0]["lr"])  # the engine's clock was reset
    assert whole[2]["lr"] > 0.05 and whole[-1]["lr"] == pytest.approx(0.1 * 0.07, rel=1e-4)


def test_keep_best_and_patience_need_validation_every_epoch():
    with pytest.raises(CompError, match=r"keep = best .* val_every = 0; set val_every = 1 \(--val-every 1\)"):
        build_config({}, {"model": "baseline", "keep": "best", "val_every": 0})
    with pytest.raises(CompError, match="patience stops by validation accuracy"):
        build_config({}, {"model": "baseline", "patience": 3, "val_every": 2})
    assert build_config({}, {"model": "baseline", "keep": "best"}).val_every == 1


def test_the_gpu_preset_validates_only_at_the_end():
    from comp.config.run_config import MACHINE_PRESETS

    config = build_config(MACHINE_PRESETS["gpu"], {})
    assert config.val_every == 0 and config.keep == "last"


def test_a_tune_trial_reports_only_the_epochs_that_were_validated():
    from comp.stages.tune.trial import make_reporter

    class Trial:
        reported = []

        def report(self, value, step):
            self.reported.append((value, step))

        def should_prune(self):
            return False

    trial = Trial()
    on_epoch = make_reporter(trial, 0, 3, True)
    on_epoch(0, {"loss": 1.0})
    on_epoch(1, {"loss": 0.9, "val_accuracy": 0.5})
    assert trial.reported == [(0.5, 1)]


# -- JAX: one compile per config, a scan of steps per dispatch ----------------------------------------

JAX_FOLDS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    from comp.config.run_config import build_config
    from comp.engine import feed, programs, trainer

    assert keras.backend.backend() == "jax", keras.backend.backend()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (91, 16, 16, 3), dtype=np.uint8)  # fold 0 trains on 60 rows, folds 1-2 on 61
    y = rng.integers(0, 3, 91)
    config = build_config({}, {"model": "fast", "width": 0.125, "batch_size": 16, "epochs": 2})
    feed.JAX_CPU_STEPS_PER_DISPATCH = 2  # 3 steps an epoch: a dispatch of 2, then 1 and a skipped one

    def fold(k):
        val = np.arange(91) % 3 == k
        return trainer.train_fold(config, x[~val], y[~val], x[val], y[val], 3, k, test_x=x[:10])

    out = {"phases": [], "probs": {}}
    for k in range(3):
        result = fold(k)
        out["phases"].append(result.phases)
        out["probs"][str(k)] = result.val_probs.tolist()
    programs._engine = None  # fold 2 again, in a fresh engine
    out["fresh2"] = fold(2).val_probs.tolist()
    programs._engine = None
    feed.JAX_CPU_STEPS_PER_DISPATCH = 1  # one step a dispatch: no scan
    out["unscanned2"] = fold(2).val_probs.tolist()
    print("RESULT" + json.dumps(out))
""")


def _run_jax(script: str, env: dict | None = None) -> dict:
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", **(env or {})}
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(line for line in result.stdout.splitlines() if line.startswith("RESULT"))
    return json.loads(line[len("RESULT"):])


@pytest.mark.slow
def test_jax_folds_after_the_first_compile_nothing_and_equal_fresh_ones(tmp_path):
    cache = {"JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jax-cache"), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
             "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"}
    out = _run_jax(JAX_FOLDS, cache)
    first, *later = out["phases"]
    # Fold 0: the train step, validation and TTA predict programs, BatchNorm recalibration and the
    # variables' initialisers; before the engine it was ~220 (eager build call, eager recalibration).
    assert 0 < first["programs"] <= 60, first
    assert [phases["programs"] for phases in later] == [0, 0], later  # folds 1-2: nothing traced or compiled
    # The reused engine and the scan of 3 steps (the last dispatch half padding) train as fresh,
    # unscanned steps do.
    np.testing.assert_allclose(out["probs"]["2"], out["fresh2"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(out["probs"]["2"], out["unscanned2"], rtol=1e-4, atol=1e-5)
    # A second process of the same config reads fold 0's programs from the persistent cache.
    again = _run_jax(JAX_FOLDS, cache)
    assert again["phases"][0]["cache_hits"] >= first["programs"] - 2, again["phases"][0]
