"""Atomic writes: every artifact is written to a temp file in the same folder, then renamed.

A crash or Ctrl-C in the middle of a write leaves the old file (or no file), never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from comp.core.errors import CompError, one_line

# What reading a file cut short or corrupted raises (numpy, zipfile, h5py, json): reported as
# "damaged" with the fix, never as a traceback. h5py raises OSError/KeyError/ValueError.
DAMAGED_FILE_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


_UMASK = os.umask(0)
os.umask(_UMASK)


# Temp files are named `.<name>.tmp-<host>-<pid>-<random>[suffix]`: hidden, never ending in the
# target's extension unless a writer needs one (so `*.csv` never finds a half-written submission),
# and carrying their writer, so a later write in the same folder can remove the temps of writers
# that died (SIGKILL skips every `finally`) without touching a live process's.
TEMP_MARK = ".tmp-"
_TEMP_NAME = re.compile(r"^\..+" + re.escape(TEMP_MARK) + r"(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-[a-z0-9_]+")


def _host() -> str:
    """This machine's name in temp names: only letters and digits, so the name parses back."""
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's live process
    return True


def sweep_dead_temps(folder: Path) -> list[Path]:
    """Remove the temp files in `folder` whose writer (on this host) is no longer running.

    A reused pid keeps a dead writer's temp until the next sweep after that process ends:
    the safe side. Temps from other hosts (a shared disk) are left alone: their pids mean
    nothing here.
    """
    removed = []
    host = _host()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = _TEMP_NAME.match(entry.name)
        if not match or match["host"] != host or _alive(int(match["pid"])):
            continue
        with contextlib.suppress(OSError):  # a folder, or another process swept it first
            os.unlink(entry.path)
            removed.append(Path(entry.path))
    return removed


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds.

    `suffix` is for writers that insist on an extension (Keras wants `.keras`, `.weights.h5`,
    numpy appends `.npy` when it is missing); without it the temp name has none.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_dead_temps(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}{TEMP_MARK}{_host()}-{os.getpid()}-",
                               suffix=suffix)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes 0600; the artifact gets normal permissions
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | os.PathLike, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike):
    return json.loads(Path(path).read_text())


def save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    with atomic_path(path, suffix=".npy") as tmp:
        np.save(tmp, array)


def load_npy(path: str | os.PathLike, fix: str) -> np.ndarray:
    """An array written by save_npy; a missing or damaged file is a CompError naming it and `fix`."""
    path = Path(path)
    if not path.exists():
        raise CompError(f"{path}: missing; {fix}")
    try:
        return np.load(path, allow_pickle=False)
    except DAMAGED_FILE_ERRORS as err:
        raise CompError(f"{path}: damaged ({one_line(err, 160)}); {fix}") from err


def save_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame without its index, atomically."""
    with atomic_path(path) as tmp:  # no .csv on the temp: a half-written file never looks like a CSV
        frame.to_csv(tmp, index=False)


def save_figure(path: str | os.PathLike, figure) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        figure.savefig(tmp, dpi=110, bbox_inches="tight")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def remove_tree(path: str | os.PathLike, inside: str | os.PathLike) -> None:
    """shutil.rmtree, refused unless `path` lies strictly inside `inside` (a run's own folder under folds/).

    Names are validated before they become paths; this is the last guard that a delete never
    leaves the workdir, whatever a name or a link resolves to.
    """
    import shutil

    target, root = Path(path).resolve(), Path(inside).resolve()
    if target == root or root not in target.parents:
        raise AssertionError(f"refusing to delete {target}: not inside {root}")
    shutil.rmtree(target, ignore_errors=True)
