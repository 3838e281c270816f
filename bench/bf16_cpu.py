"""bfloat16 against float32 on this CPU, at equal epochs: speed and accuracy, alternated in one run.

Trains airbench94 (comp's recipe, full width) on N real CIFAR-10 rows for its 9.9 epochs, once per
precision and seed, the precisions alternated (float32, bfloat16, float32, ...) so a machine that
slows down mid-run slows both; scores each on the same 5,000 held-out rows (with the recipe's TTA)
and gives the accuracy difference's 95% paired bootstrap interval over those rows.

    python bench/bf16_cpu.py --workdir /tmp/cifar-wd --rows 5000 --seeds 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from comp import Workspace  # noqa: E402
from comp.config.run_config import build_config  # noqa: E402
from comp.engine.trainer import train_fold  # noqa: E402

VAL_ROWS = 5000
BOOTSTRAP = 2000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default="/tmp/cifar-wd", help="a workdir whose comp.toml names the CIFAR folder")
    parser.add_argument("--rows", type=int, default=5000, help="training rows")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--model", default="airbench94")
    parser.add_argument("--epochs", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--out", default="bench/results/bf16_cpu.json")
    args = parser.parse_args()

    dataset = Workspace(args.workdir).dataset()
    order = np.random.default_rng(0).permutation(len(dataset.train_y))
    train, val = np.sort(order[:args.rows]), np.sort(order[args.rows:args.rows + VAL_ROWS])
    train_x, train_y = np.asarray(dataset.train_x[train]), dataset.train_y[train]
    val_x, val_y = np.asarray(dataset.train_x[val]), dataset.train_y[val]
    results = []
    for seed in range(args.seeds):
        for precision in ("float32", "bfloat16"):
            overrides = {"model": args.model, "precision": precision, "seed": seed, "val_every": 0}
            if args.epochs:
                overrides["epochs"] = args.epochs
            config = build_config({}, overrides)
            started = time.time()
            result = train_fold(config, train_x, train_y, val_x, val_y, dataset.num_classes, 0)
            phases = result.phases
            steady = phases["later_epochs"] / max(1, phases["later_epoch_count"])
            steps = len(train_y) // config.batch_size
            row = {"seed": seed, "precision": precision, "val_accuracy_tta": float(np.mean(
                result.val_probs.argmax(1) == val_y)), "val_accuracy": result.val_accuracy,
                "seconds": round(time.time() - started, 1), "first_epoch_s": phases["first_epoch"],
                "steady_epoch_s": round(steady, 2), "images_per_s": round(steps * config.batch_size / steady, 1),
                "correct": (result.val_probs.argmax(1) == val_y).tolist()}
            results.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "correct"}), flush=True)
    summarize(results, args)


def summarize(results: list[dict], args) -> None:
    by = {(r["seed"], r["precision"]): r for r in results}
    rng = np.random.default_rng(0)
    lines = []
    for seed in range(args.seeds):
        f32, bf16 = by[seed, "float32"], by[seed, "bfloat16"]
        diff = np.asarray(bf16["correct"], float) - np.asarray(f32["correct"], float)
        draws = rng.integers(0, len(diff), (BOOTSTRAP, len(diff)))
        low, high = np.percentile(diff[draws].mean(axis=1), [2.5, 97.5])
        lines.append({"seed": seed, "float32": f32["val_accuracy_tta"], "bfloat16": bf16["val_accuracy_tta"],
                      "diff": float(diff.mean()), "diff_low": float(low), "diff_high": float(high),
                      "speedup": round(bf16["images_per_s"] / f32["images_per_s"], 3)})
    # Pooled over seeds: every (seed, row) pair once.
    diffs = np.concatenate([np.asarray(by[s, "bfloat16"]["correct"], float) - np.asarray(by[s, "float32"]["correct"],
                                                                                          float)
                            for s in range(args.seeds)])
    draws = rng.integers(0, len(diffs), (BOOTSTRAP, len(diffs)))
    low, high = np.percentile(diffs[draws].mean(axis=1), [2.5, 97.5])
    pooled = {"diff": float(diffs.mean()), "diff_low": float(low), "diff_high": float(high),
              "speedup_median": float(np.median([line["speedup"] for line in lines]))}
    for line in lines:
        print(json.dumps(line))
    print("pooled", json.dumps(pooled))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "runs": [{k: v for k, v in r.items() if k != "correct"}
                                                                       for r in results],
                                          "per_seed": lines, "pooled": pooled}, indent=1))


if __name__ == "__main__":
    main()
