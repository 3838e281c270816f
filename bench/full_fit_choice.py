"""Where an hour's last half pays on the leaderboard: more fold epochs, or a full-data fit?

At equal training compute (images seen), two plans for the same rows:
  A  K folds at 2E epochs                    test predictions: the folds' mean (what comp submits)
  B  K folds at E epochs + a full fit at E   test predictions: the full fit's (what comp submits)
(K = 2: a full fit costs the same images as the K folds together, so both plans see 2·E·N images.)
"C" is B's folds alone (E epochs): what the full fit added over them.

The "test" rows are labeled training rows held out from everything (the shared CIFAR-10's own test
answers are held back), scored with the recipe's TTA; intervals are paired bootstrap over those
rows. One seed: they say how large the test-row noise is, not the seed noise.

    python bench/full_fit_choice.py --workdir /tmp/cifar-wd --rows 8000 --epochs 12 --width 0.5
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from sklearn.model_selection import StratifiedKFold  # noqa: E402

from comp import Workspace  # noqa: E402
from comp.config.run_config import build_config  # noqa: E402
from comp.engine.trainer import train_fold  # noqa: E402
from comp.stages.train import fit_batch  # noqa: E402

TEST_ROWS = 5000
MONITOR_ROWS = 512  # a full fit's sanity rows (as comp's FULL_MONITOR_ROWS), drawn from its own rows
BOOTSTRAP = 2000


def fit(config, x, y, val_x, val_y, test_x, classes: int, index: int) -> tuple[np.ndarray, np.ndarray, float]:
    """-> (validation probs, test probs, seconds), both with the recipe's TTA."""
    with tempfile.TemporaryDirectory() as folder:
        started = time.time()
        result = train_fold(config, x, y, val_x, val_y, classes, index, fold_dir=Path(folder), test_x=test_x)
        suffix = "" if config.tta == "none" else f".{config.tta}"
        test = np.load(Path(folder) / f"test_probs{suffix}.npy")
        return result.val_probs, test, time.time() - started


def interval(a_correct: np.ndarray, b_correct: np.ndarray, rng) -> tuple[float, float, float]:
    diff = b_correct.astype(float) - a_correct.astype(float)
    draws = rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))
    low, high = np.percentile(diff[draws].mean(axis=1), [2.5, 97.5])
    return float(diff.mean()), float(low), float(high)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/cifar-wd", help="a workdir whose comp.toml names the CIFAR folder")
    parser.add_argument("--rows", type=int, default=8000, help="training rows (the competition's train set)")
    parser.add_argument("--epochs", type=int, default=12, help="E: plan B's epochs; plan A trains 2E")
    parser.add_argument("--width", type=float, default=0.5)
    parser.add_argument("--model", default="airbench94")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="bench/results/cpu-full-fit-choice.json")
    args = parser.parse_args()

    dataset = Workspace(args.workdir).dataset()
    order = np.random.default_rng(args.seed).permutation(len(dataset.train_y))
    rows, held = np.sort(order[:args.rows]), np.sort(order[args.rows:args.rows + TEST_ROWS])
    x, y = np.asarray(dataset.train_x[rows]), dataset.train_y[rows]
    test_x, test_y = np.asarray(dataset.train_x[held]), dataset.train_y[held]
    classes = dataset.num_classes
    folds = list(StratifiedKFold(2, shuffle=True, random_state=args.seed).split(np.zeros(len(y)), y))
    base = build_config({}, {"model": args.model, "width": args.width, "precision": "auto", "seed": args.seed,
                             "val_every": 0})
    base = fit_batch(base, len(y) // 2)  # as comp auto: the batch fitted to a fold's rows, kept for the full fit
    runs, oof = {}, {}
    for name, epochs in (("A", 2 * args.epochs), ("B", args.epochs)):
        config = base.replace(epochs=epochs)
        oof[name], tests, seconds = np.zeros((len(y), classes), np.float32), [], 0.0
        for fold, (train, val) in enumerate(folds):
            val_probs, test, took = fit(config, x[train], y[train], x[val], y[val], test_x, classes, fold)
            oof[name][val], seconds = val_probs, seconds + took
            tests.append(test)
            print(json.dumps({"plan": name, "fold": fold, "epochs": epochs, "seconds": round(took, 1),
                              "val_accuracy_tta": float(np.mean(val_probs.argmax(1) == y[val]))}), flush=True)
        runs[name] = {"test": np.mean(tests, axis=0), "fold_seconds": seconds}
    monitor = np.sort(np.random.default_rng([args.seed, 1]).choice(len(y), MONITOR_ROWS, replace=False))
    _, full_test, took = fit(base.replace(epochs=args.epochs), x, y, x[monitor], y[monitor], test_x, classes, 2)
    print(json.dumps({"plan": "B", "full fit": True, "epochs": args.epochs, "seconds": round(took, 1)}), flush=True)

    correct = {"A": runs["A"]["test"].argmax(1) == test_y, "B": full_test.argmax(1) == test_y,
               "C": runs["B"]["test"].argmax(1) == test_y}
    rng = np.random.default_rng(0)
    summary = {
        "args": vars(args), "batch_size": base.batch_size, "lr": base.lr,
        "test_accuracy": {k: float(v.mean()) for k, v in correct.items()},
        "oof_accuracy": {k: float(np.mean(oof[k].argmax(1) == y)) for k in ("A", "B")},
        "B_minus_A": interval(correct["A"], correct["B"], rng),
        "B_minus_C": interval(correct["C"], correct["B"], rng),
        "seconds": {"A": round(runs["A"]["fold_seconds"], 1), "B": round(runs["B"]["fold_seconds"] + took, 1)},
    }
    print(json.dumps(summary, indent=1))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
