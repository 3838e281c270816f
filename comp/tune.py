"""`comp tune`: an Optuna search over the run config -- resumable, prunable, distributable.

    comp tune --model resnet --epochs 8 --trials 20            search; rerun the same command to go on
    comp train --config folds/tune-resnet/best.json --fold all  train what it found on every fold

One trial (see `objective`): the sampler picks values for the searched parameters
(`default_space`, narrowed or widened by `--space FILE`), they are laid over the fixed config
(the same flags and --config as `comp train`), and that config trains fold 0 -- or the first
K folds of the standard split with `--cv-folds K` -- through the usual `train_fold`. Validation
accuracy is reported after every epoch so the pruner can stop a trial that is already behind;
the trial's score is the mean validation accuracy of its folds.

    folds/optuna.db            the studies (SQLite); --storage postgresql://... shares one across machines
    folds/<study>/best.json    the best trial as a config file that `comp train --config` takes as is
    folds/<study>/trials.csv   every trial: state, score, parameters, per-fold numbers
    folds/<study>/history.png  optimization history; importance.png: which parameters mattered

A worker killed mid-trial (kill -9, a lost machine) stops writing its heartbeat; the next trial
that any worker of the study starts marks that trial FAIL and queues a copy of its parameters,
so nothing is lost. Ctrl-C re-queues the interrupted trial at once.
"""

from __future__ import annotations

import gc
import json
import os
import random
import re
import time
import tomllib
import warnings
from dataclasses import dataclass, fields
from pathlib import Path

import numpy as np

from .config import RunConfig, load_config_file
from .console import console, info, warn
from .context import add_data_options
from .data import Dataset
from .errors import CompError, one_line
from .fileio import save_csv, save_figure, write_json
from .isolate import TRIAL_FAILED_EXIT, is_worker, run_child, should_isolate
from .folds import Split
from .models import model_defaults
from .train import CONFIG_FLAGS, add_config_options, start_up
from .workspace import Workspace

DEFAULT_TRIALS = 20
# A running trial writes a heartbeat every HEARTBEAT_SECONDS; one silent for GRACE_FACTOR beats
# is taken for dead (its process was killed), marked FAIL and queued again. Generous, because a
# busy CPU can delay the heartbeat thread and a live trial must never be declared dead.
HEARTBEAT_SECONDS = 30
GRACE_FACTOR = 4
MAX_RETRY = 3  # a trial killed this often is given up: its parameters likely kill the process (memory)
LR_SPAN = 10  # the learning rate is searched from a tenth to ten times the config's, on a log scale
BATCH_SIZES = (16, 32, 64, 128, 256, 512, 1024, 2048)
MIN_STEPS_PER_EPOCH = 4  # a batch larger than a quarter of the train rows leaves an epoch too few steps
# alt-flip-crop: the fast nets' own default (alternating flips), searched for every model.
AUGMENT_CHOICES = ["none", "flip", "flip-crop", "alt-flip-crop", "simple", "flip-crop,cutout", "alt-flip-crop,cutout"]
MEDIAN_STARTUP_TRIALS = 5  # the median pruner waits for this many finished trials: a median of fewer is noise
PRUNE_WARMUP_STEPS = 1  # and never judges the first epoch, which says little about the last
STORAGE_ATTEMPTS = 5  # workers starting together on a new database race to create its tables; retry
SQLITE_LOCK_SECONDS = 60  # wait this long for a SQLite lock (heartbeat thread, local workers)
TOP_TRIALS = 10

# RunConfig fields the search never changes: they define what a score means (the data, the split,
# the epoch budget that pruning steps count in) or are names, so trials stay comparable.
UNSEARCHABLE = {"name", "model", "folds", "limit", "seed", "epochs", "depth", "head"}
SPEC_KEYS = {"low", "high", "log", "step", "choices"}


# -- the command line -----------------------------------------------------------------------------


def register(subparsers, parents) -> None:
    parser = subparsers.add_parser(
        "tune", parents=parents, help="Optuna search over the run config; best trial -> folds/<study>/best.json",
        description="Search the run config with Optuna. Flags and --config fix the base config (as for "
                    "comp train); a searched parameter given as a flag is fixed instead of searched.")
    add_data_options(parser)
    add_config_options(parser)
    group = parser.add_argument_group("search")
    group.add_argument("--trials", type=int, metavar="N", default=DEFAULT_TRIALS,
                       help=f"trials this process runs (default {DEFAULT_TRIALS}); 0 = only report the study")
    group.add_argument("--timeout", type=float, metavar="SECONDS", help="start no new trial after SECONDS")
    group.add_argument("--cv-folds", type=int, metavar="K", default=1,
                       help="score = mean validation accuracy over the first K folds (default 1: fold 0 only)")
    group.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                       help="stop trials that are behind (default: median)")
    group.add_argument("--space", metavar="FILE",
                       help='JSON, TOML or YAML: {"lr": {"low": 1e-4, "high": 1e-2, "log": true}, '
                            '"batch_size": {"choices": [64, 128]}, "dropout": 0.3 (fixed), '
                            '"mixup": null (not searched)}')
    group.add_argument("--show-space", action="store_true", help="print the search space and exit")
    group.add_argument("--storage", metavar="URL",
                       help="database URL or .db path (default: <workdir>/folds/optuna.db); "
                            "postgresql://user:pass@host/db lets workers on many machines share a study")
    group.add_argument("--study", metavar="NAME", help="study name (default: tune-<model>)")
    group.add_argument("--heartbeat", type=int, metavar="SECONDS", default=HEARTBEAT_SECONDS,
                       help=f"seconds between a trial's heartbeats (default {HEARTBEAT_SECONDS}); a trial silent for "
                            f"{GRACE_FACTOR} beats is taken for killed and retried")
    parser.set_defaults(func=run)


def _check_budget(args) -> None:
    if args.trials < 0:
        raise CompError(f"--trials {args.trials}: give 0 or more")
    if args.timeout is not None and args.timeout <= 0:
        raise CompError(f"--timeout {args.timeout:g}: give a positive number of seconds")
    if args.cv_folds < 1:
        raise CompError(f"--cv-folds {args.cv_folds}: give 1 or more")
    if args.heartbeat < 1:
        raise CompError(f"--heartbeat {args.heartbeat}: give 1 or more seconds")


def objective_folds(cv_folds: int, k: int) -> list[int]:
    if cv_folds > k:
        raise CompError(f"--cv-folds {cv_folds}: the split has only {k} folds; use --cv-folds {k} or less")
    return list(range(cv_folds))


# -- the search space -----------------------------------------------------------------------------


def searchable_kinds() -> dict[str, type]:
    """Parameter name -> int, float or str: RunConfig's scalar fields, plus depth_scale."""
    kinds = {}
    for f in fields(RunConfig):
        first = str(f.type).split("|")[0].strip()  # "float | None" -> float
        if f.name not in UNSEARCHABLE and first in ("int", "float", "str"):
            kinds[f.name] = {"int": int, "float": float, "str": str}[first]
    kinds["depth_scale"] = float  # multiplies every stage of the config's depth (vgg, deep, resnet)
    return kinds


def batch_choices(base: int, train_rows: int) -> list[int]:
    """Powers of two from half to four times the config's batch, with enough steps per epoch."""
    choices = [b for b in BATCH_SIZES if base / 2 <= b <= base * 4 and b <= train_rows // MIN_STEPS_PER_EPOCH]
    return choices or [min(base, train_rows)]


def default_space(base: RunConfig, train_rows: int) -> dict[str, dict]:
    """A sensible space around the model's config: every entry is valid for every model."""
    space = {
        "lr": {"low": base.lr / LR_SPAN, "high": base.lr * LR_SPAN, "log": True},
        "weight_decay": {"low": 1e-6, "high": 1e-2, "log": True},
        "dropout": {"low": 0.0, "high": 0.5},
        # width is already a multiplier of the model's channels: search half to 1.5 times the config's.
        "width": {"low": round(base.width * 0.5, 6), "high": round(base.width * 1.5, 6),
                  "step": round(base.width * 0.25, 6)},
        "batch_size": {"choices": batch_choices(base.batch_size, train_rows)},
        "mixup": {"low": 0.0, "high": 0.4},
        "augment": {"choices": list(AUGMENT_CHOICES)},
        "label_smoothing": {"low": 0.0, "high": 0.2},
    }
    if base.depth and model_defaults(base.model).get("depth"):  # baseline and fast ignore depth
        space["depth_scale"] = {"low": 0.5, "high": 2.0, "step": 0.5}
    return space


def load_space_file(path: str) -> dict:
    """{name: spec}: a dict (low/high/log/step or choices), a fixed value, or null/false (not searched)."""
    file = Path(path)
    if not file.is_file():
        raise CompError(f"--space {path}: no such file")
    text = file.read_text()
    kind = {".toml": "TOML", ".yaml": "YAML", ".yml": "YAML"}.get(file.suffix.lower(), "JSON")
    try:
        values = {"TOML": tomllib.loads, "YAML": _load_yaml, "JSON": json.loads}[kind](text)
    except ValueError as err:  # JSONDecodeError and TOMLDecodeError are ValueErrors; so is _load_yaml's
        raise CompError(f"{path}: not readable as {kind} ({err}); fix the file") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise CompError(f"{path}: must hold a mapping of parameter names to ranges, choices or fixed values")
    return values


def _load_yaml(text: str):
    import yaml  # installed with optuna

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ValueError(str(err).replace("\n", " ")) from None


def _merge_spec(default: dict | None, user: dict) -> dict:
    """A partial range narrows or widens the default one: {"high": 0.3} keeps the default low."""
    if "choices" in user or not default or "choices" in default:
        return dict(user)
    merged = {**default, **user}
    if user.get("log") and "step" not in user:
        merged.pop("step", None)  # Optuna takes either a step or a log scale
    return merged


def to_distribution(name: str, spec: dict, kind: type, source: str):
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        raise CompError(f"{source}: {name}: unknown key(s) {', '.join(unknown)}; use low, high, log, step or choices")
    if "choices" in spec:
        choices = spec["choices"]
        scalars = isinstance(choices, list) and all(isinstance(c, (int, float, str)) for c in choices)
        if not choices or not scalars:
            raise CompError(f"{source}: {name}: choices must be a non-empty list of numbers or words")
        return CategoricalDistribution(tuple(choices))
    if "low" not in spec or "high" not in spec:
        raise CompError(f"{source}: {name}: give low and high (a range) or choices (a list)")
    if kind is str:
        raise CompError(f"{source}: {name} takes words, not a range; give choices: [...]")
    try:
        if kind is int:
            numbers = [spec["low"], spec["high"], spec.get("step", 1)]
            if any(not float(v).is_integer() for v in numbers):
                raise CompError(f"{source}: {name} is a whole number; give whole low, high and step")
            return IntDistribution(int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")),
                                   step=int(spec.get("step", 1)))
        step = spec.get("step")
        return FloatDistribution(float(spec["low"]), float(spec["high"]), log=bool(spec.get("log")),
                                 step=None if step is None else float(step))
    except (TypeError, ValueError) as err:
        raise CompError(f"{source}: {name}: {err}") from None


def scale_depth(depth: list[int], scale: float) -> list[int]:
    return [max(1, int(d * scale + 0.5)) for d in depth]  # round half up (Python's round(2.5) is 2)


def apply_params(base: RunConfig, params: dict, tta_auto: bool, source: str = "search space") -> RunConfig:
    """The config one trial trains: the base with the sampled (or fixed) parameters laid over it."""
    values = base.to_dict()
    values.update({k: v for k, v in params.items() if k != "depth_scale"})
    if "depth_scale" in params:
        if not base.depth:
            raise CompError(f"{source}: depth_scale: model {base.model} has no depth to scale; remove it")
        values["depth"] = scale_depth(base.depth, params["depth_scale"])
    if tta_auto:
        values["tta"] = "auto"  # re-derive test-time augmentation from the augmentation this trial trains with
    return RunConfig.from_dict(values, source)


def _explicit_flags(args) -> set[str]:
    """Searchable parameters given as flags: fixed at that value instead of searched."""
    given = {name for name, _, _ in CONFIG_FLAGS if getattr(args, name, None) is not None}
    if getattr(args, "depth", None):
        given.add("depth_scale")
    return given & set(searchable_kinds())


def _tta_pinned(args) -> bool:
    """Did the user choose the test-time augmentation (flag or config file)? Then trials keep it."""
    if args.tta:
        return True
    return bool(args.config) and load_config_file(args.config).get("tta", "auto") != "auto"


@dataclass
class Space:
    base: RunConfig  # the fixed config, fixed values of the space file included
    distributions: dict  # name -> optuna distribution, in sampling order
    tta_auto: bool  # trials re-derive tta from their augmentation
    fixed: dict  # name -> value fixed by flags or the space file (for the printout)


def build_space(base: RunConfig, args, train_rows: int) -> Space:
    kinds = searchable_kinds()
    specs = default_space(base, train_rows)
    source = args.space or "search space"
    user = load_space_file(args.space) if args.space else {}
    flagged = _explicit_flags(args)
    fixed = {name: base.depth if name == "depth_scale" else getattr(base, name) for name in flagged if name in specs}
    file_fixed = {}
    for name, value in user.items():
        if name not in kinds:
            hint = " (fix depth with --depth, search it with depth_scale)" if name == "depth" else ""
            raise CompError(f"{source}: {name!r} cannot be searched{hint}; searchable: {', '.join(sorted(kinds))}")
        if name in flagged:
            raise CompError(f"{source}: {name} is also given as --{name.replace('_', '-')}; keep one of the two")
        if value is None or value is False:  # null (or false: TOML has no null) = not searched
            specs.pop(name, None)
        elif isinstance(value, dict):
            specs[name] = _merge_spec(specs.get(name), value)
        elif isinstance(value, (int, float, str)) and value is not True:
            file_fixed[name] = value
            specs.pop(name, None)
        else:
            raise CompError(f"{source}: {name} = {value!r}; give a range, choices, a fixed value or null")
    for name in flagged:
        specs.pop(name, None)
    pinned = _tta_pinned(args) or "tta" in file_fixed or "tta" in specs
    tta_auto = "augment" in specs and not pinned
    if file_fixed:
        base = apply_params(base, file_fixed, tta_auto="augment" in file_fixed and not pinned, source=source)
    distributions = {name: to_distribution(name, spec, kinds[name], source) for name, spec in specs.items()}
    _check_space(base, distributions, tta_auto, source)
    return Space(base, distributions, tta_auto, fixed | file_fixed)


def _check_space(base: RunConfig, distributions: dict, tta_auto: bool, source: str) -> None:
    """Refuse now, not after an hour, a space whose ends the config would refuse."""
    for name, dist in distributions.items():
        ends = dist.choices if hasattr(dist, "choices") else (dist.low, dist.high)
        for value in ends:
            apply_params(base, {name: value}, tta_auto, f"{source}: {name} = {value!r}")


def describe(dist) -> str:
    if hasattr(dist, "choices"):
        return "one of " + ", ".join(map(str, dist.choices))
    scale = "log " if dist.log else ""
    step = f" step {dist.step:g}" if dist.step not in (None, 1) else ""
    return f"{scale}{dist.low:g} .. {dist.high:g}{step}"


def print_space(space: Space) -> None:
    from rich.table import Table

    table = Table(title="search space")
    table.add_column("parameter")
    table.add_column("searched over")
    for name, dist in space.distributions.items():
        table.add_row(name, describe(dist))
    for name, value in space.fixed.items():
        table.add_row(name, f"fixed at {value}")
    console.print(table)


def suggest(trial, space: Space) -> dict:
    from optuna.distributions import CategoricalDistribution, IntDistribution

    params = {}
    for name, dist in space.distributions.items():
        if isinstance(dist, CategoricalDistribution):
            params[name] = trial.suggest_categorical(name, list(dist.choices))
        elif isinstance(dist, IntDistribution):
            params[name] = trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
        else:
            params[name] = trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return params


# -- one trial ------------------------------------------------------------------------------------


class TrialFailed(Exception):
    """A trial's training raised (out of memory, a numeric error): the study goes on without it."""


@dataclass
class Search:
    """Everything a trial needs, loaded once per process."""

    space: Space
    dataset: Dataset
    split: Split
    folds: list[int]
    current: dict  # {"number": trial number running now}, for re-queuing it after Ctrl-C


def report_step(fold_index: int, epoch: int, epochs: int) -> int:
    """The step at which a trial reports an epoch. Steps restart at each fold otherwise, and
    Optuna keeps only the first value reported at a step: fold 1's epochs would be lost and
    the pruner would compare fold 1 of one trial with fold 0 of another."""
    return fold_index * epochs + epoch


def make_reporter(trial, fold_index: int, epochs: int, last_fold: bool):
    """on_epoch hook for train_fold: report validation accuracy, stop the trial if it is behind."""
    import optuna

    def on_epoch(epoch: int, row: dict) -> None:
        step = report_step(fold_index, epoch, epochs)
        trial.report(row["val_accuracy"], step)
        final = last_fold and epoch + 1 >= epochs  # pruning at the very end would only throw the score away
        if not final and trial.should_prune():
            trial.set_user_attr("pruned_at", {"fold_index": fold_index, "epoch": epoch + 1, "step": step})
            raise optuna.TrialPruned(f"val accuracy {row['val_accuracy']:.4f} at fold {fold_index} epoch {epoch + 1}")

    return on_epoch


def _rss_mb() -> float | None:
    """Resident memory now (Linux), recorded per trial to show it stays flat."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return None
    return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)


def objective(trial, search: Search) -> float:
    """Train the trial's config on the objective folds; return their mean validation accuracy."""
    import optuna

    from .progress import TrainingProgress
    from .trainer import TrainingDiverged, train_fold

    search.current["number"] = trial.number
    config = apply_params(search.space.base, suggest(trial, search.space), search.space.tta_auto)
    trial.set_user_attr("config", config.to_dict())
    dataset, scores, epochs_run, seconds = search.dataset, [], [], []
    for key in ("fold_scores", "epochs_run", "seconds"):  # a retried trial starts with its victim's
        trial.set_user_attr(key, [])
    info(f"trial {trial.number}: {format_params(trial.params)}")
    try:
        # The bar without a line per epoch: a study prints one line per trial.
        with TrainingProgress(len(search.folds), config.epochs, epoch_lines=False) as progress:
            for index, fold in enumerate(search.folds):
                train_pos, val_pos = search.split.rows(fold, dataset.rows)
                result = train_fold(
                    config, dataset.train_x[train_pos], dataset.train_y[train_pos],
                    dataset.train_x[val_pos], dataset.train_y[val_pos], dataset.num_classes, fold,
                    on_epoch=make_reporter(trial, index, config.epochs, index == len(search.folds) - 1),
                    progress=progress)
                scores.append(result.val_accuracy)
                epochs_run.append(result.epochs_run)
                seconds.append(round(result.seconds, 2))
                # Recorded after every fold, so a pruned trial still shows what it finished.
                trial.set_user_attr("fold_scores", scores)
                trial.set_user_attr("epochs_run", epochs_run)
                trial.set_user_attr("seconds", seconds)
    except TrainingDiverged as err:  # a learning rate too high for this trial: it fails, the study goes on
        trial.set_user_attr("error", str(err)[:500])
        raise TrialFailed(str(err)) from err
    except (optuna.TrialPruned, CompError):  # pruned, or bad input: not a failed trial
        raise
    except Exception as err:  # noqa: BLE001 -- any training error fails this trial only
        trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:500])
        raise TrialFailed(f"{type(err).__name__}: {err}") from err
    finally:
        trial.set_user_attr("rss_mb", _rss_mb())
    return float(np.mean(scores))


# -- the study ------------------------------------------------------------------------------------


def storage_url(args, workspace: Workspace) -> str:
    if not args.storage:
        workspace.folds.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{workspace.folds / 'optuna.db'}"
    if "://" not in args.storage:  # a bare path is a SQLite file
        path = Path(args.storage).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return with_driver(args.storage)


def with_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads postgresql:// as psycopg 3; name psycopg2 when only it is installed
    (it is what `pip install 'comp[postgres]'` brings). postgres:// is a common alias."""
    import importlib.util

    scheme, _, rest = url.partition("://")
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql+psycopg2://{rest}"
        return f"postgresql://{rest}"
    return url


def display_url(url: str) -> str:
    """The URL with its password hidden, for printing."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def open_storage(url: str, heartbeat: int):
    """An RDBStorage with heartbeats: a trial whose process died is failed and queued again."""
    import optuna
    import sqlalchemy.exc

    shown = display_url(url)
    engine_kwargs = ({"connect_args": {"timeout": SQLITE_LOCK_SECONDS}} if url.startswith("sqlite")
                     else {"pool_pre_ping": True})  # a long trial outlives idle server connections
    for attempt in range(STORAGE_ATTEMPTS):
        try:
            return optuna.storages.RDBStorage(
                url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat,
                grace_period=heartbeat * GRACE_FACTOR,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY))
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError):
            # Two workers creating the tables of a new database at once: the loser retries and finds them.
            if attempt == STORAGE_ATTEMPTS - 1:
                raise
            time.sleep(0.5 + random.random())
        except ImportError:
            raise CompError(f"--storage {shown}: its database driver is not installed "
                            "(PostgreSQL: pip install 'comp[postgres]')") from None
        except (sqlalchemy.exc.ArgumentError, ValueError) as err:
            raise CompError(f"--storage {shown}: not a database URL ({err}); use sqlite:///path.db or "
                            "postgresql://user:password@host:5432/database") from None
        except sqlalchemy.exc.OperationalError as err:
            reason = one_line(getattr(err, "orig", err))
            raise CompError(f"--storage {shown}: cannot open it ({reason}); check the server, the address "
                            "and the credentials") from None
    raise AssertionError("unreachable")


def make_pruner(name: str, total_steps: int):
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS, n_warmup_steps=PRUNE_WARMUP_STEPS)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max(1, total_steps), reduction_factor=3)
    return optuna.pruners.NopPruner()


def create_study(storage, name: str, pruner):
    """Create the study, or load it when it exists: rerunning continues it."""
    import optuna

    # multivariate TPE models the parameters jointly (lr and batch size interact); no seed: workers
    # sharing a study must not all sample the same first trials. constant_liar (Optuna's default)
    # keeps concurrent workers from sampling the same point while one is running.
    sampler = optuna.samplers.TPESampler(multivariate=True)
    return optuna.create_study(storage=storage, study_name=name, direction="maximize",
                               sampler=sampler, pruner=pruner, load_if_exists=True)


def check_study(study, objective_meta: dict, url: str) -> None:
    """A study measures one thing; refuse to add trials measured differently (other data, epochs...)."""
    saved = study.user_attrs.get("objective")
    if saved is None:
        study.set_user_attr("objective", objective_meta)
        return
    changed = [f"{k} {saved.get(k)} -> {v}" for k, v in objective_meta.items() if saved.get(k) != v]
    if changed:
        raise CompError(
            f"study {study.study_name} in {display_url(url)} scores trials differently ({'; '.join(changed)}); "
            "its trials would not compare with these. Use --study NAME for a new study")


def study_name_for(args, base: RunConfig) -> str:
    name = args.study or f"tune-{base.model}"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise CompError(f"--study {name}: use letters, digits, '.', '_' and '-' (it names a folder under folds/)")
    return name


def requeue(study, number: int | None) -> None:
    """After Ctrl-C: queue the interrupted trial's parameters, so the next run trains them first."""
    import optuna
    from optuna.trial import TrialState

    if number is None:
        return
    trial = study.trials[number]
    if trial.state == TrialState.FAIL and "error" not in trial.user_attrs:
        optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)(study, trial)
        info(f"trial {number} was interrupted; the next comp tune on this study trains its parameters first")


# -- results --------------------------------------------------------------------------------------


def format_params(params: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def write_best(study, study_dir: Path, dataset: Dataset, split: Split) -> dict | None:
    """best.json: the best trial's full config, ready for `comp train --config`."""
    try:
        best = study.best_trial
    except ValueError:  # no completed trial yet
        return None
    if "config" not in best.user_attrs:  # a trial added by another tool
        return None
    config = dict(best.user_attrs["config"], name="")  # empty: comp train derives the run name
    document = config | {
        "study": study.study_name,
        "trial": best.number,
        "value": best.value,
        "provenance": {"fingerprint": dataset.fingerprint, "folds_hash": split.hash,
                       "objective_folds": study.user_attrs.get("objective", {}).get("folds")},
    }
    write_json(study_dir / "best.json", document)
    return document


def trial_line(trial) -> str:
    from optuna.trial import TrialState

    attrs = trial.user_attrs
    took = f"{trial.duration.total_seconds():.0f}s" if trial.duration else ""  # pruned trials too
    retry_of = trial.system_attrs.get("failed_trial")  # set by the retry of a killed trial
    if retry_of is not None:
        took += f", retry of trial {retry_of}"
    if trial.state == TrialState.COMPLETE:
        folds = ", ".join(f"{s:.4f}" for s in attrs.get("fold_scores", []))
        return f"trial {trial.number}: [bold]{trial.value:.4f}[/bold] (folds {folds}) {took}"
    if trial.state == TrialState.PRUNED:
        at = attrs.get("pruned_at", {})
        return f"trial {trial.number}: pruned at fold {at.get('fold_index', '?')} epoch {at.get('epoch', '?')} {took}"
    return f"trial {trial.number}: {trial.state.name.lower()} {attrs.get('error', '')}"


def after_trial(search: Search, study_dir: Path, outcomes: list):
    """Callback after each trial of this process: one line, and best.json rewritten."""

    def callback(study, trial) -> None:
        outcomes.append(trial.state.name)
        if trial.state.name == "FAIL":
            warn(trial_line(trial))
        else:
            info(trial_line(trial))
        best = write_best(study, study_dir, search.dataset, search.split)
        if best is not None:
            info(f"  best so far: trial {best['trial']}, {best['value']:.4f}")

    return callback


def print_top(study) -> None:
    from rich.table import Table
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    counts = {s: sum(t.state == s for t in trials) for s in TrialState}
    info(f"study {study.study_name}: {len(trials)} trials, " + ", ".join(
        f"{n} {s.name.lower()}" for s, n in counts.items() if n))
    done = sorted((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=True)
    if not done:
        return
    table = Table(title=f"top {min(TOP_TRIALS, len(done))} trials")
    for column in ("trial", "val acc", "folds", "epochs", "seconds", "parameters"):
        table.add_column(column, justify="left" if column == "parameters" else "right")
    for t in done[:TOP_TRIALS]:
        a = t.user_attrs
        table.add_row(str(t.number), f"{t.value:.4f}", " ".join(f"{s:.3f}" for s in a.get("fold_scores", [])),
                      str(sum(a.get("epochs_run", []))), f"{sum(a.get('seconds', [])):.0f}", format_params(t.params))
    console.print(table)


def save_plots(study, study_dir: Path) -> None:
    """History and importance plots; importance needs two finished trials and a searched parameter."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna
    from optuna.trial import TrialState
    from optuna.visualization import matplotlib as plots

    finished = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not finished:
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        ax = plots.plot_optimization_history(study)
        save_figure(study_dir / "history.png", ax.figure)
        plt.close(ax.figure)
        if len(finished) < 2:
            info("parameter importance: needs two finished trials; skipped")
            return
        try:
            ax = plots.plot_param_importances(study)
        except (ValueError, RuntimeError) as err:  # e.g. every parameter fixed, or all trials alike
            info(f"parameter importance skipped: {err}")
            return
        save_figure(study_dir / "importance.png", ax.figure)
        plt.close(ax.figure)


def save_trials(study, study_dir: Path) -> None:
    frame = study.trials_dataframe(attrs=("number", "state", "value", "params", "user_attrs", "duration"))
    frame = frame.drop(columns=[c for c in frame.columns if c == "user_attrs_config"])  # in best.json
    save_csv(study_dir / "trials.csv", frame)


def finish(study, study_dir: Path, url: str) -> None:
    print_top(study)
    if study.trials:
        save_trials(study, study_dir)
        save_plots(study, study_dir)
    if (study_dir / "best.json").exists():
        info(f"best config: {study_dir / 'best.json'}  ->  comp train --config {study_dir / 'best.json'} --fold all")
    info(f"dashboard: optuna-dashboard {display_url(url)}")


# -- the command ----------------------------------------------------------------------------------


def run_trials_in_children(args, started: float) -> list[str]:
    """On TensorFlow, each trial runs as `comp <same arguments> --trials 1` (see comp.isolate).

    The children share the study through its storage, exactly as workers on other machines do.
    Returns "FAIL" or "DONE" per child, as the in-process callback records trial states.
    """
    outcomes = []
    for _ in range(args.trials):
        extra = ["--trials", "1"]
        if args.timeout:
            left = args.timeout - (time.time() - started)
            if left <= 0:
                break
            extra += ["--timeout", f"{left:.0f}"]
        outcomes.append("FAIL" if run_child(args.argv, *extra) == TRIAL_FAILED_EXIT else "DONE")
    return outcomes


def run(args) -> int:
    import optuna

    _check_budget(args)
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own line per trial replaces Optuna's
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeat, multivariate
    # A bare `comp tune` starts from the model's defaults, not the newest best.json as a bare
    # `comp train` does: each rerun would otherwise move the search space (the learning-rate
    # range is centred on the base config's).
    workspace, base, dataset, split = start_up(args, use_latest_best=False)
    folds = objective_folds(args.cv_folds, split.k)
    train_rows = len(split.rows(folds[0], dataset.rows)[0])
    space = build_space(base, args, train_rows)
    if args.show_space:
        print_space(space)
        return 0
    name = study_name_for(args, space.base)
    url = storage_url(args, workspace)
    study = create_study(open_storage(url, args.heartbeat), name,
                         make_pruner(args.pruner, len(folds) * space.base.epochs))
    check_study(study, {"fingerprint": dataset.fingerprint, "folds_hash": split.hash, "folds": folds,
                        "model": space.base.model, "epochs": space.base.epochs, "limit": space.base.limit}, url)
    study_dir = workspace.folds / name
    if not is_worker():  # a one-trial worker prints only its trial
        info(f"study [bold]{name}[/bold] in {display_url(url)}: {len(study.trials)} trials so far; this worker runs "
             f"{args.trials} more{f' (or stops after {args.timeout:g}s)' if args.timeout else ''}, "
             f"{space.base.model}, {space.base.epochs} epochs on fold{'s' if len(folds) > 1 else ''} "
             f"{','.join(map(str, folds))} of {split.k}, {len(dataset.rows):,} rows")
        print_space(space)
    search = Search(space, dataset, split, folds, current={})
    outcomes: list[str] = []
    started = time.time()
    if args.trials > 1 and should_isolate():
        outcomes = run_trials_in_children(args, started)
    elif args.trials:
        try:
            study.optimize(lambda trial: objective(trial, search), n_trials=args.trials, timeout=args.timeout,
                           catch=(TrialFailed,), callbacks=[after_trial(search, study_dir, outcomes)],
                           gc_after_trial=True)
        except KeyboardInterrupt:
            requeue(study, search.current.get("number"))
            raise
    gc.collect()
    if is_worker():  # a one-trial worker: the parent process reports the study
        return TRIAL_FAILED_EXIT if outcomes and all(state == "FAIL" for state in outcomes) else 0
    finish(study, study_dir, url)
    info(f"done in {time.time() - started:.0f}s")
    if outcomes and all(state == "FAIL" for state in outcomes):
        raise CompError(f"all {len(outcomes)} trials of this run failed (errors above); fix the cause and rerun")
    return 0
