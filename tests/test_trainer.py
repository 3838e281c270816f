"""The optimiser pieces of the train step: lookahead averaging and what a checkpoint keeps."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from comp.config import build_config
from comp.errors import CompError
from comp.trainer import (LOOKAHEAD_EVERY, _load_checkpoint, _save_checkpoint, build_training_model,
                          compile_training_model, make_optimizer, training_inputs)


def _apply_constant_gradient(optimizer, variable, steps: int) -> list[float]:
    values = []
    for _ in range(steps):
        optimizer.apply([keras.ops.ones((1,))], [variable])
        values.append(float(keras.ops.convert_to_numpy(variable)[0]))
    return values


def test_lookahead_pulls_the_weights_to_their_average_every_few_steps():
    total = 2 * LOOKAHEAD_EVERY
    config = build_config({}, {"model": "baseline", "optimizer": "sgd", "momentum": 0.0, "lr": 0.1,
                               "schedule": "constant", "lookahead": 0.9, "epochs": total})
    variable = keras.Variable(np.zeros(1, np.float32))
    optimizer = make_optimizer(config, steps_per_epoch=1)
    optimizer.build([variable])
    values = _apply_constant_gradient(optimizer, variable, total)
    # Plain SGD until the first sync, where the average starts as the weights themselves.
    assert values[:LOOKAHEAD_EVERY] == pytest.approx([-0.1 * (i + 1) for i in range(LOOKAHEAD_EVERY)])
    # At the last step (progress 1) the average keeps decay**EVERY of its old value.
    keep = 0.9**LOOKAHEAD_EVERY
    expected = keep * values[LOOKAHEAD_EVERY - 1] + (1 - keep) * (-0.1 * total)
    assert values[-1] == pytest.approx(expected, abs=1e-6)
    assert values[-2] == pytest.approx(values[LOOKAHEAD_EVERY - 1] - 0.1 * (LOOKAHEAD_EVERY - 1))


def test_weight_averaging_options_are_checked():
    with pytest.raises(CompError, match="two ways"):
        build_config({}, {"model": "baseline", "ema": 0.99, "lookahead": 0.95})
    with pytest.raises(CompError, match="lookahead"):
        build_config({}, {"model": "baseline", "lookahead": 1.5})
    assert build_config({}, {"model": "fast"}).lookahead == 0.95


def test_fit_ends_on_the_average_and_a_checkpoint_keeps_the_flip_counter(tmp_path):
    config = build_config({}, {"model": "fast", "width": 0.125, "batch_size": 16, "epochs": 2})
    assert config.augment == "alt-flip-crop"
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 96)
    data, steps = training_inputs(images, labels, 3, config.batch_size, 0)
    model, _ = build_training_model(config, images.shape[1:], 3, images, 0, steps)
    compile_training_model(model, config, steps)
    model.fit(**data, epochs=config.epochs, verbose=0)
    averages = model.optimizer.lookahead_averages
    assert all(np.array_equal(keras.ops.convert_to_numpy(w.value), keras.ops.convert_to_numpy(a.value))
               for w, a in zip(model.trainable_variables, averages))
    assert int(keras.ops.convert_to_numpy(model.augment.steps_seen)) == 2 * steps

    _save_checkpoint(tmp_path, model, {"epoch": 2})
    fresh, _ = build_training_model(config, images.shape[1:], 3, images, 0, steps)
    compile_training_model(fresh, config, steps)
    fresh((images[:2], np.eye(3, dtype=np.float32)[labels[:2]]))
    assert _load_checkpoint(tmp_path / "checkpoint", fresh)["epoch"] == 2
    assert int(keras.ops.convert_to_numpy(fresh.augment.steps_seen)) == 2 * steps  # resumes mid-alternation
    assert all(np.array_equal(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value))
               for a, b in zip(fresh.optimizer.lookahead_averages, averages))


def test_bias_lr_scale_moves_batchnorm_biases_faster():
    config = build_config({}, {"model": "fast", "momentum": 0.0, "lr": 0.01, "schedule": "constant",
                               "weight_decay": 0.0, "lookahead": 0.0, "bias_lr_scale": 64})
    beta = keras.Variable(np.zeros(2, np.float32), name="beta")
    kernel = keras.Variable(np.zeros(2, np.float32), name="kernel")
    optimizer = make_optimizer(config, steps_per_epoch=1)
    optimizer.build([beta, kernel])
    optimizer.apply([keras.ops.ones((2,)), keras.ops.ones((2,))], [beta, kernel])
    assert keras.ops.convert_to_numpy(kernel) == pytest.approx([-0.01, -0.01])
    assert keras.ops.convert_to_numpy(beta) == pytest.approx([-0.64, -0.64])
    with pytest.raises(CompError, match="sgd or sgd-torch only"):
        build_config({}, {"model": "baseline", "optimizer": "adam", "bias_lr_scale": 64})


def test_batchnorm_statistics_are_recalibrated_to_equal_weight_batch_averages():
    from comp.augment import make_augment_layer, make_mix_layer
    from comp.trainer import RECALIBRATION_BATCHES, TrainingModel, recalibrate_batchnorm

    inputs = keras.Input((4, 4, 2))
    norm = keras.layers.BatchNormalization(momentum=0.6)
    net = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(norm(inputs))))
    model = TrainingModel(net, make_augment_layer("none", 0), make_mix_layer(0.0, 0.0, 1), 3, 0.0)
    rng = np.random.default_rng(0)
    batch = 8
    images = rng.normal(5.0, 3.0, (batch * (RECALIBRATION_BATCHES + 2), 4, 4, 2)).astype(np.float32)
    labels = rng.integers(0, 3, len(images))
    recalibrate_batchnorm(model, images, labels, 3, batch, seed=4)

    order = np.random.default_rng(4).permutation(len(images))  # the batches the function drew
    batches = [images[np.sort(order[i * batch:(i + 1) * batch])] for i in range(RECALIBRATION_BATCHES)]
    means = np.mean([b.mean(axis=(0, 1, 2)) for b in batches], axis=0)
    variances = np.mean([b.var(axis=(0, 1, 2)) for b in batches], axis=0)
    assert keras.ops.convert_to_numpy(norm.moving_mean) == pytest.approx(means, rel=1e-4)
    assert keras.ops.convert_to_numpy(norm.moving_variance) == pytest.approx(variances, rel=1e-4)
    assert norm.momentum == 0.6  # put back for later training


def test_a_fold_resumed_after_its_last_epoch_ends_on_the_average(tmp_path, monkeypatch):
    """Killed between the last epoch's checkpoint and the fold's artifacts: the resume skips fit,
    so it must finalize the average itself; its kept weights equal an uninterrupted run's."""
    from comp import trainer

    config = build_config({}, {"model": "fast", "width": 0.125, "batch_size": 16, "epochs": 2})
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 96)
    val_images, val_labels = images[:16], labels[:16]
    monkeypatch.setattr(trainer, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every epoch

    trainer.train_fold(config, images, labels, val_images, val_labels, 3, 0, fold_dir=tmp_path / "whole")

    finish = trainer._finish_fold

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(trainer, "_finish_fold", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.train_fold(config, images, labels, val_images, val_labels, 3, 0, fold_dir=tmp_path / "cut")
    assert (tmp_path / "cut" / "checkpoint").exists() and not (tmp_path / "cut" / "metrics.json").exists()
    monkeypatch.setattr(trainer, "_finish_fold", finish)
    trainer.train_fold(config, images, labels, val_images, val_labels, 3, 0, fold_dir=tmp_path / "cut")

    whole, resumed = (keras.models.load_model(tmp_path / name / "model.keras", compile=False) for name in ("whole", "cut"))
    for a, b in zip(whole.trainable_weights, resumed.trainable_weights):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b), atol=1e-5)
