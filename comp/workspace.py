"""The workspace: where a competition's work lives, and the verbs a notebook calls on it
(tune, train, predict, label, ensemble, runs, report, score; the package docstring shows them
end to end). The CLI (comp.cli) only parses arguments into these calls. Layout under the root:

    <root>/comp.toml          remembers the data folder the first `--data` named
    <root>/folds/             split, cache, runs and studies of the Optuna search
    <root>/submissions/       leaderboard CSVs and their index
    <root>/studies/           the transfer-learning track (never feeds submissions)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import CompError
from .fileio import write_text

import tomllib

PROJECT_FILE = "comp.toml"
DATA_ENV = "COMP_DATA"


class Workspace:
    """A workdir (`root`) and the competition data it works on (`data`, else remembered or found)."""

    def __init__(self, root: str | os.PathLike = ".", data: str | os.PathLike | None = None, *,
                 skip_bad: bool = False, remember: bool = True, id_column: str | None = None,
                 label_column: str | None = None):
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise CompError(f"--workdir {root}: a file, not a folder; give a folder (it is created if missing)")
        # The labels CSV's columns, when their names are not found (remembered in comp.toml by source()).
        self.columns = {"id_column": id_column, "label_column": label_column}
        self.data = data  # as given; resolved lazily by data_dir
        self.skip_bad = skip_bad  # damaged images are skipped instead of stopping every command
        self.remember = remember  # an explicit data folder is written into comp.toml for later commands

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r}, data={None if self.data is None else str(self.data)!r})"

    # -- the layout -------------------------------------------------------------------------

    @property
    def folds(self) -> Path:
        return self.root / "folds"

    @property
    def cache(self) -> Path:
        return self.folds / "cache"

    @property
    def submissions(self) -> Path:
        return self.root / "submissions"

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    @property
    def project_file(self) -> Path:
        return self.root / PROJECT_FILE

    def run_dir(self, run_name: str) -> Path:
        return self.folds / run_name

    def submission_path(self, out: str | os.PathLike) -> Path:
        """A bare file name lands in submissions/; a path with a folder is taken as given."""
        out = Path(out)
        if out.parent == Path(".") and not out.is_absolute():
            return self.submissions / out
        check_out_folder(out, "or give a bare file name (it lands in submissions/)")
        return out

    # -- the data -----------------------------------------------------------------------------

    def read_project(self) -> dict:
        if not self.project_file.exists():
            return {}
        try:
            return tomllib.loads(self.project_file.read_text())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
            raise CompError(f"{self.project_file}: not valid TOML ({err}); fix or delete it") from None

    def remember_data(self, data_dir: Path) -> None:
        """Write comp.toml the first time a command is given --data, so later commands can be bare."""
        project = self.read_project()
        if project.get("data") == str(data_dir):
            return
        project["data"] = str(data_dir)
        # A JSON string is a valid TOML basic string: quotes, backslashes and control characters escaped.
        lines = [f"{key} = {json.dumps(value)}" for key, value in project.items() if isinstance(value, str)]
        write_text(self.project_file, "# written by comp: the data folder bare commands use\n" + "\n".join(lines) + "\n")

    @property
    def data_dir(self) -> Path:
        """The data folder: `data`, else $COMP_DATA, else comp.toml, else <root>/data."""
        return resolve_data_dir(self, None if self.data is None else str(self.data), self.remember)

    def source(self):
        """The data folder scanned and fingerprinted, nothing decoded yet (comp.data.Source):
        `.fingerprint`, and `.load(image_size, resize, limit)` for the images."""
        from .data import open_source

        data_dir = self.data_dir
        self.use_columns()
        return open_source(data_dir, self.cache, skip_bad=self.skip_bad)

    def use_columns(self) -> None:
        """The labels CSV's columns given here, else remembered in comp.toml, put in the environment
        (COMP_ID_COLUMN, COMP_LABEL_COLUMN) where comp.data and the fold and trial children read them;
        columns given are remembered for the later bare commands."""
        given = {key: value for key, value in self.columns.items() if value}
        project = self.read_project() if self.project_file.exists() else {}
        if given and self.remember and any(project.get(key) != value for key, value in given.items()):
            project.update(given)
            lines = [f"{key} = {json.dumps(value)}" for key, value in project.items() if isinstance(value, str)]
            self.root.mkdir(parents=True, exist_ok=True)
            write_text(self.project_file, "# written by comp: the data folder bare commands use\n"
                       + "\n".join(lines) + "\n")
        for key, variable in (("id_column", "COMP_ID_COLUMN"), ("label_column", "COMP_LABEL_COLUMN")):
            value = given.get(key) or (project.get(key) if isinstance(project.get(key), str) else None)
            if value:
                os.environ[variable] = value

    def dataset(self, limit: int = 0, image_size="auto", resize: str = "squash"):
        """The decoded competition data at `image_size` (N, "HxW" or "auto"), images of another
        aspect fitted by `resize` (squash, crop, pad); cached per size under folds/cache/, read
        through a memory mapping; optionally a stratified subsample."""
        _check_size(image_size, resize)
        return self.source().load(image_size, resize, limit)

    def check(self, grid: str | os.PathLike | None = None, limit: int = 0, image_size="auto",
              resize: str = "squash") -> dict:
        """`comp data check`: every problem of the data (CompError if any is an error), then class
        counts, sizes, modes and duplicates, the disk and memory the chosen image size needs, and a
        sample grid PNG."""
        from .check import check_data

        _check_size(image_size, resize)
        self.data_dir  # noqa: B018 -- resolved (and remembered) before the columns, as source() does
        self.use_columns()
        return check_data(self, Path(grid) if grid else self.folds / "data_samples.png", limit, image_size, resize)

    # -- the stages -----------------------------------------------------------------------------

    def config(self, config=None, *, preset: str | None = None, **overrides):
        """The RunConfig `train` would use for these arguments (nothing is trained or written)."""
        from .train import resolve_config

        return resolve_config(self, self.source().fingerprint, config, overrides, preset)

    def train(self, config=None, *, folds="all", k: int | None = None, force: bool = False, resplit: bool = False,
              preset: str | None = None, isolate: bool | None = None, full: int = 0, **overrides):
        """K-fold training of one config: a RunConfig, a dict, a JSON file or recipe name, or None
        (the newest tune result on this data, else the model's defaults); keyword arguments override
        single fields (epochs=3, model="resnet"). `folds`: which folds to train now ("all", 0, [0, 2]);
        `k`: how many folds the split has (the config's `folds` field, default 5). `full=N`: instead
        of folds, N full-data fits (every train row, different seeds): ensemble submits their test
        predictions, scored and weighted by the folds' OOF predictions of the same run.
        Finished folds are kept unless `force`. -> Run."""
        from .data import apply_limit
        from .folds import parse_fold_selection
        from .train import resolve_config, split_for, train_run, warn_gpu_settings_on_cpu

        config = getattr(config, "best_config", config)  # a Study trains its best trial
        if k is not None:
            overrides["folds"] = k
        resolve_config(self, "", config, dict(overrides), preset, use_latest_best=False)  # refused before any write
        source = self.source()
        run_config = resolve_config(self, source.fingerprint, config, overrides, preset)
        warn_gpu_settings_on_cpu(run_config)
        dataset = source.load(run_config.image_size, run_config.resize)
        split = split_for(self, dataset, run_config, resplit)
        chosen = parse_fold_selection(folds if isinstance(folds, str) else ",".join(map(str, _as_list(folds))),
                                      split.k)
        return train_run(self, run_config, apply_limit(dataset, run_config.limit), split, chosen, force=force,
                         isolate=isolate, full_seeds=full)

    def tune(self, config=None, *, trials: int = 20, timeout: float | None = None, cv_folds: int = 1,
             k: int | None = None, pruner: str = "median", space=None, storage: str | None = None,
             study: str | None = None, heartbeat: int | None = None, isolate: bool | None = None, **overrides):
        """An Optuna search around `config` (as for train; keyword arguments given here are fixed,
        not searched). Trials score the first `cv_folds` folds of the k-fold split. Resumable: the
        same call continues the study. -> Study."""
        from .train import resolve_config
        from .tune import tune

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
        from .auto import run_auto

        return run_auto(self, time, out, force, started_at)

    def predict(self, run, tta: str | None = None, average: str = "probs") -> dict:
        """Re-predict a finished run with a TTA policy: val, test and OOF files; OOF scores per variant."""
        from .predict import repredict

        return repredict(self, self.run(run), tta, average)

    def label(self, run, images: str | os.PathLike, out: str | os.PathLike | None = None,
              tta: str | None = None, average: str = "probs"):
        """Label a folder of new images with a finished run: a CSV of file,label,confidence. -> its path."""
        from .predict import label_images

        if out is not None:
            check_out_folder(out)
        return label_images(self, self.run(run), Path(images), out, tta, average)

    def ensemble(self, runs=None, *, out: str | os.PathLike | None = None, method: str = "auto",
                 tta: str | None = None, average: str = "probs", force: bool = False,
                 allow_pretrained: bool = False, limit: int = 0):
        """Blend finished runs (Run objects or names; None: every run that fits) into a leaderboard CSV
        under submissions/, scored and weighted on out-of-fold rows. -> Submission (with .oof_interval
        and .gain_over_best: 95% bootstrap intervals of its OOF accuracy and of its gain over .best_run)."""
        from .ensemble import ensemble

        if out is not None:
            self.submission_path(out)  # a missing folder is refused before any run is read
        names = None if runs is None else [getattr(r, "name", r) for r in _as_list(runs)]
        return ensemble(self, names, out=out, method=method, tta=tta, average=average, force=force,
                        allow_pretrained=allow_pretrained, limit=limit)

    def run(self, name):
        """A run by name under folds/ (or a path, or a Run). -> Run."""
        from .runs import Run, load_run

        return name if isinstance(name, Run) else load_run(self, str(name))

    def runs(self):
        """The leaderboard of finished runs as a pandas DataFrame, best first, with error bars: ci_low/ci_high
        (95% bootstrap interval of the OOF accuracy with TTA) and gain/gain_low/gain_high (the paired
        interval of the difference from best_run, the best run on the same rows)."""
        from .report import leaderboard
        from .runs import finished_runs

        return leaderboard(finished_runs(self))

    def report(self, run=None, out: str | os.PathLike | None = None, mistakes: int | None = None) -> dict:
        """Leaderboard CSV, confusion matrix and confident mistakes (PNGs) under folds/report/."""
        from .report import report

        return report(self, run, Path(out) if out else None, mistakes)

    def score(self, submission, answers: str | os.PathLike | None = None) -> dict:
        """Accuracy of a submission CSV against an answers CSV (default: answers.csv in the data folder)."""
        from .submission import score_submission

        path = Path(getattr(submission, "path", submission))
        return score_submission(path, Path(answers) if answers else self.data_dir / "answers.csv")


def check_out_folder(out: str | os.PathLike, alternative: str = "") -> None:
    """An --out path's folder must exist: a typo must not create folders (at the file system's root, even)."""
    folder = Path(out).expanduser().parent
    if not folder.is_dir():
        raise CompError(f"--out {out}: {'not a folder' if folder.exists() else 'no such folder'}: {folder}; "
                        f"create it first{', ' + alternative if alternative else ''}")


def _check_size(image_size, resize: str) -> None:
    """--image-size and --resize refused before anything is written (comp.toml, the digest cache)."""
    from .config import check_field

    check_field("image_size", image_size, "options")
    check_field("resize", resize, "options")


def _as_list(value) -> list:
    return list(value) if isinstance(value, (list, tuple, set)) else [value]


def resolve_data_dir(workspace: Workspace, data_arg: str | None, remember: bool = True) -> Path:
    """--data, else $COMP_DATA, else comp.toml in the workdir, else ./data."""
    if data_arg:
        data_dir = Path(data_arg).expanduser().resolve()
        if not data_dir.is_dir():
            raise CompError(f"{data_arg}: no such folder; pass --data with the competition's unpacked download")
        if remember:
            workspace.root.mkdir(parents=True, exist_ok=True)
            workspace.remember_data(data_dir)
        return data_dir
    if os.environ.get(DATA_ENV):
        data_dir = Path(os.environ[DATA_ENV]).expanduser().resolve()
        if not data_dir.is_dir():
            raise CompError(f"${DATA_ENV}={os.environ[DATA_ENV]}: no such folder; fix the variable or pass --data")
        return data_dir
    remembered = workspace.read_project().get("data")
    if remembered:
        data_dir = Path(remembered)
        if not data_dir.is_dir():
            raise CompError(f"{workspace.project_file} names data = {remembered}, which is gone; pass --data DIR")
        return data_dir
    default = (workspace.root / "data").resolve()
    if default.is_dir():
        return default
    raise CompError(
        "no data folder: pass --data DIR, or set $COMP_DATA, or run once with --data so "
        f"{workspace.project_file} remembers it, or put the download in {default}"
    )
