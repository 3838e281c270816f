"""Atomic writes: every artifact is written to a temp file in the same folder, then renamed.

A crash or Ctrl-C in the middle of a write leaves the old file (or no file), never half of one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import CompError, one_line

# What reading a file cut short or corrupted raises (numpy, zipfile, h5py, json): reported as
# "damaged" with the fix, never as a traceback. h5py raises OSError/KeyError/ValueError.
DAMAGED_FILE_ERRORS = (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile, zlib.error)


_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path beside `path`; rename it onto `path` only if the block succeeds.

    `suffix` keeps the extension some writers insist on (Keras wants `.keras`,
    `.weights.h5`, numpy appends `.npy` when it is missing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or "".join(path.suffixes))
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


def load_keras_model(path: str | os.PathLike, fix: str):
    """A saved .keras model (uncompiled); a missing or damaged file is a CompError naming it and `fix`."""
    import keras

    path = Path(path)
    if not path.exists():
        raise CompError(f"{path}: missing; {fix}")
    if not zipfile.is_zipfile(path):  # Keras would call a cut-short archive "File not found"
        raise CompError(f"{path}: damaged (not a complete .keras archive); {fix}")
    try:
        return keras.models.load_model(path, compile=False)
    except DAMAGED_FILE_ERRORS as err:
        raise CompError(f"{path}: damaged ({one_line(err, 160)}); {fix}") from err


def save_csv(path: str | os.PathLike, frame) -> None:
    """Write a pandas DataFrame without its index, atomically."""
    with atomic_path(path, suffix=".csv") as tmp:
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
