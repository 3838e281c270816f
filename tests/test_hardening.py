"""Issue #28: the wrong input or the failure that used to pass silently, or to print a traceback,
is refused or reported in one line (exit 2), before anything is written."""

from __future__ import annotations

import errno
import time
import os
from pathlib import Path

import pandas as pd
import pytest

from comp.cli import main
from comp.core.errors import CompError

from .conftest import make_competition, run_comp

TINY = ["--model", "baseline", "--width", "0.25", "--epochs", "1", "--folds", "2", "--quiet", "--name", "r"]


# -- --full needs its finished K-fold twin --------------------------------------------------------


def test_full_without_its_kfold_twin_is_refused_with_the_command_that_makes_it(tmp_path, capsys):
    data = make_competition(tmp_path / "d", per_class=8, test_count=6)
    work = tmp_path / "w"
    train = ["train", "--data", str(data), "--workdir", str(work), *TINY]
    capsys.readouterr()
    assert main(train + ["--full", "--seeds", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "0 of 2 folds finished" in err
    twin = err.split("train the folds first: ", 1)[1]
    assert twin.startswith("comp train ") and "--full" not in twin and "--seeds" not in twin
    assert "--name r" in twin
    assert not (work / "folds" / "r" / "full").exists()


# -- the labels CSV's columns are found by name -------------------------------------------------


def kaggle_folder(root: Path, columns: list[str], sample_target: str = "cat") -> Path:
    """train/img<i>.png + train.csv with `columns` (id and label among them), test/, sample_submission.csv."""
    from PIL import Image

    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    rows = []
    for i in range(8):
        Image.new("RGB", (8, 8), (i * 30, 0, 0)).save(root / "train" / f"img{i}.png")
        values = {"id": f"img{i}", "image_id": f"img{i}", "label": "cat" if i % 2 else "dog",
                  "fold": str(i % 4), "width": "8", "height": "8"}
        rows.append({c: values[c] for c in columns})
    pd.DataFrame(rows, columns=columns).to_csv(root / "train.csv", index=False)
    Image.new("RGB", (8, 8)).save(root / "test" / "t0.png")
    pd.DataFrame({"id": ["t0"], "label": [sample_target]}).to_csv(root / "sample_submission.csv", index=False)
    return root


@pytest.mark.parametrize("columns", [["id", "fold", "label"], ["image_id", "width", "height", "label"],
                                     ["label", "id"]])
def test_the_labels_csv_columns_are_found_by_name(tmp_path, capsys, columns):
    from comp.data.sources import load_dataset

    dataset = load_dataset(kaggle_folder(tmp_path / "k", columns), None)
    assert dataset.classes == ["cat", "dog"]  # never the fold numbers, widths or the ids
    assert dataset.train_y.tolist() == [1, 0] * 4  # img0 is a dog, img1 a cat...
    assert "classes unlike" not in capsys.readouterr().err


@pytest.mark.parametrize("columns, said", [(["id", "image", "label"], "several id columns (id, image)"),
                                           (["id", "fold", "width"], "no label column")])
def test_an_ambiguous_or_missing_column_stops_with_the_columns_listed(tmp_path, capsys, columns, said):
    data = kaggle_folder(tmp_path / "k", [c if c != "image" else "image_id" for c in columns])
    if "image" in columns:  # a second id column by name
        frame = pd.read_csv(data / "train.csv", dtype=str).rename(columns={"image_id": "image"})
        frame.to_csv(data / "train.csv", index=False)
    assert main(["data", "check", "--data", str(data), "--workdir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert said in err and "columns: " + ", ".join(columns) in err and "--label-column" in err


def test_the_columns_can_be_named_and_a_class_mismatch_is_warned(tmp_path, capsys, monkeypatch):
    from comp.data.sources import load_dataset

    for variable in ("COMP_ID_COLUMN", "COMP_LABEL_COLUMN"):  # the CLI sets them below: restored after the test
        monkeypatch.setenv(variable, "")

    data = kaggle_folder(tmp_path / "k", ["id", "fold", "label"], sample_target="bird")
    frame = pd.read_csv(data / "train.csv", dtype=str).rename(columns={"id": "picture", "label": "species"})
    frame.to_csv(data / "train.csv", index=False)
    with pytest.raises(CompError, match="no id column among its columns: picture, fold, species"):
        load_dataset(data, None)
    env = {"COMP_ID_COLUMN": "picture", "COMP_LABEL_COLUMN": "species"}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        dataset = load_dataset(data, None)
    assert dataset.classes == ["cat", "dog"]
    said = capsys.readouterr()
    assert "classes unlike the sample submission's" in said.out + said.err and "(bird)" in said.out + said.err
    # The same from the command line: --id-column and --label-column.
    capsys.readouterr()
    assert main(["data", "check", "--data", str(data), "--workdir", str(tmp_path / "w"), "--id-column", "picture",
                 "--label-column", "species"]) == 0
    # Remembered in comp.toml: a later bare command reads the same columns.
    assert 'id_column = "picture"' in (tmp_path / "w" / "comp.toml").read_text()
    for variable in ("COMP_ID_COLUMN", "COMP_LABEL_COLUMN"):
        monkeypatch.setenv(variable, "")
    assert main(["data", "check", "--workdir", str(tmp_path / "w")]) == 0


# -- a failure inside a fold or trial child: one line, the traceback in a log --------------------

# Module-level: the child imports them by name.
def fill_the_disk():
    raise OSError(errno.ENOSPC, "No space left on device", "folds/r/fold0/model.keras")


def run_out_of_memory():
    raise MemoryError("Unable to allocate 12.0 GiB")


def fail_reading():
    raise OSError(errno.EIO, "Input/output error", "folds/cache/images.npy")


def napping():
    """Tells the parent it started, then sleeps; on Ctrl-C takes a second to save (as a fold does), then ends."""
    import time

    from comp.core.isolate import tell_parent

    tell_parent("ready")
    try:
        time.sleep(60)
    except KeyboardInterrupt:
        time.sleep(1.0)  # saving a checkpoint: the parent has long had its own Ctrl-C
        raise


@pytest.mark.parametrize("function, kind, said", [
    (fill_the_disk, CompError, "no space left on the device (folds/r/fold0/model.keras); everything written before "
                               "is intact; free some space and rerun the same command"),
    (run_out_of_memory, "ChildDied", "out of memory (MemoryError: Unable to allocate 12.0 GiB); try a smaller"),
    (fail_reading, "ChildDied", "OSError: [Errno 5] Input/output error: 'folds/cache/images.npy'; check that file"),
])
def test_every_failure_in_a_child_is_one_line_and_its_traceback_is_logged(tmp_path, capfd, function, kind, said):
    from comp.core.isolate import ChildDied, call_in_child

    kind = ChildDied if kind == "ChildDied" else kind
    with pytest.raises(kind) as raised:
        call_in_child(function, what="fold 0", log_dir=tmp_path / "run")
    line = str(raised.value)
    log = tmp_path / "run" / "crash-fold-0.log"
    assert said in line and f"traceback in {log}" in line and "\n" not in line
    assert "Traceback" in log.read_text() and function.__name__ in log.read_text()
    assert "Traceback" not in capfd.readouterr().err  # the child printed none


def test_ctrl_c_reaches_parent_and_child_without_a_traceback(tmp_path):
    import signal
    import subprocess
    import sys

    from .conftest import REPO

    script = ("from comp.core.isolate import call_in_child\n"
              "from tests.test_hardening import napping\n"
              "try:\n"
              "    call_in_child(napping, what='fold 0', on_message=lambda m: print(m, flush=True))\n"
              "except KeyboardInterrupt:\n"
              "    print('interrupted', flush=True)\n")
    process = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={k: v for k, v in os.environ.items() if k != "COMP_NO_ISOLATE"})
    try:
        assert process.stdout.readline().strip() == "ready"
        # The parent echoed "ready" with a print; the case tested is a parent waiting on its child,
        # so let it get back to waiting (on a loaded machine the print may still be flushing).
        time.sleep(1.0)
        os.killpg(process.pid, signal.SIGINT)  # as a terminal's Ctrl-C: parent and child at once
        out, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert out.strip() == "interrupted", err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


# -- every argument is checked before anything is written ---------------------------------------


@pytest.mark.parametrize("command, said", [
    (["train", "--model", "baseline", "--epochs", "0"], "epochs = 0"),
    (["train", "--model", "baseline", "--batch-size", "-3"], "batch_size = -3"),
    (["tune", "--model", "baseline", "--epochs", "0", "--trials", "1"], "epochs = 0"),
    (["data", "check", "--image-size", "3"], "image_size = '3'"),
])
def test_a_bad_value_is_refused_before_anything_is_written(tmp_path, capsys, command, said):
    data = make_competition(tmp_path / "d", per_class=4, test_count=3)
    work = tmp_path / "w"
    capsys.readouterr()
    assert main([*command, "--data", str(data), "--workdir", str(work), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert said in err and len(err.strip().splitlines()) == 1
    assert not work.exists() or not any(work.rglob("*"))  # no comp.toml, no digest cache, no folds/


def test_a_workdir_that_is_a_file_is_refused_in_one_line(tmp_path):
    data = make_competition(tmp_path / "d", per_class=4, test_count=3)
    (tmp_path / "file").write_text("not a folder")
    result = run_comp("data", "check", "--data", data, "--workdir", tmp_path / "file", timeout=600)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f"error: --workdir {tmp_path / 'file'}: a file, not a folder; give a folder (it " \
                                    "is created if missing)"


def test_out_in_a_missing_folder_is_refused_before_the_work(tmp_path, capsys):
    work = tmp_path / "w"
    missing = tmp_path / "nowhere" / "deeper" / "x.csv"
    capsys.readouterr()
    assert main(["ensemble", "--workdir", str(work), "--out", str(missing), "--quiet"]) == 2
    assert "no such folder" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    assert main(["auto", "--time", "1m", "--workdir", str(work), "--out", str(missing), "--quiet"]) == 2
    assert "no such folder" in capsys.readouterr().err and not (tmp_path / "nowhere").exists()
    assert not (work / "folds").exists()


# -- comp auto: interrupted and resumed, within its budget ----------------------------------------


@pytest.mark.slow
def test_auto_interrupted_and_resumed_keeps_its_budget_without_a_traceback(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from comp.core.fileio import read_json

    from .conftest import REPO

    data = make_competition(tmp_path / "d", num_classes=3, per_class=40, test_count=12)
    work = tmp_path / "w"
    state_path = work / "folds" / "auto" / "plan-180s.json"
    command = [sys.executable, "-m", "comp", "auto", "--time", "3m", "--data", str(data), "--workdir", str(work)]
    env = {k: v for k, v in os.environ.items() if k != "COMP_NO_ISOLATE"}  # the CLI's default: a child per fold
    started = time.time()
    first = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        while first.poll() is None and not (state_path.exists() and "plan" in read_json(state_path)):
            time.sleep(0.5)
        time.sleep(8)  # into the folds' training
        os.killpg(first.pid, signal.SIGINT)  # a terminal's Ctrl-C: the command and its fold child at once
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    first_seconds = time.time() - started
    assert first.returncode == 130, err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    assert err.strip().splitlines()[-1].startswith("interrupted: ")
    interrupted = read_json(state_path)
    assert interrupted["spent_seconds"] >= 0.8 * first_seconds  # the time until Ctrl-C is on record
    assert "train folds" in interrupted["stages"]

    resumed_at = time.time()
    second = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    total = first_seconds + time.time() - resumed_at
    assert second.returncode == 0, second.stderr
    assert "continuing the plan" in second.stdout and "measured width" not in second.stdout  # not measured again
    assert read_json(state_path)["plan"] == interrupted["plan"]
    # A gross overrun only: the 105% promise is measured alone on the machine (bench/RESULTS.md), not here.
    assert total <= 1.2 * 180, f"{total:.0f}s for a budget of 180s"
    assert (work / "submissions" / "auto-3.0m.csv").exists()


def test_a_fold_child_logs_its_traceback_in_the_run_folder(tmp_path, monkeypatch, capsys):
    import comp.core.isolate
    from comp.workspace import Workspace

    seen = {}

    def failing_child(function, *args, what, on_message=None, log_dir=None):
        seen[what] = log_dir
        raise comp.core.isolate.ChildDied(what, f"failed: MemoryError: ...; try a smaller --batch-size (traceback in "
                                           f"{comp.core.isolate.crash_log_path(log_dir, what)})")

    monkeypatch.setattr(comp.core.isolate, "call_in_child", failing_child)
    data = make_competition(tmp_path / "d", per_class=4, test_count=3)
    workspace = Workspace(tmp_path / "w", data=data)
    with pytest.raises(CompError, match=r"fold\(s\) 0, 1 of run r died"):
        workspace.train(model="baseline", epochs=1, folds="all", k=2, name="r", isolate=True)
    run_dir = workspace.run_dir("r")
    assert seen == {"fold 0": run_dir, "fold 1": run_dir}
    said = capsys.readouterr()
    assert f"traceback in {run_dir / 'crash-fold-0.log'}" in said.out + said.err
