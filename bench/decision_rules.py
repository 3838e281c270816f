"""Decision rules on an imbalanced set (issue #23): each metric with and without each rule, cross-fitted.

    python bench/decision_rules.py make --tar ../shared/data/cifar10-dacon.tar.xz --out /tmp/cifar-imb [--per-class 400]
    comp train --data /tmp/cifar-imb --workdir /tmp/imb-work --model fast --width 0.5 --epochs 10 --folds 4 --fold all
    python bench/decision_rules.py score --workdir /tmp/imb-work [--json bench/results/decision_rules.json]

`make` writes a DACON-layout copy of the shared CIFAR-10 whose class i keeps (100 - 10 i)% of
`--per-class` photos (class 0 all, class 9 a tenth); test/ and sample_submission.csv are linked as they are.
`score` takes every finished run of the workdir and, for f1_macro, balanced_accuracy and log_loss, scores
its OOF probabilities plainly and after each decision rule cross-fitted over the run's folds (fitted on the
other folds, applied to each held-out fold: rows the fit never saw), with the 95% paired-bootstrap
interval of the gain (comp.core.decision).
"""

from __future__ import annotations

import argparse
import json
import os
import tarfile
from pathlib import Path

import numpy as np

METRICS = ("f1_macro", "balanced_accuracy", "log_loss")


def make(tar: Path, out: Path, per_class: int) -> None:
    unpacked = out.with_name(out.name + "-src")
    if not (unpacked / "train").exists():
        unpacked.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tar) as archive:
            archive.extractall(unpacked, filter="data")
    root = next(p.parent for p in unpacked.rglob("sample_submission.csv"))
    classes = sorted(p.name for p in (root / "train").iterdir() if p.is_dir())
    (out / "train").mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(classes):
        keep = max(1, round(per_class * (1 - 0.1 * i)))
        target = out / "train" / name
        target.mkdir(exist_ok=True)
        for path in sorted((root / "train" / name).iterdir())[:keep]:
            link = target / path.name
            if not link.exists():
                os.symlink(path.resolve(), link)
        print(f"{name}: {keep} photos")
    for name in ("test", "sample_submission.csv"):
        if not (out / name).exists():
            os.symlink((root / name).resolve(), out / name)


def score_runs(workdir: Path, resamples: int) -> list[dict]:
    from comp.core.decision import bootstrap_gains, cross_fit, gain, rules_for
    from comp.core.metrics import score
    from comp.core.paths import Workdir
    from comp.store.runs import finished_runs, oof_folds, oof_labels

    rows = []
    for run in finished_runs(Workdir(workdir, remember=False)):
        probs, labels, folds = run.oof_probs, oof_labels(run), oof_folds(run)
        counts = np.bincount(labels)
        for metric in METRICS:
            plain = score(metric, labels, probs)
            for rule_cls in rules_for(metric):
                held_out = probs if rule_cls.name == "identity" else cross_fit(rule_cls, probs, labels, folds, metric)
                value = score(metric, labels, held_out)
                gains = bootstrap_gains(metric, labels, probs, held_out, resamples, seed=0)
                low, high = np.percentile(gains, [2.5, 97.5])
                rows.append({"run": run.name, "rows": int(len(labels)), "imbalance": float(counts.max() / counts.min()),
                             "metric": metric, "rule": rule_cls.name, "plain": plain, "cross_fitted": value,
                             "gain": gain(metric, value, plain), "gain_low": float(low), "gain_high": float(high),
                             "gain_share": float(np.mean(gains > 0))})
                print(f"{run.name:28s} {metric:18s} {rule_cls.name:17s} plain {plain:.4f} -> {value:.4f} "
                      f"(gain {rows[-1]['gain']:+.4f}, 95% {low:+.4f}..{high:+.4f}, gains in {rows[-1]['gain_share']:.0%})")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    made = sub.add_parser("make")
    made.add_argument("--tar", type=Path, required=True)
    made.add_argument("--out", type=Path, required=True)
    made.add_argument("--per-class", type=int, default=400)
    scored = sub.add_parser("score")
    scored.add_argument("--workdir", type=Path, required=True)
    scored.add_argument("--resamples", type=int, default=1000)
    scored.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.command == "make":
        make(args.tar, args.out, args.per_class)
    else:
        rows = score_runs(args.workdir, args.resamples)
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
