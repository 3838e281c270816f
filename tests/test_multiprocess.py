"""Several processes, one run (issue #26, item 2): two processes on localhost, one CPU device each,
joined by JAX's distributed runtime with gloo collectives, train one fold data parallel and give
the weights and predictions of one process on two (virtual) devices. Subprocesses: the devices
and the processes are fixed when JAX starts."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import REPO

SCRIPT = textwrap.dedent("""
    import json, pathlib, sys
    import numpy as np
    import jax, keras
    from comp.config.run_config import build_config
    from comp.engine import devices as device_lib, programs, trainer

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (160, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 160)
    # fast: BatchNorm (statistics over the global batch), lookahead and BN recalibration, flips.
    config = build_config({}, {"model": "fast", "width": 0.125, "batch_size": 16, "epochs": 2, "devices": sys.argv[1]})
    fold_dir = pathlib.Path(sys.argv[2])  # each process its own, to see which ones write
    result = trainer.train_fold(config, x[:128], y[:128], x[128:], y[128:], 3, 0, fold_dir, test_x=x[:8])
    net = programs._engine.net
    out = {"weights": [np.asarray(v.value).ravel().tolist() for v in net.trainable_variables],
           "stats": [np.asarray(v.value).ravel().tolist() for v in net.non_trainable_variables],
           "probs": result.val_probs.tolist(), "processes": device_lib.process_count(),
           "writer": device_lib.is_writer(),
           "shards": len(net.trainable_variables[0].value.sharding.device_set)}
    print("RESULT" + json.dumps(out))
""")

# Generous: two processes compile and train on a shared 2-core machine.
TIMEOUT_S = 600


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def jax_env(cpu_devices: int, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERAS_DISTRIBUTION_")}
    return env | {"KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "JAX_NUM_CPU_DEVICES": str(cpu_devices)} | extra


def process_env(port: int, processes: int, index: int) -> dict:
    return jax_env(1, KERAS_DISTRIBUTION_JOB_ADDRESSES=f"127.0.0.1:{port}",
                   KERAS_DISTRIBUTION_NUM_PROCESSES=str(processes), KERAS_DISTRIBUTION_PROCESS_ID=str(index))


def result_of(stdout: str) -> dict:
    return json.loads(stdout.split("RESULT", 1)[1])


def skip_without_cpu_collectives(stderr: str) -> None:
    if "gloo" in stderr.lower() and ("not" in stderr.lower() or "unknown" in stderr.lower()):
        pytest.skip(f"this JAX lacks gloo CPU collectives: {stderr.strip().splitlines()[-1][:200]}")


def start_process(tmp_path, port: int, index: int, arguments: list[str], processes: int = 2):
    """Process `index` of a run of `processes` on localhost, writing its output to files (a full
    pipe would block one while the other waits for it at a collective)."""
    out, err = (open(tmp_path / f"process{index}.{kind}", "w") for kind in ("out", "err"))
    with out, err:
        return subprocess.Popen([sys.executable, *arguments], cwd=REPO, env=process_env(port, processes, index),
                                stdout=out, stderr=err, text=True)


def finish_processes(tmp_path, workers: list) -> list[tuple[str, str]]:
    """(stdout, stderr) of every process, once all have ended (killed past TIMEOUT_S)."""
    for worker in workers:
        try:
            worker.wait(timeout=TIMEOUT_S)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait()
    return [tuple((tmp_path / f"process{index}.{kind}").read_text() for kind in ("out", "err"))
            for index in range(len(workers))]


@pytest.mark.slow
def test_two_processes_train_what_one_does(tmp_path):
    workers = [start_process(tmp_path, port, index, ["-c", SCRIPT, "all", str(tmp_path / f"fold_process{index}")])
               for port in [free_port()] for index in (0, 1)]
    outputs = finish_processes(tmp_path, workers)
    for worker, (_, stderr) in zip(workers, outputs):
        if worker.returncode:
            skip_without_cpu_collectives(stderr)
        assert worker.returncode == 0, stderr[-3000:]
    single = subprocess.run([sys.executable, "-c", SCRIPT, "2", str(tmp_path / "fold_single")], cwd=REPO, env=jax_env(2), capture_output=True,
                            text=True, timeout=TIMEOUT_S)
    assert single.returncode == 0, single.stderr[-3000:]
    one = result_of(single.stdout)
    first, second = (result_of(stdout) for stdout, _ in outputs)
    assert (one["processes"], first["processes"], second["processes"]) == (1, 2, 2)
    assert (first["writer"], second["writer"]) == (True, False)
    assert one["shards"] == first["shards"] == 2  # the variables live on both processes' devices
    for kind in ("weights", "stats"):
        for a, b, c in zip(one[kind], first[kind], second[kind], strict=True):
            assert b == pytest.approx(a, abs=1e-4, rel=1e-3)
            assert c == b  # the processes hold one replicated state
    assert abs(np.asarray(first["probs"]) - np.asarray(one["probs"])).max() < 1e-5
    assert first["probs"] == second["probs"]
    # Only process 0 wrote the fold's files, those a single process writes.
    written = sorted(p.name for p in (tmp_path / "fold_process0").iterdir())
    assert written == sorted(p.name for p in (tmp_path / "fold_single").iterdir())
    assert {"metrics.json", "val_probs.npy", "test_probs.npy", "model.keras"} <= set(written)
    assert not (tmp_path / "fold_process1").exists() or not any((tmp_path / "fold_process1").iterdir())


KILLED_SCRIPT = textwrap.dedent("""
    import pathlib, sys
    import numpy as np
    from comp.config.run_config import build_config
    from comp.core.errors import CompError
    from comp.engine import trainer

    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 256, (160, 16, 16, 3), dtype=np.uint8), rng.integers(0, 3, 160)
    config = build_config({}, {"model": "fast", "width": 0.125, "batch_size": 16, "epochs": 50, "devices": "all"})
    try:
        trainer.train_fold(config, x[:128], y[:128], x[128:], y[128:], 3, 0, pathlib.Path(sys.argv[1]))
    except CompError as error:  # as comp's CLI reports it
        print(f"comp: {error}", file=sys.stderr)
        sys.exit(2)
""")


@pytest.mark.slow
def test_a_killed_process_stops_the_other_with_one_line(tmp_path):
    fold_dir = tmp_path / "fold"
    workers = [start_process(tmp_path, port, index, ["-c", KILLED_SCRIPT, str(fold_dir)])
               for port in [free_port()] for index in (0, 1)]
    deadline = time.time() + TIMEOUT_S
    checkpoint = fold_dir / "checkpoint" / "state.json"
    while not checkpoint.exists() and time.time() < deadline and workers[0].poll() is None:
        time.sleep(0.5)  # until process 0 has written epoch 1's checkpoint (history.csv comes before it)
    assert checkpoint.exists(), Path(tmp_path / "process0.err").read_text()[-3000:]
    workers[1].kill()
    (_, stderr), _ = finish_processes(tmp_path, workers)
    assert workers[0].returncode == 2, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.startswith("comp:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[0].startswith("comp: process 0 of 2: another process of the run stopped (")
    assert lines[0].endswith("rerun every process to resume from the last checkpoint")
    assert (fold_dir / "checkpoint" / "state.json").exists()  # what the rerun resumes from


@pytest.mark.slow
def test_comp_train_on_two_processes_writes_one_run(tmp_path):
    """`comp train` once per "host" (each its own workdir, as on machines that share nothing): one
    run, its folds' files written by process 0 only."""
    from .conftest import make_competition

    data = make_competition(tmp_path / "data", per_class=12, test_count=6)
    workers = [start_process(tmp_path, port, index, ["-m", "comp", "train", "--data", str(data), "--workdir",
                                                     str(tmp_path / f"work{index}"), "--model", "fast", "--width",
                                                     "0.125", "--epochs", "1", "--folds", "2", "--batch-size", "16"])
               for port in [free_port()] for index in (0, 1)]
    outputs = finish_processes(tmp_path, workers)
    for worker, (_, stderr) in zip(workers, outputs):
        assert worker.returncode == 0, stderr[-3000:]
    (run,) = [path.parent for path in (tmp_path / "work0").rglob("oof_probs.npy")]
    assert all((run / f"fold{fold}" / "metrics.json").exists() for fold in (0, 1))
    assert "CV accuracy" in outputs[0][0] and "accuracy" not in outputs[1][0]  # process 0 speaks for the run
    fold_files = ("metrics.json", "model.keras", "val_probs.npy", "test_probs.npy", "state.json", "oof_probs.npy")
    assert not [path for name in fold_files for path in (tmp_path / "work1").rglob(name)]
