"""Data parallel training on every local device (JAX): the devices a run uses and its distribution.

With more than one device, one fold trains over a 1-D DeviceMesh with keras.distribution's
DataParallel: the variables (the net, the optimizer, the fold's rows in the FoldStore) are
replicated on every device, every global batch is split along its first axis, and XLA's
all-reduce makes the gradients, the BatchNorm statistics and the metrics those of the global
batch. The batch size and the learning rate stay as configured: the global batch is the run's.
On one device (every CPU unless told otherwise) nothing changes.

keras is imported inside the functions: comp.engine.inference imports this module, and commands
that never train (data check) must not start TensorFlow.
"""

from __future__ import annotations

from comp.core.console import info
from comp.core.errors import CompError


def local_devices(requested: str) -> list:
    """The devices RunConfig.devices asks for: "all" (every accelerator; one device on a CPU) or
    the first N. On backends other than JAX: one (keras.distribution is JAX-only)."""
    import keras

    if keras.backend.backend() != "jax":
        if requested not in ("all", "1"):
            raise CompError(f"--devices {requested}: data-parallel training needs the JAX backend "
                            "(KERAS_BACKEND=jax, or comp's GPU default); use --devices 1 here")
        return [None]
    import jax

    devices = jax.local_devices()
    if requested == "all":
        return devices if devices[0].platform != "cpu" else devices[:1]
    count = int(requested)
    if count > len(devices):
        raise CompError(f"--devices {count}: this machine has {len(devices)} {devices[0].platform} device(s); "
                        f"use --devices {len(devices)} or all")
    return devices[:count]


def distribute(devices: list, batch_size: int) -> None:
    """Set (or clear) Keras's global distribution for a run of `batch_size` on `devices` (as
    local_devices gives them). Call after keras.backend.clear_session(), which forgets it."""
    import keras

    if len(devices) == 1:
        keras.distribution.set_distribution(None)
        return
    if batch_size % len(devices):
        raise CompError(f"batch size {batch_size} does not split over {len(devices)} devices; use a multiple "
                        f"of {len(devices)} (--batch-size) or --devices 1")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices))


def announce(devices: int, batch_size: int) -> None:
    info(f"data parallel over {devices} devices: global batch {batch_size} ({batch_size // devices} a device); "
         "learning rate and batch size as configured")


def data_parallel() -> int:
    """Devices of the distribution now set (1 without one)."""
    import keras

    distribution = keras.distribution.distribution()
    return 1 if distribution is None else int(distribution.device_mesh.devices.size)


def sharded(batch):
    """`batch` placed across the distribution's devices along its first axis (as is without one, or
    when its rows do not split evenly)."""
    import keras

    distribution = keras.distribution.distribution()
    if distribution is None or len(batch) % data_parallel():
        return batch
    return keras.distribution.distribute_tensor(batch, distribution.get_data_layout(batch.shape))
