"""The competition's metric end to end (issue #23): chosen once (--metric, remembered in comp.toml),
recorded in runs and the submission history, spoken by train, ensemble and score, and the
submission written in the metric's form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comp.cli import main
from comp.core.errors import CompError

from .conftest import make_competition, run_comp

TRAIN = ["--model", "baseline", "--epochs", "2", "--folds", "3", "--width", "0.5", "--quiet", "--name", "r"]


def write_sample(data: Path, form: str) -> None:
    """Rewrite the sample in another form: one probability column per class, or one float column."""
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    classes = sorted(p.name for p in (data / "train").iterdir())
    if form == "probs":
        frame = pd.DataFrame({"id": sample["id"], **{c: 1 / len(classes) for c in classes}})
    else:  # "fraction"
        frame = pd.DataFrame({"id": sample["id"], "target": 0.5})
    frame.to_csv(data / "sample_submission.csv", index=False)


def trained(root: Path, metric: str, form: str | None = None, num_classes: int = 3) -> Path:
    """A tiny competition in `form`, `comp data check --metric` then a bare train: the workdir."""
    data = make_competition(root / "data", num_classes=num_classes, per_class=16, test_count=9)
    if form:
        write_sample(data, form)
    work = root / "work"
    assert main(["data", "check", "--data", str(data), "--workdir", str(work), "--metric", metric, "--quiet"]) == 0
    assert main(["train", "--workdir", str(work), *TRAIN]) == 0  # data and metric from comp.toml
    return work


@pytest.fixture(scope="module")
def f1_work(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("f1"), "f1_macro")


@pytest.fixture(scope="module")
def loss_work(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("loss"), "log_loss", form="probs")


@pytest.fixture(scope="module")
def auc_work(tmp_path_factory) -> Path:
    return trained(tmp_path_factory.mktemp("auc"), "roc_auc", form="fraction", num_classes=2)


def index_row(work: Path) -> dict:
    return pd.read_csv(work / "submissions" / "index.csv", dtype=str, keep_default_na=False).iloc[-1].to_dict()


def test_the_metric_is_remembered_and_recorded(f1_work):
    import tomllib

    assert tomllib.loads((f1_work / "comp.toml").read_text())["metric"] == "f1_macro"
    manifest = json.loads((f1_work / "folds" / "r" / "config.json").read_text())
    assert manifest["metric"] == "f1_macro"
    summary = json.loads((f1_work / "folds" / "r" / "summary.json").read_text())
    assert summary["metric"] == "f1_macro" and 0 <= summary["cv_metric"] <= 1


def test_workspace_resolves_the_metric(tmp_path, f1_work):
    from comp import Workspace
    from comp.core.metrics import score
    from comp.store.runs import oof_labels

    assert Workspace(tmp_path / "fresh").metric == "accuracy"  # nothing said: today's behaviour
    assert Workspace(f1_work).metric == "f1_macro"  # comp.toml
    assert Workspace(f1_work, metric="qwk", remember=False).metric == "qwk"  # explicit wins
    with pytest.raises(CompError, match="unknown metric 'nope'"):
        Workspace(f1_work, metric="nope")
    run = Workspace(f1_work).run("r")  # re-scored from its saved OOF probabilities, nothing retrained
    assert run.oof_score() == pytest.approx(score("f1_macro", oof_labels(run), run.oof_probs))
    assert run.oof_score("accuracy") == pytest.approx(run.oof_accuracy)


def test_f1_macro_pipeline_train_ensemble_score(f1_work, capsys):
    assert main(["ensemble", "--workdir", str(f1_work), "--out", "f1.csv"]) == 0
    out = capsys.readouterr().out
    assert "ensemble OOF f1_macro" in out and "decision rule:" in out
    row = index_row(f1_work)
    for column in ("metric", "oof_metric", "oof_accuracy", "oof_log_loss", "rule", "oof_metric_rule"):
        assert column in row
    assert row["metric"] == "f1_macro" and 0 <= float(row["oof_metric"]) <= 1
    assert row["rule"] in ("identity", "prior_correction")
    frame = pd.read_csv(f1_work / "submissions" / "f1.csv", dtype=str)
    assert list(frame.columns) == ["id", "target"] and frame["target"].str.startswith("class").all()
    assert main(["score", str(f1_work / "submissions" / "f1.csv"), "--workdir", str(f1_work)]) == 0
    out = capsys.readouterr().out
    assert "f1_macro" in out and "accuracy" in out


def test_log_loss_pipeline_writes_probabilities(loss_work, capsys):
    from comp import Workspace

    path = loss_work / "submissions" / "loss.csv"
    assert main(["ensemble", "--workdir", str(loss_work), "--out", "loss.csv"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "ensemble OOF log_loss" in out and "decision rule:" in out
    frame = pd.read_csv(path)
    assert list(frame.columns) == ["id", "class0", "class1", "class2"]
    assert np.allclose(frame.iloc[:, 1:].sum(1), 1, atol=1e-3)
    row = index_row(loss_work)
    assert row["metric"] == "log_loss" and float(row["oof_metric"]) > 0
    assert row["rule"] in ("identity", "temperature")
    assert main(["score", str(path), "--workdir", str(loss_work)]) == 0
    assert "log_loss" in capsys.readouterr().out
    scored = Workspace(loss_work).score(path)
    assert scored["metric"] == "log_loss" and scored["value"] > 0 and 0 <= scored["accuracy"] <= 1


def test_binary_float_sample_gets_the_positive_class_probability(auc_work):
    from comp import Workspace

    submission = Workspace(auc_work).ensemble(out="auc.csv")
    assert submission.metric == "roc_auc" and submission.rule == "identity" and 0 <= submission.oof_score <= 1
    frame = pd.read_csv(submission.path)
    assert list(frame.columns) == ["id", "target"]
    assert frame["target"].between(0, 1).all() and frame["target"].nunique() > 1  # probabilities, not labels
    scored = Workspace(auc_work).score(submission.path)
    assert scored["metric"] == "roc_auc" and 0 <= scored["value"] <= 1


def test_sample_and_metric_that_disagree_are_refused_in_one_line(auc_work):
    result = run_comp("ensemble", "--workdir", auc_work, "--metric", "accuracy", "--out", "x.csv")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "scores labels, not probabilities" in lines[0]


def test_a_bad_metric_name_exits_2_with_one_line(tmp_path):
    result = run_comp("data", "check", "--workdir", tmp_path / "w", "--data", tmp_path, "--metric", "bogus")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "unknown metric 'bogus'" in lines[0] and "f1_macro" in lines[0]


def test_data_check_prints_the_metric_and_a_suggestion(tmp_path, capsys):
    data = make_competition(tmp_path / "data", per_class=4, test_count=3)
    write_sample(data, "probs")
    assert main(["data", "check", "--data", str(data), "--workdir", str(tmp_path / "w")]) == 0
    out = capsys.readouterr().out
    assert "metric: accuracy" in out and "suggested metric: log_loss" in out and "suggestion" in out


def test_map_at_k_writes_space_separated_labels(tmp_path):
    from comp.data.sources import read_submission_format
    from comp.stages.submission import check_format, submission_frame, validate_submission

    (tmp_path / "sample_submission.csv").write_text("id,target\na,x y z\nb,x y z\n")
    fmt = read_submission_format(tmp_path, [])
    classes = ["x", "y", "z"]
    check_format(fmt, classes, "map@3")
    frame = submission_frame(fmt, classes, np.array([[0.1, 0.6, 0.3], [0.5, 0.2, 0.3]]), "map@3")
    assert frame["target"].tolist() == ["y z x", "x z y"]
    frame.to_csv(tmp_path / "out.csv", index=False)
    validate_submission(tmp_path / "out.csv", fmt, classes, "map@3")
    with pytest.raises(CompError, match="scores probabilities"):
        check_format(fmt, classes, "log_loss")


def test_report_has_a_column_of_the_metric(f1_work):
    from comp import Workspace

    assert main(["report", "--workdir", str(f1_work), "--quiet"]) == 0
    board = pd.read_csv(f1_work / "folds" / "report" / "leaderboard.csv")
    assert list(board.columns[-2:]) == ["metric", "cv_metric"] and board["metric"].iloc[0] == "f1_macro"
    assert board["cv_metric"].iloc[0] == pytest.approx(Workspace(f1_work).run("r").oof_score(), abs=1e-4)


def test_tune_follows_the_metric_direction(loss_work):
    from comp import Workspace

    study = Workspace(loss_work).tune(model="baseline", trials=1, epochs=1, width=0.5, isolate=False)
    assert study.optuna.direction.name == "MINIMIZE"
    assert study.optuna.user_attrs["objective"]["metric"] == "log_loss"
    assert study.best_value > 0  # a log loss, not an accuracy


def test_score_reads_every_form(tmp_path):
    from comp.stages.submission import score_submission

    answers = tmp_path / "answers.csv"
    answers.write_text("id,target\na,x\nb,y\nc,z\nd,x\n")
    ranked = tmp_path / "ranked.csv"
    ranked.write_text("id,target\na,x y z\nb,x y z\nc,y x\nd,z y x\n")
    result = score_submission(ranked, answers, "map@3")
    assert result["value"] == pytest.approx((1 + 1 / 2 + 0 + 1 / 3) / 4)
    assert result["accuracy"] == pytest.approx(1 / 4)  # the first label is the guess
    labels = tmp_path / "labels.csv"
    labels.write_text("id,target\na,x\nb,y\nc,y\nd,x\n")
    assert score_submission(labels, answers, "f1_macro")["value"] == pytest.approx((1 + 2 / 3 + 0) / 3)
    binary = tmp_path / "binary_answers.csv"
    binary.write_text("id,target\na,0\nb,1\nc,1\nd,0\n")
    floats = tmp_path / "floats.csv"
    floats.write_text("id,target\na,0.1\nb,0.8\nc,0.4\nd,0.3\n")
    assert score_submission(floats, binary, "roc_auc")["value"] == pytest.approx(1.0)
    with pytest.raises(CompError, match="unknown metric"):
        score_submission(floats, binary, "auc")


def test_predict_scores_tta_under_the_metric(f1_work, capsys):
    from comp import Workspace
    from comp.core.console import set_quiet

    set_quiet(False)  # the fixture trained with --quiet, which stays set in this process
    results = Workspace(f1_work).predict("r", tta="flip")
    assert 0 <= results["probs"]["f1_macro"] <= 1 and "f1_macro" in capsys.readouterr().out


def test_metric_bars_resample_the_metric_itself_in_its_direction():
    from comp.core.metrics import score
    from comp.core.stats import SEED, MetricBars

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 200)
    good = np.eye(3)[labels] * 0.6 + 0.4 / 3
    poor = rng.dirichlet(np.ones(3), 200)
    for metric in ("log_loss", "f1_macro", "map@2"):
        bars = MetricBars(metric, labels, [good, poor], resamples=20)
        drawn = np.random.default_rng(SEED).integers(0, 200, 200)
        assert bars.samples[1, 0] == pytest.approx(score(metric, labels[drawn], poor[drawn]))
        gain = bars.gain(0, 1)
        assert gain.estimate > 0 and gain.low > 0  # good beats poor, whichever way the metric points
