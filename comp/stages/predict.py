"""Prediction with finished runs: re-predict with any TTA policy, or label new images.

    ws.predict(run, tta=P)       every fold's model predicts its validation rows and the test set
                                 with policy P: fold<k>/val_probs.<P>.npy, fold<k>/test_probs.<P>.npy,
                                 oof_probs.<P>.npy, and the OOF accuracy of P beside "none" (the TTA
                                 gain, measured)
    ws.label(run, folder)        labels the images in a folder with the mean of the folds'
                                 probabilities: a CSV of file,label,confidence

Runs are found and read through comp.store.runs.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd

from comp.core.console import console, info, warn
from comp.core.errors import CompError, retrain_fold_fix
from comp.nets.saving import load_keras_model
from comp.core.fileio import read_json, save_csv, save_npy, write_json
from comp.data.folds import Split
from comp.store.runs import (
    Run,
    check_same_data,
    finished_runs,
    load_split,
    recorded_data_dir,
    require_finished,
    run_rows,
)
from comp.core.scoring import accuracy, log_loss
from comp.config.tta_policy import AVERAGES, DEFAULT_AVERAGE, parse_policy, prediction_tag
from comp.engine.tta import average_views, predict_logits

PREDICT_BATCH = 256  # images per predict() call; memory-light on a CPU, still full on a GPU


# -- the data a run needs ----------------------------------------------------------------------


def dataset_for_runs(workspace, runs: list[Run], prefer_recorded: bool = False):
    """The whole train set (no --limit; runs' oof_rows index into it) for these runs, at the image
    size of the first run made on this data (its nets take that size, and its cache exists; every
    size has the same labels, ids and fingerprint).

    The workspace's explicit data folder; else the folder the runs recorded (prefer_recorded:
    re-predicting a run wants the data it was trained on) or the workspace's usual one, falling
    back to the recorded folder when there is none.
    """
    from comp.data.sources import open_source

    recorded = recorded_data_dir(runs)
    if workspace.data is None and prefer_recorded and recorded:
        data_dir = recorded
    else:
        try:
            data_dir = workspace.data_dir
        except CompError:
            if workspace.data is not None or recorded is None:
                raise
            data_dir = recorded
    workspace.use_columns()  # the labels CSV's columns, as the runs were trained with
    source = open_source(data_dir, workspace.cache, skip_bad=workspace.skip_bad)
    same_data = [run for run in runs if run.fingerprint == source.fingerprint]
    size, resize = (same_data[0].image_size, same_data[0].resize) if same_data else ("auto", "squash")
    return source.load(size, resize, say_size=False)


def best_run(workspace) -> Run:
    """The finished run with the best OOF accuracy (with its TTA), for a bare `comp predict`."""
    runs = finished_runs(workspace)
    if not runs:
        raise CompError(f"no finished run under {workspace.folds}; train one first (comp train --fold all)")
    return max(runs, key=lambda r: (r.summary.get("cv_accuracy_tta", 0.0), r.name))


# -- re-predicting a run ------------------------------------------------------------------------


def load_net(run: Run, fold: int):
    return load_keras_model(run.fold_dir(fold) / "model.keras", fix=retrain_fold_fix(run.path, fold))


def predict_fold(run: Run, fold: int, val_x: np.ndarray, test_x: np.ndarray, policy: str):
    """Logits of every view of the fold's validation rows and of the test set."""
    import keras

    keras.backend.clear_session()  # memory stays flat across folds
    net = load_net(run, fold)
    batch = max(int(run.config.get("batch_size", 0)), PREDICT_BATCH)
    return predict_logits(net, val_x, policy, batch), predict_logits(net, test_x, policy, batch)


def write_fold_predictions(run: Run, fold: int, tag: str, val: np.ndarray, test: np.ndarray,
                           val_y: np.ndarray) -> None:
    fold_dir = run.fold_dir(fold)
    save_npy(fold_dir / f"val_probs{tag}.npy", val.astype(np.float32))
    save_npy(fold_dir / f"test_probs{tag}.npy", test.astype(np.float32))
    metrics = read_json(fold_dir / "metrics.json")
    metrics[f"val_accuracy{tag}"] = accuracy(val, val_y)
    write_json(fold_dir / "metrics.json", metrics)  # rewritten whole (atomic): the fold stays "done"


def repredict_run(run: Run, dataset, split: Split, policy: str, average: str) -> dict:
    """Predict every fold with `policy`; write the chosen average; return OOF probs per variant.

    Variants: "none" (the first view alone), "probs" and "logits" (the two averages), so one
    pass measures both the TTA gain and which average is better on out-of-fold rows.
    """
    rows = run_rows(run, dataset, split)
    covered = split.covered(rows, run.folds)  # the OOF rows: every row, or a holdout run's folds' rows
    labels = dataset.train_y[rows[covered]]
    oof = {name: np.zeros((len(covered), len(run.classes)), np.float32) for name in ("none", *AVERAGES)}
    tag = prediction_tag(policy, average)
    for fold in run.folds:
        _, val_pos = split.rows(fold, rows)
        place = np.searchsorted(covered, val_pos)
        started = time.time()
        val_logits, test_logits = predict_fold(run, fold, dataset.train_x[rows[val_pos]], dataset.test_x, policy)
        multilabel = run.multilabel  # sigmoid per label, not softmax
        oof["none"][place] = average_views(val_logits[:1], multilabel=multilabel)
        for name in AVERAGES:
            oof[name][place] = average_views(val_logits, name, policy, multilabel)
        write_fold_predictions(run, fold, tag, average_views(val_logits, average, policy, multilabel),
                               average_views(test_logits, average, policy, multilabel), labels[place])
        info(f"fold {fold}: {len(val_pos):,} val + {len(dataset.test_x):,} test images x "
             f"{len(val_logits)} view(s) in {time.time() - started:.0f}s")
    save_npy(run.path / f"oof_probs{tag}.npy", oof[average])
    return {"labels": labels, "tag": tag, **oof}


def record_tta_result(run: Run, policy: str, results: dict) -> None:
    """summary.json keeps the measured OOF score of every policy predicted (for comp report)."""
    path = run.path / "summary.json"
    if not path.exists():
        return
    summary = read_json(path)
    summary.setdefault("tta_results", {})[policy] = results
    write_json(path, summary)


def tta_table(run: Run, policy: str, variants: dict, metric: str = "accuracy"):
    from rich.table import Table

    from comp.core.metrics import score

    labels = variants["labels"]
    named = metric not in ("accuracy", "log_loss")  # those two have columns of their own
    table = Table(title=f"{run.name}: out-of-fold score of TTA {policy} ({len(labels):,} rows)")
    for column in ("prediction", *([metric] if named else []), "accuracy", "log-loss", "gain vs none"):
        table.add_column(column, justify="left" if column == "prediction" else "right")
    base = accuracy(variants["none"], labels)
    rows = [("none (1 view)", "none")] if policy == "none" else [
        ("none (1 view)", "none"), (f"{policy}, mean of probabilities", "probs"),
        (f"{policy}, mean of logits", "logits")]
    for text, key in rows:
        acc = accuracy(variants[key], labels)
        value = [f"{score(metric, labels, variants[key]):.4f}"] if named else []
        table.add_row(text, *value, f"{acc:.4f}", f"{log_loss(variants[key], labels):.4f}", f"{acc - base:+.4f}")
    return table


def refuse_non_kfold(run: Run) -> None:
    if run.kind != "kfold" or run.pretrained:
        raise CompError(f"{run.name}: not a comp train run (a comp transfer study); "
                        "comp predict re-predicts runs made by comp train")


def repredict(workspace, run: Run, tta: str | None = None, average: str = DEFAULT_AVERAGE) -> dict:
    """Re-predict a finished run with a TTA policy (default: its own); OOF scores of each variant."""
    if average not in AVERAGES:
        raise CompError(f"--tta-average {average}: choose one of {', '.join(AVERAGES)}")
    refuse_non_kfold(run)
    require_finished(run)
    policy = parse_policy(tta or run.tta)
    dataset = dataset_for_runs(workspace, [run], prefer_recorded=True)
    check_same_data(run, dataset)
    split = load_split(run, dataset.train_y)
    started = time.time()
    variants = repredict_run(run, dataset, split, policy, average)
    labels = variants["labels"]
    results = {name: {"accuracy": accuracy(variants[name], labels), "log_loss": log_loss(variants[name], labels)}
               for name in ("none", *AVERAGES)}
    metric = workspace.metric
    if metric not in ("accuracy", "log_loss"):  # the competition's metric beside them
        from comp.core.metrics import score

        for name in results:
            results[name][metric] = score(metric, labels, variants[name])
    record_tta_result(run, policy, results)
    console.print(tta_table(run, policy, variants, metric))
    info(f"wrote fold*/val_probs{variants['tag']}.npy, fold*/test_probs{variants['tag']}.npy and "
         f"oof_probs{variants['tag']}.npy in {run.path} ({time.time() - started:.0f}s)")
    return results


# -- labelling new images ----------------------------------------------------------------------


def list_images(folder: Path) -> list[Path]:
    from comp.data.sources import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise CompError(f"{folder}: no such folder; --images takes a folder of image files")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise CompError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def decode_images(paths: list[Path], image_shape: list[int], resize: str,
                  skip_bad: bool) -> tuple[np.ndarray, list[Path]]:
    """Decode as comp.data.sources does (RGB, fitted to the run's size by its resize mode); (array, paths kept)."""
    from comp.data.decode import chunked, decode_chunks

    target_hw = tuple(image_shape[:2])
    images = np.zeros((len(paths), *target_hw, 3), np.uint8)
    done = decode_chunks(chunked(paths), images, target_hw, resize, f"{len(paths):,} new images")
    errors = [record[4] for start in sorted(done) for record in done[start]]
    bad = [(p, error) for p, error in zip(paths, errors) if error is not None]
    if bad and not skip_bad:
        raise CompError(f"{bad[0][0]}: unreadable image ({bad[0][1]}); remove it or pass --skip-bad")
    if bad:
        warn(f"--skip-bad: skipped {len(bad)} unreadable image(s): {', '.join(p.name for p, _ in bad[:5])}")
    keep = np.array([error is None for error in errors])
    if not keep.any():
        raise CompError(f"{paths[0].parent}: none of its {len(paths)} image file(s) could be read")
    if image_shape[-1] == 1:  # a run on a grayscale pixel CSV: its nets take one channel
        images = grayscale(images)
    return images[keep], [p for p, k in zip(paths, keep) if k]


def grayscale(images: np.ndarray) -> np.ndarray:
    """(N, H, W, 1) luma of uint8 RGB images, by PIL's weights (its convert("L"))."""
    luma = images.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
    return np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None]


def predict_images(run: Run, images: np.ndarray, policy: str, average: str) -> np.ndarray:
    """Mean over the run's folds of each fold model's (TTA-averaged) probabilities."""
    import keras

    total = np.zeros((len(images), len(run.classes)), np.float64)
    for fold in run.folds:
        keras.backend.clear_session()
        net = load_net(run, fold)
        total += average_views(predict_logits(net, images, policy, PREDICT_BATCH), average, policy, run.multilabel)
    return total / len(run.folds)


def default_images_out(workspace, run: Run, folder: Path) -> Path:
    return workspace.root / "predictions" / f"{run.path.name}-{folder.name}.csv"


def label_images(workspace, run: Run, folder: Path, out=None, tta: str | None = None,
                 average: str = DEFAULT_AVERAGE) -> Path:
    """Label the images in `folder` with a finished run: a CSV of file,label,confidence. Its path."""
    refuse_non_kfold(run)
    require_finished(run)
    policy = parse_policy(tta or run.tta)
    folder = Path(folder).expanduser().resolve()
    images, paths = decode_images(list_images(folder), run.data["image_shape"], run.resize, workspace.skip_bad)
    probs = predict_images(run, images, policy, average)
    if run.multilabel:  # the labels at 0.5 or more, space-separated, and the least sure of them
        decided = probs >= 0.5
        frame = pd.DataFrame({
            "file": [p.name for p in paths],
            "label": [" ".join(run.classes[i] for i in np.flatnonzero(row)) for row in decided],
            "confidence": np.round(np.where(decided, probs, 1 - probs).min(1), 4),
        })
    else:
        frame = pd.DataFrame({
            "file": [p.name for p in paths],
            "label": [run.classes[i] for i in probs.argmax(1)],
            "confidence": np.round(probs.max(1), 4),
        })
    out = Path(out).expanduser() if out else default_images_out(workspace, run, folder)
    save_csv(out, frame)
    counts = frame["label"].value_counts()
    info(f"labelled {len(frame):,} image(s) with run {run.name} ({len(run.folds)} folds, TTA {policy}): {out}")
    info("labels: " + ", ".join(f"{name} x{n}" for name, n in counts.items()))
    return out
