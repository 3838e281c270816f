"""Old against new code, alternated in one run on the same data: `comp train` of fold 0, timed.

Each revision is exported with `git archive` (no checkout is touched) and runs the same
`comp train` arguments in one shared workdir (one decoded cache, one split), old and new in
turn, `--rounds` times: the machine's other load hits both alike. Per run it reads the fold's
history.csv (seconds of every epoch, validation included) and metrics.json, and prints the
epochs' seconds (first epoch: compiling included), the fold's seconds (to its predictions), the
command's wall time (start-up and predictions included) and the ratios old / new of the best and
of the median round. Environment variables pass through (KERAS_BACKEND, JAX_PLATFORMS, ...);
--old-env / --new-env add some to one side only, so one revision can be timed against itself under
two settings (e.g. `--old HEAD --new HEAD --new-env TF_NUM_INTEROP_THREADS=1`).

    python bench/alternate.py --old main --new HEAD --data /tmp/cifar10-dacon --rounds 3 \\
        -- --model fast --width 0.5 --epochs 2 --limit 10000
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from io import BytesIO
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]


def export(revision: str, into: Path) -> tuple[str, Path]:
    """`git archive` of `revision` unpacked under `into`; (short commit, folder)."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", revision], check=True,
                            capture_output=True, text=True).stdout.strip()
    folder = into / commit
    if not folder.exists():
        archive = subprocess.run(["git", "-C", str(REPO), "archive", commit], check=True, capture_output=True).stdout
        with tarfile.open(fileobj=BytesIO(archive)) as tar:
            tar.extractall(folder, filter="data")
    return commit, folder


def train_once(code: Path, name: str, data: str, workdir: Path, train_args: list[str],
               extra_env: dict[str, str] | None = None) -> dict:
    env = {**os.environ, **(extra_env or {}), "PYTHONPATH": str(code)}
    command = [sys.executable, "-m", "comp", "train", "--data", data, "--workdir", str(workdir), "--fold", "0",
               "--force", "--quiet", "--name", name, *train_args]
    started = time.perf_counter()
    subprocess.run(command, cwd=code, env=env, check=True)
    wall = time.perf_counter() - started  # the whole command: start-up, fold, predictions, files
    fold = workdir / "folds" / name / "fold0"
    history = pd.read_csv(fold / "history.csv")
    metrics = json.loads((fold / "metrics.json").read_text())
    seconds = history["seconds"].tolist()
    return {"first_epoch": seconds[0], "later_epochs": sum(seconds[1:]), "epochs": sum(seconds),
            "fold": metrics["seconds"], "wall": round(wall, 2), "val_accuracy": metrics["val_accuracy"]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--old", required=True)
    parser.add_argument("--new", default="HEAD")
    parser.add_argument("--data", required=True)
    parser.add_argument("--workdir", default="/tmp/comp-alternate")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--old-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the old side's runs only (repeatable)")
    parser.add_argument("--new-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable for the new side's runs only (repeatable)")
    parser.add_argument("--json", help="also write every run here")
    parser.add_argument("train_args", nargs=argparse.REMAINDER, help="after --: the `comp train` arguments")
    args = parser.parse_args(argv)
    train_args = [a for a in args.train_args if a != "--"]
    workdir = Path(args.workdir)
    envs = {"old": dict(pair.split("=", 1) for pair in args.old_env),
            "new": dict(pair.split("=", 1) for pair in args.new_env)}
    runs = []
    with tempfile.TemporaryDirectory() as exports:
        codes = dict(export(revision, Path(exports)) for revision in (args.old, args.new))
        for round_ in range(args.rounds):
            for label, commit in (("old", list(codes)[0]), ("new", list(codes)[-1])):
                result = train_once(codes[commit], f"alt-{label}", args.data, workdir, train_args, envs[label])
                runs.append({"round": round_, "code": label, "commit": commit, **result})
                print(json.dumps(runs[-1]), flush=True)
    frame = pd.DataFrame(runs)
    print(frame.to_string(index=False))
    for column in ("first_epoch", "later_epochs", "epochs", "fold", "wall"):
        old, new = (frame[frame.code == c][column].tolist() for c in ("old", "new"))
        print(f"{column:>13}: old/new best {min(old) / min(new):.2f}x ({min(old):.1f} s / {min(new):.1f} s), "
              f"median {statistics.median(old) / statistics.median(new):.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"old": args.old, "new": args.new, "envs": envs, "args": train_args,
                                               "runs": runs},
                                              indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
