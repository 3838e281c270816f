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


# CPU features with native bfloat16 arithmetic (Linux /proc/cpuinfo flag names): AVX512-BF16 (AMD
# Zen 4+, Intel Cooper/Sapphire Lake) and AMX (Intel Sapphire Rapids+). Without them TensorFlow
# emulates bfloat16 and convolutions run slower than in float32.
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_bfloat16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bfloat16 natively (False where the flags cannot be read)."""
    try:
        with open(cpuinfo) as file:
            flags = next((line.split(":", 1)[1].split() for line in file if line.startswith("flags")), [])
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def resolve_precision(precision: str) -> str:
    """RunConfig.precision as trained: "auto" is bfloat16 on an accelerator or a CPU with native
    bfloat16 (bench/RESULTS.md measured it on this project's 2-core CPU), float32 elsewhere."""
    if precision != "auto":
        return precision
    return "bfloat16" if accelerator() or cpu_has_bfloat16() else "float32"
