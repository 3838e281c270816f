"""On JAX, every model x augmentation preset x mixup/cutmix trains with jit_compile=True in effect.

Keras silently falls back to eager mode (over 100x slower on a GPU) when a layer sets
supports_jit = False, printing "Model doesn't support jit_compile=True". The check runs in a
subprocess because the backend is fixed when keras is first imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from comp.config.augment_presets import PRESETS
from comp.nets.models import MODELS

from .conftest import REPO

CHECK = textwrap.dedent("""
    import contextlib, io, json, sys, warnings
    import numpy as np
    import keras
    from comp.config.run_config import build_config
    from comp.engine.batchnorm import batch_norm_layers, recalibrate_batchnorm
    from comp.engine.feed import FoldStore, store_capacity, training_inputs
    from comp.engine.optimizers import make_optimizer
    from comp.engine.programs import build_training_model

    assert keras.backend.backend() == "jax", keras.backend.backend()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (32, 16, 16, 3), dtype=np.uint8)
    y = rng.integers(0, 3, 32)
    results = []
    for case in json.loads(sys.argv[1]):
        config = build_config({}, dict(case, width=0.125, batch_size=16, epochs=1))
        # What train_fold runs on JAX: the rows on the device, 2 steps a dispatch (a scan).
        store = FoldStore(store_capacity(len(y)), x.shape[1:])
        model, _ = build_training_model(config, x.shape[1:], 3, x, 0, 2, store)
        data, steps = training_inputs(x, y, 16, 0, store)
        model.compile(optimizer=make_optimizer(config, steps), jit_compile=True)
        printed = io.StringIO()
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(printed), \\
                contextlib.redirect_stderr(printed):
            warnings.simplefilter("always")
            history = model.fit(**data, epochs=1, verbose=0)
        messages = printed.getvalue() + " ".join(str(w.message) for w in caught)
        # After averaged training the BN statistics are re-estimated (one compiled call a batch): they must move.
        norms = batch_norm_layers(model.net)
        before = [keras.ops.convert_to_numpy(norm.moving_mean).copy() for norm in norms]
        recalibrate_batchnorm(model, x, y, 16, 0)
        moved = [not np.allclose(b, keras.ops.convert_to_numpy(norm.moving_mean)) for b, norm in zip(before, norms)]
        results.append({"case": case, "jit": model.jit_compile is True,
                        "fallback": "support jit_compile" in messages,
                        "loss": float(history.history["loss"][-1]),
                        "recalibrated": bool(norms) and all(moved)})
    print("RESULTS" + json.dumps(results))
""")

ALL_AUGMENTATION = {"augment": "simple,flip-crop,cutout,reflect", "mixup": 0.2, "cutmix": 1.0}
CASES = (
    [{"model": name, **ALL_AUGMENTATION} for name in MODELS]
    + [{"model": "baseline", "augment": preset} for preset in PRESETS]
    + [{"model": "baseline", "mixup": 0.2}, {"model": "baseline", "cutmix": 1.0}]
    # The fast nets' own recipe: alternating flips (a step counter in the layer) and lookahead.
    + [{"model": "fast"}, {"model": "baseline", "optimizer": "adam", "lookahead": 0.95}]
    # airbench's exact recipes: sgd-torch (per-variable rules, the whitening bias's freeze), lookahead
    # in the optimizer and in AirbenchBatchNorm, reflect crops and cutout inside the image.
    + [{"model": "airbench94"}, {"model": "airbench96"}]
    # The photo augmentations together (random-resized-crop, TrivialAugment, colour jitter) under
    # mixing, on a net with a strided stem; each alone is a PRESETS case above.
    + [{"model": "resnet", "augment": "photo,jitter,cutout", "mixup": 0.2, "cutmix": 1.0}]
)


@pytest.mark.slow
def test_jax_training_keeps_jit():
    # No skip when jax is missing: the test install (pip install -e .[test]) includes it, and a
    # skipped check would hide exactly the regression this test exists for.
    import jax  # noqa: F401
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    # Two processes, every other case each: JAX compiles on one core, the machine has two.
    # No timeout: on a loaded machine this takes minutes, and a failure here must mean jit broke.
    workers = [subprocess.Popen([sys.executable, "-c", CHECK, json.dumps(CASES[start::2])], cwd=REPO, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for start in (0, 1)]
    results = []
    for worker in workers:
        stdout, stderr = worker.communicate()
        assert worker.returncode == 0, stderr[-3000:]
        line = next(l for l in stdout.splitlines() if l.startswith("RESULTS"))
        results += json.loads(line[len("RESULTS"):])
    assert sorted(json.dumps(item["case"], sort_keys=True) for item in results) == \
        sorted(json.dumps(case, sort_keys=True) for case in CASES)
    for item in results:
        assert item["jit"] and not item["fallback"], item
        assert item["loss"] == item["loss"], item  # not NaN
        if item["case"]["model"] == "fast":
            assert item["recalibrated"], item
        if item["case"]["model"].startswith("airbench"):  # their BN statistics are averaged with the weights
            assert not item["recalibrated"], item
