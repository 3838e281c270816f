"""The seconds TensorFlow spends closing an epoch's tf.data iterator, comp's pipeline against AUTOTUNE's.

Keras's fit deletes its iterator at the end of every epoch. With tf.data's AUTOTUNE on, that
deletion waits for the tuning thread, which sleeps up to a minute between rounds: on this 2-core
CPU, `comp auto` epochs of ~90 s took ~141 s one time in two, the CPU idle for the difference.
This times the deletion alone: each epoch of `--epoch-seconds` is consumed by sleeping (no compute,
so both pipelines can run at once without slowing each other), then the iterator is deleted.

    comp      feed.tf_batches as `comp train` builds it (autotune off, fixed prefetch)
    autotune  the same batches with num_parallel_calls and prefetch AUTOTUNE (comp before the fix,
              and Keras's own adapter for arrays)

    python bench/tf_data_teardown.py --epoch-seconds 90 --epochs 3
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ["KERAS_BACKEND"] = "tensorflow"


def autotuned(images, labels, order):
    """tf_batches as it was before the fix: AUTOTUNE for the map's parallelism and the prefetch."""
    import numpy as np
    import tensorflow as tf

    epoch_rows = tf.data.Dataset.from_generator(
        lambda: iter([order.batch_rows()]), output_signature=tf.TensorSpec((order.steps, order.batch_size), tf.int64))
    rows = epoch_rows.unbatch().apply(tf.data.experimental.assert_cardinality(order.steps))
    arrays = tf.data.Dataset.from_tensors((images, labels.astype(np.int32))).repeat()

    def gather(batch_rows, data):
        pixels, classes = (tf.gather(array, batch_rows) for array in data)
        return ({"pixels": pixels, "labels": classes},)

    return tf.data.Dataset.zip((rows, arrays)).map(gather, num_parallel_calls=tf.data.AUTOTUNE) \
        .prefetch(tf.data.AUTOTUNE)


def time_pipeline(pipeline: str, epoch_seconds: float, epochs: int, rows: int, batch_size: int) -> list[dict]:
    import numpy as np

    from comp.core.backend import import_keras

    import_keras()  # TensorFlow's start-up lines kept off the output
    from comp.engine.feed import BatchOrder, tf_batches

    images = np.zeros((rows, 32, 32, 3), np.uint8)
    labels = np.zeros(rows, np.int64)
    order = BatchOrder(rows, batch_size, seed=0)
    dataset = (tf_batches if pipeline == "comp" else autotuned)(images, labels, order)
    results = []
    for epoch in range(epochs):
        order.on_epoch_begin(epoch)
        started = time.perf_counter()
        iterator = iter(dataset)
        for _ in range(order.steps):
            next(iterator)
            time.sleep(epoch_seconds / order.steps)  # the train step, without using the CPU
        ended = time.perf_counter()
        del iterator  # what fit does as the epoch ends
        results.append({"pipeline": pipeline, "epoch": epoch, "epoch_s": round(ended - started, 2),
                        "teardown_s": round(time.perf_counter() - ended, 3)})
        print(json.dumps(results[-1]), flush=True)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epoch-seconds", type=float, default=90.0, help="how long each epoch consumes batches")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--rows", type=int, default=25000)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--pipeline", choices=("comp", "autotune"), help="time one (else both, as two processes at once)")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)
    if args.pipeline:
        time_pipeline(args.pipeline, args.epoch_seconds, args.epochs, args.rows, args.batch_size)
        return 0
    common = [sys.executable, __file__, "--epoch-seconds", str(args.epoch_seconds), "--epochs", str(args.epochs),
              "--rows", str(args.rows), "--batch-size", str(args.batch_size), "--pipeline"]
    children = {name: subprocess.Popen([*common, name], stdout=subprocess.PIPE, text=True)
                for name in ("comp", "autotune")}
    results = []
    for name, child in children.items():
        out, _ = child.communicate()
        if child.returncode:
            raise SystemExit(f"the {name} pipeline failed (exit {child.returncode})")
        results += [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    for name in children:
        teardowns = [r["teardown_s"] for r in results if r["pipeline"] == name]
        print(f"{name:>9}: iterator deletion after {args.epoch_seconds:g}-s epochs: "
              + ", ".join(f"{t:.2f}" for t in teardowns) + " s")
    if args.json:
        Path(args.json).write_text(json.dumps({"epoch_seconds": args.epoch_seconds, "rows": args.rows,
                                               "batch_size": args.batch_size, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
