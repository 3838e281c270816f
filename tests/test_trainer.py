"""The optimiser pieces of the train step: lookahead averaging and what a checkpoint keeps."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from comp.config.run_config import build_config
from comp.core.errors import CompError
from comp.engine.checkpoints import _load_checkpoint, _save_checkpoint
from comp.engine.feed import training_inputs
from comp.engine.optimizers import compile_training_model, make_optimizer
from comp.engine.programs import build_training_model
from comp.nets.lookahead import LOOKAHEAD_EVERY


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
    data, steps = training_inputs(images, labels, config.batch_size, 0)
    model, _ = build_training_model(config, images.shape[1:], 3, images, 0, steps)
    compile_training_model(model, config, steps)
    model.fit(**data, epochs=config.epochs, verbose=0)
    averages = model.optimizer.lookahead_averages
    assert all(np.array_equal(keras.ops.convert_to_numpy(w.value), keras.ops.convert_to_numpy(a.value))
               for w, a in zip(model.trainable_variables, averages))
    assert int(keras.ops.convert_to_numpy(model.augment.steps_seen)) == 2 * steps

    _save_checkpoint(tmp_path, model, {"epoch": 2})
    fresh, _ = build_training_model(config, images.shape[1:], 3, images, 0, steps)
    compile_training_model(fresh, config, steps)  # no eager call: every variable exists after compile
    assert _load_checkpoint(tmp_path / "checkpoint", fresh, 0)["epoch"] == 2
    assert int(keras.ops.convert_to_numpy(fresh.augment.steps_seen)) == 2 * steps  # resumes mid-alternation
    assert all(np.array_equal(keras.ops.convert_to_numpy(a.value), keras.ops.convert_to_numpy(b.value))
               for a, b in zip(fresh.optimizer.lookahead_averages, averages))

    # A checkpoint of another model (here: an optimizer without lookahead's averages) is refused whole.
    other = config.replace(lookahead=0.0)
    plain, _ = build_training_model(other, images.shape[1:], 3, images, 0, steps)
    compile_training_model(plain, other, steps)
    with pytest.raises(CompError, match="does not fit this run's model.*--fold 0 --force"):
        _load_checkpoint(tmp_path / "checkpoint", plain, 0)


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
    from comp.engine.augment import make_augment_layer, make_mix_layer
    from comp.engine.batchnorm import RECALIBRATION_BATCHES, recalibrate_batchnorm
    from comp.engine.step import TrainingModel

    inputs = keras.Input((4, 4, 2))
    norm = keras.layers.BatchNormalization(momentum=0.6)
    net = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.Flatten()(norm(inputs))))
    model = TrainingModel(net, make_augment_layer("none", 0), make_mix_layer(0.0, 0.0, 1), 3, 0.0)
    rng = np.random.default_rng(0)
    batch = 8
    images = rng.normal(5.0, 3.0, (batch * (RECALIBRATION_BATCHES + 2), 4, 4, 2)).astype(np.float32)
    labels = rng.integers(0, 3, len(images))
    recalibrate_batchnorm(model, images, labels, batch, seed=4)

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
    from comp.engine import callbacks, trainer

    config = build_config({}, {"model": "fast", "width": 0.125, "batch_size": 16, "epochs": 2})
    rng = np.random.default_rng(0)
    images, labels = rng.integers(0, 256, (96, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 96)
    val_images, val_labels = images[:16], labels[:16]
    monkeypatch.setattr(callbacks, "CHECKPOINT_SECONDS", 0.0)  # a checkpoint after every epoch

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


# -- divergence, and the kept epoch ----------------------------------------------------------------


def _tiny_fold(seed: int = 0):
    from .conftest import learnable_images

    images, labels = learnable_images(3, 24, size=16, seed=seed)
    order = np.random.default_rng(seed).permutation(len(labels))
    images, labels = images[order], labels[order]
    return images[:56], labels[:56], images[56:], labels[56:]


def test_a_diverging_fold_stops_in_the_epoch_it_diverged_and_writes_no_probabilities(tmp_path):
    from comp.engine.callbacks import TrainingDiverged
    from comp.engine.trainer import train_fold

    config = build_config({}, {"model": "baseline", "width": 0.25, "batch_size": 8, "epochs": 3, "keep": "last",
                               "optimizer": "sgd", "momentum": 0.9, "lr": 1e4, "schedule": "constant"})
    train_x, train_y, val_x, val_y = _tiny_fold()
    finished_epochs = []
    with pytest.raises(TrainingDiverged, match=r"fold 2: training diverged in epoch 1 \(loss = nan\); "
                                               r"lower the learning rate \(now 10000, e\.g\. --lr 1000\)"):
        train_fold(config, train_x, train_y, val_x, val_y, 3, 2, fold_dir=tmp_path, test_x=val_x,
                   on_epoch=lambda epoch, row: finished_epochs.append(epoch))
    assert finished_epochs == []  # not one more epoch trained on NaN weights
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no probabilities, no metrics, no NaN checkpoint


def test_a_nan_learning_rate_stops_the_fold_too(tmp_path):
    from comp.engine.callbacks import TrainingDiverged
    from comp.engine.trainer import train_fold

    config = build_config({}, {"model": "baseline", "width": 0.25, "batch_size": 8, "epochs": 2, "keep": "last"})
    config.lr = float("nan")  # what RunConfig validation refuses at the door; the trainer holds anyway
    train_x, train_y, val_x, val_y = _tiny_fold()
    with pytest.raises(TrainingDiverged, match=r"fold 0: training diverged in epoch 1 .*now nan\) and train again"):
        train_fold(config, train_x, train_y, val_x, val_y, 3, 0, fold_dir=tmp_path, test_x=val_x)
    assert not list(tmp_path.glob("*.npy")) and not (tmp_path / "metrics.json").exists()


def test_non_finite_probabilities_are_never_written(tmp_path):
    from comp.engine.callbacks import TrainingDiverged
    from comp.engine.trainer import _finish_fold

    net = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(3)])
    net.layers[-1].kernel.assign(np.full((48, 3), np.nan, np.float32))  # e.g. broken by a last step
    images = np.random.default_rng(0).integers(0, 256, (6, 4, 4, 3), dtype=np.uint8)
    config = build_config({}, {"model": "baseline", "tta": "flip"})
    state = {"epoch": 1, "best_epoch": 1, "history": []}
    with pytest.raises(TrainingDiverged, match="fold 1: the trained model gives non-finite validation probabilities"):
        _finish_fold(config, net, images, np.array([0, 1, 2, 0, 1, 2]), images, 1, tmp_path, state, 1.0)
    assert list(tmp_path.iterdir()) == []


def test_keep_best_keeps_the_same_epoch_with_or_without_a_fold_dir(tmp_path, monkeypatch):
    """tune trains without a fold_dir, comp train with one: the same config must score the same."""
    from comp.engine import programs, trainer

    config = build_config({}, {"model": "baseline", "width": 0.25, "batch_size": 8, "epochs": 3, "keep": "best",
                               "augment": "none", "tta": "none"})
    train_x, train_y, val_x, val_y = _tiny_fold()
    nets = []
    build_model = programs.build_model

    def remember(*args, **kwargs):
        nets.append(build_model(*args, **kwargs))
        return nets[-1]

    def zero_after_last_epoch(rows):
        def on_epoch(epoch, row):
            rows.append(row["val_accuracy"])
            if epoch == config.epochs - 1:  # weights no epoch was scored with: keep=best must not end on them
                for weight in nets[-1].weights:
                    weight.assign(np.zeros(weight.shape, weight.dtype))
        return on_epoch

    monkeypatch.setattr(programs, "build_model", remember)
    scores_without, scores_with = [], []
    without = trainer.train_fold(config, train_x, train_y, val_x, val_y, 3, 0,
                                 on_epoch=zero_after_last_epoch(scores_without))
    with_dir = trainer.train_fold(config, train_x, train_y, val_x, val_y, 3, 0, fold_dir=tmp_path, test_x=val_x,
                                  on_epoch=zero_after_last_epoch(scores_with))
    assert scores_without == scores_with and max(scores_with) > 0.5  # the same training, and it learned
    assert without.val_accuracy == pytest.approx(max(scores_without), abs=1e-6)
    assert without.best_epoch == with_dir.best_epoch == 1 + int(np.argmax(scores_with))
    np.testing.assert_allclose(without.val_probs, with_dir.val_probs, atol=1e-6)
    np.testing.assert_allclose(with_dir.val_probs, np.load(tmp_path / "val_probs.npy"), atol=1e-6)


def test_a_diverging_tune_trial_fails_alone_and_the_study_goes_on(tiny_data, tmp_path, capsys, monkeypatch):
    """A learning rate too high for one trial is that trial's failure, not bad input that ends the study."""
    import optuna

    from comp.engine import callbacks, trainer
    from comp.cli import main

    def diverges(config, *args, **kwargs):
        raise callbacks.TrainingDiverged(f"fold 0: training diverged in epoch 1 (loss = nan); lr {config.lr:g}")

    monkeypatch.setattr(trainer, "train_fold", diverges)
    monkeypatch.setenv("COMP_NO_ISOLATE", "1")  # both trials in this process
    work = tmp_path / "work"
    code = main(["tune", "--workdir", str(work), "--data", str(tiny_data), "--quiet", "--model", "baseline",
                 "--epochs", "1", "--trials", "2"])
    assert code == 2 and "all 2 trials of this run failed" in capsys.readouterr().err
    study = optuna.load_study(study_name="tune-baseline", storage=f"sqlite:///{work / 'folds' / 'optuna.db'}")
    assert [t.state.name for t in study.trials] == ["FAIL", "FAIL"]
    for trial in study.trials:
        assert trial.user_attrs["error"] == f"fold 0: training diverged in epoch 1 (loss = nan); lr {trial.params['lr']:g}"
