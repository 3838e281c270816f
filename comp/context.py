"""What every command derives from its arguments: the workspace and the dataset."""

from __future__ import annotations

import argparse
import contextlib
import os
from pathlib import Path

from .data import Dataset, load_dataset
from .workspace import Workspace, resolve_data_dir

BACKENDS = ("tensorflow", "jax", "torch")


def add_global_options(parser: argparse.ArgumentParser, suppress: bool = False) -> None:
    """Options every command takes, before or after the command name."""
    default = (lambda value: argparse.SUPPRESS) if suppress else (lambda value: value)
    group = parser.add_argument_group("global options")
    group.add_argument("--workdir", default=default("."), help="where folds/ and submissions/ live (default: .)")
    group.add_argument("--seed", type=int, default=default(None), help="random seed (default: the run config's, 42)")
    group.add_argument("--backend", choices=BACKENDS, default=default(None),
                       help="Keras backend (default: $KERAS_BACKEND, else tensorflow)")
    group.add_argument("--quiet", action="store_true", default=default(False), help="print only results and warnings")


def add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data options")
    group.add_argument("--data", help="competition folder (default: $COMP_DATA, else comp.toml, else ./data)")
    group.add_argument("--limit", type=int, default=0,
                       help="use a deterministic stratified subsample of N train images")
    group.add_argument("--skip-bad", action="store_true", help="skip damaged images instead of stopping")


def set_backend(backend: str | None) -> str:
    """Choose the Keras backend; must run before anything imports keras."""
    backend = backend or os.environ.get("KERAS_BACKEND") or "tensorflow"
    os.environ["KERAS_BACKEND"] = backend
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TF's C++ start-up chatter hides our output
    return backend


@contextlib.contextmanager
def _stderr_to_devnull():
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def import_keras():
    """Import keras for the chosen backend. TensorFlow's C++ layer prints start-up lines
    (oneDNN, absl) straight to file descriptor 2, past TF_CPP_MIN_LOG_LEVEL, so its import runs
    with fd 2 pointed at /dev/null; Python exceptions still surface."""
    if os.environ.get("KERAS_BACKEND") == "tensorflow":
        try:
            with _stderr_to_devnull():
                import tensorflow  # noqa: F401
        except ImportError:
            pass  # keras reports the missing backend itself, with its own message
    import keras

    return keras


def accelerator() -> str | None:
    """The GPU the chosen backend will train on, by name; None when it runs on the CPU."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        device = jax.devices()[0]
        return None if device.platform == "cpu" else str(device.device_kind)
    if backend == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    return gpus[0].name if gpus else None


def workspace_from(args) -> Workspace:
    return Workspace(Path(args.workdir).expanduser().resolve())


def data_dir_from(args) -> Path:
    return resolve_data_dir(workspace_from(args), getattr(args, "data", None))


def dataset_from(args, limit: int | None = None) -> Dataset:
    workspace = workspace_from(args)
    return load_dataset(
        data_dir_from(args),
        workspace.cache,
        limit=getattr(args, "limit", 0) if limit is None else limit,
        skip_bad=getattr(args, "skip_bad", False),
    )
