"""`comp predict`: a finished run's predictions, (re)made with any TTA policy; new images labelled.

    comp predict --run R --tta P         every fold's model predicts its validation rows and the
                                         test set with policy P: fold<k>/val_probs.<P>.npy,
                                         fold<k>/test_probs.<P>.npy, oof_probs.<P>.npy, and the
                                         OOF accuracy of P beside "none" (the TTA gain, measured)
    comp predict --images DIR --run R    labels the images in DIR with the mean of the folds'
                                         probabilities: a CSV of file,label,confidence

This module also reads runs for `comp ensemble` and `comp report`: `load_run` finds a run
folder and its facts (data fingerprint, split, classes), `oof_probs` and `test_probs` its
prediction files.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .console import console, info, warn
from .context import workspace_from
from .errors import CompError, retrain_fold_fix
from .fileio import load_keras_model, load_npy, read_json, save_csv, save_npy, write_json
from .folds import Split, read_split
from .scoring import accuracy, log_loss  # noqa: F401  (ensemble imports them from here)
from .tta import AVERAGES, DEFAULT_AVERAGE, average_views, parse_policy, predict_logits, prediction_tag
from .workspace import Workspace

PREDICT_BATCH = 256  # images per predict() call; memory-light on a CPU, still full on a GPU


# -- runs ----------------------------------------------------------------------------------


@dataclass
class Run:
    """A run folder (folds/<name> from comp train, or studies/<name> from comp transfer)."""

    name: str  # what messages call it: the folder name for folds/, else the path as given
    path: Path
    config: dict
    _oof_rows: np.ndarray | None = field(default=None, repr=False, compare=False)
    _split_identity: str | None = field(default=None, repr=False, compare=False)

    @property
    def provenance(self) -> dict:
        return self.config.get("provenance", {})

    @property
    def pretrained(self) -> bool:
        return bool(self.config.get("pretrained"))

    @property
    def fingerprint(self) -> str | None:
        # comp train keeps it in provenance; comp transfer at the top level.
        return self.provenance.get("fingerprint") or self.config.get("data_fingerprint")

    @property
    def classes(self) -> list[str] | None:
        return self.provenance.get("classes") or self.config.get("classes")

    @property
    def k(self) -> int:
        return int(self.provenance.get("folds") or self.config.get("folds") or 0)

    @property
    def tta(self) -> str:
        return self.config.get("tta", "none")

    @property
    def summary(self) -> dict:
        path = self.path / "summary.json"
        return read_json(path) if path.exists() else {}

    def fold_dir(self, fold: int) -> Path:
        return self.path / f"fold{fold}"

    @property
    def folds_done(self) -> bool:
        return self.k > 0 and all((self.fold_dir(k) / "metrics.json").exists() for k in range(self.k))

    @property
    def finished(self) -> bool:
        """Every fold done and the OOF file written (comp train writes summary.json with it)."""
        return self.folds_done and (self.path / "oof_probs.npy").exists() and (self.path / "oof_rows.npy").exists()

    def oof_rows(self) -> np.ndarray:
        """Which train rows the OOF predictions cover, in their order (read once, then kept)."""
        if self._oof_rows is None:
            self._oof_rows = np.load(self.path / "oof_rows.npy")
        return self._oof_rows

    def split_identity(self) -> str:
        """What says two runs used the same folds: comp train's folds_hash (worked out once, then kept).

        A comp transfer study has its own split (no folds_hash); its folds' val_rows.npy say which
        row was in which fold, so two studies can still be compared with each other.
        """
        if self._split_identity is None:
            self._split_identity = self.provenance.get("folds_hash") or self._val_rows_digest()
        return self._split_identity

    def _val_rows_digest(self) -> str:
        import hashlib

        parts = [np.load(self.fold_dir(k) / "val_rows.npy").astype(np.int64) for k in range(self.k)
                 if (self.fold_dir(k) / "val_rows.npy").exists()]
        return "study-" + hashlib.sha1(b"".join(np.sort(p).tobytes() + b"|" for p in parts)).hexdigest()[:12]


def resolve_run_path(workspace: Workspace, text: str) -> tuple[str, Path]:
    """A run name under folds/, or a path (studies/x, /abs/run): (display name, folder)."""
    text = text.strip().rstrip("/")
    if "/" not in text and (workspace.folds / text).is_dir():
        return text, workspace.folds / text
    for candidate in (Path(text).expanduser(), workspace.root / text):
        if (candidate / "config.json").is_file():
            return text, candidate.resolve()
    known = ", ".join(sorted(p.parent.name for p in workspace.folds.glob("*/config.json"))) or "none yet"
    raise CompError(f"{text}: no run folder with a config.json (not under {workspace.folds}, not a path); "
                    f"runs under folds/: {known}")


def load_run(workspace: Workspace, text: str) -> Run:
    name, path = resolve_run_path(workspace, text)
    try:
        config = read_json(path / "config.json")
    except ValueError as err:
        raise CompError(f"{path / 'config.json'}: not valid JSON ({err}); the run folder is damaged") from None
    return Run(name, path, config)


def finished_runs(workspace: Workspace) -> list[Run]:
    """Every finished comp train run under folds/ (summary.json present), by name."""
    runs = []
    for path in sorted(workspace.folds.glob("*/summary.json")):
        run = load_run(workspace, path.parent.name)
        if run.finished:
            runs.append(run)
    return runs


def require_finished(run: Run) -> None:
    if not run.folds_done:
        missing = [k for k in range(run.k) if not (run.fold_dir(k) / "metrics.json").exists()] or ["(no fold count)"]
        raise CompError(f"{run.name}: fold(s) {', '.join(map(str, missing))} not finished; "
                        f"finish the run first (comp train ... --name {run.path.name})")
    if not run.finished:
        raise CompError(f"{run.name}: no oof_probs.npy; rerun comp train with the same options to write it")


def _predict_command(run: Run, tag: str) -> str:
    """The command that writes a run's predictions for a tag (from its fold models)."""
    policy = tag.lstrip(".").split("@")[0] or "none"
    average = tag.split("@")[1] if "@" in tag else DEFAULT_AVERAGE
    extra = f" --tta-average {average}" if average != DEFAULT_AVERAGE else ""
    return f"comp predict --run {run.name} --tta {policy}{extra}"


def _missing_predictions(run: Run, what: str, tag: str) -> CompError:
    policy = tag.lstrip(".").split("@")[0] or "none"
    return CompError(f"{run.name}: no {what} predictions with TTA {policy}; make them with: {_predict_command(run, tag)}")


def oof_probs(run: Run, tag: str = "") -> np.ndarray:
    """Out-of-fold probabilities (rows of oof_rows.npy, classes) for a prediction tag."""
    path = run.path / f"oof_probs{tag}.npy"
    if not path.exists():
        raise _missing_predictions(run, "out-of-fold", tag)
    return load_npy(path, fix=f"write it again: {_predict_command(run, tag)}")


def test_probs(run: Run, tag: str = "") -> np.ndarray:
    """Test probabilities of a run: the mean of its folds' (each fold model saw (K-1)/K of the rows)."""
    paths = [run.fold_dir(k) / f"test_probs{tag}.npy" for k in range(run.k)]
    if not all(p.exists() for p in paths):
        raise _missing_predictions(run, "test", tag)
    return np.mean([load_npy(p, fix=f"write it again: {_predict_command(run, tag)}") for p in paths], axis=0)


# -- data and split of a run ---------------------------------------------------------------


def data_dir_for(args, runs: list[Run], prefer_recorded: bool) -> Path:
    """--data; else the folder the runs recorded (prefer_recorded) or the workdir's usual one.

    Predicting a run wants the data it was trained on; ensemble and report want the current
    data ($COMP_DATA, comp.toml, ./data) and fall back to the runs' folder when there is none.
    """
    from .context import data_dir_from

    if getattr(args, "data", None):
        return data_dir_from(args)
    folders = {r.provenance.get("data_dir") for r in runs} - {None}
    recorded = Path(folders.pop()) if len(folders) == 1 else None
    recorded = recorded if recorded and recorded.is_dir() else None
    if prefer_recorded and recorded:
        return recorded
    try:
        return data_dir_from(args)
    except CompError:
        if recorded:
            return recorded
        raise


def load_full_dataset(args, runs: list[Run], prefer_recorded: bool = False):
    """The whole train set (no --limit): runs' oof_rows index into it."""
    from .data import load_dataset

    workspace = workspace_from(args)
    return load_dataset(data_dir_for(args, runs, prefer_recorded), workspace.cache, limit=0,
                        skip_bad=getattr(args, "skip_bad", False))


def check_same_data(run: Run, dataset, fix: str = "pass --data with the folder it was trained on") -> None:
    """Refuse a run made on other data than `dataset` (their fingerprints differ)."""
    if run.fingerprint != dataset.fingerprint:
        raise CompError(
            f"{run.name}: trained on other data (fingerprint {run.fingerprint}) than {dataset.data_dir} "
            f"({dataset.fingerprint}); {fix}"
        )


def load_split(run: Run, labels: np.ndarray) -> Split:
    """The fold split the run was trained on, read from its folds/ folder (never written here)."""
    folds_root = run.path.parent
    wanted = run.provenance.get("folds_hash")
    for meta_path in (folds_root / "folds.json", folds_root / "splits" / str(run.fingerprint) / "folds.json"):
        if not meta_path.exists():
            continue
        if read_json(meta_path).get("hash") == wanted:
            return read_split(meta_path, len(labels))
    raise CompError(f"{run.name}: the fold split it was trained on ({wanted}) is no longer in {folds_root}; "
                    "its validation rows cannot be told apart, so it cannot be re-predicted")


def run_rows(run: Run, dataset) -> np.ndarray:
    """The train rows the run used (all, or its --limit subsample); checked against its OOF file."""
    from .data import limit_rows

    rows = limit_rows(dataset.train_y, int(run.provenance.get("limit") or run.config.get("limit") or 0))
    if (run.path / "oof_rows.npy").exists() and not np.array_equal(rows, run.oof_rows()):
        raise CompError(f"{run.name}: its oof_rows.npy does not match its --limit subsample; retrain it")
    return rows


# -- comp predict --run ----------------------------------------------------------------------


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
    rows = run_rows(run, dataset)
    labels = dataset.train_y[rows]
    oof = {name: np.zeros((len(rows), len(run.classes)), np.float32) for name in ("none", *AVERAGES)}
    tag = prediction_tag(policy, average)
    for fold in range(run.k):
        _, val_pos = split.rows(fold, rows)
        started = time.time()
        val_logits, test_logits = predict_fold(run, fold, dataset.train_x[rows[val_pos]], dataset.test_x, policy)
        oof["none"][val_pos] = average_views(val_logits[:1])
        for name in AVERAGES:
            oof[name][val_pos] = average_views(val_logits, name)
        write_fold_predictions(run, fold, tag, average_views(val_logits, average),
                               average_views(test_logits, average), labels[val_pos])
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


def tta_table(run: Run, policy: str, variants: dict):
    from rich.table import Table

    labels = variants["labels"]
    table = Table(title=f"{run.name}: out-of-fold score of TTA {policy} ({len(labels):,} rows)")
    for column in ("prediction", "accuracy", "log-loss", "gain vs none"):
        table.add_column(column, justify="left" if column == "prediction" else "right")
    base = accuracy(variants["none"], labels)
    rows = [("none (1 view)", "none")] if policy == "none" else [
        ("none (1 view)", "none"), (f"{policy}, mean of probabilities", "probs"),
        (f"{policy}, mean of logits", "logits")]
    for text, key in rows:
        acc = accuracy(variants[key], labels)
        table.add_row(text, f"{acc:.4f}", f"{log_loss(variants[key], labels):.4f}", f"{acc - base:+.4f}")
    return table


def open_finished_run(args):
    """(workspace, run, TTA policy) for `comp predict --run R`; refuses unfinished or pretrained runs."""
    workspace = workspace_from(args)
    run = load_run(workspace, args.run)
    refuse_pretrained_predict(run)
    require_finished(run)
    return workspace, run, parse_policy(args.tta or run.tta)


def run_predict_run(args) -> int:
    workspace, run, policy = open_finished_run(args)
    dataset = load_full_dataset(args, [run], prefer_recorded=True)
    check_same_data(run, dataset)
    split = load_split(run, dataset.train_y)
    started = time.time()
    variants = repredict_run(run, dataset, split, policy, args.tta_average)
    labels = variants["labels"]
    results = {name: {"accuracy": accuracy(variants[name], labels), "log_loss": log_loss(variants[name], labels)}
               for name in ("none", *AVERAGES)}
    record_tta_result(run, policy, results)
    console.print(tta_table(run, policy, variants))
    info(f"wrote fold*/val_probs{variants['tag']}.npy, fold*/test_probs{variants['tag']}.npy and "
         f"oof_probs{variants['tag']}.npy in {run.path} ({time.time() - started:.0f}s)")
    return 0


def refuse_pretrained_predict(run: Run) -> None:
    if run.pretrained or "provenance" not in run.config:
        raise CompError(f"{run.name}: not a comp train run (a comp transfer study); "
                        "comp predict re-predicts runs made by comp train")


# -- comp predict --images -------------------------------------------------------------------


def list_images(folder: Path) -> list[Path]:
    from .data import IMAGE_EXTENSIONS

    if not folder.is_dir():
        raise CompError(f"{folder}: no such folder; --images takes a folder of image files")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise CompError(f"{folder}: no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return images


def decode_images(paths: list[Path], image_shape: list[int], skip_bad: bool) -> tuple[np.ndarray, list[Path]]:
    """Decode as comp.data does (RGB, bilinear resize to the run's size); (array, paths kept)."""
    from .data import decode_all, stack_images

    decoded = decode_all(paths, "new")
    bad = [(p, r[3]) for p, r in zip(paths, decoded) if r[0] is None]
    if bad and not skip_bad:
        raise CompError(f"{bad[0][0]}: unreadable image ({bad[0][1]}); remove it or pass --skip-bad")
    if bad:
        warn(f"--skip-bad: skipped {len(bad)} unreadable image(s): {', '.join(p.name for p, _ in bad[:5])}")
    kept = [(p, r[0]) for p, r in zip(paths, decoded) if r[0] is not None]
    if not kept:
        raise CompError(f"{paths[0].parent}: none of its {len(paths)} image file(s) could be read")
    images, _ = stack_images([array for _, array in kept], tuple(image_shape[:2]))
    return images, [p for p, _ in kept]


def predict_images(run: Run, images: np.ndarray, policy: str, average: str) -> np.ndarray:
    """Mean over the run's folds of each fold model's (TTA-averaged) probabilities."""
    import keras

    total = np.zeros((len(images), len(run.classes)), np.float64)
    for fold in range(run.k):
        keras.backend.clear_session()
        net = load_net(run, fold)
        total += average_views(predict_logits(net, images, policy, PREDICT_BATCH), average)
    return total / run.k


def default_images_out(workspace: Workspace, run: Run, folder: Path) -> Path:
    return workspace.root / "predictions" / f"{run.path.name}-{folder.name}.csv"


def run_predict_images(args) -> int:
    workspace, run, policy = open_finished_run(args)
    folder = Path(args.images).expanduser().resolve()
    images, paths = decode_images(list_images(folder), run.provenance["image_shape"], args.skip_bad)
    probs = predict_images(run, images, policy, args.tta_average)
    frame = pd.DataFrame({
        "file": [p.name for p in paths],
        "label": [run.classes[i] for i in probs.argmax(1)],
        "confidence": np.round(probs.max(1), 4),
    })
    out = Path(args.out).expanduser() if args.out else default_images_out(workspace, run, folder)
    save_csv(out, frame)
    counts = frame["label"].value_counts()
    info(f"labelled {len(frame):,} image(s) with run {run.name} ({run.k} folds, TTA {policy}): {out}")
    info("labels: " + ", ".join(f"{name} x{n}" for name, n in counts.items()))
    return 0


# -- the command -----------------------------------------------------------------------------


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "predict", parents=parents,
        help="re-predict a finished run with a TTA policy (val, test, OOF), or label new images")
    parser.add_argument("--run", required=True, help="run name under folds/, or a run folder path")
    parser.add_argument("--tta", help="none | flip | flip-shift | a list like flip,shift=1 (default: the run's)")
    parser.add_argument("--tta-average", choices=AVERAGES, default=DEFAULT_AVERAGE,
                        help=f"average the views' probabilities or logits (default: {DEFAULT_AVERAGE})")
    parser.add_argument("--images", help="label the image files in this folder instead "
                                         "(a CSV of file,label,confidence)")
    parser.add_argument("--out", help="with --images: CSV path (default: predictions/<run>-<folder>.csv)")
    parser.add_argument("--data", help="competition folder (default: the one the run was trained on)")
    parser.add_argument("--skip-bad", action="store_true", help="skip damaged images instead of stopping")
    parser.set_defaults(func=run)


def run(args) -> int:
    if args.images:
        return run_predict_images(args)
    if args.out:
        raise CompError("--out goes with --images; `comp predict --run R` writes into the run folder")
    return run_predict_run(args)
