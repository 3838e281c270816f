"""One process per fold or trial on TensorFlow: the way to keep memory flat there.

TensorFlow keeps a few MB of every fit() even after keras.backend.clear_session() (measured
here: 4-14 MB per fold, growing without bound over a 50-trial study), while JAX returns it.
So on TensorFlow, `comp train` runs each fold and `comp tune` each trial as a child process of
the same command (`comp <same arguments> --fold K` / `--trials 1`), which costs a few seconds of
start-up per fold or trial. A child dies with its parent (kill -9 included), so a killed run
never leaves an orphan training on.
"""

from __future__ import annotations

import os
import subprocess
import sys

WORKER_ENV = "COMP_WORKER"  # set in children: they run in-process
OFF_ENV = "COMP_NO_ISOLATE"  # set to 1 to keep everything in one process (e.g. for profiling)


def should_isolate() -> bool:
    import keras

    return keras.backend.backend() == "tensorflow" and not os.environ.get(WORKER_ENV) \
        and not os.environ.get(OFF_ENV)


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # no libc by that name: the child then outlives a killed parent, nothing worse
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def run_child(argv: list[str], *extra: str) -> int:
    """Run `comp <argv> <extra>` as a worker; returns its exit code (output goes to ours)."""
    env = {**os.environ, WORKER_ENV: "1"}
    return subprocess.run([sys.executable, "-m", "comp", *argv, *extra], env=env).returncode
