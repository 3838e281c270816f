"""`comp train`: K-fold training of one run config, resumable fold by fold and epoch by epoch.

    folds/<run>/config.json          the RunConfig + where it came from (data, split)
    folds/<run>/fold<k>/...          model.keras, history.csv, val/test probabilities, metrics.json
    folds/<run>/oof_probs.npy        out-of-fold probabilities, every train row exactly once
    folds/<run>/summary.json         CV accuracy and loss, mean +- std over folds
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import numpy as np

from . import __version__
from .augment import PRESETS as AUGMENT_PRESETS
from .config import RunConfig, build_config, load_config_file, recipe_names
from .console import console, info, warn
from .context import accelerator, add_data_options, data_dir_from, workspace_from
from .data import apply_limit, load_dataset
from .errors import CompError, retrain_fold_fix
from .fileio import load_npy, read_json, save_npy, write_json
from .folds import Split, ensure_split, parse_fold_selection
from .isolate import is_worker, run_child, should_isolate
from .scoring import accuracy, log_loss
from .workspace import Workspace

# Flags that override RunConfig fields: (field, type, help). Their defaults are None = "not given".
CONFIG_FLAGS = [
    ("model", str, "model name (see --list-models)"),
    ("epochs", int, "epochs per fold"),
    ("batch_size", int, "batch size"),
    ("optimizer", str, "adam | adamw | sgd"),
    ("lr", float, "peak learning rate"),
    ("schedule", str, "constant | cosine | onecycle"),
    ("warmup_epochs", float, "learning-rate warm-up, in epochs"),
    ("weight_decay", float, "decoupled weight decay"),
    ("bias_lr_scale", float, "sgd: learning-rate multiplier for BatchNorm biases (1 = off)"),
    ("ema", float, "weight EMA momentum (0 = off)"),
    ("lookahead", float, "lookahead weight averaging, per-step decay e.g. 0.95 (0 = off)"),
    ("label_smoothing", float, "label smoothing"),
    ("patience", int, "early stopping patience on val accuracy (0 = off)"),
    ("keep", str, "best | last epoch's model"),
    ("augment", str, f"augmentation presets, comma-separated: {', '.join(AUGMENT_PRESETS)}, crop=N"),
    ("mixup", float, "mixup alpha (0 = off)"),
    ("cutmix", float, "cutmix alpha (0 = off)"),
    ("dropout", float, "dropout"),
    ("width", float, "channel width multiplier"),
    ("tta", str, "none | flip | flip-shift | auto (default: what augmentation taught)"),
    ("precision", str, "float32 | bfloat16 | float16"),
    ("jit", str, "auto | on | off"),
    ("folds", int, "number of folds K"),
]


def add_config_options(parser) -> None:
    group = parser.add_argument_group("run config (flags override --config)")
    group.add_argument("--config", help="JSON config file, a tune best.json, or a recipe name (--list-recipes)")
    group.add_argument("--name", help="run name under folds/ (default: <model>-<config hash>)")
    group.add_argument("--depth", help="convs/blocks per stage, e.g. 3,3,4,4")
    group.add_argument("--head", help="dense head units, e.g. 256,64")
    for name, kind, text in CONFIG_FLAGS:
        group.add_argument("--" + name.replace("_", "-"), dest=name, type=kind, default=None, help=text)
    group.add_argument("--preset", choices=("cpu", "gpu"), help="machine defaults: cpu (2 cores) or gpu (JAX, bf16)")


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser("train", parents=parents, help="K-fold training: OOF and test predictions")
    add_data_options(parser)
    add_config_options(parser)
    parser.add_argument("--fold", default="all", help="all | 0 | 0,2 (default: all)")
    parser.add_argument("--force", action="store_true", help="retrain the chosen folds even if finished")
    parser.add_argument("--resplit", action="store_true", help="write a new folds/folds.csv for this data")
    parser.add_argument("--list-models", action="store_true", help="list the model zoo and exit")
    parser.add_argument("--list-recipes", action="store_true", help="list the bundled recipes and exit")
    parser.set_defaults(func=run)


def _int_list(text: str | None) -> list[int] | None:
    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise CompError(f"{text}: expected comma-separated integers like 3,3,4,4") from None


# -- choosing the config -------------------------------------------------------------------------

PRESETS = {
    # 2 CPU cores: a small ResNet that reaches a useful score in minutes.
    "cpu": {"model": "resnet", "width": 1.0, "batch_size": 128, "epochs": 15, "precision": "float32", "jit": "auto"},
    # One GPU (JAX, chosen by the CLI): the wide speedrun net, bf16, a large batch; on an H200 its
    # 5 folds reach OOF 0.92 with TTA in about 4 minutes (bench/RESULTS.md).
    "gpu": {"model": "fast-large", "batch_size": 512, "precision": "bfloat16", "jit": "on"},
}


def latest_best_config(workspace: Workspace, fingerprint: str) -> Path | None:
    """The newest folds/<study>/best.json made on this data, for a bare `comp train`."""
    found = []
    for path in workspace.folds.glob("*/best.json"):
        try:
            meta = read_json(path).get("provenance", {})
        except ValueError:
            continue
        if meta.get("fingerprint") == fingerprint:
            found.append(path)
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def resolve_config(args, workspace: Workspace, fingerprint: str, use_latest_best: bool = True) -> RunConfig:
    """The run's config from flags, --config and --preset; with none of them, the newest tune result.

    `use_latest_best=False` (comp tune) starts from the model's defaults instead: a rerun of a
    study must not centre its search space on what the last study found.
    """
    overrides = {name: getattr(args, name, None) for name, _, _ in CONFIG_FLAGS}
    overrides |= {"name": args.name, "depth": _int_list(args.depth), "head": _int_list(args.head)}
    if getattr(args, "seed", None) is not None:
        overrides["seed"] = args.seed
    if getattr(args, "limit", 0):
        overrides["limit"] = args.limit
    file_values, source = None, "options"
    if args.config:
        file_values, source = load_config_file(args.config), args.config
    elif use_latest_best and not args.model and not args.preset:
        best = latest_best_config(workspace, fingerprint)
        if best:
            file_values, source = read_json(best), str(best)
            if not is_worker():  # said once by the parent, not by every fold worker
                info(f"using the best parameters found by tune: {best}")
    if args.preset:
        file_values = {**PRESETS[args.preset], **(file_values or {})}
    return build_config(file_values, overrides, source)


# -- the run ---------------------------------------------------------------------------------------


def provenance(dataset, split: Split) -> dict:
    import keras

    return {
        "fingerprint": dataset.fingerprint,
        "folds_hash": split.hash,
        "folds": split.k,
        "classes": dataset.classes,
        "rows": int(len(dataset.rows)),
        "limit": dataset.limit,
        "image_shape": list(dataset.image_shape),
        "data_dir": str(dataset.data_dir),
        "backend": keras.backend.backend(),
        "comp_version": __version__,
    }


def prepare_run_dir(run_dir: Path, config: RunConfig, prov: dict, force: bool) -> None:
    """Refuse to continue a run on other data or another split; write config.json."""
    config_path = run_dir / "config.json"
    if config_path.exists():
        saved = read_json(config_path)
        old = saved.get("provenance", {})
        for key, what in (("fingerprint", "dataset"), ("folds_hash", "fold split"), ("rows", "--limit subsample")):
            if old.get(key) != prov[key]:
                if not force:
                    raise CompError(
                        f"{config_path}: this run was made on another {what}; it cannot continue. "
                        "Use --name for a new run, or --force to retrain it from scratch"
                    )
                shutil.rmtree(run_dir)
                break
        else:
            stored = {k: v for k, v in saved.items() if k != "provenance"}
            if stored != config.to_dict():
                changed = sorted(k for k in stored if stored.get(k) != config.to_dict().get(k))
                raise CompError(f"{config_path}: run {config.run_name} exists with other settings ({', '.join(changed)}); "
                                "use another --name")
    write_json(config_path, config.to_dict() | {"provenance": prov})


def train_run(config: RunConfig, dataset, split: Split, workspace: Workspace, folds: list[int],
              force: bool = False, argv: list[str] | None = None) -> dict:
    """Train the chosen folds (skipping finished ones) and summarise the run.

    With `argv` (the command's own arguments) and TensorFlow, each fold runs in a child process
    `comp <argv> --fold K`, so memory stays flat across folds (see comp.isolate).
    """
    from .progress import TrainingProgress
    from .trainer import train_fold

    run_dir = workspace.run_dir(config.run_name)
    prepare_run_dir(run_dir, config, provenance(dataset, split), force)
    info(f"run [bold]{config.run_name}[/bold]: {config.model}, {config.epochs} epochs, "
         f"folds {','.join(map(str, folds))} of {split.k}, {len(dataset.rows):,} rows -> {run_dir}")
    todo = []
    for fold in folds:
        fold_dir = run_dir / f"fold{fold}"
        if (fold_dir / "metrics.json").exists() and not force:
            info(f"fold {fold}: finished earlier ({read_json(fold_dir / 'metrics.json')['val_accuracy']:.4f}), skipped")
            continue
        if force:
            shutil.rmtree(fold_dir, ignore_errors=True)
        todo.append(fold)
    if argv is not None and should_isolate() and todo:
        for fold in todo:
            run_child(argv, "--fold", str(fold))
        return summarize_run(run_dir, dataset, split)
    with TrainingProgress(len(todo), config.epochs) as progress:
        for fold in todo:
            train_pos, val_pos = split.rows(fold, dataset.rows)
            result = train_fold(
                config, dataset.train_x[train_pos], dataset.train_y[train_pos],
                dataset.train_x[val_pos], dataset.train_y[val_pos], dataset.num_classes, fold,
                fold_dir=run_dir / f"fold{fold}", test_x=dataset.test_x, progress=progress)
            progress.note(f"fold {fold}: val accuracy {result.val_accuracy:.4f} "
                          f"(best epoch {result.best_epoch}, {result.seconds:.0f}s)")
    if is_worker():
        return {}  # a fold worker: the parent process summarises the run
    return summarize_run(run_dir, dataset, split)


def summarize_run(run_dir: Path, dataset, split: Split) -> dict:
    """Per-fold table; when every fold is done, the OOF file and the run summary."""
    from rich.table import Table

    config = read_json(run_dir / "config.json")
    metrics = [read_json(p) for p in sorted(run_dir.glob("fold*/metrics.json"))]
    table = Table(title=f"{run_dir.name}")
    for column in ("fold", "val acc", "val acc TTA", "val loss", "best epoch", "epochs", "seconds"):
        table.add_column(column, justify="right")
    tta = config.get("tta", "none")
    for m in metrics:
        table.add_row(str(m["fold"]), f"{m['val_accuracy']:.4f}", f"{m.get(f'val_accuracy.{tta}', m['val_accuracy']):.4f}",
                      f"{m['val_loss']:.4f}", str(m["best_epoch"]), str(m["epochs_run"]), f"{m['seconds']:.0f}")
    console.print(table)
    done = {m["fold"] for m in metrics}
    if done != set(range(split.k)):
        info(f"{len(done)} of {split.k} folds done; the OOF file is written when all are")
        return {"folds_done": sorted(done)}
    summary = write_oof(run_dir, dataset, split, config, metrics)
    info(f"CV accuracy {summary['cv_accuracy']:.4f} (folds {summary['fold_accuracy_mean']:.4f} "
         f"± {summary['fold_accuracy_std']:.4f}), with TTA {tta}: {summary['cv_accuracy_tta']:.4f}; "
         f"OOF: {run_dir / 'oof_probs.npy'}")
    return summary


def write_oof(run_dir: Path, dataset, split: Split, config: dict, metrics: list[dict]) -> dict:
    tta = config.get("tta", "none")
    suffixes = [""] if tta == "none" else ["", f".{tta}"]
    oof = {s: np.full((len(dataset.rows), dataset.num_classes), np.nan, np.float32) for s in suffixes}
    for fold in range(split.k):
        _, val_pos = split.rows(fold, dataset.rows)
        for s in suffixes:
            oof[s][val_pos] = load_npy(run_dir / f"fold{fold}" / f"val_probs{s}.npy",
                                       fix=retrain_fold_fix(run_dir, fold))
    if np.isnan(oof[""]).any():
        raise CompError(f"{run_dir}: fold predictions do not cover every row; retrain with --force")
    for s, probs in oof.items():
        save_npy(run_dir / f"oof_probs{s}.npy", probs)
    save_npy(run_dir / "oof_rows.npy", dataset.rows.astype(np.int64))
    labels = dataset.train_y
    fold_acc = np.array([m["val_accuracy"] for m in metrics])
    plain = oof[""]
    summary = {
        "run": run_dir.name,
        "model": config["model"],
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
        "fingerprint": config["provenance"]["fingerprint"],
        "folds_hash": config["provenance"]["folds_hash"],
    }
    write_json(run_dir / "summary.json", summary)
    return summary


def split_for(workspace: Workspace, dataset, config: RunConfig, resplit: bool = False) -> Split:
    """The split of the full dataset (written once); call before applying --limit."""
    return ensure_split(workspace, dataset.train_y, dataset.fingerprint, config.folds, config.seed,
                        dataset.stats.get("train_files"), resplit=resplit)


def warn_gpu_settings_on_cpu(config: RunConfig) -> None:
    """jit on and half precision pay off on a GPU; on a CPU they make training several times slower."""
    if config.jit != "on" and config.precision == "float32":
        return
    if accelerator() is None:
        warn(f"no GPU found: jit {config.jit} and {config.precision} are GPU settings (XLA on a CPU trains "
             "1.3-11x slower, half-precision convolutions crawl); on a CPU use --preset cpu or "
             "--jit auto --precision float32")


def start_up(args, use_latest_best: bool = True, resplit: bool = False):
    """What comp train and comp tune begin with: (workspace, config, dataset, split).

    The split is made on the full train set (so every --limit shares it), then --limit applies.
    """
    workspace = workspace_from(args)
    dataset = load_dataset(data_dir_from(args), workspace.cache, limit=0, skip_bad=args.skip_bad)
    config = resolve_config(args, workspace, dataset.fingerprint, use_latest_best)
    if not is_worker():
        warn_gpu_settings_on_cpu(config)
    split = split_for(workspace, dataset, config, resplit)
    return workspace, config, apply_limit(dataset, config.limit), split


def run(args) -> int:
    if args.list_models:
        from .models import MODELS

        for name, spec in MODELS.items():
            console.print(f"[bold]{name:<11}[/bold] {spec.summary}")
        return 0
    if args.list_recipes:
        for name in recipe_names():
            console.print(name)
        return 0
    workspace, config, dataset, split = start_up(args, resplit=args.resplit)
    started = time.time()
    folds = parse_fold_selection(args.fold, split.k)
    train_run(config, dataset, split, workspace, folds, force=args.force, argv=args.argv)
    if not is_worker():
        info(f"done in {time.time() - started:.0f}s")
    return 0

