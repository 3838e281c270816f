"""The workspace and the command line around it: comp.toml, locks, disk-full, backends, packaging."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from comp.cli import main
from comp.core.fileio import read_json
from comp.store.claims import FileClaims
from comp.workspace import Workspace

from .conftest import REPO, make_competition

TINY = ["--model", "baseline", "--width", "0.25", "--epochs", "1", "--folds", "2", "--quiet"]


def test_comp_toml_keeps_any_data_path(tmp_path, monkeypatch):
    monkeypatch.delenv("COMP_DATA", raising=False)
    data = make_competition(tmp_path / 'odd "name" \\ back', per_class=6)
    work = tmp_path / "w"
    assert main(["data", "check", "--data", str(data), "--workdir", str(work), "--quiet"]) == 0
    assert Workspace(work).read_project()["data"] == str(data.resolve())
    # Later commands are bare, and comp.toml is still valid TOML after a second data folder.
    assert Workspace(work).data_dir == data.resolve()
    other = make_competition(tmp_path / "plain", per_class=6)
    assert main(["data", "check", "--data", str(other), "--workdir", str(work), "--quiet"]) == 0
    assert Workspace(work).data_dir == other.resolve()


def test_a_fold_another_process_trains_is_waited_for(tmp_path, capsys):
    data = make_competition(tmp_path / "d", per_class=6)
    work = tmp_path / "w"
    claim = FileClaims(Workspace(work).folds).claim("r", "fold", 0)  # "another process" holds fold 0...
    assert claim is not None

    def release_after_fold_1():  # ...until this worker has trained the other fold
        while not (work / "folds" / "r" / "fold1" / "metrics.json").exists():
            time.sleep(0.1)
        assert not (work / "folds" / "r" / "fold0").exists()
        claim.release()

    releaser = threading.Thread(target=release_after_fold_1, daemon=True)
    releaser.start()
    assert main(["train", "--data", str(data), "--workdir", str(work), *TINY[:-1], "--name", "r"]) == 0
    releaser.join()
    out = capsys.readouterr().out
    assert "fold 0: " in out and "is training it; this worker trains the others and then waits for it" in out
    # Once free, the same worker trained it and wrote the OOF file.
    assert read_json(work / "folds" / "r" / "fold0" / "metrics.json")["fold"] == 0
    assert (work / "folds" / "r" / "oof_probs.npy").exists()


@pytest.mark.slow
def test_two_trainers_on_one_run_share_its_folds(tmp_path):
    data = make_competition(tmp_path / "d", per_class=20)
    work = tmp_path / "w"
    command = [sys.executable, "-m", "comp", "train", "--data", str(data), "--workdir", str(work), "--model",
               "baseline", "--width", "0.25", "--epochs", "3", "--folds", "3", "--name", "r"]
    assert main(["data", "check", "--data", str(data), "--workdir", str(work), "--quiet"]) == 0  # cache first
    procs = [subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for _ in range(2)]
    outputs = [p.communicate(timeout=1800)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "Traceback" not in "".join(outputs)
    for fold in range(3):
        assert read_json(work / "folds" / "r" / f"fold{fold}" / "metrics.json")["fold"] == fold
    assert (work / "folds" / "r" / "oof_probs.npy").exists()


def test_disk_full_is_one_line(tmp_path, monkeypatch, capsys):
    data = make_competition(tmp_path / "d", per_class=6)
    import comp.stages.train

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "w" / "folds" / "x.npy"))

    monkeypatch.setattr(comp.stages.train, "write_manifest", full)
    assert main(["train", "--data", str(data), "--workdir", str(tmp_path / "w"), *TINY]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no space left on the device") and err.count("\n") == 1
    assert "rerun the same command" in err


def test_a_backend_that_is_not_installed_is_one_line(tmp_path):
    fake = tmp_path / "fake"
    (fake / "jax").mkdir(parents=True)  # a jax that cannot be imported, as on a machine without it
    (fake / "jax" / "__init__.py").write_text("raise ModuleNotFoundError(\"No module named 'jax'\", name='jax')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake), str(REPO)])}
    result = subprocess.run([sys.executable, "-m", "comp", "train", "--preset", "gpu", "--workdir", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.startswith("error: the jax backend is not installed: pip install 'comp[jax]'")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr


@pytest.mark.slow
def test_python_older_than_the_declared_floor_is_refused_by_pip(tmp_path):
    """pyproject declares Python >= 3.11 (tomllib, and 3.10 reached its end of life in October 2026)."""
    import tomllib

    floor = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert floor == ">=3.11"
    older = next((p for p in (Path.home() / ".pyenv" / "versions").glob("3.10*/bin/python")), None)
    if older is None:
        pytest.skip("no Python 3.10 on this machine to try")
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(wheels), str(REPO)], check=True, capture_output=True)
    venv = tmp_path / "py310"
    subprocess.run([str(older), "-m", "venv", str(venv)], check=True)
    result = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "--no-deps", "--no-index",
                             *map(str, wheels.glob("*.whl"))], capture_output=True, text=True)
    assert result.returncode != 0
    assert "requires a different Python" in result.stderr
