"""Shared fixtures: tiny competition folders made on the fly (tests never need the real data)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Checkpoint every epoch: test epochs last a fraction of a second (the default waits 30 s).
os.environ.setdefault("COMP_CHECKPOINT_SECONDS", "0")
# Folds and trials in the test process itself: a TensorFlow child per fold costs seconds each.
# The tests of process isolation (test_isolate.py) turn it back on where they need it.
os.environ.setdefault("COMP_NO_ISOLATE", "1")

REPO = Path(__file__).resolve().parents[1]


def learnable_images(num_classes: int, per_class: int, size: int = 16, seed: int = 0):
    """Images whose class is visible (a class-specific colour and stripe), plus noise.

    A tiny CNN learns them in an epoch or two, so tests can assert that training trains.
    """
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for c in range(num_classes):
        base = np.zeros((size, size, 3), np.float32)
        base[..., c % 3] = 160
        base[(c * 3) % size:(c * 3) % size + 3, :, :] = 255
        for _ in range(per_class):
            noisy = base + rng.normal(0, 25, base.shape)
            images.append(np.clip(noisy, 0, 255).astype(np.uint8))
            labels.append(c)
    return np.stack(images), np.array(labels)


def make_competition(root: Path, num_classes=3, per_class=20, test_count=12, size=16, target_kind="name",
                     ext=".png", id_with_ext=False, seed=0) -> Path:
    from comp.data.demo import write_competition

    train_x, train_y = learnable_images(num_classes, per_class, size, seed)
    pool_x, pool_y = learnable_images(num_classes, test_count, size, seed + 1)
    chosen = np.random.default_rng(seed).permutation(len(pool_y))[:test_count]
    test_x, test_y = pool_x[chosen], pool_y[chosen]
    classes = [f"class{c}" for c in range(num_classes)]
    return write_competition(root, train_x, train_y, classes, test_x, test_y, ext=ext,
                             id_with_ext=id_with_ext, target_kind=target_kind)


@pytest.fixture
def tiny_data(tmp_path) -> Path:
    return make_competition(tmp_path / "data")


def run_comp(*args, cwd=None, env=None, timeout=1800) -> subprocess.CompletedProcess:
    """Run the real CLI in a subprocess (exit codes, stderr, no traceback)."""
    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "comp", *map(str, args)], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


TRAIN_TWO_RUNS = ["--model", "baseline", "--epochs", "2", "--folds", "3", "--limit", "300", "--width", "0.5",
                  "--quiet"]


@pytest.fixture(scope="session")
def shared(tmp_path_factory) -> Path:
    """Demo data and two tiny finished runs (a: no augmentation, b: flips -> TTA flip).

    Trained once per test session and shared by the ensemble, predict and report tests; tests
    that change files work on a copy (the `work` fixture).
    """
    import shutil

    from comp.cli import main
    from comp.data.demo import write_demo

    root = tmp_path_factory.getbasetemp() / "shared-runs"
    if not (root / "done").exists():
        shutil.rmtree(root, ignore_errors=True)
        write_demo(root / "demo")
        for name, augment in (("a", "none"), ("b", "flip")):
            code = main(["train", "--data", str(root / "demo"), "--workdir", str(root / "work"),
                         *TRAIN_TWO_RUNS, "--augment", augment, "--name", name])
            assert code == 0
        (root / "done").touch()
    return root


@pytest.fixture
def work(shared, tmp_path) -> Path:
    """A private copy of the trained workdir (comp.toml points at the shared demo data)."""
    import shutil

    copy = tmp_path / "work"
    shutil.copytree(shared / "work", copy)
    return copy
