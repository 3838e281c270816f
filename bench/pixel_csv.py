"""Pixel CSVs made from the shared CIFAR-10, and the time to decode their 60,000 rows into the cache.

    python bench/pixel_csv.py [--cifar /tmp/cifar10-dacon] [--out /tmp/cifar-pix]

Writes two competition folders in the pixel-CSV layout (comp.data.pixels), outside the repository:

    OUT/rgb/train.csv    id,label,pixel0..pixel3071   50,000 rows, r,g,b per pixel (numpy's reshape)
    OUT/rgb/test.csv     id,pixel0..pixel3071         10,000 rows, in the sample's order
    OUT/gray/...         the same with 1,024 columns of luma (PIL's convert("L") weights)
    OUT/*/sample_submission.csv                       the CIFAR folder's own

then times, for each: scanning and fingerprinting the folder (labels, ids, a digest of each CSV),
parsing the 60,000 rows into a fresh memory-mapped cache, and a second load from that cache. The
CIFAR JPEGs are unpacked from /work/shared/data/cifar10-dacon.tar.xz when --cifar does not exist.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from comp.core.console import set_quiet  # noqa: E402
from comp.data import sources as data  # noqa: E402

TARBALL = Path("/work/shared/data/cifar10-dacon.tar.xz")
VALUES = np.array([str(v) for v in range(256)], dtype=object)  # each byte's text, looked up per row


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(what: str, step):
    wall, cpu = time.time(), cpu_seconds()
    result = step()
    print(f"  {what}: wall {time.time() - wall:.2f} s, CPU {cpu_seconds() - cpu:.2f} s")
    return result


def cifar_images(folder: Path) -> data.Dataset:
    if not folder.exists():
        folder.mkdir(parents=True)
        subprocess.run(["tar", "-xJf", str(TARBALL), "-C", str(folder)], check=True)
    return data.load_dataset(folder, None)  # decoded in memory: the CSVs are written from these arrays


def write_rows(path: Path, header: list[str], first: list[str], pixels: np.ndarray) -> None:
    """A CSV whose rows are a leading text field (or none) then the pixels as integers."""
    with open(path, "w") as handle:
        handle.write(",".join(header) + "\n")
        for lead, row in zip(first, pixels.reshape(len(pixels), -1)):
            handle.write(lead + ",".join(VALUES[row]) + "\n")


def write_pixel_folder(out: Path, images: data.Dataset, gray: bool) -> None:
    out.mkdir(parents=True, exist_ok=True)
    train, test = np.asarray(images.train_x), np.asarray(images.test_x)
    if gray:
        weights = np.array([0.299, 0.587, 0.114])
        train, test = (np.rint(x @ weights).astype(np.uint8) for x in (train, test))
    columns = [f"pixel{i}" for i in range(int(np.prod(train.shape[1:])))]
    labels = [images.classes[y] for y in images.train_y]
    names = images.stats["train_files"]
    write_rows(out / "train.csv", ["id", "label", *columns], [f"{n},{c}," for n, c in zip(names, labels)], train)
    write_rows(out / "test.csv", ["id", *columns], [f"{i}," for i in images.submission.raw_ids], test)
    shutil.copy(images.submission.path, out / "sample_submission.csv")


def bench(folder: Path) -> None:
    sizes = ", ".join(f"{p.name} {p.stat().st_size / 1e6:.0f} MB" for p in sorted(folder.glob("*.csv")))
    print(f"{folder} ({sizes})")
    cache = Path(tempfile.mkdtemp(prefix="comp-pixel-bench-"))
    try:
        source = timed("scan + fingerprint (label and id columns, CSV digests)",
                       lambda: data.source_of(data.scan(folder), cache))
        dataset = timed("parse 60,000 rows into the mapped cache", lambda: source.load())
        print(f"    {dataset.stats['layout']}; train {dataset.train_x.shape}, test {dataset.test_x.shape}")
        timed("second load (scan + fingerprint + cache)", lambda: data.open_source(folder, cache).load())
    finally:
        shutil.rmtree(cache)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cifar", type=Path, default=Path("/tmp/cifar10-dacon"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/cifar-pix"))
    args = parser.parse_args()
    set_quiet(True)
    images = None
    for gray in (False, True):
        folder = args.out / ("gray" if gray else "rgb")
        if not (folder / "sample_submission.csv").exists():
            images = images or cifar_images(args.cifar)
            timed(f"wrote {folder}", lambda: write_pixel_folder(folder, images, gray))
    print(f"cores: {len(os.sched_getaffinity(0))}, load average {os.getloadavg()[0]:.1f}")
    for gray in (False, True):
        bench(args.out / ("gray" if gray else "rgb"))


if __name__ == "__main__":
    main()
