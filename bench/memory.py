"""Peak memory of a decoded cache larger than memory: load it and read one epoch of batches (issue 17).

For each image count: a synthetic cache of that many images at --size px is written with
comp.data.cache's own writer (the arrays directly: 200,000 image files would take an hour to write and
to decode, and decoding is not what is measured), then a fresh process per variant

    loads it with comp.data.cache.read_cache (what every load after the first does),
    takes fold 0's train rows of a 5-fold split (80% of the rows, a --limit-free run),
    reads one epoch of shuffled batches from the mapped file, the rows of each batch sorted
    (as comp.engine.feed.ShuffledBatches does), and reports its peak RSS (VmHWM).

Two variants: `release` gives the pages read back every comp.data.cache.RELEASE_BYTES
(comp.data.cache.release_pages, what a batch reader over the mapping should do); `keep` does not, so
every page read stays in the process's RSS (file-backed and reclaimable by the kernel, but counted).

    python bench/memory.py --images 50000 200000 --size 128 --dir /tmp/comp-memory-bench

Needs (count x size x size x 3) bytes free under --dir for the largest count (9.8 GB for 200,000
at 128 px); each cache is deleted after it is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from comp.data.cache import (
    IMAGES,
    RELEASE_BYTES,
    cache_folder,
    create_mapped,
    gigabytes,
    read_cache,
    release_pages,
    write_meta,
)

BATCH = 256  # rows per training batch
FOLDS = 5  # fold 0's train rows: every row whose index is not 0 mod FOLDS
WRITE_BLOCK = 2048  # rows filled per step while writing the synthetic cache
CLASSES = 10


def status_kb(field: str) -> int:
    """A field of /proc/self/status in kB (VmHWM: peak RSS, VmRSS, RssAnon, RssFile)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def write_synthetic_cache(root: Path, count: int, size: int) -> Path:
    """A complete cache folder of `count` train images (and no test images) of a cheap pattern."""
    folder = cache_folder(root, f"synthetic-{count}", (size, size), "squash")
    folder.mkdir(parents=True, exist_ok=True)
    shape = (count, size, size, 3)
    create_mapped(folder / IMAGES, shape, f"{count:,} synthetic images")
    images = np.load(folder / IMAGES, mmap_mode="r+")
    pattern = np.arange(size * size * 3, dtype=np.uint32).reshape(1, size, size, 3)
    for start in range(0, count, WRITE_BLOCK):
        rows = np.arange(start, min(count, start + WRITE_BLOCK), dtype=np.uint32).reshape(-1, 1, 1, 1)
        images[start:start + len(rows)] = ((pattern + rows * 7) % 251).astype(np.uint8)
    images.flush()
    del images
    labels = (np.arange(count) % CLASSES).tolist()
    write_meta(folder, {"shape": list(shape), "train_count": count, "kept_count": count, "test_count": 0,
                        "train_y": labels, "train_files": [f"train/c{y}/{i:07d}.png" for i, y in enumerate(labels)],
                        "resize": "squash", "stats": {}})
    return folder


def read_epoch(folder: Path, release: bool) -> dict:
    """In this (fresh) process: load the cache and read one epoch of fold 0's train rows in batches."""
    started = time.time()
    arrays = read_cache(folder)
    train_x, train_y = arrays["train_x"], arrays["train_y"]
    loaded_kb = status_kb("VmRSS")
    train_rows = np.flatnonzero(np.arange(len(train_y)) % FOLDS != 0)  # positions, no copy of the images
    order = np.random.default_rng(0).permutation(train_rows)
    checksum, since_release, read_bytes = 0, 0, 0
    epoch_started = time.time()
    for start in range(0, len(order) - BATCH + 1, BATCH):
        batch = train_x[np.sort(order[start:start + BATCH])]  # a copy of these rows only
        checksum += int(batch[:, 0, 0, 0].sum())
        since_release += batch.nbytes
        read_bytes += batch.nbytes
        if release and since_release >= RELEASE_BYTES:
            release_pages(train_x)
            since_release = 0
    return {"images": len(train_y), "release": release, "loaded_rss_mb": loaded_kb / 1024,
            "peak_rss_mb": status_kb("VmHWM") / 1024, "end_rss_file_mb": status_kb("RssFile") / 1024,
            "end_rss_anon_mb": status_kb("RssAnon") / 1024, "read_gb": read_bytes / 1e9,
            "epoch_s": time.time() - epoch_started, "total_s": time.time() - started, "checksum": checksum}


def measure(folder: Path, release: bool) -> dict:
    """read_epoch in a fresh interpreter, so each peak is its own."""
    command = [sys.executable, __file__, "--child", str(folder)] + (["--release"] if release else [])
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--dir", default="/tmp/comp-memory-bench", help="where the synthetic caches are written")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--release", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(read_epoch(Path(args.child), args.release)))
        return
    root = Path(args.dir)
    root.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, {os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.1f} GiB RAM, "
          f"{gigabytes(shutil.disk_usage(root).free)} free under {root}")
    print("| images | cache on disk | pages read given back | RSS after load | peak RSS | epoch read | epoch time |")
    print("|---|---|---|---|---|---|---|")
    for count in args.images:
        started = time.time()
        folder = cache_folder(root, f"synthetic-{count}", (args.size, args.size), "squash")
        try:
            write_synthetic_cache(root, count, args.size)
            written = time.time() - started
            for release in (True, False):
                row = measure(folder, release)
                print(f"| {count:,} | {gigabytes(count * args.size ** 2 * 3)} (written in {written:.0f} s) | "
                      f"{'yes' if release else 'no'} | {row['loaded_rss_mb']:.0f} MB | "
                      f"**{row['peak_rss_mb']:.0f} MB** (file-backed at the end: {row['end_rss_file_mb']:.0f} MB) | "
                      f"{row['read_gb']:.2f} GB | {row['epoch_s']:.1f} s |", flush=True)
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # only what this script wrote


if __name__ == "__main__":
    main()
