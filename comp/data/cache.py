"""The decoded-image cache: one folder per (data, image size, resize mode), memory-mapped.

    folds/cache/<key>/images.npy     (train + test files, H, W, 3) uint8: train rows first, then test
    folds/cache/<key>/journal.jsonl  a line per decoded chunk of files: an interrupted decode resumes
    folds/cache/<key>/meta.json      written last (its presence means complete): labels, file names, stats

The images file is written once by the decoding workers and then only read, through a read-only
memory mapping: a process holds the pages it touches, never the whole file, so a set larger than
memory can be loaded. `release_pages` lets a reader that walks through the whole file (an epoch)
give those pages back. `Rows` is some rows of such an array (a --limit subsample) without a copy.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import mmap
import os
import shutil
from pathlib import Path

import numpy as np

from comp.core.console import info
from comp.core.errors import CompError
from comp.core.fileio import read_json, write_json, write_text

CACHE_VERSION = 3  # bump when the cached arrays' meaning changes (3: per image size and resize mode, mapped)
IMAGES, JOURNAL, META = "images.npy", "journal.jsonl", "meta.json"
RELEASE_BYTES = 256 * 2**20  # iter_chunks gives back the pages it read after about this many bytes


def cache_folder(cache_dir: Path, fingerprint: str, target_hw: tuple[int, int], resize: str) -> Path:
    """The decoded arrays depend on the files' content and order (the fingerprint), the size, the
    resize mode and the decoder."""
    height, width = target_hw
    key = hashlib.sha1(f"{fingerprint} v{CACHE_VERSION} {height}x{width} {resize}".encode()).hexdigest()[:16]
    return Path(cache_dir) / key


def gigabytes(count: float) -> str:
    return f"{count / 1e9:.2f} GB" if count >= 1e8 else f"{count / 1e6:.1f} MB"


# -- memory-mapped arrays ------------------------------------------------------------------------


def open_mapped(path: Path) -> np.ndarray:
    """A .npy file as a read-only array over a memory mapping of the file: nothing is read until a
    row is indexed. Mapped here rather than by np.load(mmap_mode="r"), whose np.memmap keeps its
    mapping private: `release_pages` needs it."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(handle)
        offset = handle.tell()
        mapping = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)  # stays valid after the file is closed
    return np.ndarray(shape, dtype, buffer=mapping, offset=offset, order="F" if fortran_order else "C")


def create_mapped(path: Path, shape: tuple[int, ...], what: str) -> None:
    """A zero-filled uint8 .npy file of `shape` with its disk space reserved now, so a full disk is
    one line before decoding rather than a crash of a worker writing into the mapping later."""
    need = int(np.prod(shape))
    free = shutil.disk_usage(path.parent).free
    if need > free:
        raise CompError(f"{path.parent}: {what} need {gigabytes(need)} on disk and {gigabytes(free)} are free; "
                        "free some space, or choose a smaller --image-size")
    _write_empty_npy(path, shape)
    if hasattr(os, "posix_fallocate"):
        with open(path, "r+b") as handle:
            try:
                os.posix_fallocate(handle.fileno(), 0, os.fstat(handle.fileno()).st_size)
            except OSError as err:
                if err.errno == errno.ENOSPC:
                    raise CompError(f"{path.parent}: no space left for {what} ({gigabytes(need)}); free some "
                                    "space, or choose a smaller --image-size") from None
                # EOPNOTSUPP and friends: a file system without fallocate; the sparse file will do


def _write_empty_npy(path: Path, shape: tuple[int, ...]) -> None:
    array = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=shape)
    del array  # a sparse file of the full size; rows are written by the decoding workers


def _mapping_of(images) -> mmap.mmap | None:
    base = images.base if isinstance(images, Rows) else images
    while base is not None and not isinstance(base, mmap.mmap):
        base = getattr(base, "base", None)
    return base


def release_pages(images) -> None:
    """Let go of the pages of the file behind `images` that this process has read (they stay in
    the OS's page cache, so reading them again is fast). A reader that walks through a file larger
    than memory calls this every few hundred MB to keep its resident memory flat."""
    mapping = _mapping_of(images)
    if mapping is not None and hasattr(mmap, "MADV_DONTNEED"):
        mapping.madvise(mmap.MADV_DONTNEED)


def iter_chunks(images, rows_per_chunk: int | None = None):
    """Copies of consecutive rows of `images`, a few MB at a time, releasing the pages read."""
    row_bytes = max(1, int(np.prod(images.shape[1:])) * images.dtype.itemsize)
    rows_per_chunk = rows_per_chunk or max(1, (16 * 2**20) // row_bytes)
    since_release = 0
    for start in range(0, len(images), rows_per_chunk):
        chunk = np.array(images[start:start + rows_per_chunk])
        since_release += chunk.nbytes
        if since_release >= RELEASE_BYTES:
            release_pages(images)
            since_release = 0
        yield chunk


class Rows:
    """Rows `index` of an image array, read only when indexed: a --limit subsample without a copy.

    Indexing it gives an ndarray, as indexing the array itself does; `np.asarray` reads every row.
    """

    def __init__(self, base: np.ndarray, index: np.ndarray):
        self.base, self.index = base, np.asarray(index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.base.shape[1:])

    @property
    def dtype(self):
        return self.base.dtype

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key):
        if isinstance(key, tuple):
            rows = self[key[0]]
            return rows[key[1:]] if np.ndim(self.index[key[0]]) == 0 else rows[(slice(None), *key[1:])]
        return self.base[self.index[key]]

    def __iter__(self):
        for chunk in iter_chunks(self):
            yield from chunk

    def __array__(self, dtype=None, copy=None):
        rows = self.base[self.index]
        return rows if dtype is None else rows.astype(dtype)

    def __repr__(self) -> str:
        return f"Rows({len(self.index)} of {len(self.base)} rows, shape {self.shape})"


# -- the journal of decoded chunks ---------------------------------------------------------------


def read_journal(folder: Path, chunks: list[tuple[int, list[str]]]) -> dict[int, list]:
    """{start: records} of the chunks a former decode finished (lines of other chunkings are ignored;
    a line cut short by a crash is skipped)."""
    sizes = {start: len(paths) for start, paths in chunks}
    done = {}
    path = folder / JOURNAL
    if not path.exists():
        return done
    for line in path.read_text().splitlines():
        try:
            entry = json.loads(line)
            start, records = int(entry["start"]), entry["records"]
        except (ValueError, KeyError, TypeError):
            continue
        if sizes.get(start) == len(records):
            done[start] = records
    return done


def append_journal(folder: Path, start: int, records: list) -> None:
    """One line: this chunk's rows are on disk. Appended, not rewritten: a crash cuts at most this line."""
    with open(folder / JOURNAL, "a") as handle:
        handle.write(json.dumps({"start": start, "records": records}, separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def forget_chunks(folder: Path, done: dict[int, list], keep) -> None:
    """Rewrite the journal with only the chunks `keep(start)` accepts (before rows are moved)."""
    lines = [json.dumps({"start": start, "records": records}, separators=(",", ":"))
             for start, records in sorted(done.items()) if keep(start)]
    write_text(folder / JOURNAL, "".join(line + "\n" for line in lines))


# -- a complete cache ----------------------------------------------------------------------------


def read_cache(folder: Path) -> dict | None:
    """The arrays and facts of a complete cache folder; None when there is none (or it is damaged)."""
    meta_path, images_path = folder / META, folder / IMAGES
    if not (meta_path.exists() and images_path.exists()):
        return None
    try:
        meta = read_json(meta_path)
        images = open_mapped(images_path)
    except (OSError, ValueError) as err:
        info(f"{folder}: unreadable cache ({err}); decoding again")
        return None
    if meta.get("version") != CACHE_VERSION or list(images.shape) != meta.get("shape"):
        return None
    kept, train_count = meta["kept_count"], meta["train_count"]
    return meta | {
        "train_x": images[:kept],
        "test_x": images[train_count:train_count + meta["test_count"]],
        "train_y": np.asarray(meta["train_y"], dtype=np.int64),
    }


def write_meta(folder: Path, meta: dict) -> None:
    write_json(folder / META, {"version": CACHE_VERSION, **meta})


def compact_rows(images_path: Path, keep: np.ndarray, block: int = 1024) -> None:
    """Move the rows `keep` marks to the front, in order (damaged train images out of the way).

    Rows only move down, in ascending blocks: each copy reads rows not yet overwritten.
    """
    images = np.load(images_path, mmap_mode="r+")
    kept = np.flatnonzero(keep)
    in_place = kept == np.arange(len(kept))
    destination = len(kept) if in_place.all() else int(np.argmin(in_place))  # rows before the first gap stay
    to_move = kept[destination:]
    runs = np.split(to_move, np.flatnonzero(np.diff(to_move) != 1) + 1) if len(to_move) else []
    for run in runs:
        for offset in range(0, len(run), block):
            count = min(block, len(run) - offset)
            images[destination:destination + count] = images[run[0] + offset:run[0] + offset + count]
            destination += count
    images.flush()
    del images


@contextlib.contextmanager
def decode_lock(folder: Path):
    """One process decodes a cache folder at a time; a second waits, then finds it complete."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no locking
        yield
        return
    with open(folder / ".lock", "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info(f"{folder}: another process is decoding these images; waiting for it")
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
