"""Where a fold's seconds go: time per phase and compiled programs, fold by fold, in one process.

For each fold of one config, what `train_fold` records (FoldResult.phases, also in every fold's
metrics.json under "phases"):
  setup         the engine (build, or reuse and load the fold's initial state), the rows to the
                device, a checkpoint's resume
  first epoch   the first epoch this process ran: tracing and compiling the train step and
                the validation predict program happen here (fold 0)
  later epochs  the other epochs (their mean is the steady pace)
  after fit     BatchNorm recalibration, the TTA predictions of validation and test rows, files
and how often each program was traced: train steps, predict programs (a Predictor per policy),
BatchNorm statistics; on JAX also the programs JAX made and how many came from the persistent
compilation cache (JAX_COMPILATION_CACHE_DIR). Folds after the first should trace nothing.

    python bench/phases.py --model fast --width 0.5 --epochs 2 --folds 3          # synthetic CIFAR-sized rows
    python bench/phases.py --data /tmp/cifar10-dacon --limit 10000 --model fast   # a competition folder
    python bench/phases.py --backend jax --precision float32 ...                  # JAX (CPU or GPU)
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
COLUMNS = ("fold", "setup", "first epoch", "later epochs (mean)", "after fit", "total", "train traces",
           "predictors", "bn stats", "jax programs", "cache hits")


def count_traces(counts: collections.Counter) -> None:
    """Count the Python calls that trace comp's programs: TrainingModel.train_step runs once per
    trace of the train step; a new Predictor or BatchStatistics is a new predict program."""
    from comp.engine import batchnorm, inference, step

    def counted(name, function):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)

        return wrapper

    step.TrainingModel.train_step = counted("train traces", step.TrainingModel.train_step)
    inference.Predictor.__init__ = counted("predictors", inference.Predictor.__init__)
    batchnorm.BatchStatistics.__init__ = counted("bn stats", batchnorm.BatchStatistics.__init__)


def synthetic_folds(rows: int, folds: int, seed: int = 0):
    """CIFAR-shaped random rows (10 classes) in `folds` interleaved folds, and 1,000 test rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    images, labels = rng.integers(0, 256, (rows, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, rows)
    test = rng.integers(0, 256, (1000, 32, 32, 3), dtype=np.uint8)
    for fold in range(folds):
        val = np.arange(rows) % folds == fold
        yield fold, images[~val], labels[~val], images[val], labels[val], test


def data_folds(data: str, workdir: str, limit: int, folds: int, config):
    """The folds of a competition folder as `comp train` splits it (stratified, seeded)."""
    from comp import Workspace
    from comp.data.sources import apply_limit
    from comp.stages.train import split_for

    workspace = Workspace(workdir, data=data, remember=False)
    dataset = workspace.dataset(0, config.image_size, config.resize)
    split = split_for(workspace, dataset, config.replace(folds=max(folds, 2)))
    dataset = apply_limit(dataset, limit)
    for fold in range(folds):
        train_pos, val_pos = split.rows(fold, dataset.rows)
        yield (fold, dataset.train_x[train_pos], dataset.train_y[train_pos], dataset.train_x[val_pos],
               dataset.train_y[val_pos], dataset.test_x)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "tensorflow"))
    parser.add_argument("--data", help="a competition folder (default: synthetic rows)")
    parser.add_argument("--workdir", default="/tmp/comp-phases", help="with --data: where its cache and split go")
    parser.add_argument("--rows", type=int, default=10000, help="synthetic rows (without --data)")
    parser.add_argument("--limit", type=int, default=0, help="with --data: a stratified subsample")
    parser.add_argument("--folds", type=int, default=3, help="folds to train, one after another")
    parser.add_argument("--config", default="{}", help="more RunConfig fields, as JSON")
    parser.add_argument("--json", help="also write the rows here")
    for name, kind in (("model", str), ("width", float), ("epochs", int), ("batch_size", int), ("precision", str),
                       ("augment", str), ("tta", str), ("val_every", int)):
        parser.add_argument("--" + name.replace("_", "-"), dest=name, type=kind)
    args = parser.parse_args(argv)

    from comp.core.backend import accelerator, import_keras, set_backend

    set_backend(args.backend)
    keras = import_keras()
    from comp.engine import trainer
    from comp.config.run_config import build_config

    fields = {k: getattr(args, k) for k in ("model", "width", "epochs", "batch_size", "precision", "augment", "tta",
                                            "val_every") if getattr(args, k) is not None}
    config = build_config(json.loads(args.config), {"model": "fast", **fields})
    counts: collections.Counter = collections.Counter()
    count_traces(counts)
    folds = data_folds(args.data, args.workdir, args.limit, args.folds, config) if args.data else \
        synthetic_folds(args.rows, args.folds)
    device = accelerator() or f"cpu ({os.cpu_count()} cores)"
    print(f"{config.model} width {config.width}, {config.epochs} epochs, batch {config.batch_size}, "
          f"{config.precision}, {keras.backend.backend()} on {device}")
    print(" | ".join(COLUMNS))
    rows = []
    for fold, train_x, train_y, val_x, val_y, test_x in folds:
        before = dict(counts)
        started = time.time()
        result = trainer.train_fold(config, train_x, train_y, val_x, val_y, int(train_y.max()) + 1, fold,
                                    test_x=test_x)
        phases = result.phases
        later = phases["later_epochs"] / max(1, phases["later_epoch_count"])
        row = {"fold": fold, "setup": phases["setup"], "first epoch": phases["first_epoch"],
               "later epochs (mean)": round(later, 3), "after fit": phases["after_fit"],
               "total": round(time.time() - started, 2), "val_accuracy": round(result.val_accuracy, 4)}
        row |= {name: counts[name] - before.get(name, 0) for name in ("train traces", "predictors", "bn stats")}
        row |= {"jax programs": phases.get("programs", "-"), "cache hits": phases.get("cache_hits", "-")}
        rows.append(row)
        print(" | ".join(str(row[column]) for column in COLUMNS), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"config": config.to_dict(), "backend": keras.backend.backend(),
                                               "device": device, "folds": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
