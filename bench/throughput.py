"""Training throughput: comp's real train step against a bare jitted step, in one run.

For each model, two numbers in images per second:
  pipeline  what `comp train` runs: its batches (training_inputs: row numbers into the fold's
            rows on the device on JAX, a tf.data pipeline of uint8 batches on TensorFlow) through
            TrainingModel.fit, with augmentation and mixup inside the compiled step
  bare      the plain net's train step (no augmentation, no mixing) on one batch already on the
            device, called in a loop: the ceiling for this model on this machine
The ratio pipeline / bare is the figure: 0.9 or more means the pipeline costs at most 10%.
--inputs both adds "other", the input path comp does not use on this backend (host batches on
JAX, device rows on TensorFlow), to measure the choice feed.uses_device_rows makes.

    python bench/throughput.py                       # baseline, deep, fast on the default backend
    KERAS_BACKEND=jax python bench/throughput.py --precision bfloat16 --batch-size 512   # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from comp.core.backend import accelerator, import_keras  # noqa: E402

keras = import_keras()
import numpy as np  # noqa: E402

from comp.config.run_config import build_config  # noqa: E402
from comp.engine import feed  # noqa: E402
from comp.engine.feed import FoldStore, store_capacity, training_inputs  # noqa: E402
from comp.engine.optimizers import compile_training_model, jit_compile_setting, make_optimizer  # noqa: E402
from comp.engine.programs import build_training_model, set_precision  # noqa: E402

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)


def fake_cifar(rows: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (rows, *IMAGE_SHAPE), dtype=np.uint8), rng.integers(0, NUM_CLASSES, rows)


def pipeline_timer(config, images, labels, steps: int, device_rows: bool):
    """A function timing TrainingModel.fit over `steps` batches (compiled once, up front), the
    batches from the device (a FoldStore) or from the host."""
    rows = config.batch_size * steps
    store = FoldStore(store_capacity(rows), IMAGE_SHAPE) if device_rows else None
    model, _ = build_training_model(config, IMAGE_SHAPE, NUM_CLASSES, images, 0, steps, store)
    compile_training_model(model, config, steps)
    timed, _ = training_inputs(images[:rows], labels[:rows], config.batch_size, seed=1, store=store)
    model.fit(**timed, epochs=1, verbose=0)  # compiles; the timed fits reuse the step (fit caches it)

    def seconds() -> float:
        started = time.perf_counter()
        history = model.fit(**timed, epochs=1, verbose=0)
        float(history.history["loss"][-1])  # the epoch's logs are read back: every step has finished
        return time.perf_counter() - started

    return seconds


def bare_timer(config, images, labels, steps: int, warmup: int):
    """A function timing the plain net's train step on one batch already on the device."""
    from comp.nets.models import build_model

    net = build_model(config, IMAGE_SHAPE, NUM_CLASSES, images)
    net.compile(optimizer=make_optimizer(config, steps),
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                jit_compile=jit_compile_setting(config))
    x = keras.ops.convert_to_tensor(images[:config.batch_size].astype("float32"))  # on the device once
    y = keras.ops.convert_to_tensor(labels[:config.batch_size])
    for _ in range(warmup):
        net.train_on_batch(x, y)

    def seconds() -> float:
        started = time.perf_counter()
        for _ in range(steps):
            loss = net.train_on_batch(x, y)
        float(np.asarray(loss))
        return time.perf_counter() - started

    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="baseline,deep,fast")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per measurement; the best counts")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--precision", default="float32")
    parser.add_argument("--jit", default="auto")
    parser.add_argument("--augment", default="simple", help="augmentation of the pipeline step")
    parser.add_argument("--mixup", type=float, default=0.2)
    parser.add_argument("--width", type=float, default=1.0)
    parser.add_argument("--inputs", choices=("comp", "both"), default="comp",
                        help="both: also time the input path comp does not use on this backend")
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args(argv)

    rows = []
    for name in args.models.split(","):
        config = build_config({}, {"model": name, "batch_size": args.batch_size, "precision": args.precision,
                                   "jit": args.jit, "augment": args.augment, "mixup": args.mixup,
                                   "width": args.width, "epochs": 1})
        images, labels = fake_cifar(config.batch_size * max(args.steps, args.warmup))
        keras.backend.clear_session()  # before the policy: clear_session resets it to float32
        set_precision(config.precision)
        device_rows = feed.uses_device_rows()
        timers = {"bare": bare_timer(config, images, labels, args.steps, args.warmup),
                  "pipeline": pipeline_timer(config, images, labels, args.steps, device_rows)}
        if args.inputs == "both":
            timers["other"] = pipeline_timer(config, images, labels, args.steps, not device_rows)
        # Alternate them and keep each one's best: other load on the machine hits all alike.
        best = {kind: timer() for kind, timer in timers.items()}
        for _ in range(args.repeats - 1):
            for kind, timer in timers.items():
                best[kind] = min(best[kind], timer())
        speed = {kind: args.steps * config.batch_size / seconds for kind, seconds in best.items()}
        set_precision("float32")
        row = {"model": name, "bare_img_s": round(speed["bare"], 1), "pipeline_img_s": round(speed["pipeline"], 1),
               "ratio": round(speed["pipeline"] / speed["bare"], 3), "inputs": "device" if device_rows else "host"}
        line = (f"{name:<10} bare {speed['bare']:>10.1f} img/s   pipeline ({row['inputs']} rows) "
                f"{speed['pipeline']:>10.1f} img/s   ratio {row['ratio']:.3f}")
        if "other" in speed:
            row |= {"other_img_s": round(speed["other"], 1), "other_ratio": round(speed["other"] / speed["bare"], 3)}
            line += f"   other inputs {speed['other']:>8.1f} img/s ({row['other_ratio']:.3f})"
        rows.append(row)
        print(line, flush=True)
    device = accelerator() or f"cpu ({os.cpu_count()} cores)"
    report = {"backend": keras.backend.backend(), "device": device, "batch_size": args.batch_size,
              "precision": args.precision, "jit": args.jit, "augment": args.augment, "mixup": args.mixup,
              "results": rows}
    print(json.dumps(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
