"""Resuming a fold: the same random streams as an uninterrupted run, and damaged checkpoints survived."""

from __future__ import annotations

import shutil

import keras
import numpy as np
import pytest

from comp.config.run_config import build_config
from comp.engine.feed import BatchOrder
from comp.engine.trainer import train_fold

from .conftest import learnable_images

EPOCHS = 3
# Every random stream a fold has: batch order, augmentation (flip-crop), mixup, dropout (baseline).
CONFIG = {"model": "baseline", "width": 0.25, "batch_size": 16, "epochs": EPOCHS, "keep": "last",
          "augment": "flip-crop", "mixup": 0.4, "optimizer": "sgd", "lr": 0.05, "schedule": "constant"}


class Killed(Exception):
    """Stands in for a kill at an epoch's end (after its checkpoint was written)."""


def _fold_data():
    images, labels = learnable_images(3, 30, size=16, seed=3)
    order = np.random.default_rng(0).permutation(len(labels))
    images, labels = images[order], labels[order]
    return images[:72], labels[:72], images[72:], labels[72:]


def _train(fold_dir, on_epoch=None):
    train_x, train_y, val_x, val_y = _fold_data()
    return train_fold(build_config({}, CONFIG), train_x, train_y, val_x, val_y, 3, 0, fold_dir=fold_dir,
                      test_x=val_x, on_epoch=on_epoch)


def _kill_after(epoch_to_die: int, also=None):
    def on_epoch(epoch, row):
        if also:
            also(epoch)
        if epoch == epoch_to_die:
            raise Killed

    return on_epoch


def _weights(fold_dir) -> list[np.ndarray]:
    net = keras.models.load_model(fold_dir / "model.keras", compile=False)
    return [keras.ops.convert_to_numpy(w) for w in net.weights]


def _assert_same_training(a, b):
    for x, y in zip(_weights(a), _weights(b), strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.load(a / "val_probs.npy"), np.load(b / "val_probs.npy"), rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    fold_dir = tmp_path_factory.mktemp("whole") / "fold0"
    _train(fold_dir)
    return fold_dir


def test_the_batch_order_of_an_epoch_depends_on_seed_and_epoch_only():
    walked = BatchOrder(50, 16, seed=7)
    seen = {}
    for epoch in range(3):
        walked.on_epoch_begin(epoch)
        seen[epoch] = walked.batch_rows().copy()
    jumped = BatchOrder(50, 16, seed=7)
    jumped.on_epoch_begin(2)  # a fit resumed at epoch 2
    np.testing.assert_array_equal(jumped.batch_rows(), seen[2])
    assert seen[2].shape == (3, 16) and len(np.unique(seen[2])) == 48  # full batches, no row twice
    assert not np.array_equal(seen[1], seen[2])
    other_seed = BatchOrder(50, 16, seed=8)
    other_seed.on_epoch_begin(2)
    assert not np.array_equal(other_seed.batch_rows(), seen[2])


def test_a_fold_killed_after_epoch_1_resumes_to_the_weights_of_an_uninterrupted_run(uninterrupted, tmp_path):
    fold_dir = tmp_path / "fold0"
    with pytest.raises(Killed):
        _train(fold_dir, on_epoch=_kill_after(0))
    assert (fold_dir / "checkpoint" / "state.json").exists() and not (fold_dir / "metrics.json").exists()
    _train(fold_dir)
    _assert_same_training(fold_dir, uninterrupted)


def test_a_damaged_checkpoint_falls_back_to_the_older_buffer(uninterrupted, tmp_path, capsys):
    fold_dir = tmp_path / "fold0"
    first = tmp_path / "after-epoch-1"

    def keep_first(epoch):
        if epoch == 0:
            shutil.copytree(fold_dir / "checkpoint", first)

    with pytest.raises(Killed):
        _train(fold_dir, on_epoch=_kill_after(1, also=keep_first))
    # As a crash between the two renames of a save leaves it: the previous buffer beside the newest,
    # and the newest cut short (a full disk, a copy that stopped).
    shutil.copytree(first, fold_dir / "checkpoint.old")
    weights = fold_dir / "checkpoint" / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    _train(fold_dir)
    out = " ".join(capsys.readouterr().out.split())
    assert "checkpoint: damaged" in out and "removed it" in out
    _assert_same_training(fold_dir, uninterrupted)  # resumed after epoch 1, not from scratch, not stuck


def test_a_fold_whose_only_checkpoint_is_damaged_trains_again_from_the_start(uninterrupted, tmp_path, capsys):
    fold_dir = tmp_path / "fold0"
    with pytest.raises(Killed):
        _train(fold_dir, on_epoch=_kill_after(1))
    optimizer = fold_dir / "checkpoint" / "optimizer.npz"
    optimizer.write_bytes(optimizer.read_bytes()[:-200])
    _train(fold_dir)
    out = " ".join(capsys.readouterr().out.split())
    assert "checkpoint: damaged" in out
    assert "no readable checkpoint left; training it again from the first epoch" in out
    assert (fold_dir / "metrics.json").exists() and not (fold_dir / "checkpoint").exists()
    _assert_same_training(fold_dir, uninterrupted)
