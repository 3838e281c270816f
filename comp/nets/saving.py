"""Saved nets read back: a .keras file loaded with comp's own layers registered, or a one-line error."""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

from comp.core.errors import CompError, one_line
from comp.core.fileio import DAMAGED_FILE_ERRORS


def load_keras_model(path: str | os.PathLike, fix: str):
    """A saved .keras model (uncompiled); a missing or damaged file is a CompError naming it and `fix`."""
    import keras

    from comp.nets import layers  # noqa: F401  (registers comp's own layers; imports keras, so here)

    path = Path(path)
    if not path.exists():
        raise CompError(f"{path}: missing; {fix}")
    if not zipfile.is_zipfile(path):  # Keras would call a cut-short archive "File not found"
        raise CompError(f"{path}: damaged (not a complete .keras archive); {fix}")
    try:
        return keras.models.load_model(path, compile=False)
    except DAMAGED_FILE_ERRORS as err:
        raise CompError(f"{path}: damaged ({one_line(err, 160)}); {fix}") from err
