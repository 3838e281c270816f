"""Data parallel training (issue #26, item 1 and 4): one fold over 4 virtual CPU devices with
keras.distribution's DataParallel gives the weights and predictions of one device, within float
tolerance, and really runs sharded. JAX only; the check runs in a subprocess because the device
count is fixed when JAX starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from comp.cli import main

from .conftest import REPO

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    import jax, keras
    from comp.config.run_config import build_config
    from comp.engine import programs, trainer

    assert keras.backend.backend() == "jax" and len(jax.devices()) == 4, jax.devices()
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (160, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 160)
    out = {}
    for devices in ("1", "4"):
        # fast: BatchNorm (statistics over the global batch), lookahead and BN recalibration, flips.
        config = build_config({}, {"model": "fast", "width": 0.125, "batch_size": 16, "epochs": 2, "devices": devices})
        result = trainer.train_fold(config, x[:128], y[:128], x[128:], y[128:], 3, 0, test_x=x[:8])
        net = programs._engine.net
        out[devices] = {"weights": [np.asarray(v.value).ravel().tolist() for v in net.trainable_variables],
                        "stats": [np.asarray(v.value).ravel().tolist() for v in net.non_trainable_variables],
                        "probs": result.val_probs.tolist(),
                        "shards": len(net.trainable_variables[0].value.sharding.device_set)}
    print("RESULT" + json.dumps(out))
""")


@pytest.mark.slow
def test_four_devices_train_what_one_does():
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": "4"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env=env, capture_output=True, text=True)
    if "JAX_NUM_CPU_DEVICES" in result.stderr and "len(jax.devices()) == 4" in result.stderr:
        pytest.skip("this JAX cannot make virtual CPU devices (JAX_NUM_CPU_DEVICES)")
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.split("RESULT", 1)[1])
    one, four = out["1"], out["4"]
    assert one["shards"] == 1 and four["shards"] == 4  # replicated on 4 devices: it did run data parallel
    for kind in ("weights", "stats"):
        for a, b in zip(one[kind], four[kind], strict=True):
            assert b == pytest.approx(a, abs=1e-4, rel=1e-3)  # sums over the batch reordered by the split
    assert abs(np.asarray(four["probs"]) - np.asarray(one["probs"])).max() < 1e-5


def test_devices_on_tensorflow_is_one_line(tmp_path, capsys):
    from .conftest import make_competition

    data = make_competition(tmp_path / "data", per_class=6, test_count=3)
    code = main(["train", "--data", str(data), "--workdir", str(tmp_path / "w"), "--model", "baseline",
                 "--epochs", "1", "--folds", "2", "--devices", "4", "--quiet"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--devices 4: data-parallel training needs the JAX backend" in err[0]


def test_devices_value_is_checked_and_not_part_of_the_run_identity():
    from comp.config.run_config import RunConfig, build_config
    from comp.core.errors import CompError

    with pytest.raises(CompError, match='devices = 0; expected "all" or a number of devices >= 1'):
        RunConfig.from_dict({"devices": 0})
    config = build_config({}, {"model": "baseline"})
    assert config.replace(devices="4").run_name == config.run_name and config.replace(devices=4).devices == "4"
