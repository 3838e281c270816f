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
INTERRUPTED_EXIT = 130  # what comp exits with on Ctrl-C (128 + SIGINT, the shell's convention)
TRIAL_FAILED_EXIT = 3  # a tune worker whose trial failed: said, and the study goes on


def is_worker() -> bool:
    """True in a child started by run_child: it trains in-process and leaves reporting to its parent."""
    return bool(os.environ.get(WORKER_ENV))


def should_isolate() -> bool:
    import keras

    return keras.backend.backend() == "tensorflow" and not is_worker() and not os.environ.get(OFF_ENV)


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
    """Run `comp <argv> <extra>` as a worker (its output goes to ours).

    Ctrl-C in the worker is Ctrl-C here, and any other failure stops this command with the
    worker's exit code (the worker already said why). Returns 0, or TRIAL_FAILED_EXIT.
    """
    env = {**os.environ, WORKER_ENV: "1"}
    code = subprocess.run([sys.executable, "-m", "comp", *argv, *extra], env=env).returncode
    if code == INTERRUPTED_EXIT:
        raise KeyboardInterrupt
    if code not in (0, TRIAL_FAILED_EXIT):
        raise SystemExit(code)
    return code
