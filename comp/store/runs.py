"""The run manifest and the run store: one schema for every run, one place that finds and reads runs.

A run is a folder with a `config.json` manifest, written by the stage that made it:

    {"schema": 2,
     "name": "fast-1a2b3c4d",
     "kind": "kfold",                 kfold (comp train) | transfer (comp transfer finetune --folds K)
     "pretrained": false,             true for the transfer track: never in a submission by default
     "config": {...},                 RunConfig fields (kfold), the study's settings (transfer)
     "data": {"fingerprint", "classes", "rows", "limit", "image_shape", "resize", "data_dir"},
     "split": {"hash", "k"},          the fold split of folds/folds.json the run was trained on
     "metric": "accuracy",            the competition's metric the workdir named (comp.core.metrics)
     "backend": "tensorflow", "comp_version": "0.1.0"}

Beside it, every run writes the same prediction files: fold<k>/val_probs[.<tta>].npy,
fold<k>/test_probs[.<tta>].npy, fold<k>/metrics.json (written last: "fold done"), and when all
folds are done oof_probs[.<tta>].npy + oof_rows.npy (rows of the full train set: every one, or those
a holdout run's folds hold out) + summary.json. A run's folds are `Run.folds`: all K, or run_folds of them.
`predict`, `ensemble` and `report` read runs only through this module.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from comp.core.version import __version__
from comp.core.errors import CompError
from comp.core.fileio import load_npy, read_json, write_json
from comp.data.folds import Split, read_split

MANIFEST = "config.json"
SCHEMA = 2
KINDS = ("kfold", "transfer")
# A fold (or full-data fit) is done when its metrics.json exists: the engine writes it last, atomically.
FOLD_DONE = "metrics.json"


def fold_done(fold_dir: Path) -> bool:
    """Whether a fold's (or a full-data fit's) folder holds a finished model and predictions."""
    return (fold_dir / FOLD_DONE).exists()


# -- the manifest ----------------------------------------------------------------------------


def data_record(dataset) -> dict:
    """What a run records about the data it was trained on (refusals compare these)."""
    return {
        "fingerprint": dataset.fingerprint,
        "classes": list(dataset.classes),
        "rows": int(len(dataset.rows)),
        "limit": int(dataset.limit),
        "image_shape": list(dataset.image_shape),
        "resize": dataset.resize,
        "data_dir": str(dataset.data_dir),
        # Multi-label runs only, so a single-label manifest stays as it was: sigmoid outputs.
        **({"task": "multilabel"} if getattr(dataset, "multilabel", False) else {}),
    }


def make_manifest(name: str, kind: str, config: dict, dataset, split: Split, pretrained: bool = False,
                  metric: str = "accuracy") -> dict:
    import keras

    return {
        "schema": SCHEMA,
        "name": name,
        "kind": kind,
        "pretrained": pretrained,
        "config": config,
        "data": data_record(dataset),
        "split": {"hash": split.hash, "k": split.k},
        "metric": metric,  # the competition's metric when the run was made (comp.core.metrics)
        "backend": keras.backend.backend(),
        "comp_version": __version__,
    }


def read_manifest(path: Path) -> dict:
    """A run's config.json; CompError when it is not one."""
    try:
        document = read_json(path)
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise CompError(f"{path}: not a readable run manifest ({err}); the run folder is damaged: "
                        "delete it and train again") from None
    if not isinstance(document, dict) or document.get("schema") != SCHEMA or document.get("kind") not in KINDS:
        raise CompError(f"{path}: not a run manifest of this comp version (schema {SCHEMA}); "
                        "train the run again, or delete the folder")
    return document


def write_manifest(run_dir: Path, manifest: dict) -> None:
    write_json(run_dir / MANIFEST, manifest)


# -- runs ------------------------------------------------------------------------------------


@dataclass
class Run:
    """A run folder and its manifest (folds/<name> from comp train, studies/<name> from comp transfer)."""

    name: str  # what messages call it: the folder name for folds/, else the path as given
    path: Path
    manifest: dict
    _oof_rows: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def config(self) -> dict:
        return self.manifest["config"]

    @property
    def data(self) -> dict:
        return self.manifest["data"]

    @property
    def kind(self) -> str:
        return self.manifest["kind"]

    @property
    def pretrained(self) -> bool:
        return bool(self.manifest.get("pretrained"))

    @property
    def fingerprint(self) -> str:
        return self.data["fingerprint"]

    @property
    def classes(self) -> list[str]:
        return self.data["classes"]

    @property
    def multilabel(self) -> bool:
        """Trained on multi-label targets: its probabilities are one sigmoid per label."""
        return self.data.get("task") == "multilabel"

    @property
    def image_size(self) -> str:
        """The size its images were decoded at, "HxW": what its nets take."""
        height, width = self.data["image_shape"][:2]
        return f"{height}x{width}"

    @property
    def resize(self) -> str:
        """How its images of another aspect were fitted (runs made before the choice existed: squash)."""
        return self.data.get("resize", "squash")

    @property
    def k(self) -> int:
        return int(self.manifest["split"]["k"])

    @property
    def folds(self) -> list[int]:
        """The folds that make the run: all K, or the first `run_folds` (a holdout estimate on N/K of the rows)."""
        count = int(self.config.get("run_folds") or 0)
        return list(range(count if 0 < count < self.k else self.k))

    @property
    def split_hash(self) -> str:
        """What says two runs used the same folds: the hash of folds/folds.json."""
        return self.manifest["split"]["hash"]

    @property
    def model(self) -> str:
        return str(self.config.get("model") or self.config.get("backbone") or "?")

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
        return self.k > 0 and all(fold_done(self.fold_dir(k)) for k in self.folds)

    @property
    def finished(self) -> bool:
        """Every fold done and the OOF file written (written with summary.json)."""
        return self.folds_done and (self.path / "oof_probs.npy").exists() and (self.path / "oof_rows.npy").exists()

    def trained_on(self, rows: np.ndarray) -> bool:
        """Whether the run trained on exactly these train rows (a --limit subsample): its OOF rows are
        them, or, for a holdout run, the part of them its folds hold out."""
        if len(self.folds) == self.k:
            return np.array_equal(self.oof_rows(), rows)
        return int(self.data.get("rows", -1)) == len(rows) and bool(np.isin(self.oof_rows(), rows).all())

    def oof_rows(self) -> np.ndarray:
        """Which train rows the OOF predictions cover, in their order (read once, then kept)."""
        if self._oof_rows is None:
            self._oof_rows = load_npy(self.path / "oof_rows.npy", f"retrain the run: {self.retrain_hint()}")
        return self._oof_rows

    def retrain_hint(self, fold: int | None = None) -> str:
        """The command that retrains the run (or one fold) with its very settings: its own manifest as
        the config (a bare --name would be refused as other settings)."""
        where = f" --fold {fold}" if fold is not None else " --fold all"
        return f"comp train --config {self.path / MANIFEST}{where} --force"

    def read_oof(self, tag: str = "") -> np.ndarray:
        """Out-of-fold probabilities (rows of oof_rows.npy, classes) for a prediction tag ("", ".flip", ...)."""
        path = self.path / f"oof_probs{tag}.npy"
        if not path.exists():
            raise missing_predictions(self, "out-of-fold", tag)
        return load_npy(path, f"re-predict it: comp predict --run {self.name}")

    def read_test(self, tag: str = "") -> np.ndarray:
        """Test probabilities for a prediction tag: the mean of the fold models' (each saw (K-1)/K of the rows)."""
        paths = [self.fold_dir(k) / f"test_probs{tag}.npy" for k in self.folds]
        if not all(p.exists() for p in paths):
            raise missing_predictions(self, "test", tag)
        return np.mean([load_npy(p, f"re-predict it: comp predict --run {self.name}") for p in paths], axis=0)

    def full_fits(self) -> list[Path]:
        """The finished full-data fits (full/seed<i>: every train row, test predictions only)."""
        return sorted(p.parent for p in (self.path / "full").glob(f"seed*/{FOLD_DONE}"))

    def read_full_test(self, tag: str = "") -> np.ndarray | None:
        """Test probabilities of the full-data fits for a tag, averaged over seeds; None without any."""
        fits = self.full_fits()
        if not fits:
            return None
        paths = [fit / f"test_probs{tag}.npy" for fit in fits]
        if not all(p.exists() for p in paths):
            raise missing_predictions(self, "full-data test", tag)
        return np.mean([load_npy(p, f"retrain it: comp train --config {self.path / MANIFEST} --full --force")
                        for p in paths], axis=0)

    def has_predictions(self, tag: str) -> bool:
        return (self.path / f"oof_probs{tag}.npy").exists()

    @property
    def own_tag(self) -> str:
        """The prediction tag of the run's own TTA policy when its files exist, else the plain one."""
        from comp.config.tta_policy import prediction_tag

        tag = prediction_tag(self.tta) if self.kind == "kfold" else ""
        return tag if self.has_predictions(tag) else ""

    @property
    def oof_probs(self) -> np.ndarray:
        """Out-of-fold probabilities with the run's own TTA policy (rows: oof_rows())."""
        return self.read_oof(self.own_tag)

    @property
    def test_probs(self) -> np.ndarray:
        """Test probabilities with the run's own TTA policy, in sample_submission order."""
        return self.read_test(self.own_tag)

    @property
    def metric(self) -> str:
        """The competition's metric recorded when the run was made (accuracy for older runs)."""
        return self.manifest.get("metric") or "accuracy"

    def oof_score(self, metric: str | None = None, tag: str | None = None) -> float | None:
        """The run's OOF predictions re-scored under `metric` (default: the one it recorded) from
        its saved probabilities, nothing retrained; `tag` "" for plain, default its own TTA. None
        when the true labels of its rows are no longer at hand (its split is gone)."""
        from comp.core.metrics import score

        labels = oof_labels(self)
        if labels is None:
            return None
        return score(metric or self.metric, labels, self.read_oof(self.own_tag if tag is None else tag))

    @property
    def oof_accuracy(self) -> float | None:
        """Out-of-fold accuracy with the run's own TTA policy (None until every fold is done)."""
        summary = self.summary
        return summary.get("cv_accuracy_tta", summary.get("cv_accuracy"))


def missing_predictions(run: Run, what: str, tag: str) -> CompError:
    from comp.config.tta_policy import DEFAULT_AVERAGE

    policy = tag.lstrip(".").split("@")[0] or "none"
    average = tag.split("@")[1] if "@" in tag else DEFAULT_AVERAGE
    extra = f" --tta-average {average}" if average != DEFAULT_AVERAGE else ""
    return CompError(f"{run.name}: no {what} predictions with TTA {policy}; "
                     f"make them with: comp predict --run {run.name} --tta {policy}{extra}")


# -- the store -------------------------------------------------------------------------------


def resolve_run_path(workspace, text: str) -> tuple[str, Path]:
    """A run name under folds/, or a path (studies/x, /abs/run): (display name, folder)."""
    text = str(text).strip().rstrip("/")
    if "/" not in text and (workspace.folds / text / MANIFEST).is_file():
        return text, workspace.folds / text
    for candidate in (Path(text).expanduser(), workspace.root / text):
        if (candidate / MANIFEST).is_file():
            return text, candidate.resolve()
    known = ", ".join(run_names(workspace)) or "none yet"
    raise CompError(f"{text}: no run folder with a {MANIFEST} (not under {workspace.folds}, not a path); "
                    f"runs under folds/: {known}")


def run_names(workspace) -> list[str]:
    return sorted(p.parent.name for p in workspace.folds.glob(f"*/{MANIFEST}"))


def load_run(workspace, text) -> Run:
    """A run by name under folds/ (or a path, or a Run, returned as it is)."""
    if isinstance(text, Run):
        return text
    name, path = resolve_run_path(workspace, str(text))
    return Run(name, path, read_manifest(path / MANIFEST))


def all_runs(workspace) -> list[Run]:
    """Every run under folds/ (finished or not), by name; damaged manifests are skipped."""
    runs = []
    for name in run_names(workspace):
        try:
            runs.append(load_run(workspace, name))
        except CompError:
            continue
    return runs


def finished_runs(workspace) -> list[Run]:
    """Every finished run under folds/, by name."""
    return [run for run in all_runs(workspace) if run.finished]


def require_finished(run: Run) -> None:
    if not run.folds_done:
        missing = [k for k in run.folds if not fold_done(run.fold_dir(k))] or ["(no fold count)"]
        raise CompError(f"{run.name}: fold(s) {', '.join(map(str, missing))} not finished; "
                        f"finish the run first (comp train ... --name {run.path.name})")
    if not run.finished:
        raise CompError(f"{run.name}: no oof_probs.npy; rerun comp train with the same options to write it")


def check_same_data(run: Run, dataset, fix: str = "pass --data with the folder it was trained on") -> None:
    """Refuse a run made on other data than `dataset` (their fingerprints differ)."""
    if run.fingerprint != dataset.fingerprint:
        raise CompError(
            f"{run.name}: trained on other data (fingerprint {run.fingerprint}) than {dataset.data_dir} "
            f"({dataset.fingerprint}); {fix}"
        )


def recorded_data_dir(runs: list[Run]) -> Path | None:
    """The data folder the runs were trained on, when they agree and it still exists."""
    folders = {r.data.get("data_dir") for r in runs} - {None}
    recorded = Path(folders.pop()) if len(folders) == 1 else None
    return recorded if recorded and recorded.is_dir() else None


def split_meta_path(run: Run) -> Path | None:
    """folds.json of the split the run was trained on (current or parked under folds/splits/), or None."""
    if run.kind != "kfold":
        return None
    folds_root = run.path.parent
    for meta_path in (folds_root / "folds.json", folds_root / "splits" / str(run.fingerprint) / "folds.json"):
        if meta_path.exists() and read_json(meta_path).get("hash") == run.split_hash:
            return meta_path
    return None


def load_split(run: Run, labels: np.ndarray) -> Split:
    """The fold split the run was trained on, read from its folds/ folder (never written here)."""
    meta_path = split_meta_path(run)
    if meta_path is None:
        where = run.path.parent if run.kind == "kfold" else run.path
        raise CompError(f"{run.name}: the fold split it was trained on ({run.split_hash}) is no longer in "
                        f"{where}; its validation rows cannot be told apart, so it cannot be re-predicted")
    return read_split(meta_path, len(labels))


def _split_column(run: Run, column: str) -> np.ndarray | None:
    """One column of the run's split (folds/folds.csv) for each of its OOF rows; None when that split
    is gone or does not cover the rows."""
    import pandas as pd

    meta_path = split_meta_path(run)
    if meta_path is None or not meta_path.with_name("folds.csv").exists():
        return None
    values = pd.read_csv(meta_path.with_name("folds.csv"), usecols=[column])[column].to_numpy()
    rows = run.oof_rows()
    return values[rows] if len(rows) and rows.max() < len(values) else None


def oof_labels(run: Run) -> np.ndarray | None:
    """The true labels of the run's OOF rows, from its split's folds.csv (no image is decoded);
    multi-label: their multi-hot matrix, from its "labels" column."""
    import pandas as pd

    meta_path = split_meta_path(run)
    if meta_path is not None and meta_path.with_name("folds.csv").exists() and \
            "labels" in pd.read_csv(meta_path.with_name("folds.csv"), nrows=0).columns:
        from comp.data.folds import read_label_cells

        cells = _split_column(run, "labels")
        return None if cells is None else read_label_cells(cells, len(run.classes))
    return _split_column(run, "label")


def oof_folds(run: Run) -> np.ndarray | None:
    """The fold of each of the run's OOF rows (decision rules are cross-fitted over them). A holdout
    run's rows are all one fold: its two halves by row parity stand in, so a rule is still fitted on
    rows other than those it is scored on."""
    folds = _split_column(run, "fold")
    if folds is not None and len(np.unique(folds)) < 2:
        folds = run.oof_rows() % 2
    return folds


def run_rows(run: Run, dataset, split: Split) -> np.ndarray:
    """The train rows the run's split covers (all, or its --limit subsample); checked against its OOF
    file, which holds those its folds validate on (all of them unless the run is a holdout)."""
    from comp.data.sources import limit_rows

    rows = limit_rows(dataset.train_y, int(run.data.get("limit") or 0))
    if (run.path / "oof_rows.npy").exists() and not np.array_equal(rows[split.covered(rows, run.folds)],
                                                                    run.oof_rows()):
        raise CompError(f"{run.name}: its oof_rows.npy does not match its --limit subsample; retrain it")
    return rows
