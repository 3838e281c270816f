"""comp tune: search space, resume, step offsets, kill-and-retry on SQLite, workers sharing PostgreSQL.

Everything runs on a tiny generated competition (3 classes x 30 images of 16x16, the class is the
dominant colour) with the baseline CNN at a quarter width and one epoch, so a trial takes a second.
"""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState

from comp.cli import main
from comp.config.run_config import RunConfig, build_config, load_config_file
from comp.data.demo import write_competition
from comp.core.errors import CompError
from comp.core.fileio import read_json
from comp.stages.train import resolve_config
from comp.stages.tune import fixed_names, space as tune_space, storage as tune_storage, trial as tune_trial
from comp.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # tests/pg.py, the PostgreSQL helper, whatever pytest's import mode
import pg  # noqa: E402
TINY = ["--model", "baseline", "--epochs", "1", "--width", "0.25", "--batch-size", "16"]
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])

    def images(per_class: int):
        labels = np.repeat(np.arange(3), per_class)
        noise = rng.normal(0, 60, (len(labels), 16, 16, 3))
        return np.clip(colours[labels][:, None, None, :] + noise, 0, 255).astype(np.uint8), labels

    (train_x, train_y), (test_x, test_y) = images(30), images(4)
    return write_competition(tmp_path_factory.mktemp("data"), train_x, train_y, ["red", "green", "blue"],
                             test_x, test_y)


def run_tune(workdir: Path, data: Path, *extra: str) -> int:
    return main(["tune", "--workdir", str(workdir), "--data", str(data), "--quiet", *TINY, *extra])


def sqlite_url(workdir: Path) -> str:
    return f"sqlite:///{workdir / 'folds' / 'optuna.db'}"


def load(url: str, name: str = "tune-baseline") -> optuna.Study:
    return optuna.load_study(study_name=name, storage=tune_storage.with_driver(url))


def worker(workdir: Path, data: Path, *extra: str) -> subprocess.Popen:
    """A `comp tune` process, as a user (or a second machine) would start it."""
    cmd = [sys.executable, "-m", "comp", "tune", "--workdir", str(workdir), "--data", str(data), "--quiet",
           *TINY, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


# -- the search space ------------------------------------------------------------------------------


def space_for(tmp_path: Path, text: str, suffix: str, model: str = "vgg", **overrides) -> tune_space.Space:
    path = tmp_path / f"space{suffix}"
    path.write_text(text)
    overrides = {"model": model, **overrides}
    base = resolve_config(Workspace(tmp_path), "fingerprint", None, overrides, use_latest_best=False)
    return tune_space.build_space(base, 1000, path, fixed_names(overrides))


SPACE_JSON = '{"lr": {"low": 1e-4, "high": 1e-2, "log": true}, "batch_size": {"choices": [64, 128]}, ' \
             '"dropout": 0.3, "mixup": null}'
SPACE_TOML = 'dropout = 0.3\nmixup = false\n[lr]\nlow = 1e-4\nhigh = 1e-2\nlog = true\n' \
             '[batch_size]\nchoices = [64, 128]\n'
SPACE_YAML = 'lr: {low: 1.0e-4, high: 1.0e-2, log: true}\nbatch_size: {choices: [64, 128]}\ndropout: 0.3\nmixup: null\n'


@pytest.mark.parametrize("text,suffix", [(SPACE_JSON, ".json"), (SPACE_TOML, ".toml"), (SPACE_YAML, ".yaml")])
def test_space_file_narrows_fixes_and_removes(tmp_path, text, suffix):
    space = space_for(tmp_path, text, suffix)
    lr = space.distributions["lr"]
    assert (lr.low, lr.high, lr.log) == (1e-4, 1e-2, True)
    assert space.distributions["batch_size"].choices == (64, 128)
    assert "dropout" not in space.distributions and space.base.dropout == 0.3  # fixed
    assert "mixup" not in space.distributions and space.base.mixup == 0.0  # not searched: the config's value
    assert "depth_scale" in space.distributions  # vgg has a depth


def test_default_space_fits_the_model(tmp_path):
    space = space_for(tmp_path, "{}", ".json", model="baseline")
    assert "depth_scale" not in space.distributions  # the baseline has no depth
    assert set(space.distributions) >= {"lr", "weight_decay", "dropout", "width", "batch_size", "mixup", "augment",
                                        "label_smoothing"}
    vgg = build_config(None, {"model": "deep"})
    assert tune_space.apply_params(vgg, {"depth_scale": 0.5}, False).depth == [2, 2, 2, 2]  # 3,3,4,4 halved, rounded up
    assert tune_space.apply_params(vgg, {"depth_scale": 2.0}, False).depth == [6, 6, 8, 8]
    # Test-time augmentation follows the augmentation a trial trains with, unless the user chose it.
    assert tune_space.apply_params(vgg, {"augment": "flip"}, tta_auto=True).tta == "flip"
    assert tune_space.batch_choices(64, 100_000) == [32, 64, 128, 256]
    assert tune_space.batch_choices(64, 200) == [32]  # at least MIN_STEPS_PER_EPOCH steps


def test_space_partial_range_flags_and_errors(tmp_path):
    dropout = space_for(tmp_path, '{"dropout": {"high": 0.3}}', ".json").distributions["dropout"]
    assert (dropout.low, dropout.high) == (0.0, 0.3)  # the default low is kept
    flagged = space_for(tmp_path, "{}", ".json", lr=0.02, depth=[1, 1, 1, 1])
    assert "lr" not in flagged.distributions and flagged.base.lr == 0.02  # a flag fixes the parameter
    assert "depth_scale" not in flagged.distributions
    bad = {
        '{"cutmix": {"low": 0.1}}': "give low and high",  # no default range to complete
        '{"depth": [3, 3, 4, 4]}': "depth_scale",
        '{"lr": {"low": 0, "high": 1, "log": true}}': "lr",
        '{"augment": {"choices": ["flip", "sparkles"]}}': "sparkles",
        '{"learning_rate": {"low": 1, "high": 2}}': "cannot be searched",
        '{"batch_size": {"low": 16.5, "high": 64}}': "whole number",
        "[1, 2]": "mapping",
    }
    for text, words in bad.items():
        with pytest.raises(CompError, match=words):
            space_for(tmp_path, text, ".json")
    with pytest.raises(CompError, match="also given as --lr"):
        space_for(tmp_path, '{"lr": {"low": 0.001, "high": 0.01}}', ".json", lr=0.02)


def test_report_steps_never_collide():
    steps = [tune_trial.report_step(fold, epoch, 4) for fold in range(3) for epoch in range(4)]
    assert steps == list(range(12))


class FakeTrial:
    def __init__(self, prune: bool):
        self.prune, self.reports, self.user_attrs = prune, {}, {}

    def report(self, value, step):
        assert step not in self.reports, "a step reported twice: Optuna would drop the second value"
        self.reports[step] = value

    def should_prune(self):
        return self.prune

    def set_user_attr(self, key, value):
        self.user_attrs[key] = value


def test_reporter_prunes_but_never_on_the_final_epoch():
    trial = FakeTrial(prune=True)
    with pytest.raises(optuna.TrialPruned):
        tune_trial.make_reporter(trial, 1, 3, last_fold=False)(2, {"val_accuracy": 0.5})
    assert trial.reports == {5: 0.5} and trial.user_attrs["pruned_at"]["step"] == 5
    final = FakeTrial(prune=True)
    tune_trial.make_reporter(final, 1, 3, last_fold=True)(2, {"val_accuracy": 0.5})  # keeps its score
    assert final.reports == {5: 0.5}


# -- studies ---------------------------------------------------------------------------------------


def test_two_runs_make_one_study_and_best_json_trains_as_found(tmp_path, data_dir):
    work = tmp_path / "work"
    assert run_tune(work, data_dir, "--trials", "2") == 0
    assert run_tune(work, data_dir, "--trials", "2") == 0  # continues the same study
    study = load(sqlite_url(work))
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert all(t.state in FINISHED for t in study.trials)
    for t in study.trials:
        assert len(t.user_attrs["fold_scores"]) == 1 and t.user_attrs["epochs_run"] == [1]

    study_dir = work / "folds" / "tune-baseline"
    best_path = study_dir / "best.json"
    values = load_config_file(str(best_path))
    config = RunConfig.from_dict(values, str(best_path))
    best = study.best_trial
    assert (values["trial"], values["value"], values["study"]) == (best.number, best.value, "tune-baseline")
    for name, value in best.params.items():
        assert getattr(config, name) == value
    assert (study_dir / "trials.csv").exists() and (study_dir / "history.png").exists()

    # comp train --config best.json trains exactly that config, at the epochs given for the final run.
    assert main(["train", "--workdir", str(work), "--data", str(data_dir), "--quiet", "--config", str(best_path),
                 "--fold", "0", "--epochs", "1"]) == 0
    saved = read_json(work / "folds" / config.run_name / "config.json")["config"]
    assert saved == config.to_dict()

    # The study refuses trials scored another way, and a bare tune does not start from best.json.
    assert run_tune(work, data_dir, "--trials", "0", "--epochs", "2") == 2
    workspace = Workspace(work, data_dir)
    fingerprint = workspace.dataset().fingerprint
    base = resolve_config(workspace, fingerprint, None, {}, use_latest_best=False)
    assert base.lr == RunConfig.lr and base.model == RunConfig.model
    bare_train = resolve_config(workspace, fingerprint, None, {"epochs": 1})  # a bare `comp train --epochs 1`
    assert bare_train.to_dict() == config.to_dict()


def test_cv_folds_report_every_epoch_of_every_fold(tmp_path, data_dir):
    work = tmp_path / "work"
    assert run_tune(work, data_dir, "--trials", "1", "--cv-folds", "2", "--epochs", "2", "--pruner", "none") == 0
    (trial,) = load(sqlite_url(work)).trials
    assert sorted(trial.intermediate_values) == [0, 1, 2, 3]  # fold 0: steps 0,1; fold 1: steps 2,3
    scores = trial.user_attrs["fold_scores"]
    assert len(scores) == 2 and trial.value == pytest.approx(np.mean(scores))


def _training(db: Path) -> bool:
    """A trial is RUNNING, beating, and has its parameters (its config is recorded right before training)."""
    try:
        with sqlite3.connect(db, timeout=1) as con:
            return con.execute("SELECT count(*) FROM trials t JOIN trial_heartbeats h ON h.trial_id = t.trial_id "
                               "JOIN trial_user_attributes a ON a.trial_id = t.trial_id "
                               "WHERE t.state = 'RUNNING' AND a.key = 'config'").fetchone()[0] > 0
    except sqlite3.OperationalError:  # the tables do not exist yet, or the worker holds the lock
        return False


@pytest.mark.slow
def test_killed_worker_trial_is_retried(tmp_path, data_dir):
    work, long = tmp_path / "work", ["--epochs", "40", "--pruner", "none", "--heartbeat", "1"]
    proc = worker(work, data_dir, "--trials", "1", *long)
    deadline = time.time() + 120
    while not _training(work / "folds" / "optuna.db"):
        if proc.poll() is not None:
            pytest.fail(f"the worker ended before it could be killed: {proc.stderr.read()[-2000:]}")
        assert time.time() < deadline, "the worker never started a trial"
        time.sleep(0.2)
    proc.kill()  # SIGKILL mid-trial: no chance to tell the storage anything
    proc.wait()
    (trial,) = load(sqlite_url(work)).trials
    assert trial.state == TrialState.RUNNING  # what a dead worker leaves behind
    time.sleep(tune_storage.GRACE_FACTOR * 1 + 1.5)  # let its heartbeat go stale
    assert run_tune(work, data_dir, "--trials", "1", *long) == 0
    killed, retry = load(sqlite_url(work)).trials
    assert killed.state == TrialState.FAIL
    assert retry.state == TrialState.COMPLETE and retry.system_attrs["failed_trial"] == 0
    assert retry.params == killed.params
    assert (work / "folds" / "tune-baseline" / "best.json").exists()


@pytest.mark.slow
def test_workers_share_a_postgresql_study(tmp_path, data_dir):
    server, why = pg.start()
    if server is None:
        pytest.skip(f"cannot start a PostgreSQL server: {why}")
    try:
        # Two workers with their own workdirs, as on two machines, started together on a new database.
        common = ["--storage", server.url, "--study", "shared", "--trials", "2", "--heartbeat", "5"]
        procs = [worker(tmp_path / f"machine{i}", data_dir, *common) for i in range(2)]
        for proc in procs:
            _, err = proc.communicate(timeout=1800)
            assert proc.returncode == 0, err[-2000:]
        trials = load(server.url, "shared").trials
        assert sorted(t.number for t in trials) == [0, 1, 2, 3]  # every trial once, none lost
        assert all(t.state in FINISHED for t in trials)
        assert all((tmp_path / f"machine{i}" / "folds" / "shared" / "trials.csv").exists() for i in range(2))
    finally:
        server.stop()


def test_bad_storage_is_one_line(tmp_path, data_dir, capsys):
    assert run_tune(tmp_path / "w", data_dir, "--trials", "0", "--storage", "nosuchdb://x") == 2
    assert "--storage nosuchdb://x" in capsys.readouterr().err


def test_a_run_whose_every_trial_fails_says_so(tmp_path, data_dir, capsys, monkeypatch):
    # An error inside training (here a stand-in for running out of memory) fails that trial only;
    # when every trial of the run failed, the command says so in one line and exits 2.
    from comp.engine import trainer

    def out_of_memory(*args, **kwargs):
        raise MemoryError("failed to allocate 4 GB")

    monkeypatch.setattr(trainer, "train_fold", out_of_memory)
    assert run_tune(tmp_path / "w", data_dir, "--trials", "2", "--study", "failing") == 2
    assert "all 2 trials of this run failed" in capsys.readouterr().err
    study = load(sqlite_url(tmp_path / "w"), "failing")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.FAIL]
    assert all("MemoryError: failed to allocate" in t.user_attrs["error"] for t in study.trials)


def sampled(url: str, name: str, trials: int, seed: int) -> list[dict]:
    """Parameters a study of this name samples for `trials` more trials (no training: the space alone)."""
    space = tune_space.build_space(build_config({}, {"model": "vgg", "seed": seed}), 1000)
    study = tune_storage.create_study(tune_storage.open_storage(url, 30), name, optuna.pruners.NopPruner(), seed)
    study.optimize(lambda trial: (tune_space.suggest(trial, space), 0.5)[1], n_trials=trials)
    return [t.params for t in study.trials]


def test_the_sampler_is_seeded_and_a_resumed_study_draws_new_points(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = sampled(url, "a", 3, seed=7)
    assert sampled(url, "b", 3, seed=7) == first  # the same seed: the same start-up trials
    assert sampled(url, "c", 3, seed=8) != first
    resumed = sampled(url, "a", 3, seed=7)  # the same command again continues study "a"
    assert resumed[:3] == first and all(p not in first for p in resumed[3:])


def test_tuning_budgets_stay_with_the_study(tmp_path, data_dir, capsys):
    work = tmp_path / "work"
    assert run_tune(work, data_dir, "--trials", "1", "--limit", "60") == 0  # 1 epoch on 60 rows (TINY)
    best = read_json(work / "folds" / "tune-baseline" / "best.json")
    assert best["tuned"]["epochs"] == 1 and best["tuned"]["limit"] == 60
    capsys.readouterr()
    assert main(["train", "--workdir", str(work), "--data", str(data_dir), "--fold", "0"]) == 0
    out = capsys.readouterr().out
    assert "using the parameters tune found in" in out and "tuned at 1 epochs on 60 rows" in out
    manifest = read_json(next((work / "folds").glob("baseline-*/config.json")))
    # Not the budget: the model's epochs (grown by fit_to_rows on so few rows, never the study's 1).
    assert manifest["config"]["epochs"] >= RunConfig.epochs and manifest["config"]["limit"] == 0
    assert manifest["data"]["rows"] == 90
    assert manifest["config"]["lr"] == best["lr"]  # the tuned parameters are taken
