"""Training a run: K folds of one RunConfig, resumable fold by fold and epoch by epoch.

    folds/<run>/config.json          the run manifest (comp.store.runs): config, data, split
    folds/<run>/fold<k>/...          model.keras, history.csv, val/test probabilities, metrics.json
    folds/<run>/oof_probs.npy        out-of-fold probabilities, every train row exactly once (a holdout
                                     run, run_folds = N < K: the rows its N folds hold out)
    folds/<run>/summary.json         CV accuracy and loss, mean +- std over folds

`train_run` is the stage's entry; `Workspace.train` and `comp train` call it. On TensorFlow
each fold runs in a child process (comp.core.isolate); the child calls `train_unit_task`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable

import numpy as np

from comp.config.run_config import (
    HASHED_WHEN_SET,
    MACHINE_PRESETS,
    RunConfig,
    build_config,
    given_fields,
    load_config_file,
)
from comp.core.console import console, info, warn
from comp.core.errors import CompError, retrain_fold_fix
from comp.core.paths import Workdir
from comp.core.fileio import load_npy, read_json, remove_tree, save_npy, write_json
from comp.data.folds import Split, ensure_split
from comp.stages.pseudo import load_teachers
from comp.stages.fanout import open_claims, summary_current, summary_lock, train_units, unit_dir
from comp.store.runs import fold_done, make_manifest, read_manifest, Run, write_manifest
from comp.core.scoring import accuracy, log_loss

# Keys of a tune best.json that describe the search's budget, not the config to train.
TUNING_BUDGET = ("epochs", "limit")
# Small data: a fold's training gets at least this many optimizer steps, whatever its row count
# (243 photos at the model's batch of 128 trained one step an epoch and learned nothing). Applied to
# the batch size and the epochs only where nobody chose them (flags, a config file, a tune result).
MIN_STEPS_PER_EPOCH = 16  # the batch halves until an epoch has this many steps...
MIN_BATCH = 16  # ...but not below this
MIN_FOLD_STEPS = 200  # then the epochs grow until a fold trains this many steps


# -- choosing the config -------------------------------------------------------------------------


def latest_best_config(workspace, fingerprint: str) -> Path | None:
    """The newest folds/<study>/best.json made on this data, for a bare `comp train`."""
    found = []
    for path in workspace.folds.glob("*/best.json"):
        try:
            tuned = read_json(path).get("tuned", {})
        except ValueError:
            continue
        if tuned.get("fingerprint") == fingerprint:
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def describe_tuned(values: dict, source: str) -> str:
    """What a bare train took from a tune result, and at which budget the study measured it."""
    tuned = values.get("tuned", {})
    params = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}"
                       for k, v in tuned.get("params", {}).items())
    budget = f"{tuned.get('epochs')} epochs" + (f" on {tuned['limit']:,} rows" if tuned.get("limit") else "")
    return f"using the parameters tune found in {source} ({params or 'none searched'}; tuned at {budget})"


def config_values(config) -> tuple[dict | None, str]:
    """(values, where they came from) of a config given as a RunConfig, a dict, a file or recipe name, or None."""
    if config is None:
        return None, "options"
    if isinstance(config, RunConfig):
        return given_fields(config), "config"
    if isinstance(config, dict):
        return dict(config), "config"
    return load_config_file(str(config)), str(config)


def resolve_config(workspace, fingerprint: str, config=None, overrides: dict | None = None,
                   preset: str | None = None, use_latest_best: bool = True) -> RunConfig:
    """The run's config from `config` (a RunConfig, a dict, a file path or recipe name), `overrides`
    (flags or keyword arguments) and a machine `preset`; with none of them, the newest tune result.

    `use_latest_best=False` (comp tune) starts from the model's defaults instead: a rerun of a
    study must not centre its search space on what the last study found.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    file_values, source = config_values(config)
    if config is None and use_latest_best and "model" not in overrides and not preset:
        best = latest_best_config(workspace, fingerprint)
        if best:
            file_values, source = read_json(best), str(best)
            info(describe_tuned(file_values, source))
    if file_values and "tuned" in file_values:  # a tune result: its budget stays with the study
        file_values = {k: v for k, v in file_values.items() if k not in TUNING_BUDGET}
    folds_said = "folds" in overrides or "folds" in (file_values or {})
    said = set(overrides) | set(file_values or {})  # a machine preset's values stay open to fit_to_rows
    if preset:
        if preset not in MACHINE_PRESETS:
            raise CompError(f"preset {preset!r}: choose one of {', '.join(MACHINE_PRESETS)}")
        file_values = {**MACHINE_PRESETS[preset], **(file_values or {})}
    if not folds_said:
        # Unsaid, the fold count is the one this data's split already has: every run shares one split.
        from comp.data.folds import existing_k

        k = existing_k(workspace, fingerprint)
        if k is not None:
            overrides["folds"] = k
    config = build_config(file_values, overrides, source)
    config.__dict__["_given"] = said  # what the caller chose; fit_to_rows changes only the rest
    return config


def fit_batch(config: RunConfig, train_rows: int) -> RunConfig:
    """The batch halved until an epoch has MIN_STEPS_PER_EPOCH steps, the learning rate with it.

    The recipes are tuned at batches of 64-512 for tens of thousands of rows; on a small set that
    is one step an epoch. Scaling the rate with the batch (the linear scaling rule) keeps the step
    the recipe was tuned for, per image.
    """
    batch = config.batch_size
    while batch > MIN_BATCH and train_rows // batch < MIN_STEPS_PER_EPOCH:
        batch //= 2
    if batch == config.batch_size:
        return config
    return config.replace(batch_size=batch, lr=config.lr * batch / config.batch_size)


def fit_to_rows(config: RunConfig, train_rows: int) -> RunConfig:
    """`config` for folds of `train_rows` training rows: where the caller left them to the model's
    defaults, the batch shrinks (fit_batch) and the epochs grow until a fold trains MIN_FOLD_STEPS
    steps. Says what it changed."""
    said = set(given_fields(config))
    fitted = config if "batch_size" in said else fit_batch(config, train_rows)
    steps_per_epoch = max(1, train_rows // min(fitted.batch_size, train_rows))
    if "epochs" not in said and fitted.total_steps(steps_per_epoch) < MIN_FOLD_STEPS:
        fitted = fitted.replace(epochs=math.ceil(MIN_FOLD_STEPS / steps_per_epoch))
    if fitted is not config:
        changes = [f"{name} {getattr(config, name):g} -> {getattr(fitted, name):g}"
                   for name in ("batch_size", "lr", "epochs") if getattr(config, name) != getattr(fitted, name)]
        info(f"small data: {train_rows:,} training rows a fold; {', '.join(changes)} so that an epoch has "
             f"{steps_per_epoch} steps and a fold {fitted.total_steps(steps_per_epoch)} "
             "(--batch-size / --epochs choose them yourself)")
    return fitted


def warn_gpu_settings_on_cpu(config: RunConfig) -> None:
    """jit on and half precision pay off on a GPU; on a CPU they make training several times slower
    (bfloat16 excepted on a CPU that computes it natively, which "auto" picks)."""
    from comp.core.backend import accelerator, cpu_has_bfloat16

    native = ("float32", "auto", "bfloat16") if cpu_has_bfloat16() else ("float32", "auto")
    if config.jit != "on" and config.precision in native:
        return
    if accelerator() is None:
        warn(f"no GPU found: jit {config.jit} and {config.precision} are GPU settings (XLA on a CPU trains "
             "1.3-11x slower, half-precision convolutions crawl); on a CPU use --preset cpu or "
             "--jit auto --precision float32")


def split_for(workspace, dataset, config: RunConfig, resplit: bool = False) -> Split:
    """The split of the full dataset (written once); call before applying --limit."""
    return ensure_split(workspace, dataset.train_y, dataset.fingerprint, config.folds, config.seed,
                        dataset.stats.get("train_files"), resplit=resplit)


# -- the run folder ------------------------------------------------------------------------------


def prepare_run_dir(run_dir: Path, config: RunConfig, dataset, split: Split, force: bool,
                    metric: str = "accuracy") -> None:
    """Refuse to continue a run on other data or another split; write the manifest (with the metric)."""
    manifest = make_manifest(config.run_name, "kfold", config.to_dict(), dataset, split, metric=metric)
    config_path = run_dir / "config.json"
    if config_path.exists():
        saved = read_manifest(config_path)
        changes = [(what, saved[part].get(key), manifest[part][key])
                   for part, key, what in (("data", "fingerprint", "dataset"), ("split", "hash", "fold split"),
                                           ("data", "rows", "--limit subsample"))]
        changed = [what for what, old, new in changes if old != new]
        if changed and not force:
            raise CompError(f"{config_path}: this run was made on another {changed[0]}; it cannot continue. "
                            "Use --name for a new run, or --force to retrain it from scratch")
        if changed:
            remove_tree(run_dir, inside=run_dir.parent)
        elif (saved_config := {**HASHED_WHEN_SET, **saved["config"]}) != manifest["config"]:  # older runs: defaults
            keys = sorted(k for k in manifest["config"] if saved_config.get(k) != manifest["config"][k])
            raise CompError(f"{config_path}: run {config.run_name} exists with other settings ({', '.join(keys)}); "
                            "use another --name")
    write_manifest(run_dir, manifest)


# -- the run ---------------------------------------------------------------------------------------


def train_one_fold(config: RunConfig, dataset, split: Split, run_dir: Path, fold: int, progress=None,
                   teachers: list = ()):
    """Train fold `fold` in this process and write its artifacts; its FoldResult.

    With pseudo-labelling teachers (comp.stages.pseudo), the fold's training rows gain the test images
    its teachers' fold-`fold` models label confidently; its validation rows never change.
    """
    from comp.stages.pseudo import fold_pseudo_labels, with_pseudo_rows
    from comp.engine.feed import FoldRows
    from comp.engine.trainer import train_fold

    train_pos, val_pos = split.rows(fold, dataset.rows)
    train_x, train_y = FoldRows(dataset.train_x, train_pos), dataset.train_y[train_pos]
    if teachers:
        pseudo = fold_pseudo_labels(teachers, fold, config.pseudo_threshold)
        write_json(run_dir / f"fold{fold}" / "pseudo.json", {
            "teachers": [t.name for t in teachers], "threshold": config.pseudo_threshold,
            "rows": int(len(pseudo.rows)), "of": int(len(dataset.test_x))})
        info(f"fold {fold}: + {len(pseudo.rows):,} pseudo-labelled test images (teachers' fold-{fold} "
             f"probability >= {config.pseudo_threshold:g})")
        train_x, train_y = with_pseudo_rows(train_x, train_y, dataset.test_x, pseudo)
    return train_fold(config, train_x, train_y, FoldRows(dataset.train_x, val_pos), dataset.train_y[val_pos],
                      dataset.num_classes, fold, fold_dir=run_dir / f"fold{fold}", test_x=dataset.test_x,
                      progress=progress)


def train_unit_task(unit: str, config: RunConfig, workspace_root: Path, data_dir: Path, skip_bad: bool,
                    index: int) -> dict:
    """A fold (unit "fold") or a full-data fit (unit "seed") in a child process (comp.core.isolate): load the
    data from the cache, train, report the numbers the parent prints."""
    from comp.data.sources import apply_limit, load_dataset
    from comp.core.progress import TrainingProgress

    workspace = Workdir(workspace_root)
    dataset = load_dataset(data_dir, workspace.cache, limit=0, skip_bad=skip_bad, image_size=config.image_size,
                           resize=config.resize, say_size=False)
    split = split_for(workspace, dataset, config)
    dataset = apply_limit(dataset, config.limit)
    teachers = load_teachers(workspace, config, dataset, split)
    train = train_one_full if unit == "seed" else train_one_fold
    with TrainingProgress(1, config.fit_epochs) as progress:
        result = train(config, dataset, split, workspace.run_dir(config.run_name), index, progress, teachers)
    return {"val_accuracy": result.val_accuracy, "best_epoch": result.best_epoch, "seconds": result.seconds}


def fold_line(fold: int, result: dict, unit: str = "fold") -> str:
    if unit != "fold":
        return f"{unit} {fold}: trained on every row ({result['seconds']:.0f}s)"
    named = (f"val {result['metric']} {result['val_metric']:.4f}, "
             if result.get("metric", "accuracy") != "accuracy" else "")
    return (f"fold {fold}: {named}val accuracy {result['val_accuracy']:.4f} "
            f"(best epoch {result['best_epoch']}, {result['seconds']:.0f}s)")


def safe_score(metric: str, labels: np.ndarray, probs: np.ndarray) -> float:
    """The metric, or NaN where it is undefined on these rows (roc_auc on a fold with one class)."""
    from comp.core.metrics import score

    try:
        return score(metric, labels, probs)
    except CompError:
        return float("nan")


def fold_metric(run_dir: Path, dataset, split: Split, fold: int, metric: str, tag: str = "") -> float:
    """The competition's metric on a finished fold's validation rows, from its saved probabilities."""
    _, val_pos = split.rows(fold, dataset.rows)
    probs = load_npy(run_dir / f"fold{fold}" / f"val_probs{tag}.npy", retrain_fold_fix(run_dir, fold))
    return safe_score(metric, dataset.train_y[val_pos], probs)


def run_folds(workspace, run_dir: Path, folds: list[int], force: bool, train: Callable[[int], dict],
              unit: str = "fold", claims=None) -> list[int]:
    """The fold loop every run shares (comp train's folds and full-data seeds, comp transfer finetune).

    Skips finished folds (unless `force`), calls `train(fold)` for the others that no other worker
    holds (so workers on one run share its folds; comp.stages.fanout), waits for the ones others
    hold, and prints a line per fold. `claims`: where workers claim folds (default: lock files in the
    workdir). A fold whose child process died is reported and the others go on; returns those.
    `unit` "seed": the run's full-data fits instead (full/seed<i>).
    """
    claims = claims or open_claims(workspace)
    return train_units(claims, run_dir, folds, force, train, unit, lambda fold, result: fold_line(fold, result, unit))


# Full-data fits hold no row out. They still validate on this many of their own training rows: a
# sanity check in their history (training accuracy, without augmentation), never a score.
FULL_MONITOR_ROWS = 512


def full_seed_index(split: Split, seed: int) -> int:
    """The `fold` number train_fold seeds full-data fit `seed` with: past the folds, so its random
    streams (init, shuffle, augmentation) differ from every fold's and from each other's."""
    return split.k + seed


def train_one_full(config: RunConfig, dataset, split: Split, run_dir: Path, seed: int, progress=None,
                   teachers: list = ()):
    """Full-data fit number `seed` of the run: every train row (plus pseudo-labels), test predictions."""
    from comp.stages.pseudo import PseudoLabels, with_pseudo_rows
    from comp.engine.feed import FoldRows
    from comp.engine.trainer import train_fold

    if config.keep == "best":
        raise CompError("--full with keep = best: a full-data fit holds no rows out to pick an epoch on; "
                        "use keep = last")
    everything = np.arange(len(dataset.rows))
    monitor = np.sort(np.random.default_rng([config.seed, seed]).choice(
        everything, min(FULL_MONITOR_ROWS, len(everything)), replace=False))
    train_x, train_y = FoldRows(dataset.train_x, everything), dataset.train_y[everything]
    if teachers:  # no held-out rows to protect: the teachers' test predictions of every fold, averaged
        probs = np.mean([t.read_test(t.own_tag) for t in teachers], axis=0)
        confident = np.flatnonzero(probs.max(axis=1) >= config.pseudo_threshold)
        train_x, train_y = with_pseudo_rows(train_x, train_y, dataset.test_x,
                                            PseudoLabels(confident, probs[confident].argmax(axis=1)))
    return train_fold(config, train_x, train_y, FoldRows(dataset.train_x, monitor), dataset.train_y[monitor],
                      dataset.num_classes, full_seed_index(split, seed), fold_dir=unit_dir(run_dir, "seed", seed),
                      test_x=dataset.test_x, progress=progress)


def train_run(workspace, config: RunConfig, dataset, split: Split, folds: list[int], force: bool = False,
              isolate: bool | None = None, full_seeds: int = 0, storage: str | None = None,
              heartbeat: float | None = None) -> Run:
    """Train the chosen folds of `config` and summarise the run. `isolate`: one child process per
    fold (default: on TensorFlow, see comp.core.isolate).

    With `full_seeds` = N, the run's N full-data fits (every train row, no holdout, test
    predictions only; full/seed<i>) are trained instead of folds: ensemble then scores and weights
    the run on its folds' OOF predictions and submits the full-data fits' test predictions.

    Several workers may train one run at once: they claim its folds through the `storage` database
    (heartbeat every `heartbeat` seconds) or through lock files in the workdir (comp.stages.fanout).
    """
    from comp.core.isolate import call_in_child, isolate_by_default
    from comp.core.progress import TrainingProgress

    run_dir = workspace.run_dir(config.run_name)
    teachers = load_teachers(workspace, config, dataset, split)  # refused before anything is written
    if full_seeds and config.keep == "best":
        raise CompError("--full with keep = best: a full-data fit holds no rows out to pick an epoch on; "
                        "use keep = last")
    if full_seeds:
        refuse_full_without_twin(run_dir, config, split)
    metric = workspace.metric
    claims = open_claims(workspace, storage, split.hash, heartbeat)  # a bad --storage is refused before any write
    prepare_run_dir(run_dir, config, dataset, split, force, metric)
    unit, one = ("seed", train_one_full) if full_seeds else ("fold", train_one_fold)
    units = list(range(full_seeds)) if full_seeds else folds
    covers = "this fold's" if config.run_folds == 1 else "these folds'"
    holdout = f" (a holdout run: its OOF covers {covers} rows)" if config.run_folds else ""
    what = f"{full_seeds} full-data fit(s)" if full_seeds else \
        f"fold{'s' if len(folds) > 1 else ''} {','.join(map(str, folds))} of {split.k}{holdout}"
    info(f"run [bold]{config.run_name}[/bold]: {config.model}, {config.epochs} epochs, {what}, "
         f"{len(dataset.rows):,} rows -> {run_dir}")
    isolate = isolate_by_default() if isolate is None else isolate

    def in_child(index: int) -> dict:
        return call_in_child(train_unit_task, unit, config, workspace.root, dataset.data_dir, workspace.skip_bad,
                             index, what=f"{unit} {index}", log_dir=run_dir)

    def scored(result: dict, index: int) -> dict:
        """The fold's numbers plus the competition's metric on its validation rows (for its line)."""
        if unit == "fold" and metric != "accuracy":
            result = {**result, "metric": metric, "val_metric": fold_metric(run_dir, dataset, split, index, metric)}
        return result

    if isolate:
        failed = run_folds(workspace, run_dir, units, force, lambda index: scored(in_child(index), index), unit,
                           claims)
    else:
        with TrainingProgress(len(units), config.fit_epochs) as progress:
            failed = run_folds(workspace, run_dir, units, force,
                               lambda index: scored(vars(one(config, dataset, split, run_dir, index, progress,
                                                             teachers)), index), unit, claims)
    with summary_lock(workspace, run_dir.name):  # one worker writes the OOF file, the others read it
        summarize_run(run_dir, dataset, split, metric)
    if failed:
        raise CompError(f"{unit}(s) {', '.join(map(str, failed))} of run {config.run_name} died (see above); "
                        "rerun the same command to retry them")
    return Run(config.run_name, run_dir, read_manifest(run_dir / "config.json"))


class NoKfoldTwin(CompError):
    """--full asked of a run whose folds are not all finished: its full-data fits could never be
    scored, weighted or submitted (comp ensemble leaves such a run out). The CLI appends the command."""

    def __init__(self, message: str, run_name: str):
        super().__init__(f"{message} the same call without full= (comp train without --full)")
        self.message, self.run_name = message, run_name


def refuse_full_without_twin(run_dir: Path, config: RunConfig, split: Split) -> None:
    """Full-data fits only beside a finished K-fold run of the same settings (its OOF file written)."""
    if (run_dir / "oof_probs.npy").exists() and (run_dir / "summary.json").exists():
        return
    folds = config.run_fold_indices
    done = sum(fold_done(run_dir / f"fold{k}") for k in folds)
    raise NoKfoldTwin(f"--full: run {config.run_name} has {done} of {len(folds)} folds finished; its full-data fits "
                      "would be scored and weighted by them, so train the folds first:", config.run_name)


def summarize_run(run_dir: Path, dataset, split: Split, metric: str | None = None) -> dict | None:
    """Per-fold table; when every fold is done, the OOF file and the run summary (else None), with the
    competition's `metric` (default: the one the manifest recorded) computed from the OOF probabilities."""
    from rich.table import Table

    manifest = read_manifest(run_dir / "config.json")
    tta = manifest["config"].get("tta", "none")
    metric = metric or manifest.get("metric") or "accuracy"
    named = metric != "accuracy"
    run_folds = Run(run_dir.name, run_dir, manifest).folds  # all K, or a holdout's
    metrics = [(k, read_json(run_dir / f"fold{k}" / "metrics.json")) for k in run_folds
               if fold_done(run_dir / f"fold{k}")]
    table = Table(title=f"{run_dir.name}")
    for column in ("fold", *([f"val {metric}"] if named else []), "val acc", "val acc TTA", "val loss", "best epoch",
                   "epochs", "seconds"):
        table.add_column(column, justify="right")
    for fold, m in metrics:
        value = [f"{fold_metric(run_dir, dataset, split, fold, metric):.4f}"] if named else []
        table.add_row(str(fold), *value, f"{m['val_accuracy']:.4f}",
                      f"{m.get(f'val_accuracy.{tta}', m['val_accuracy']):.4f}",
                      f"{m['val_loss']:.4f}", str(m.get("best_epoch", "-")), str(m.get("epochs_run", "-")),
                      f"{m['seconds']:.0f}")
    console.print(table)
    full = sorted((run_dir / "full").glob("seed*/metrics.json"))
    if full:
        info(f"{len(full)} full-data fit(s) done: comp ensemble submits their test predictions for this run")
    if len(metrics) < len(run_folds):
        info(f"{len(metrics)} of {len(run_folds)} folds done; the OOF file is written when all are")
        return None
    if summary_current(run_dir, run_folds, metric):  # written by another worker of this run since its last fold
        summary = read_json(run_dir / "summary.json")
        info("the OOF file and summary are up to date (written after the last fold finished); kept")
    else:
        summary = write_oof(run_dir, dataset, split, manifest, [m for _, m in metrics], metric, run_folds)
    if named:
        info(f"CV {metric} [bold]{summary['cv_metric']:.4f}[/bold] (OOF probabilities), with TTA {tta}: "
             f"{summary['cv_metric_tta']:.4f}")
    spread = f"folds {summary['fold_accuracy_mean']:.4f} ± {summary['fold_accuracy_std']:.4f}" if len(metrics) > 1 \
        else f"one fold of {split.k}: a holdout of {summary['rows']:,} rows"
    info(f"CV accuracy {summary['cv_accuracy']:.4f} ({spread}), with TTA {tta}: {summary['cv_accuracy_tta']:.4f}; "
         f"OOF: {run_dir / 'oof_probs.npy'}")
    return summary


def write_oof(run_dir: Path, dataset, split: Split, manifest: dict, metrics: list[dict],
              metric: str = "accuracy", folds: list[int] | None = None) -> dict:
    """oof_probs[.<tta>].npy from the validation predictions of the run's `folds` (default all K),
    oof_rows.npy (the rows they validate on), summary.json (with the competition's metric of the OOF
    probabilities: cv_metric, cv_metric_tta)."""
    folds = list(range(split.k)) if folds is None else folds
    tta = manifest["config"].get("tta", "none")
    suffixes = [""] if tta == "none" else ["", f".{tta}"]
    covered = split.covered(dataset.rows, folds)
    oof = {s: np.full((len(covered), dataset.num_classes), np.nan, np.float32) for s in suffixes}
    for fold in folds:
        _, val_pos = split.rows(fold, dataset.rows)
        fix = retrain_fold_fix(run_dir, fold)
        for s in suffixes:
            oof[s][np.searchsorted(covered, val_pos)] = load_npy(run_dir / f"fold{fold}" / f"val_probs{s}.npy", fix)
    if np.isnan(oof[""]).any():
        raise CompError(f"{run_dir}: fold predictions do not cover every row; retrain with --force")
    for s, probs in oof.items():
        save_npy(run_dir / f"oof_probs{s}.npy", probs)
    save_npy(run_dir / "oof_rows.npy", dataset.rows[covered].astype(np.int64))
    labels = dataset.train_y[covered]
    fold_acc = np.array([m["val_accuracy"] for m in metrics])
    plain = oof[""]
    summary = {
        "run": run_dir.name,
        "model": manifest["config"].get("model") or manifest["config"].get("backbone"),
        "cv_accuracy": accuracy(plain, labels),
        "cv_loss": log_loss(plain, labels),
        "cv_accuracy_tta": accuracy(oof[suffixes[-1]], labels),
        "tta": tta,
        "fold_accuracy_mean": float(fold_acc.mean()),
        "fold_accuracy_std": float(fold_acc.std()),
        "fold_loss_mean": float(np.mean([m["val_loss"] for m in metrics])),
        "fold_loss_std": float(np.std([m["val_loss"] for m in metrics])),
        "seconds": float(sum(m["seconds"] for m in metrics)),
        "rows": int(len(labels)),
        "metric": metric,
        "cv_metric": safe_score(metric, labels, plain),
        "cv_metric_tta": safe_score(metric, labels, oof[suffixes[-1]]),
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def train_config(workspace: Workdir, config=None, *, folds="all", k: int | None = None, force: bool = False,
                 resplit: bool = False, preset: str | None = None, isolate: bool | None = None, full: int = 0,
                 storage: str | None = None, heartbeat: float | None = None, **overrides) -> Run:
    """`Workspace.train`'s stage: resolve the config, load the data at its size, split, train the folds
    chosen (or `full` full-data fits). -> Run."""
    from comp.data.sources import apply_limit, workdir_source
    from comp.data.folds import parse_fold_selection

    config = getattr(config, "best_config", config)  # a Study trains its best trial
    if k is not None:
        overrides["folds"] = k
    resolve_config(workspace, "", config, dict(overrides), preset, use_latest_best=False)  # refused before any write
    source = workdir_source(workspace)
    run_config = resolve_config(workspace, source.fingerprint, config, overrides, preset)
    warn_gpu_settings_on_cpu(run_config)
    dataset = source.load(run_config.image_size, run_config.resize)
    split = split_for(workspace, dataset, run_config, resplit)
    limited = apply_limit(dataset, run_config.limit)
    run_config = fit_to_rows(run_config, min(len(split.rows(f, limited.rows)[0]) for f in range(split.k)))
    folds_text = folds if isinstance(folds, str) else ",".join(map(str, folds if isinstance(folds, (list, tuple, set))
                                                                   else [folds]))
    chosen = parse_fold_selection(folds_text, split.k, run_config.run_folds)
    return train_run(workspace, run_config, limited, split, chosen, force=force,
                     isolate=isolate, full_seeds=full, storage=storage, heartbeat=heartbeat)
