"""The Keras backend: chosen before keras is first imported, imported quietly, and its accelerator."""

from __future__ import annotations

import contextlib
import os

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
