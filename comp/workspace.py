"""Where things live: the workdir layout and how the data folder is found.

    <workdir>/comp.toml          remembers the data folder the first `--data` named
    <workdir>/folds/             split, cache, runs and studies of the Optuna search
    <workdir>/submissions/       leaderboard CSVs and their index
    <workdir>/studies/           the transfer-learning track (never feeds submissions)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import CompError
from .fileio import write_text

PROJECT_FILE = "comp.toml"
DATA_ENV = "COMP_DATA"


@dataclass(frozen=True)
class Workspace:
    root: Path

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
        return out

    # -- the project file -------------------------------------------------------------

    def read_project(self) -> dict:
        if not self.project_file.exists():
            return {}
        try:
            return tomllib.loads(self.project_file.read_text())
        except tomllib.TOMLDecodeError as err:
            raise CompError(f"{self.project_file}: not valid TOML ({err}); fix or delete it") from None

    def remember_data(self, data_dir: Path) -> None:
        """Write comp.toml the first time a command is given --data, so later commands can be bare."""
        project = self.read_project()
        if project.get("data") == str(data_dir):
            return
        project["data"] = str(data_dir)
        lines = [f'{key} = "{value}"' for key, value in project.items() if isinstance(value, str)]
        write_text(self.project_file, "# written by comp: the data folder bare commands use\n" + "\n".join(lines) + "\n")


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
