"""Decoding image files into uint8 RGB arrays of one size, on every core.

One file (`decode_file`): PIL opens it, its EXIF orientation is applied, any mode becomes 8-bit
RGB (16-bit scaled, not clipped) and the image is fitted to the target size by a resize mode:

    squash  stretched to the size (the aspect ratio is lost)
    crop    scaled to cover the size, the middle cut out (the edges are lost)
    pad     scaled to fit inside the size, centred on black (nothing lost, some pixels wasted)

A JPEG at least twice the target size is decoded at a reduced scale (libjpeg's DCT scaling,
PIL's `draft`), several times faster than decoding it whole and shrinking it.

Many files (`decode_chunks`): chunks of files go to worker processes, which write each image
straight into its row of a memory-mapped .npy file and return one record per file; the caller
records each finished chunk, so an interrupted decode resumes with the chunks not yet done.
Processes, not threads: the Python between PIL's C calls holds the GIL (threads decoded 60,000
CIFAR JPEGs in 17 s on 2 cores, one process alone does ~5,000 a second). This module imports
only numpy, PIL and rich, so a worker starts in a fraction of a second.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable, Iterator, NamedTuple

import numpy as np

from comp.core.console import console, is_quiet
from comp.core.errors import CompError
from comp.core.isolate import die_with_parent

RESIZE_MODES = ("squash", "crop", "pad")
CHUNK_FILES = 256  # files per task: ~0.05 s of 32-px JPEGs, a few s of photos; the unit a resume redoes
IN_PROCESS_BELOW = 2_000  # fewer files are decoded in this process: starting workers costs more than it saves
WORKERS_ENV = "COMP_DECODE_WORKERS"  # worker processes (default: every core this process may use)
DRAFT_FACTOR = 2  # JPEGs at least this many times the target size are decoded at a reduced scale

# 16-bit grayscale as PIL names it; scaled to 8 bits instead of clipped (PIL's convert saturates them).
SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N"}
SIXTEEN_TO_EIGHT = 257  # 65535 / 255: maps 0..65535 exactly onto 0..255
EXIF_ORIENTATION = 0x0112  # the EXIF tag; values 2..8 mean the stored pixels must be flipped or turned
TURNED_SIDEWAYS = {5, 6, 7, 8}  # orientations that swap width and height


class Decoded(NamedTuple):
    array: np.ndarray | None  # (H,W,3) uint8 RGB, upright, at the target size; None when the file cannot be decoded
    mode: str | None  # the file's own PIL mode ("L", "RGBA", "I;16", "CMYK", ...)
    size: tuple[int, int] | None  # (width, height) after EXIF rotation, before resizing
    error: str | None
    rotated: bool = False  # turned or flipped by its EXIF orientation

    def record(self) -> list:
        """What the cache remembers of a file: [mode, height, width, rotated, error] (JSON-friendly)."""
        height, width = (self.size[1], self.size[0]) if self.size else (0, 0)
        return [self.mode, height, width, self.rotated, self.error]


# -- one file ------------------------------------------------------------------------------------


def _to_rgb(image):
    """An 8-bit RGB PIL image. PIL's own convert clips 16-bit values at 255, so those are scaled here."""
    from PIL import Image

    if image.mode in SIXTEEN_BIT_MODES or image.mode == "I":
        values = np.asarray(image).astype(np.float64)
        # Mode I holds 16-bit PNG/TIFF data too; values above 255 say the range is 16-bit.
        if image.mode in SIXTEEN_BIT_MODES or values.max(initial=0) > 255:
            values = values / SIXTEEN_TO_EIGHT
        gray = np.clip(np.rint(values), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=-1))
    return image if image.mode == "RGB" else image.convert("RGB")


def fit(image, target_hw: tuple[int, int], resize: str):
    """An RGB (or grayscale) PIL image at exactly `target_hw` (height, width), its aspect handled by `resize`."""
    from PIL import Image, ImageOps

    size = (target_hw[1], target_hw[0])  # PIL sizes are (width, height)
    if image.size == size:
        return image
    if resize == "crop":
        return ImageOps.fit(image, size, Image.BILINEAR)
    if resize == "pad":
        return ImageOps.pad(image, size, Image.BILINEAR, color=0)  # black in RGB and in L (pixel CSVs)
    return image.resize(size, Image.BILINEAR)  # Pillow's BILINEAR widens its support when shrinking: no aliasing


def _request_draft(image, orientation: int, target_hw: tuple[int, int]) -> None:
    """Ask a large JPEG to decode at 1/2, 1/4 or 1/8 scale, never below the target size."""
    if image.format != "JPEG":
        return
    height, width = target_hw
    if orientation in TURNED_SIDEWAYS:  # the stored pixels are turned: compare like with like
        height, width = width, height
    if image.size[0] >= DRAFT_FACTOR * width and image.size[1] >= DRAFT_FACTOR * height:
        image.draft(image.mode, (width, height))


def decode_file(path: Path, target_hw: tuple[int, int] | None = None, resize: str = "squash") -> Decoded:
    """One image file as upright 8-bit RGB, at `target_hw` (None: its own size)."""
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            mode = image.mode
            orientation = image.getexif().get(EXIF_ORIENTATION, 1)
            rotated = orientation in range(2, 9)
            full_size = image.size if orientation not in TURNED_SIDEWAYS else image.size[::-1]
            if target_hw is not None:
                _request_draft(image, orientation, target_hw)
            image.load()
            rgb = _to_rgb(ImageOps.exif_transpose(image) if rotated else image)
            if target_hw is not None:
                rgb = fit(rgb, target_hw, resize)
            return Decoded(np.asarray(rgb, dtype=np.uint8), mode, full_size, None, rotated)
    except Exception as err:  # PIL raises many types for a damaged file; all mean the same here
        return Decoded(None, None, None, f"{type(err).__name__}: {err}")


def probe_file(path: Path) -> tuple[int, int] | None:
    """(height, width) after EXIF rotation, from the header alone; None when it cannot be read."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            turned = image.getexif().get(EXIF_ORIENTATION, 1) in TURNED_SIDEWAYS
            width, height = image.size[::-1] if turned else image.size
            return height, width
    except Exception:  # noqa: BLE001 -- a damaged file; decoding it reports why
        return None


# -- a chunk of files (what one worker task does) ---------------------------------------------------


def open_rows(out: str | os.PathLike | np.ndarray | None):
    """Where decoded images go: an array as given, or a .npy file mapped for writing."""
    if out is None or isinstance(out, np.ndarray):
        return out
    return np.load(out, mmap_mode="r+")


def decode_chunk(start: int, paths: list[str], out, target_hw: tuple[int, int] | None, resize: str) -> list[list]:
    """Decode `paths` into rows start.. of `out` (a .npy path, an array, or None: only check them).

    A file that cannot be decoded gets a black row. Returns a record per file (Decoded.record).
    """
    rows = open_rows(out)
    records = []
    for offset, path in enumerate(paths):
        decoded = decode_file(Path(path), target_hw, resize)
        if rows is not None:
            rows[start + offset] = 0 if decoded.array is None else decoded.array
        records.append(decoded.record())
    if isinstance(rows, np.memmap):
        rows.flush()  # on disk before the caller records the chunk as done
    return records


def probe_chunk(start: int, paths: list[str]) -> list:
    return [probe_file(Path(path)) for path in paths]


# -- many files, on every core ---------------------------------------------------------------------


def decode_workers() -> int:
    """Worker processes: $COMP_DECODE_WORKERS, else every core this process may run on."""
    if os.environ.get(WORKERS_ENV):
        try:
            return max(1, int(os.environ[WORKERS_ENV]))
        except ValueError:
            raise CompError(f"${WORKERS_ENV}={os.environ[WORKERS_ENV]}: expected a whole number of processes") from None
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class Worker:
    """A worker process: a fresh interpreter that runs chunk tasks sent over its stdin, one at a time.

    A plain subprocess, as comp.core.isolate's children are: fork could deadlock in a parent that
    holds TensorFlow's or JAX's threads, and multiprocessing's spawn and forkserver re-run the
    parent's main script in every worker (a notebook user's script has no `__main__` guard). It
    imports only this module, ignores Ctrl-C (the parent stops it) and dies with its parent.
    """

    def __init__(self):
        code = f"import sys; sys.path[:] = {sys.path!r}; from comp.data.decode import serve; serve()"
        self.process = subprocess.Popen([sys.executable, "-I", "-c", code], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE)

    def run(self, task: Callable, start: int, paths: list[str], extra: tuple):
        """task(start, paths, *extra) in the worker; EOFError when the worker died."""
        pickle.dump((task, start, paths, extra), self.process.stdin)
        self.process.stdin.flush()
        kind, payload = pickle.load(self.process.stdout)
        if kind == "error":
            raise CompError(f"decoding failed in a worker process: {payload}")
        return payload

    def stop(self, kill: bool) -> None:
        if kill:
            self.process.kill()
        with contextlib.suppress(OSError):
            self.process.stdin.close()  # the worker's EOF: it ends
        self.process.wait()
        self.process.stdout.close()

    def death(self) -> str:
        code = self.process.wait()
        return f"killed by signal {-code}" if code < 0 else f"exited with code {code}"


def serve() -> None:
    """The worker's side: answer (task, start, paths, extra) requests on stdin until it closes."""
    die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    requests, answers = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a stray print must not corrupt the answers
    while True:
        try:
            task, start, paths, extra = pickle.load(requests)
        except EOFError:
            return
        try:
            answer = ("ok", task(start, paths, *extra))
        except Exception as err:  # noqa: BLE001 -- told to the parent, which stops with one line
            answer = ("error", f"{type(err).__name__}: {err}")
        pickle.dump(answer, answers)
        answers.flush()


def _in_workers(task: Callable, chunks: list[tuple[int, list[str]]], extra: tuple,
                workers: int) -> Iterator[tuple[int, list]]:
    """(start, result) per chunk from `workers` processes, each fed the next chunk as it finishes one."""
    todo, finished = queue.SimpleQueue(), queue.SimpleQueue()
    for chunk in chunks:
        todo.put(chunk)
    processes = [Worker() for _ in range(workers)]

    def feed(worker: Worker) -> None:
        try:
            while True:
                try:
                    start, paths = todo.get_nowait()
                except queue.Empty:
                    return
                finished.put((start, worker.run(task, start, paths, extra)))
        except CompError as err:
            finished.put((None, err))
        except (EOFError, OSError, pickle.UnpicklingError):
            finished.put((None, CompError(f"a decoding process {worker.death()}; rerun the command: the chunks "
                                          f"already decoded are kept (${WORKERS_ENV}=1 decodes in this process)")))

    threads = [threading.Thread(target=feed, args=(worker,), daemon=True) for worker in processes]
    for thread in threads:
        thread.start()
    complete = False
    try:
        for _ in chunks:
            start, result = finished.get()
            if start is None:
                raise result
            yield start, result
        complete = True
    finally:
        while not todo.empty():  # an error or Ctrl-C: hand out nothing more
            todo.get_nowait()
        for worker in processes:
            worker.stop(kill=not complete)
        for thread in threads:
            thread.join()


def run_chunks(task: Callable, chunks: list[tuple[int, list[str]]], extra: tuple = (), *,
               in_process: bool) -> Iterator[tuple[int, list]]:
    """(start, task(start, paths, *extra)) for each chunk, as they finish: in this process when
    asked to or with one core, else in worker processes. A worker that dies (the OOM killer, a
    crash in a decoder) stops the decode with one line; the chunks already yielded stay done."""
    workers = min(decode_workers(), len(chunks))
    if in_process or workers <= 1:
        for start, paths in chunks:
            yield start, task(start, paths, *extra)
        return
    yield from _in_workers(task, chunks, extra, workers)


def chunked(paths: list[Path]) -> list[tuple[int, list[str]]]:
    """(index of its first file, file names) per chunk of CHUNK_FILES files."""
    return [(start, [str(p) for p in paths[start:start + CHUNK_FILES]])
            for start in range(0, len(paths), CHUNK_FILES)]


def decode_chunks(chunks: list[tuple[int, list[str]]], out, target_hw, resize: str, what: str,
                  done_files: int = 0, on_chunk: Callable[[int, list], None] | None = None) -> dict[int, list]:
    """Decode `chunks` into `out` with a progress bar; {start: records}. `on_chunk(start, records)`
    is called as each chunk is written (the caller's journal); `done_files`: files decoded earlier.

    `out`: a .npy path (worker processes write into it), an in-memory array (the work stays in
    this process, as does a small job), or None (only check that the files decode).
    """
    todo = sum(len(paths) for _, paths in chunks)
    in_memory = isinstance(out, np.ndarray)
    results = {}
    with decode_progress(done_files + todo, done_files, what) as advance:
        for start, records in run_chunks(decode_chunk, chunks, (out if in_memory or out is None else str(out),
                                                                target_hw, resize),
                                         in_process=in_memory or todo < IN_PROCESS_BELOW):
            results[start] = records
            if on_chunk:
                on_chunk(start, records)
            advance(len(records))
    return results


def probe_sizes(paths: list[Path]) -> list[tuple[int, int] | None]:
    """Each file's (height, width) from its header (None: unreadable), in `paths` order."""
    chunks = chunked(paths)
    found = dict(run_chunks(probe_chunk, chunks, in_process=len(paths) < IN_PROCESS_BELOW))
    return [size for start, _ in chunks for size in found[start]]


class decode_progress:
    """A transient rich bar (files done of all, elapsed, ETA); nothing under --quiet."""

    def __init__(self, total: int, done: int, what: str):
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                   TimeRemainingColumn)

        self.progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=console, transient=True, disable=is_quiet() or not console.is_terminal)
        self.task = self.progress.add_task(f"decoding {what}", total=total, completed=done)

    def __enter__(self) -> Callable[[int], None]:
        self.progress.__enter__()
        return lambda count: self.progress.advance(self.task, count)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)
