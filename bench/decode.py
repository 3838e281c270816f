"""Decode time of a competition folder: wall and CPU seconds (this process and its workers).

    python bench/decode.py /tmp/cifar10-dacon [--image-size 32]           # this checkout
    PYTHONPATH=/path/to/old/checkout python bench/decode.py DIR            # an older comp (threads)

The current code is timed in two steps: reading every header for the native sizes (what
--image-size auto costs on a first load) and decoding into a fresh cache. Under
COMP_DECODE_WORKERS=1 the decode stays in one process. A checkout from before the process
workers (comp.data.sources.decode_layout) is timed with its thread pool instead.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

if not os.environ.get("PYTHONPATH"):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from comp.data import sources as data  # noqa: E402
from comp.core.console import set_quiet  # noqa: E402


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def timed(what: str, step) -> None:
    wall, cpu, load = time.time(), cpu_seconds(), os.getloadavg()[0]
    step()
    print(f"{what}: wall {time.time() - wall:.1f} s, CPU {cpu_seconds() - cpu:.1f} s (load average {load:.1f})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("data")
    parser.add_argument("--image-size", type=int, default=32)
    args = parser.parse_args()
    set_quiet(True)
    layout = data.scan(Path(args.data))
    if hasattr(data, "decode_layout"):  # an older comp: threads, arrays in memory
        timed("threads (decode_layout)", lambda: data.decode_layout(layout))
        return
    cache = Path(tempfile.mkdtemp(prefix="comp-decode-bench-"))
    try:
        source = data.source_of(layout, cache)
        timed("headers for the native sizes", lambda: data.native_sizes(source))
        workers = os.environ.get("COMP_DECODE_WORKERS") or "one per core"
        timed(f"decode into the cache (worker processes: {workers})",
              lambda: data.decoded_arrays(source, (args.image_size, args.image_size), "squash"))
    finally:
        shutil.rmtree(cache)


if __name__ == "__main__":
    main()
