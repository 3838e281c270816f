"""The workspace: where a competition's work lives (comp.core.paths.Workdir: its layout and data
folder), and the verbs a notebook calls on it (tune, train, predict, label, ensemble, runs, report,
score; the package docstring shows them end to end). Each verb calls one stage with typed values;
the CLI (comp.cli) only parses arguments into these calls. Stages never import this module.
"""

from __future__ import annotations

import os
from pathlib import Path

from comp.config.run_config import check_field
from comp.core.paths import DATA_ENV, PROJECT_FILE, Workdir, check_out_folder, resolve_data_dir  # noqa: F401


class Workspace(Workdir):
    """A workdir (`root`) and the competition data it works on (`data`, else remembered or found),
    with the verbs a notebook calls; each verb calls one stage with typed values. `metric`: the
    competition's (comp.core.metrics.METRICS), remembered in comp.toml like `data`; else comp.toml's,
    else accuracy. Train, ensemble, score and report speak it."""

    def source(self):
        """The data folder scanned and fingerprinted, nothing decoded yet (comp.data.sources.Source):
        `.fingerprint`, and `.load(image_size, resize, limit)` for the images."""
        from comp.data.sources import workdir_source

        return workdir_source(self)

    def dataset(self, limit: int = 0, image_size="auto", resize: str = "squash"):
        """The decoded competition data at `image_size` (N, "HxW" or "auto"), images of another
        aspect fitted by `resize` (squash, crop, pad); cached per size under folds/cache/, read
        through a memory mapping; optionally a stratified subsample."""
        from comp.data.sources import workdir_dataset

        _check_size(image_size, resize)
        return workdir_dataset(self, limit, image_size, resize)

    def check(self, grid: str | os.PathLike | None = None, limit: int = 0, image_size="auto",
              resize: str = "squash") -> dict:
        """`comp data check`: every problem of the data (CompError if any is an error), then class
        counts, sizes, modes and duplicates, the disk and memory the chosen image size needs, and a
        sample grid PNG."""
        from comp.stages.check import check_data

        _check_size(image_size, resize)
        self.data_dir  # noqa: B018 -- resolved (and remembered) before the columns, as source() does
        self.use_columns()
        return check_data(self, Path(grid) if grid else self.folds / "data_samples.png", limit, image_size, resize)

    # -- the stages -----------------------------------------------------------------------------

    def config(self, config=None, *, preset: str | None = None, **overrides):
        """The RunConfig `train` would use for these arguments (nothing is trained or written)."""
        from comp.stages.train import resolve_config

        return resolve_config(self, self.source().fingerprint, config, overrides, preset)

    def train(self, config=None, *, folds="all", k: int | None = None, force: bool = False, resplit: bool = False,
              preset: str | None = None, isolate: bool | None = None, full: int = 0, storage: str | None = None,
              heartbeat: float | None = None, **overrides):
        """K-fold training of one config: a RunConfig, a dict, a JSON file or recipe name, or None
        (the newest tune result on this data, else the model's defaults); keyword arguments override
        single fields (epochs=3, model="resnet"). `folds`: which folds to train now ("all", 0, [0, 2]);
        `k`: how many folds the split has (the config's `folds` field, default 5). `full=N`: instead
        of folds, N full-data fits (every train row, different seeds): ensemble submits their test
        predictions, scored and weighted by the folds' OOF predictions of the same run.
        Finished folds are kept unless `force`. Several workers may train one run at once, each fold
        once: they claim folds through the `storage` database (as for tune; beating every `heartbeat`
        seconds, taken over when silent for 4 beats), else through lock files in the workdir. -> Run."""
        from comp.core.console import is_quiet, set_quiet
        from comp.engine.devices import initialize_processes, is_writer, process_settings
        from comp.stages.train import train_config

        if process_settings():  # several processes, one run (KERAS_DISTRIBUTION_*): joined before any JAX work
            initialize_processes()
            isolate = False  # a fold's child process could not join the run
            set_quiet(is_quiet() or not is_writer())  # process 0 speaks for the run
        return train_config(self, config, folds=folds, k=k, force=force, resplit=resplit, preset=preset,
                            isolate=isolate, full=full, storage=storage, heartbeat=heartbeat, **overrides)

    def status(self, storage: str | None = None):
        """Who trains what: a pandas DataFrame with a row per unit (fold or full-data fit "seed") of
        every run here or in the `storage` claims database: run, unit, index, state (done, training,
        stale: its worker went silent, free), owner (host:pid:token), since, heartbeat (UTC)."""
        from comp.stages.status import unit_status

        return unit_status(self, storage)

    def tune(self, config=None, *, trials: int = 20, timeout: float | None = None, cv_folds: int = 1,
             k: int | None = None, pruner: str = "median", space=None, storage: str | None = None,
             study: str | None = None, heartbeat: int | None = None, isolate: bool | None = None, **overrides):
        """An Optuna search around `config` (as for train; keyword arguments given here are fixed,
        not searched). Trials score the first `cv_folds` folds of the k-fold split. Resumable: the
        same call continues the study. -> Study."""
        from comp.stages.train import resolve_config
        from comp.stages.tune import tune

        if k is not None:
            overrides["folds"] = k
        resolve_config(self, "", config, dict(overrides), use_latest_best=False)  # refused before any write
        return tune(self, config, overrides, trials=trials, timeout=timeout, cv_folds=cv_folds, pruner=pruner,
                    space=space, storage=storage, study_name=study, heartbeat=heartbeat, isolate=isolate)

    def auto(self, time, *, out: str | os.PathLike | None = None, force: bool = False,
             started_at: float | None = None):
        """The best leaderboard CSV this machine can make in `time` ('10m', '1h', seconds): measures the
        machine, plans models, epochs, folds and full-data fits, trains, ensembles. -> Submission.
        `started_at` (unix seconds): when the work began, if before this call (counted in the budget)."""
        from comp.stages.auto import run_auto

        return run_auto(self, time, out, force, started_at)

    def predict(self, run, tta: str | None = None, average: str = "probs") -> dict:
        """Re-predict a finished run with a TTA policy: val, test and OOF files; OOF scores per variant."""
        from comp.stages.predict import repredict

        return repredict(self, self.run(run), tta, average)

    def label(self, run, images: str | os.PathLike, out: str | os.PathLike | None = None,
              tta: str | None = None, average: str = "probs"):
        """Label a folder of new images with a finished run: a CSV of file,label,confidence. -> its path."""
        from comp.stages.predict import label_images

        if out is not None:
            check_out_folder(out)
        return label_images(self, self.run(run), Path(images), out, tta, average)

    def ensemble(self, runs=None, *, out: str | os.PathLike | None = None, method: str = "auto",
                 tta: str | None = None, average: str = "probs", force: bool = False,
                 allow_pretrained: bool = False, limit: int = 0):
        """Blend finished runs (Run objects or names; None: every run that fits) into a leaderboard CSV
        under submissions/, scored and weighted on out-of-fold rows. -> Submission (with .oof_interval
        and .gain_over_best: 95% bootstrap intervals of its OOF accuracy and of its gain over .best_run;
        .metric, .oof_score, .metric_interval and .rule: the competition's metric, the decision rule
        cross-fitted for it and applied to the test set, and what the OOF rows score under both)."""
        from comp.stages.ensemble import ensemble

        if out is not None:
            self.submission_path(out)  # a missing folder is refused before any run is read
        names = None if runs is None else [getattr(r, "name", r) for r in _as_list(runs)]
        return ensemble(self, names, out=out, method=method, tta=tta, average=average, force=force,
                        allow_pretrained=allow_pretrained, limit=limit)

    def run(self, name):
        """A run by name under folds/ (or a path, or a Run). -> Run."""
        from comp.store.runs import Run, load_run

        return name if isinstance(name, Run) else load_run(self, str(name))

    def runs(self):
        """The leaderboard of finished runs as a pandas DataFrame, best first, with error bars: ci_low/ci_high
        (95% bootstrap interval of the OOF accuracy with TTA) and gain/gain_low/gain_high (the paired
        interval of the difference from best_run, the best run on the same rows); with the workspace's
        metric, `metric` and `cv_metric` (its OOF value, re-scored from the saved probabilities) last."""
        from comp.stages.report import leaderboard
        from comp.store.runs import finished_runs

        return leaderboard(finished_runs(self), self.metric)

    def report(self, run=None, out: str | os.PathLike | None = None, mistakes: int | None = None) -> dict:
        """Leaderboard CSV, confusion matrix and confident mistakes (PNGs) under folds/report/."""
        from comp.stages.report import report

        return report(self, run, Path(out) if out else None, mistakes)

    def score(self, submission, answers: str | os.PathLike | None = None, metric: str | None = None) -> dict:
        """A submission CSV scored against an answers CSV (default: answers.csv in the data folder) under
        the competition's metric (`metric`, else the workspace's) and by accuracy:
        {"metric", "value", "accuracy", "correct", "rows", "answers"}."""
        from comp.stages.submission import score_submission

        path = Path(getattr(submission, "path", submission))
        return score_submission(path, Path(answers) if answers else self.data_dir / "answers.csv",
                                metric or self.metric)


def _check_size(image_size, resize: str) -> None:
    """--image-size and --resize refused before anything is written (comp.toml, the digest cache)."""
    check_field("image_size", image_size, "options")
    check_field("resize", resize, "options")


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, set)) else [value]
