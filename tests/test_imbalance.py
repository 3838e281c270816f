"""Class imbalance (issue #23, Must 6): --class-weight balanced weighs the loss, --sampler balanced
draws the batches; both equal on TensorFlow and JAX, searched by tune on imbalanced data, and
`comp data check` shows the imbalance ratio."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from sklearn.utils.class_weight import compute_class_weight

from comp.cli import main
from comp.config.run_config import RunConfig, build_config
from comp.engine.feed import BatchOrder, balanced_class_weights, balanced_row_weights

from .conftest import REPO, learnable_images


def reference_loss(logits, targets, smoothing, weights):
    """The weighted, smoothed cross-entropy in NumPy: the row's weight from its unsmoothed targets."""
    logits, targets = np.asarray(logits, np.float64), np.asarray(targets, np.float64)
    row_weights = targets @ np.asarray(weights, np.float64)
    smoothed = targets * (1 - smoothing) + smoothing / targets.shape[1]
    shifted = logits - logits.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return float(np.mean(-(smoothed * log_probs).sum(axis=1) * row_weights))


def loss_case():
    """Logits, mixed soft targets (as mixup makes them), and class weights with an absent class (0)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 2, (6, 4)).astype(np.float32)
    first, second = rng.integers(0, 3, 6), rng.integers(0, 3, 6)
    lam = rng.uniform(0, 1, (6, 1))
    targets = (lam * np.eye(4)[first] + (1 - lam) * np.eye(4)[second]).astype(np.float32)
    weights = balanced_class_weights(np.array([0, 0, 0, 0, 0, 1, 1, 2]), 4)
    return logits, targets, weights


def test_balanced_class_weights_are_scikit_learns_and_absent_classes_weigh_nothing():
    labels = np.array([0] * 8 + [1] * 2 + [3] * 2)
    weights = balanced_class_weights(labels, 5)
    expected = compute_class_weight("balanced", classes=np.array([0, 1, 3]), y=labels)
    assert weights[[0, 1, 3]] == pytest.approx(expected)
    assert weights[2] == 0 and weights[4] == 0
    assert np.mean(weights[labels]) == pytest.approx(1.0)  # the average row still weighs 1


def test_the_weighted_loss_matches_numpy_and_ones_change_nothing():
    from comp.engine.step import smoothed_cross_entropy

    logits, targets, weights = loss_case()
    for smoothing in (0.0, 0.1):
        got = float(smoothed_cross_entropy(logits, targets, smoothing, 4, weights))
        assert got == pytest.approx(reference_loss(logits, targets, smoothing, weights), rel=1e-5)
        plain = float(smoothed_cross_entropy(logits, targets, smoothing, 4))
        assert float(smoothed_cross_entropy(logits, targets, smoothing, 4, np.ones(4, np.float32))) == plain


JAX_LOSS = textwrap.dedent("""
    import json, sys
    import numpy as np
    import keras
    from comp.config.run_config import build_config
    from comp.engine.feed import FoldStore, store_capacity, training_inputs
    from comp.engine.optimizers import compile_training_model
    from comp.engine.programs import build_training_model
    from comp.engine.step import smoothed_cross_entropy

    assert keras.backend.backend() == sys.argv[2], keras.backend.backend()
    logits, targets, weights = (np.asarray(a, np.float32) for a in json.loads(sys.argv[1]))
    out = {"loss": float(smoothed_cross_entropy(logits, targets, 0.1, 4, weights))}
    # The weights live in the compiled step's state: a fit with them set trains and keeps them.
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (32, 8, 8, 3), dtype=np.uint8), np.array([0] * 24 + [1] * 6 + [2] * 2)
    config = build_config({}, {"model": "baseline", "width": 0.25, "batch_size": 8, "epochs": 1,
                               "class_weight": "balanced", "sampler": "balanced"})
    store = FoldStore(store_capacity(len(y)), x.shape[1:]) if keras.backend.backend() == "jax" else None
    model, _ = build_training_model(config, x.shape[1:], 4, x, 0, 4, store)
    data, steps = training_inputs(x, y, 8, 0, store, "balanced")
    compile_training_model(model, config, steps)
    model.set_class_weights(weights)
    history = model.fit(**data, epochs=1, verbose=0)
    out["fit_loss"] = float(history.history["loss"][-1])
    out["kept"] = keras.ops.convert_to_numpy(model.class_weights).tolist()
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_class_weights_train_and_score_alike_on_each_backend(backend):
    logits, targets, weights = loss_case()
    arguments = [json.dumps([logits.tolist(), targets.tolist(), weights.tolist()]), backend]
    if backend == "tensorflow":  # this process's own backend: the same script here, not a second TensorFlow start
        printed = io.StringIO()
        with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(printed):
            patch.setattr(sys, "argv", ["-c", *arguments])
            exec(compile(JAX_LOSS, "<JAX_LOSS>", "exec"), {"__name__": "__main__"})
        stdout = printed.getvalue()
    else:
        env = {**os.environ, "KERAS_BACKEND": backend, "PYTHONPATH": str(REPO)}
        result = subprocess.run([sys.executable, "-c", JAX_LOSS, *arguments], cwd=REPO, env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-2000:]
        stdout = result.stdout
    out = json.loads(stdout.split("RESULT", 1)[1])
    assert out["loss"] == pytest.approx(reference_loss(logits, targets, 0.1, weights), rel=1e-5)
    assert np.isfinite(out["fit_loss"])
    assert out["kept"] == pytest.approx(weights.tolist())


def test_the_balanced_sampler_meets_every_class_equally_and_replays():
    labels = np.array([0] * 90 + [1] * 10)
    order = BatchOrder(len(labels), 10, seed=5, row_weights=balanced_row_weights(labels))
    plain = BatchOrder(len(labels), 10, seed=5)
    assert order.steps == plain.steps == 10
    drawn = []
    for epoch in range(10):
        order.on_epoch_begin(epoch)
        rows = order.batch_rows()
        assert rows.shape == (10, 10)
        drawn.append(rows)
    share = np.mean(labels[np.concatenate(drawn).ravel()] == 1)
    assert 0.4 < share < 0.6  # a shuffle gives 0.1
    replay = BatchOrder(len(labels), 10, seed=5, row_weights=balanced_row_weights(labels))
    replay.on_epoch_begin(3)
    assert np.array_equal(replay.batch_rows(), drawn[3])  # a resumed epoch draws the same batches


def test_new_fields_at_their_defaults_keep_old_run_names():
    config = build_config({}, {"model": "baseline"})
    values = config.to_dict()
    for key in ("name", "class_weight", "sampler", "run_folds", "devices"):  # devices: never part of the identity
        values.pop(key)
    old_hash = hashlib.sha1(json.dumps(values, sort_keys=True).encode()).hexdigest()[:8]
    assert config.identity_hash() == old_hash
    assert config.replace(class_weight="balanced").identity_hash() != old_hash
    assert config.replace(sampler="balanced").identity_hash() != old_hash
    assert config.replace(run_folds=1).identity_hash() != old_hash  # a holdout run is another run


def test_bad_values_are_one_line_errors():
    from comp.core.errors import CompError

    with pytest.raises(CompError, match="class_weight = 'inverse'; expected one of none, balanced"):
        RunConfig.from_dict({"class_weight": "inverse"})


def test_tune_searches_the_imbalance_options_only_on_imbalanced_data():
    from comp.stages.tune.space import default_space

    base = build_config({}, {"model": "baseline"})
    assert "class_weight" not in default_space(base, 1000, imbalance=1.2)
    space = default_space(base, 1000, imbalance=9.0)
    assert space["class_weight"] == {"choices": ["none", "balanced"]}
    assert space["sampler"] == {"choices": ["shuffle", "balanced"]}


def imbalanced_competition(root: Path) -> Path:
    from comp.data.demo import write_competition

    parts = [learnable_images(3, n, 16, seed) for n, seed in ((30, 0), (30, 1), (30, 2))]
    keep = [(x[y == c][:n], y[y == c][:n]) for (x, y), c, n in zip(parts, range(3), (30, 9, 5))]
    train_x, train_y = np.concatenate([k[0] for k in keep]), np.concatenate([k[1] for k in keep])
    test_x, test_y = learnable_images(3, 3, 16, seed=7)
    return write_competition(root, train_x, train_y, ["a", "b", "c"], test_x, test_y, ext=".png")


def test_check_shows_the_ratio_and_a_balanced_run_trains_and_records_it(tmp_path, capsys, monkeypatch):
    from comp.engine.step import TrainingModel

    given = []
    original = TrainingModel.set_class_weights
    monkeypatch.setattr(TrainingModel, "set_class_weights",
                        lambda self, weights: (given.append(np.asarray(weights)), original(self, weights))[1])
    data = imbalanced_competition(tmp_path / "data")
    work = tmp_path / "work"
    assert main(["data", "check", "--data", str(data), "--workdir", str(work)]) == 0
    assert "class imbalance: largest/smallest class 6.0x -- imbalanced" in capsys.readouterr().out
    assert main(["train", "--workdir", str(work), "--model", "baseline", "--width", "0.25", "--epochs", "2",
                 "--folds", "2", "--class-weight", "balanced", "--sampler", "balanced", "--quiet",
                 "--name", "bal"]) == 0
    manifest = json.loads((work / "folds" / "bal" / "config.json").read_text())
    config = manifest.get("config", manifest)
    assert config["class_weight"] == "balanced" and config["sampler"] == "balanced"
    oof = np.load(work / "folds" / "bal" / "oof_probs.npy")
    assert oof.shape == (44, 3) and np.allclose(oof.sum(axis=1), 1, atol=1e-4)
    # Each fold weighs its own training rows: the rare class weighs most, the weights average 1 over rows.
    assert len(given) == 2
    for weights in given:
        assert weights[2] > weights[1] > weights[0] and 0.3 < weights[0] < 1


# -- small data (issue #27, item 5): a fold gets enough steps whatever its row count -------------


def two_blob_competition(root: Path, rows: int = 200) -> Path:
    """A separable two-class set: dark images against bright ones, `rows` train images."""
    from comp.data.demo import write_competition

    rng = np.random.default_rng(0)
    labels = np.arange(rows) % 2
    images = (np.where(labels[:, None, None, None] == 1, 170, 80)
              + rng.normal(0, 20, (rows, 8, 8, 3))).clip(0, 255).astype(np.uint8)
    test_labels = np.arange(8) % 2
    test = (np.where(test_labels[:, None, None, None] == 1, 170, 80) + np.zeros((8, 8, 8, 3))).astype(np.uint8)
    return write_competition(root, images, labels, ["dark", "bright"], test, test_labels, ext=".png")


def test_a_small_set_gets_smaller_batches_and_more_epochs_and_learns(tmp_path, capsys):
    from comp.stages.train import MIN_FOLD_STEPS, MIN_STEPS_PER_EPOCH

    data = two_blob_competition(tmp_path / "data")
    work = tmp_path / "work"
    common = ["train", "--data", str(data), "--workdir", str(work), "--model", "baseline", "--folds", "2"]
    # The model's batch (64 here, over 100 training rows a fold) left to comp: it halves, the epochs grow.
    assert main([*common, "--name", "fitted"]) == 0
    assert "small data: 100 training rows a fold; batch_size 64 -> 16" in capsys.readouterr().out
    config = json.loads((work / "folds" / "fitted" / "config.json").read_text())["config"]
    steps_per_epoch = 100 // config["batch_size"]
    assert config["batch_size"] == 16 and steps_per_epoch < MIN_STEPS_PER_EPOCH  # the batch's floor
    assert config["epochs"] * steps_per_epoch >= MIN_FOLD_STEPS
    assert config["lr"] == pytest.approx(build_config({}, {"model": "baseline"}).lr / 4)
    # Chosen by the caller: kept as said, one step an epoch, and that does not learn the blobs.
    assert main([*common, "--name", "one-step", "--batch-size", "100", "--epochs", "10"]) == 0
    assert "small data" not in capsys.readouterr().out

    def oof_accuracy(name):
        summary = json.loads((work / "folds" / name / "summary.json").read_text())
        return summary["cv_accuracy"]

    assert oof_accuracy("fitted") >= 0.95
    assert oof_accuracy("one-step") < oof_accuracy("fitted") - 0.2
