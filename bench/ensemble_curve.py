"""Ensemble-size curve: OOF accuracy of the mean of n runs' probabilities, n = 1..N.

Each run's out-of-fold probabilities with its own TTA policy (the OOF rows all runs share); for
every n the mean accuracy over up to --orders random orders of the runs (and its spread), so the
curve does not hang on which run came first. What it measures is what `comp ensemble --method mean`
would score, for every ensemble size.

    python bench/ensemble_curve.py --workdir WORK [--runs a,b,c] [--orders 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp.store.runs import finished_runs, load_run, oof_labels  # noqa: E402
from comp.workspace import Workspace  # noqa: E402


def shared_oof(runs) -> tuple[np.ndarray, np.ndarray]:
    """(runs, rows, classes) OOF probabilities on the rows every run predicted, and their labels."""
    run_rows = [run.oof_rows().tolist() for run in runs]  # each run's file read once
    rows = np.array(sorted(set.intersection(*map(set, run_rows))))
    probs, labels = [], None
    for run, own_rows in zip(runs, run_rows):
        position = {row: i for i, row in enumerate(own_rows)}
        take = [position[row] for row in rows]
        probs.append(run.read_oof(run.own_tag)[take])
        labels = oof_labels(run)[take] if labels is None else labels
    return np.stack(probs), labels


def curve(probs: np.ndarray, labels: np.ndarray, orders: int, seed: int = 0) -> list[dict]:
    """Per ensemble size n: mean, min and max accuracy of the first n runs over random orders."""
    rng = np.random.default_rng(seed)
    count = len(probs)
    permutations = [rng.permutation(count) for _ in range(orders)]
    rows = []
    for n in range(1, count + 1):
        scores = [float((probs[order[:n]].mean(axis=0).argmax(axis=1) == labels).mean()) for order in permutations]
        rows.append({"models": n, "mean": float(np.mean(scores)), "min": min(scores), "max": max(scores)})
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", default=".")
    parser.add_argument("--runs", help="comma-separated run names (default: every finished run)")
    parser.add_argument("--orders", type=int, default=200)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    workspace = Workspace(args.workdir)
    runs = ([load_run(workspace, name) for name in args.runs.split(",")] if args.runs
            else finished_runs(workspace))
    if len(runs) < 2:
        print("error: an ensemble-size curve needs at least 2 finished runs", file=sys.stderr)
        return 2
    probs, labels = shared_oof(runs)
    rows = curve(probs, labels, args.orders)
    print(f"{len(runs)} runs, {len(labels):,} shared OOF rows ({', '.join(run.name for run in runs)})")
    print("models | OOF accuracy, mean over orders | min | max")
    for row in rows:
        print(f"{row['models']:>6} | {row['mean']:.4f} | {row['min']:.4f} | {row['max']:.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"runs": [r.name for r in runs], "curve": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
