"""The one exception type that reaches the user as a single line and exit code 2."""

from pathlib import Path


class CompError(Exception):
    """Bad input or a refused action. The message names the file and the fix.

    The CLI prints it as one line (no traceback) and exits with status 2.
    """


def one_line(message, limit: int | None = None) -> str:
    """Text or an exception on one line: every run of whitespace, newlines included, becomes a space."""
    text = " ".join(str(message).split())
    return text if limit is None or len(text) <= limit else text[:limit - 3] + "..."


def retrain_fold_fix(run_dir: Path, fold: int) -> str:
    """The fix for a fold whose files are missing or damaged: its run's own config.json retrains
    it with the very settings (a bare `--name RUN` would be refused as other settings)."""
    return f"retrain fold {fold}: comp train --config {run_dir}/config.json --fold {fold} --force"
