"""Multi-label targets (issue #24): 2x2 mosaics of CIFAR-10 photos, labelled with their classes.

    python bench/multilabel_mosaic.py make --tar ../shared/data/cifar10-dacon.tar.xz --out /tmp/mosaic \
        [--train 4000 --test 1000 --side 32]
    comp data check --data /tmp/mosaic --workdir /tmp/mosaic-work --metric f1_samples
    comp train --workdir /tmp/mosaic-work --model fast --width 0.5 --epochs 10 --folds 4
    comp ensemble --workdir /tmp/mosaic-work
    python bench/multilabel_mosaic.py score --workdir /tmp/mosaic-work [--json bench/results/multilabel_mosaic.json]

`make` writes train/NNNNN.png + train.csv (an id column and a 0/1 column per class: the DACON
제2회 컴퓨터비전 form) and test/, sample_submission.csv (0/1 columns) and answers.csv the same way:
each image four photos of the shared train set (a fifth of them kept apart for the test mosaics:
the competition's test answers are held back), each resized to side/2, labelled with the set of
their classes (one to four labels).
`score` takes every finished run of the workdir and, for f1_samples, f1_micro and f1_macro, scores its
OOF probabilities at 0.5 thresholds and with per-label thresholds cross-fitted over its folds (fitted on
the other folds, applied to each held-out fold), with the 95% paired-bootstrap interval of the gain.
"""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np

METRICS = ("f1_samples", "f1_micro", "f1_macro")


def read_photos(tar: Path) -> tuple[list[bytes], list[str]]:
    """The encoded photos of train/<class>/ and their classes (the test answers are held back)."""
    photos, labels = [], []
    with tarfile.open(tar) as archive:
        for member in archive:
            parts = Path(member.name.removeprefix("./")).parts
            if len(parts) == 3 and parts[0] == "train" and member.isfile():
                photos.append(archive.extractfile(member).read())
                labels.append(parts[1])
    return photos, labels


def mosaics(photos: list[bytes], labels: list[str], classes: list[str], count: int, side: int, seed: int):
    """`count` images of four random photos each (side x side) and their multi-hot labels."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    half = side // 2
    images = np.zeros((count, side, side, 3), np.uint8)
    matrix = np.zeros((count, len(classes)), np.uint8)
    index = {c: i for i, c in enumerate(classes)}
    for n in range(count):
        for q, pick in enumerate(rng.choice(len(photos), 4, replace=False)):
            photo = Image.open(io.BytesIO(photos[pick])).convert("RGB").resize((half, half), Image.BILINEAR)
            top, left = divmod(q, 2)
            images[n, top * half:(top + 1) * half, left * half:(left + 1) * half] = np.asarray(photo)
            matrix[n, index[labels[pick]]] = 1
    return images, matrix


def write_part(out: Path, folder: str, images: np.ndarray) -> list[str]:
    from PIL import Image

    (out / folder).mkdir(parents=True, exist_ok=True)
    ids = [f"{i:05d}" for i in range(len(images))]
    for id_, image in zip(ids, images):
        Image.fromarray(image).save(out / folder / f"{id_}.png")
    return ids


def make(tar: Path, out: Path, train: int, test: int, side: int) -> None:
    import pandas as pd

    photos, labels = read_photos(tar)
    classes = sorted(set(labels))
    # A fifth of the photos is kept for the test mosaics: no photo is in both parts.
    held = np.random.default_rng(2).permutation(len(photos)) < len(photos) // 5
    train_photos = [p for p, h in zip(photos, held) if not h]
    train_labels = [c for c, h in zip(labels, held) if not h]
    images, matrix = mosaics(train_photos, train_labels, classes, train, side, seed=0)
    ids = write_part(out, "train", images)
    pd.DataFrame({"id": ids, **dict(zip(classes, matrix.T))}).to_csv(out / "train.csv", index=False)
    test_photos = [p for p, h in zip(photos, held) if h]
    test_labels = [c for c, h in zip(labels, held) if h]
    images, answers = mosaics(test_photos, test_labels, classes, test, side, seed=1)
    ids = write_part(out, "test", images)
    pd.DataFrame({"id": ids, **{c: 0 for c in classes}}).to_csv(out / "sample_submission.csv", index=False)
    pd.DataFrame({"id": ids, **dict(zip(classes, answers.T))}).to_csv(out / "answers.csv", index=False)
    print(f"{out}: {train} train and {test} test mosaics of {side}x{side}, {matrix.sum(1).mean():.2f} labels a row")


def score_runs(workdir: Path, resamples: int) -> list[dict]:
    from comp.core.decision import LabelThresholds, bootstrap_gains, cross_fit
    from comp.core.metrics import score
    from comp.core.paths import Workdir
    from comp.store.runs import finished_runs, oof_folds, oof_labels

    rows = []
    for run in finished_runs(Workdir(workdir, remember=False)):
        probs, labels, folds = run.oof_probs, oof_labels(run), oof_folds(run)
        for metric in METRICS:
            plain = score(metric, labels, probs)
            held_out = cross_fit(LabelThresholds, probs, labels, folds, metric)
            gains = bootstrap_gains(metric, labels, probs, held_out, resamples, seed=0)
            rows.append({"run": run.name, "metric": metric, "rows": int(len(labels)), "threshold_0.5": plain,
                         "cross_fitted": score(metric, labels, held_out),
                         "gain_low": float(np.percentile(gains, 2.5)), "gain_high": float(np.percentile(gains, 97.5)),
                         "thresholds_all_rows": LabelThresholds().fit(probs, labels, metric).thresholds.tolist()})
            row = rows[-1]
            print(f"{run.name} {metric}: 0.5 thresholds {plain:.4f}, cross-fitted per-label thresholds "
                  f"{row['cross_fitted']:.4f} (gain 95% CI {row['gain_low']:+.4f}..{row['gain_high']:+.4f}) "
                  f"on {len(labels):,} OOF rows")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("make")
    made.add_argument("--tar", type=Path, required=True)
    made.add_argument("--out", type=Path, required=True)
    made.add_argument("--train", type=int, default=4000)
    made.add_argument("--test", type=int, default=1000)
    made.add_argument("--side", type=int, default=32)
    scored = commands.add_parser("score")
    scored.add_argument("--workdir", type=Path, required=True)
    scored.add_argument("--resamples", type=int, default=1000)
    scored.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.command == "make":
        make(args.tar, args.out, args.train, args.test, args.side)
        return
    rows = score_runs(args.workdir, args.resamples)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
