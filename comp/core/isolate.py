"""One process per fold or trial on TensorFlow: the way to keep memory flat there.

TensorFlow keeps a few MB of every fit() even after keras.backend.clear_session() (measured
here: 4-14 MB per fold, growing without bound over a 50-trial study), while JAX returns it.
So on TensorFlow, `comp train` runs each fold and `comp tune` each trial in a child process:
`call_in_child(function, *args)` starts a fresh interpreter, calls the module-level `function`
there on the pickled arguments, and returns its result -- one task per child, as
`ProcessPoolExecutor(mp_context=spawn, max_tasks_per_child=1)` would. It is a plain subprocess
rather than multiprocessing's spawn because spawn re-runs the parent's main script in the child
(a notebook user's script without an `if __name__ == "__main__"` guard would train again in every
child), and because a child killed by a signal (the OOM killer's SIGKILL) can then be named with
its signal. The child runs isolated (`python -I`) with the parent's own sys.path: it imports the
`comp` the parent imported, never a `comp` folder in the directory it was started from. It dies
with its parent (kill -9 included), so a killed run never leaves an orphan training on.
"""

from __future__ import annotations

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import traceback
from typing import Callable

from comp.core.errors import CompError, one_line

OFF_ENV = "COMP_NO_ISOLATE"  # set to 1 to keep everything in one process (tests, profiling)
INTERRUPTED_EXIT = 130  # what comp exits with on Ctrl-C (128 + SIGINT, the shell's convention)

_parent_connection = None  # in a child: where tell_parent sends


class ChildDied(Exception):
    """A child process ended without a result: killed by a signal, or crashed with a traceback."""

    def __init__(self, what: str, reason: str):
        super().__init__(f"{what}: {reason}")
        self.what, self.reason = what, reason


def in_notebook() -> bool:
    """Jupyter or IPython: a child's output would not reach the notebook, so work stays in-process."""
    return "ipykernel" in sys.modules or hasattr(sys, "ps1")


def isolate_by_default() -> bool:
    """Children on TensorFlow (its memory grows per fit); not on JAX or torch, and not in notebooks."""
    import keras

    return keras.backend.backend() == "tensorflow" and not os.environ.get(OFF_ENV) and not in_notebook()


def die_with_parent() -> None:
    """Ask Linux to kill this process when its parent dies (prctl PR_SET_PDEATHSIG)."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes

    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except OSError:
        pass  # no libc by that name: the child then outlives a killed parent, nothing worse
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def tell_parent(message) -> None:
    """From inside a child: hand `message` to the parent's `on_message` (no-op in-process)."""
    if _parent_connection is not None:
        _parent_connection.send(("message", message))


def crash_log_path(log_dir, what: str):
    """Where a child writes the traceback of a failure: <log_dir>/crash-<what>.log ("fold 2" -> crash-fold-2.log)."""
    from pathlib import Path

    return Path(log_dir) / f"crash-{'-'.join(what.split())}.log"


def _write_traceback(log_path) -> str:
    """Write the current exception's traceback to `log_path` (else to the temp folder); where it went, as text."""
    import tempfile
    from pathlib import Path

    text = traceback.format_exc()
    for path in (log_path, Path(tempfile.gettempdir()) / log_path.name) if log_path else ():
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            return f"traceback in {path}"
        except OSError:
            continue
    return "the traceback could not be written (no space left?)"


def failure_line(err: BaseException, where: str) -> tuple[str, str]:
    """(kind, one line with the fix) for a failure inside a child: "error" (a CompError in the parent:
    the disk is full, nothing else can go on) or "crashed" (this fold or trial failed; the others go on)."""
    import errno

    said = one_line(f"{type(err).__name__}: {err}", 300)
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return "error", (f"no space left on the device ({err.filename or 'a file being written'}); everything written "
                         f"before is intact; free some space and rerun the same command to continue ({where})")
    if isinstance(err, MemoryError):
        return "crashed", (f"out of memory ({said}); try a smaller --batch-size, --width or --image-size, and rerun "
                           f"the same command ({where})")
    if isinstance(err, OSError):
        return "crashed", f"{said}; check that file or folder, then rerun the same command ({where})"
    return "crashed", f"{said}; rerun the same command, and report it with the log if it fails again ({where})"


def _child_entry(write_fd: int) -> None:
    """The child's side: read (function, args, quiet, log path) from stdin, run it, send the outcome to the parent.

    Every failure reaches the parent as one line (its traceback goes to the log file); Ctrl-C ends the
    child quietly, and a parent that stopped listening is no error.
    """
    global _parent_connection
    die_with_parent()
    pipe = os.fdopen(write_fd, "wb")

    class Connection:
        def send(self, message) -> None:
            try:
                pickle.dump(message, pipe)
                pipe.flush()
            except (BrokenPipeError, OSError):
                pass  # the parent is gone or stopped listening (Ctrl-C): nobody to tell

    _parent_connection = Connection()
    log_path = None
    try:
        from comp.core.backend import import_keras
        from comp.core.console import set_quiet

        function, args, quiet, log_path = pickle.load(sys.stdin.buffer)
        set_quiet(quiet)
        import_keras()
        _parent_connection.send(("result", function(*args)))
    except CompError as err:
        _parent_connection.send(("error", one_line(err)))
    except KeyboardInterrupt:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C while ending: no traceback either
        _parent_connection.send(("interrupted", None))
    except BaseException as err:  # noqa: BLE001 -- disk full, out of memory, a bug: one line, the traceback logged
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _parent_connection.send(failure_line(err, _write_traceback(log_path)))
    finally:
        try:
            pipe.close()
        except OSError:
            pass


def _signal_name(exitcode: int | None) -> str:
    if exitcode is None:
        return "no exit code"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        hint = " (the out-of-memory killer sends this; try a smaller batch or model)" if -exitcode == signal.SIGKILL else ""
        return f"killed by {name}{hint}"
    return f"exited with code {exitcode} without a result"


def call_in_child(function: Callable, *args, what: str, on_message: Callable | None = None, log_dir=None):
    """`function(*args)` in a fresh child interpreter; its result, or its CompError raised here.

    `what` names the task in messages ("fold 2"). A child killed by a signal or crashing raises
    ChildDied; Ctrl-C (which reaches the child too) raises KeyboardInterrupt once the child ended.
    `on_message` receives what the child sends with `tell_parent`. A failure's traceback goes to
    `crash_log_path(log_dir, what)` (default: the temp folder), named in the one line raised here.
    """
    from comp.core.console import is_quiet

    read_fd, write_fd = os.pipe()
    read_fd_copy = os.dup(read_fd)  # survives the reader's close on Ctrl-C: the child's last words are drained
    code = f"import sys; sys.path[:] = {sys.path!r}; from comp.core.isolate import _child_entry; _child_entry({write_fd})"
    process = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE, pass_fds=(write_fd,))
    os.close(write_fd)  # the child holds the only writing end: EOF here means it is gone
    outcome = None
    try:
        with os.fdopen(read_fd, "rb") as pipe:
            try:
                pickle.dump((function, args, is_quiet(), crash_log_path(log_dir, what) if log_dir else
                             crash_log_path(tempfile.gettempdir(), f"comp-{what}")), process.stdin)
                process.stdin.close()
            except BrokenPipeError:
                pass  # the child died at start; its exit code says how
            while True:
                try:
                    kind, payload = pickle.load(pipe)
                except EOFError:
                    break
                if kind == "message":
                    if on_message:
                        on_message(payload)
                else:
                    outcome = (kind, payload)
    except KeyboardInterrupt:
        # The child got the same Ctrl-C; it re-queues or saves what it must, then ends. Its last
        # words are read (not cut off by a closed pipe), a second Ctrl-C stops waiting for them.
        _drain(read_fd_copy)
        process.wait()
        raise
    os.close(read_fd_copy)
    process.wait()
    if outcome is None:
        raise ChildDied(what, _signal_name(process.returncode))
    kind, payload = outcome
    if kind == "result":
        return payload
    if kind == "error":
        raise CompError(payload)
    if kind == "interrupted":
        raise KeyboardInterrupt
    raise ChildDied(what, f"failed: {payload}")


def _drain(fd: int) -> None:
    """Read a pipe to its end (the child closed it), so the child's last writes never meet a closed pipe."""
    try:
        while os.read(fd, 65536):
            pass
    except (KeyboardInterrupt, OSError):
        pass
    finally:
        os.close(fd)
