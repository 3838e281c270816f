"""Data-parallel scaling on paper (issue #26, item 5): per-step all-reduce bytes, compute per step
per device and the expected speed-up of one fold on N GPUs over NVLink, for comp's GPU nets.

Counts come from the Keras nets themselves (parameters; multiply-adds of every Conv2D and Dense
from their output shapes); the per-step compute time is calibrated on the one measured number, the
H200's images per second at batch 512 (bench/RESULTS.md, bf16, jit on). Assumptions, each a
constant below: a ring all-reduce of float32 gradients at NVLINK_GBPS bus bandwidth plus a
latency per hop, and a floor per step per device (kernel launches) under which a smaller
per-device batch stops getting faster. The global batch stays as configured (comp keeps it).

    KERAS_BACKEND=jax JAX_PLATFORMS=cpu python bench/scaling_model.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("KERAS_BACKEND", "jax")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from comp.config.run_config import build_config  # noqa: E402
from comp.nets.models import build_model  # noqa: E402

NVLINK_GBPS = 350.0  # NCCL all-reduce bus bandwidth on H200 NVLink 4 (900 GB/s bidirectional per GPU), large messages
HOP_LATENCY_S = 8e-6  # per ring step: 2 (N - 1) hops
STEP_FLOOR_S = 0.8e-3  # the least a step takes on a device however small its batch (launch-bound; assumption)
BATCH = 512
MEASURED_IMAGES_PER_S = {"fast": 125_413, "fast-large": 59_670}  # H200, comp's pipeline (RESULTS.md)


def counts(model_name: str) -> tuple[int, float]:
    """(parameters, forward multiply-adds per 32x32 image)."""
    config = build_config({}, {"model": model_name})
    net = build_model(config, (32, 32, 3), 10, np.zeros((64, 32, 32, 3), np.uint8), 1)
    macs = 0.0
    for layer in net._flatten_layers(include_self=False):
        if isinstance(layer, keras.layers.Conv2D):
            h, w, out = layer.output.shape[1:4]
            macs += h * w * out * layer.kernel.shape[0] * layer.kernel.shape[1] * layer.kernel.shape[2]
        elif isinstance(layer, keras.layers.Dense):
            macs += int(np.prod(layer.kernel.shape))
    return net.count_params(), macs


def allreduce_seconds(parameters: int, devices: int) -> float:
    if devices == 1:
        return 0.0
    gradient_bytes = 4 * parameters
    return 2 * (devices - 1) / devices * gradient_bytes / (NVLINK_GBPS * 1e9) + 2 * (devices - 1) * HOP_LATENCY_S


def main() -> None:
    print("| model | parameters | all-reduce bytes a step | forward GMAC/image | step on 1 H200 (batch 512) |"
          " 2 GPUs | 4 GPUs | 8 GPUs | per-device batch at 8 |")
    print("|---|---|---|---|---|---|---|---|---|")
    calibrated = None
    for name in ("fast", "fast-large", "airbench96"):
        parameters, macs = counts(name)
        if name in MEASURED_IMAGES_PER_S:
            one = BATCH / MEASURED_IMAGES_PER_S[name]
            calibrated = one / (macs * BATCH)  # seconds per MAC of the last (largest) measured net
        else:
            one = calibrated * macs * BATCH  # not measured on a GPU: scaled from fast-large by its MACs
        cells = []
        for devices in (2, 4, 8):
            step = max(one / devices, STEP_FLOOR_S) + allreduce_seconds(parameters, devices)
            cells.append(f"{one / step:.1f}x ({step * 1e3:.2f} ms)")
        measured = "" if name in MEASURED_IMAGES_PER_S else " (scaled)"
        print(f"| {name} | {parameters:,} | {4 * parameters / 1e6:.1f} MB | {macs / 1e9:.3f} | "
              f"{one * 1e3:.2f} ms{measured} | {' | '.join(cells)} | {BATCH // 8} |")


if __name__ == "__main__":
    main()
