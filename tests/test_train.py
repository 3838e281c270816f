"""K-fold training: artifacts, OOF coverage, resume after kill -9, refusal on changed data."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from comp.cli import main
from comp.config.run_config import RunConfig, build_config, load_config_file, recipe_names
from comp.core.errors import CompError
from comp.core.fileio import read_json

from .conftest import REPO, make_competition, run_comp

TINY = ["--model", "baseline", "--width", "0.5", "--batch-size", "16"]


def _run_dir(workdir):
    runs = [p for p in (workdir / "folds").iterdir() if (p / "config.json").exists()]
    assert len(runs) == 1
    return runs[0]


def test_kfold_run_writes_every_artifact(tmp_path):
    data = make_competition(tmp_path / "d", num_classes=3, per_class=20, test_count=9)
    work = tmp_path / "w"
    code = main(["train", "--data", str(data), "--workdir", str(work), *TINY, "--epochs", "3", "--folds", "3",
                 "--augment", "flip", "--quiet"])
    assert code == 0
    run = _run_dir(work)
    manifest = read_json(run / "config.json")
    assert manifest["kind"] == "kfold" and manifest["pretrained"] is False
    assert manifest["config"]["model"] == "baseline" and manifest["config"]["tta"] == "flip"
    assert manifest["data"]["classes"] == ["class0", "class1", "class2"]
    assert manifest["split"]["k"] == 3 and manifest["split"]["hash"] == read_json(work / "folds" / "folds.json")["hash"]
    for fold in range(3):
        fold_dir = run / f"fold{fold}"
        for name in ("model.keras", "history.csv", "val_probs.npy", "val_probs.flip.npy", "test_probs.npy",
                     "test_probs.flip.npy", "metrics.json", "curves.png"):
            assert (fold_dir / name).exists(), name
        assert not (fold_dir / "checkpoint").exists()
        assert len(pd.read_csv(fold_dir / "history.csv")) == 3
        assert np.load(fold_dir / "test_probs.npy").shape == (9, 3)
    oof = np.load(run / "oof_probs.npy")
    rows = np.load(run / "oof_rows.npy")
    assert oof.shape == (60, 3) and np.allclose(oof.sum(1), 1, atol=1e-4)
    assert sorted(rows.tolist()) == list(range(60))
    # Each row's OOF prediction came from the one fold that held it out.
    folds = pd.read_csv(work / "folds" / "folds.csv")
    for fold in range(3):
        val = np.flatnonzero(folds["fold"].to_numpy() == fold)
        assert np.allclose(oof[val], np.load(run / f"fold{fold}" / "val_probs.npy"))
    summary = read_json(run / "summary.json")
    labels = folds["label"].to_numpy()
    assert summary["cv_accuracy"] == pytest.approx((oof.argmax(1) == labels).mean())
    assert summary["cv_accuracy"] > 0.6  # the classes are visible: training must learn them


def test_finished_folds_are_skipped_and_changed_data_refused(tmp_path, capsys):
    data = make_competition(tmp_path / "d", per_class=10)
    work = tmp_path / "w"
    args = ["train", "--data", str(data), "--workdir", str(work), *TINY, "--epochs", "1", "--folds", "2", "--quiet"]
    assert main(args + ["--fold", "0"]) == 0
    run = _run_dir(work)
    stamp = (run / "fold0" / "metrics.json").stat().st_mtime_ns
    assert not (run / "oof_probs.npy").exists()  # only when every fold is done
    assert main(args) == 0
    assert (run / "fold0" / "metrics.json").stat().st_mtime_ns == stamp
    assert (run / "oof_probs.npy").exists()
    # A run made before the newer fields (sampler, class_weight, run_folds) existed continues as their defaults.
    from comp.core.fileio import write_json
    manifest = read_json(run / "config.json")
    for key in ("sampler", "class_weight", "run_folds"):
        del manifest["config"][key]
    write_json(run / "config.json", manifest)
    assert main(args) == 0
    assert (run / "fold0" / "metrics.json").stat().st_mtime_ns == stamp
    # Another fold count on the same data: refused with the fix named.
    assert main(args[:-3] + ["--folds", "3", "--quiet"]) == 2
    # Relabel one image: the run refuses to continue on other data.
    victim = next((data / "train" / "class0").iterdir())
    victim.rename(data / "train" / "class1" / f"moved{victim.name}")
    capsys.readouterr()
    assert main(args) == 2
    assert "this run was made on another dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_after_kill_9(tmp_path):
    """Kill the process during fold 1; the rerun keeps fold 0 and continues fold 1 from its checkpoint."""
    data = make_competition(tmp_path / "d", per_class=40)
    work = tmp_path / "w"
    args = ["train", "--data", data, "--workdir", work, *TINY, "--epochs", "6", "--folds", "2", "--keep", "last"]
    proc = subprocess.Popen([sys.executable, "-m", "comp", *map(str, args)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    state = None
    while time.time() < deadline:
        state = next(work.glob("folds/*/fold1/checkpoint/state.json"), None)
        try:
            if state is not None and read_json(state)["epoch"] >= 2:
                break
        except FileNotFoundError:  # caught between the two renames of a checkpoint swap
            pass
        time.sleep(0.05)
    assert state is not None, "fold 1 never wrote a checkpoint"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    time.sleep(1.0)  # the fold worker dies with its parent (PR_SET_PDEATHSIG); let it go first
    run = state.parents[2]
    fold0_stamp = (run / "fold0" / "metrics.json").stat().st_mtime_ns
    from comp.engine.checkpoints import _find_checkpoint

    killed_at = read_json(_find_checkpoint(run / "fold1") / "state.json")["epoch"]  # what a resume uses
    assert 2 <= killed_at < 6
    result = run_comp(*args)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "fold 0: finished earlier" in result.stdout
    assert f"resuming after epoch {killed_at}" in result.stdout
    assert (run / "fold0" / "metrics.json").stat().st_mtime_ns == fold0_stamp
    history = pd.read_csv(run / "fold1" / "history.csv")
    assert history["epoch"].tolist() == [1, 2, 3, 4, 5, 6]
    assert (run / "oof_probs.npy").exists()


def test_machine_presets_set_defaults_that_flags_override(tmp_path, monkeypatch):
    from comp.stages.train import resolve_config
    from comp.workspace import Workspace

    def resolve(preset, **overrides):
        return resolve_config(Workspace(tmp_path), "none", None, overrides, preset)

    cpu = resolve("cpu")
    assert (cpu.model, cpu.width, cpu.epochs, cpu.folds, cpu.precision, cpu.val_every) == \
        ("airbench94", 1.0, 15, 2, "auto", 0)  # auto: bfloat16 where the CPU computes it natively
    # Where the data already has a split, the preset's fold count gives way to it (every run shares it).
    from comp.data import folds

    monkeypatch.setattr(folds, "existing_k", lambda workspace, fingerprint: 5)
    assert resolve("cpu").folds == 5 and resolve("cpu", folds=3).folds == 3
    gpu = resolve("gpu", epochs=3)
    assert (gpu.model, gpu.precision, gpu.jit, gpu.batch_size) == ("fast-large", "bfloat16", "on", 512)
    assert gpu.epochs == 3 and gpu.augment == "alt-flip-crop,cutout"  # override, then the model's default
    assert resolve("gpu", model="fast").model == "fast"


def test_gpu_settings_on_this_cpu_are_warned_about(capsys):
    from comp.stages.train import warn_gpu_settings_on_cpu

    for flags in ({"jit": "on"}, {"precision": "float16"}):
        warn_gpu_settings_on_cpu(build_config({}, flags))
        assert "no GPU found" in capsys.readouterr().out  # CI machines have no GPU
    for precision in ("float32", "auto"):
        warn_gpu_settings_on_cpu(build_config({}, {"jit": "auto", "precision": precision}))
        assert capsys.readouterr().out == ""


def test_auto_precision_is_bfloat16_only_where_the_cpu_computes_it(tmp_path, monkeypatch):
    from comp.core import backend

    cpuinfo, has_bfloat16 = tmp_path / "cpuinfo", backend.cpu_has_bfloat16
    for flags, native in (("fpu sse avx2 avx512f", False), ("fpu avx512f avx512_bf16", True), ("amx_bf16 x", True)):
        cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
        assert has_bfloat16(str(cpuinfo)) is native
        monkeypatch.setattr(backend, "cpu_has_bfloat16", lambda native=native: native)
        assert backend.resolve_precision("auto") == ("bfloat16" if native else "float32")  # no GPU here
        assert backend.resolve_precision("float32") == "float32"
    assert has_bfloat16(str(tmp_path / "missing")) is False


def test_config_precedence_and_recipes(tmp_path):
    file_values = {"model": "vgg", "epochs": 7, "lr": 0.01}
    config = build_config(file_values, {"epochs": 3, "lr": None})
    assert config.epochs == 3 and config.lr == 0.01  # flag beats file; None is "not given"
    assert config.depth == [2, 2, 2, 2]  # the model's own default
    assert config.run_name.startswith("vgg-")
    assert build_config(file_values, {}).run_name != config.run_name
    assert {"small-cnn", "small-cnn-aug", "vgg-mixup", "deep-mixup"} <= set(recipe_names())
    deep = build_config(load_config_file("deep-mixup"), {})
    assert deep.depth == [3, 3, 4, 4] and deep.head == [256, 64] and deep.mixup == 0.2
    with pytest.raises(CompError, match="unknown key"):
        RunConfig.from_dict({"modle": "vgg"})
    with pytest.raises(CompError, match="optimizer"):
        build_config({}, {"optimizer": "rmsprop"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CompError, match="bad.json"):
        load_config_file(str(bad))
    # A bad value is reported under where it came from: the flag, or the file.
    with pytest.raises(CompError, match=r"^options: lookahead = 1.5"):
        build_config({"model": "fast"}, {"lookahead": 1.5}, source="best.json")
    with pytest.raises(CompError, match=r"^best.json: lookahead = 1.5"):
        build_config({"model": "fast", "lookahead": 1.5}, {"epochs": 2}, source="best.json")
    with pytest.raises(CompError, match=r"^best.json: lookahead = 1.5"):
        build_config({"model": "fast", "lookahead": 1.5}, {}, source="best.json")


def test_bare_train_uses_remembered_data(tmp_path, monkeypatch):
    data = make_competition(tmp_path / "d", per_class=6)
    work = tmp_path / "w"
    assert main(["data", "check", "--data", str(data), "--workdir", str(work), "--quiet"]) == 0
    monkeypatch.delenv("COMP_DATA", raising=False)
    assert main(["train", "--workdir", str(work), *TINY, "--epochs", "1", "--folds", "2", "--fold", "0",
                 "--quiet"]) == 0
    assert read_json(_run_dir(work) / "config.json")["data"]["data_dir"] == str(data.resolve())


def test_no_data_anywhere_says_how_to_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("COMP_DATA", raising=False)
    result = run_comp("train", "--workdir", tmp_path, cwd=tmp_path)
    assert result.returncode == 2
    assert "--data" in result.stderr and "COMP_DATA" in result.stderr and "comp.toml" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_holdout_run_trains_its_folds_only_and_its_oof_covers_their_rows(tmp_path, capsys):
    """run_folds = 1 of 4: fold 0 alone; the OOF file holds fold 0's rows; the ensemble submits it,
    a full-data fit beside it is scored by them; another fold or run_folds >= K is refused."""
    data = make_competition(tmp_path / "d", num_classes=3, per_class=20, test_count=9)
    work = tmp_path / "w"
    base = ["--data", str(data), "--workdir", str(work), *TINY, "--epochs", "2", "--folds", "4", "--quiet"]
    assert main(["train", *base, "--run-folds", "1", "--augment", "flip"]) == 0
    run = _run_dir(work)
    assert (run / "fold0" / "metrics.json").exists()
    assert not any((run / f"fold{k}").exists() for k in (1, 2, 3))
    folds = pd.read_csv(work / "folds" / "folds.csv")["fold"].to_numpy()
    rows = np.load(run / "oof_rows.npy")
    assert rows.tolist() == np.flatnonzero(folds == 0).tolist() and 0 < len(rows) < 60
    assert np.allclose(np.load(run / "oof_probs.npy"), np.load(run / "fold0" / "val_probs.npy"))
    assert read_json(run / "summary.json")["rows"] == len(rows)
    assert main(["train", *base, "--run-folds", "1", "--augment", "flip", "--full"]) == 0
    assert main(["ensemble", "--workdir", str(work), "--out", "holdout.csv", "--quiet"]) == 0
    submission = pd.read_csv(work / "submissions" / "holdout.csv")
    assert len(submission) == 9
    index = pd.read_csv(work / "submissions" / "index.csv")
    assert index["oof_rows"].iloc[-1] == len(rows)
    capsys.readouterr()
    assert main(["train", *base, "--run-folds", "1", "--augment", "flip", "--fold", "2"]) == 2
    assert "trains fold 0 of 4 only" in capsys.readouterr().err
    assert main(["train", *base, "--run-folds", "4"]) == 2
    assert "run_folds = 4 with folds = 4" in capsys.readouterr().err
    # On a --limit subsample its OOF rows are a part of the limit's: comp ensemble --limit takes it.
    assert main(["train", *base, "--run-folds", "1", "--limit", "40", "--name", "limited"]) == 0
    assert main(["ensemble", "--workdir", str(work), "--limit", "40", "--out", "limited.csv", "--quiet"]) == 0
    assert pd.read_csv(work / "submissions" / "index.csv")["runs"].iloc[-1] == "limited"
    capsys.readouterr()
    # As a pseudo-labelling teacher it has fold-0 test predictions only: a run of every fold is refused.
    assert main(["train", *base, "--pseudo", run.name, "--name", "student"]) == 2
    assert "no fold-1 test predictions" in capsys.readouterr().err
    assert not (work / "folds" / "student").exists()
