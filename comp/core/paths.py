"""The workdir: its layout (folds/, cache, submissions/, studies/, comp.toml) and where its data is.
Every stage takes a `Workdir`; nothing else invents a workdir folder.

    <root>/comp.toml          remembers the data folder the first `--data` named, and the
                              competition's metric `--metric` named (comp.core.metrics)
    <root>/folds/             split, cache, runs and studies of the Optuna search
    <root>/submissions/       leaderboard CSVs and their index
    <root>/studies/           the transfer-learning track (never feeds submissions)
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import tomllib

from comp.core.errors import CompError
from comp.core.fileio import write_text
from comp.core.metrics import get_metric

PROJECT_FILE = "comp.toml"
DATA_ENV = "COMP_DATA"
DEFAULT_METRIC = "accuracy"  # what every stage scored before the metric could be chosen


class Workdir:
    """A workdir (`root`), its layout, and the competition data it works on (`data`, else remembered or
    found). Stages take this paths object; `comp.Workspace` adds the verbs."""

    def __init__(self, root: str | os.PathLike = ".", data: str | os.PathLike | None = None, *,
                 skip_bad: bool = False, remember: bool = True, id_column: str | None = None,
                 label_column: str | None = None, labels_from: str | None = None, metric: str | None = None):
        self.root = Path(root).expanduser().resolve()
        if self.root.exists() and not self.root.is_dir():
            raise CompError(f"--workdir {root}: a file, not a folder; give a folder (it is created if missing)")
        # The labels CSV's columns, when their names are not found, and where the labels come from
        # (csv, name, name:REGEX: comp.data.sources.labels_from); remembered in comp.toml by use_columns().
        self.columns = {"id_column": id_column, "label_column": label_column, "labels_from": labels_from}
        self.data = data  # as given; resolved lazily by data_dir
        if metric is not None:
            get_metric(metric)  # an unknown name is refused at once, listing the valid ones
        self.metric_arg = metric  # as given; resolved lazily by `metric` (remembered in comp.toml)
        self.skip_bad = skip_bad  # damaged images are skipped instead of stopping every command
        self.remember = remember  # an explicit data folder is written into comp.toml for later commands

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, data={None if self.data is None else str(self.data)!r})"

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
        self.remember_value("data", str(data_dir))

    def remember_value(self, key: str, value: str) -> None:
        """One string setting of comp.toml (data, metric), the others kept."""
        project = self.read_project()
        if project.get(key) == value:
            return
        project[key] = value
        # A JSON string is a valid TOML basic string: quotes, backslashes and control characters escaped.
        lines = [f"{key} = {json.dumps(value)}" for key, value in project.items() if isinstance(value, str)]
        write_text(self.project_file, "# written by comp: the settings bare commands use (data folder, metric, labels columns)\n"
                   + "\n".join(lines) + "\n")

    @property
    def metric(self) -> str:
        """The competition's metric: `metric`, else comp.toml's, else accuracy."""
        return resolve_metric(self, self.metric_arg, self.remember)

    def use_columns(self) -> None:
        """The labels CSV's columns and the labels' source given here, else remembered in comp.toml, put in
        the environment (COMP_ID_COLUMN, COMP_LABEL_COLUMN, COMP_LABELS_FROM) where comp.data.sources and the
        fold and trial children read them; those given are remembered for the later bare commands."""
        given = {key: value for key, value in self.columns.items() if value}
        project = self.read_project() if self.project_file.exists() else {}
        if given and self.remember and any(project.get(key) != value for key, value in given.items()):
            self.root.mkdir(parents=True, exist_ok=True)
            for key, value in given.items():
                self.remember_value(key, value)
        for key, variable in (("id_column", "COMP_ID_COLUMN"), ("label_column", "COMP_LABEL_COLUMN"),
                              ("labels_from", "COMP_LABELS_FROM")):
            value = given.get(key) or (project.get(key) if isinstance(project.get(key), str) else None)
            if value:
                os.environ[variable] = value

    @property
    def data_dir(self) -> Path:
        """The data folder: `data`, else $COMP_DATA, else comp.toml, else <root>/data."""
        return resolve_data_dir(self, None if self.data is None else str(self.data), self.remember)


def check_out_folder(out: str | os.PathLike, alternative: str = "") -> None:
    """An --out path's folder must exist: a typo must not create folders (at the file system's root, even)."""
    folder = Path(out).expanduser().parent
    if not folder.is_dir():
        raise CompError(f"--out {out}: {'not a folder' if folder.exists() else 'no such folder'}: {folder}; "
                        f"create it first{', ' + alternative if alternative else ''}")


def resolve_data_dir(workspace: Workdir, data_arg: str | None, remember: bool = True) -> Path:
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


def resolve_metric(workspace: Workdir, metric_arg: str | None, remember: bool = True) -> str:
    """--metric (remembered in comp.toml), else comp.toml's metric, else accuracy; always a registry name."""
    if metric_arg:
        name = get_metric(metric_arg).name
        if remember:
            workspace.root.mkdir(parents=True, exist_ok=True)
            workspace.remember_value("metric", name)
        return name
    remembered = workspace.read_project().get("metric")
    if remembered:
        if not isinstance(remembered, str):
            raise CompError(f"{workspace.project_file}: metric must be a name like \"f1_macro\"; fix or delete it")
        try:
            return get_metric(remembered).name
        except CompError as err:
            raise CompError(f"{workspace.project_file}: {err}") from None
    return DEFAULT_METRIC
