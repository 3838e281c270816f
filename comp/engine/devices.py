"""Data parallel training on every local device (JAX): the devices a run uses and its distribution.

With more than one device, one fold trains over a 1-D DeviceMesh with keras.distribution's
DataParallel: the variables (the net, the optimizer, the fold's rows in the FoldStore) are
replicated on every device, every global batch is split along its first axis, and XLA's
all-reduce makes the gradients, the BatchNorm statistics and the metrics those of the global
batch. The batch size and the learning rate stay as configured: the global batch is the run's.
On one device (every CPU unless told otherwise) nothing changes.

Several processes, one run (one per host, started with Keras's KERAS_DISTRIBUTION_JOB_ADDRESSES /
NUM_PROCESSES / PROCESS_ID): initialize_processes joins them through JAX's distributed runtime
(gloo collectives on CPUs) before any JAX computation; the mesh then spans every process's devices,
each process feeds its own block of every global batch (process_rows), and only process 0 writes
(is_writer).

keras is imported inside the functions: comp.engine.inference imports this module, and commands
that never train (data check) must not start TensorFlow.
"""

from __future__ import annotations

import os
import re

from comp.core.console import info
from comp.core.errors import CompError

PROCESS_VARIABLES = ("KERAS_DISTRIBUTION_JOB_ADDRESSES", "KERAS_DISTRIBUTION_NUM_PROCESSES",
                     "KERAS_DISTRIBUTION_PROCESS_ID")
# Seconds without a heartbeat after which the runtime declares a process dead and stops the others
# (JAX's default is 100; a killed peer should stop the run in well under a minute).
HEARTBEAT_TIMEOUT_S = 20


def process_settings() -> tuple[str, int, int] | None:
    """(coordinator address, processes, this process's id) from Keras's variables; None when unset
    or one process. The coordinator is the first of the comma-separated job addresses."""
    values = [os.environ.get(name, "").strip() for name in PROCESS_VARIABLES]
    if not any(values):
        return None
    if not all(values):
        missing = [name for name, value in zip(PROCESS_VARIABLES, values) if not value]
        raise CompError(f"several processes need all of {', '.join(PROCESS_VARIABLES)}; {', '.join(missing)} unset")
    addresses, count, index = values
    if not (count.isdigit() and index.isdigit() and int(index) < int(count)):
        raise CompError(f"KERAS_DISTRIBUTION_NUM_PROCESSES={count}, KERAS_DISTRIBUTION_PROCESS_ID={index}: expected "
                        "whole numbers with 0 <= process id < processes")
    return (addresses.split(",")[0], int(count), int(index)) if int(count) > 1 else None


def initialize_processes() -> None:
    """Join the run's other processes (JAX's distributed runtime) when Keras's variables name
    several; nothing otherwise, or when joined already. Must run before any JAX computation."""
    settings = process_settings()
    if settings is None:
        return
    import keras

    if keras.backend.backend() != "jax":
        raise CompError("several processes (KERAS_DISTRIBUTION_*): one run across processes needs the JAX backend "
                        "(KERAS_BACKEND=jax)")
    import jax

    if jax.distributed.is_initialized():
        return
    coordinator, count, index = settings
    if os.environ.get("JAX_PLATFORMS", "").split(",")[0] == "cpu":
        jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPUs all-reduce over TCP
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=count, process_id=index,
                                   heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_S)
    except RuntimeError as error:
        raise CompError(f"process {index} of {count}: could not join the run at {coordinator} "
                        f"({str(error).splitlines()[0][:200]}); start every process with the same addresses") from None


def process_count() -> int:
    """Processes of this run (1 unless initialize_processes joined several)."""
    import keras

    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count() if jax.distributed.is_initialized() else 1


def is_writer() -> bool:
    """Whether this process writes the run's files (folder, checkpoints, predictions, console):
    the only one, or process 0 of several."""
    if process_count() == 1:
        return True
    import jax

    return jax.process_index() == 0


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

    initialize_processes()
    devices = jax.local_devices()
    several = process_count() > 1
    if requested == "all":
        count = len(devices) if several or devices[0].platform != "cpu" else 1
    else:
        count = int(requested)
    if count > len(devices):
        raise CompError(f"--devices {count}: this machine has {len(devices)} {devices[0].platform} device(s); "
                        f"use --devices {len(devices)} or all")
    if not several:
        return devices[:count]
    # Several processes: the first `count` devices of every process, in process order, so that
    # process p's devices hold block p of every global batch (process_rows).
    return [device for process in range(jax.process_count())
            for device in sorted((d for d in jax.devices() if d.process_index == process), key=lambda d: d.id)[:count]]


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
    # Not Keras's auto-sharding (tf.data only): with several processes RowBatches feeds each
    # process's own block of every batch (process_rows).
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices, auto_shard_dataset=False))


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


def process_rows(rows):
    """This process's block of a global batch (its first axis): what it feeds, since Keras's JAX
    trainer assembles the global batch from every process's block (make_array_from_process_local_data).
    The whole batch with one process."""
    count = process_count()
    if count == 1:
        return rows
    import jax

    block = len(rows) // count
    return rows[jax.process_index() * block:(jax.process_index() + 1) * block]


def to_host(array):
    """A (possibly sharded across processes) array as one numpy array, in every process."""
    import numpy as np

    if process_count() > 1 and not getattr(array, "is_fully_addressable", True):
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(array, tiled=True))
    return np.asarray(array)


def global_batch(block):
    """Several processes: the global batch (a jax.Array over the mesh) of which `block` (numpy)
    is this process's part, as Keras's JAX trainer assembles fit's batches."""
    import jax
    import keras

    layout = keras.distribution.distribution().get_data_layout(block.shape).backend_layout
    return jax.make_array_from_process_local_data(layout, block)


def check_same_everywhere(value: int, what: str) -> None:
    """Several processes: refuse to go on unless every process has process 0's `value` (the fold, its
    resumed epoch: the others read process 0's checkpoint from their copy of its run folder)."""
    if process_count() == 1:
        return
    import jax
    import numpy as np
    from jax.experimental import multihost_utils

    first = int(multihost_utils.broadcast_one_to_all(np.int32(value)))
    if first != value:
        exit_without_shutdown()  # process 0 then stops with its own line at the next collective
        raise CompError(f"process {jax.process_index()} of {jax.process_count()}: {what} {value}, process 0's {first}; "
                        "give every process process 0's run folder (folds/<run>/, copied) and rerun them all")


# What a failed collective's error says (a gloo all-reduce or all-gather whose peer is gone, or the
# runtime's lost heartbeat); JAX raises them as RuntimeError or ValueError.
COLLECTIVE_FAILURES = ("gloo", "connection reset", "connection closed", "heartbeat", "unavailable",
                       "error dispatching computation")


def is_peer_failure(error: Exception) -> bool:
    """Whether `error`, raised while several processes train, is a lost process rather than a bug."""
    return process_count() > 1 and any(word in str(error).lower() for word in COLLECTIVE_FAILURES)


def exit_without_shutdown() -> None:
    """Make this process exit (status 2, as for any CompError) without JAX's shutdown barrier, which
    waits minutes for every other process and then aborts with a stack trace."""
    import atexit

    atexit.register(os._exit, 2)  # runs before JAX's own exit hook (registered earlier)


def peer_stopped(error: Exception) -> CompError:
    """Several processes: the one line for a run whose collective failed (a process was killed or
    lost), as a CompError to raise. This process then exits without JAX's shutdown barrier, which
    would wait minutes for the lost process and then abort with a stack trace."""
    import jax

    exit_without_shutdown()
    first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    reason = re.sub(r"^(\w+: )?(Error dispatching computation: )+", "", first_line)[:160]  # XLA repeats it
    return CompError(f"process {jax.process_index()} of {jax.process_count()}: another process of the run stopped "
                     f"({reason}); rerun every process to resume from the last checkpoint")
