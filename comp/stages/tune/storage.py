"""Where a study lives (SQLite by default, PostgreSQL for many machines) and how it is opened.

Studies are created or continued (`load_if_exists`), checked to measure one thing, and sampled
by a TPE sampler seeded from the run config's seed and the number of trials already in the study:
the same command on the same study draws the same parameters, and a resumed study draws new ones.
"""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

from comp.config.run_config import RunConfig
from comp.core.console import info
from comp.core.errors import CompError, one_line
from comp.store.claims import engine_options, unusable_url

# A running trial writes a heartbeat every HEARTBEAT_SECONDS; one silent for GRACE_FACTOR beats
# is taken for dead (its process was killed), marked FAIL and queued again. Generous, because a
# busy CPU can delay the heartbeat thread and a live trial must never be declared dead.
HEARTBEAT_SECONDS = 30
GRACE_FACTOR = 4
MAX_RETRY = 3  # a trial killed this often is given up: its parameters likely kill the process (memory)
MEDIAN_STARTUP_TRIALS = 5  # the median pruner waits for this many finished trials: a median of fewer is noise
PRUNE_WARMUP_STEPS = 1  # and never judges the first epoch, which says little about the last
STORAGE_ATTEMPTS = 5  # workers starting together on a new database race to create its tables; retry


def storage_url(storage: str | None, workspace) -> str:
    """A database URL: the workspace's folds/optuna.db by default, a bare path as a SQLite file."""
    if not storage:
        workspace.folds.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{workspace.folds / 'optuna.db'}"
    if "://" not in storage:  # a bare path is a SQLite file
        path = Path(storage).expanduser().resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path}"
    return with_driver(storage)


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
    engine_kwargs = engine_options(url)
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
        except (ImportError, sqlalchemy.exc.ArgumentError, ValueError) as err:
            raise unusable_url(shown, err) from None
        except sqlalchemy.exc.OperationalError as err:
            reason = one_line(getattr(err, "orig", err))
            if "already exists" in reason and attempt < STORAGE_ATTEMPTS - 1:
                # SQLite reports the same table-creation race as an OperationalError.
                time.sleep(0.5 + random.random())
                continue
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


def create_study(storage, name: str, pruner, seed: int, direction: str = "maximize"):
    """Create the study, or load it when it exists: rerunning continues it.

    The sampler is seeded with `seed` and the number of trials the study already holds, so the
    same command on the same study samples the same parameters (TPE's random start-up trials
    included), while a resumed study or the next trial of a one-trial-per-process worker draws
    new ones instead of repeating the first draws. Workers of a shared study that start at the
    same trial count draw alike; constant_liar (on by default) keeps TPE itself from repeating
    a point while it is being trained.
    """
    import optuna

    study = optuna.create_study(storage=storage, study_name=name, direction=direction, pruner=pruner,
                                load_if_exists=True)
    # multivariate TPE models the parameters jointly (lr and batch size interact).
    study.sampler = optuna.samplers.TPESampler(multivariate=True, seed=seed_for(seed, len(study.trials)))
    return study


def seed_for(seed: int, trials_so_far: int) -> int:
    return (seed * 1_000_003 + trials_so_far) % 2**32


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


def study_name_for(study: str | None, base: RunConfig) -> str:
    name = study or f"tune-{base.model}"
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
