"""comp ensemble and comp score on the demo set: the CSV's shape, refusals, weights, history."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comp.cli import main

from .conftest import TRAIN_TWO_RUNS as TRAIN


def ensemble(work: Path, *extra: str) -> int:
    return main(["ensemble", "--workdir", str(work), "--quiet", *extra])


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    for key, value in changes.items():
        if key in ("fingerprint", "classes"):
            data["data"][key] = value
        elif key == "folds_hash":
            data["split"]["hash"] = value
        elif key == "pretrained":
            data[key] = value
        else:
            data["config"][key] = value
    path.write_text(json.dumps(data))


def clone_run(work: Path, source: str, name: str, into: str = "folds") -> Path:
    destination = work / into / name
    shutil.copytree(work / "folds" / source, destination)
    return destination


# -- the CSV ---------------------------------------------------------------------------------


def test_bare_ensemble_writes_the_sample_shape(shared, work):
    assert ensemble(work, "--out", "first.csv") == 0
    out = work / "submissions" / "first.csv"
    sample = pd.read_csv(shared / "demo" / "sample_submission.csv", dtype=str)
    written = pd.read_csv(out, dtype=str)
    assert list(written.columns) == list(sample.columns)
    assert written["id"].tolist() == sample["id"].tolist()  # same ids, same order
    assert written["target"].str.fullmatch(r"\d").all()  # int targets, as the sample has
    assert not written.isna().any().any()
    index = pd.read_csv(work / "submissions" / "index.csv")
    assert len(index) == 1 and index.loc[0, "runs"] == "a;b"
    assert index.loc[0, "file"].endswith("first.csv")


def test_no_overwrite_without_force_and_index_grows(work, capsys):
    assert ensemble(work, "--out", "x.csv", "--method", "mean") == 0
    assert ensemble(work, "--out", "x.csv", "--method", "mean") == 2
    assert "already exists" in capsys.readouterr().err
    assert ensemble(work, "--out", "x.csv", "--method", "vote", "--force") == 0
    assert ensemble(work) == 0  # default name: ensemble-<time>.csv
    index = pd.read_csv(work / "submissions" / "index.csv")
    assert index["method"].tolist()[:2] == ["mean", "vote"]
    assert len(index) == 3
    assert len(list((work / "submissions").glob("ensemble-*.csv"))) == 1


@pytest.mark.parametrize("method", ["mean", "geomean", "vote", "weights"])
def test_every_method_writes_a_valid_csv(work, method):
    assert ensemble(work, "--runs", "a,b", "--method", method, "--out", f"{method}.csv") == 0
    index = pd.read_csv(work / "submissions" / "index.csv")
    assert index.loc[0, "method"] == method
    if method in ("mean", "weights"):
        weights = [float(w) for w in index.loc[0, "weights"].split(";")]
        assert min(weights) >= 0 and sum(weights) == pytest.approx(1, abs=2e-3)


def test_class_name_targets(tmp_path):
    from sklearn.datasets import load_digits

    from comp.data.demo import write_competition

    digits = load_digits()
    images = np.repeat(np.repeat((digits.images * 15).astype(np.uint8), 4, 1), 4, 2)  # 32x32 grey
    images = np.stack([images] * 3, axis=-1)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    data = write_competition(tmp_path / "named", images[:240], digits.target[:240], names,
                             images[240:290], digits.target[240:290], target_kind="name")
    work = tmp_path / "w"
    assert main(["train", "--data", str(data), "--workdir", str(work), *TRAIN, "--limit", "0", "--name", "n"]) == 0
    assert ensemble(work, "--out", "named.csv") == 0
    written = pd.read_csv(work / "submissions" / "named.csv", dtype=str)
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    assert written["id"].tolist() == sample["id"].tolist()
    assert set(written["target"]) <= set(names)
    assert main(["score", str(work / "submissions" / "named.csv"), "--answers", str(data / "answers.csv")]) == 0


def test_int_targets_use_the_class_name_when_numeric():
    from comp.stages.submission import target_values

    assert target_values(["3", "10", "7"], "int") == [3, 10, 7]  # folder 10 means target 10
    assert target_values(["cat", "dog"], "int") == [0, 1]
    assert target_values(["cat", "dog"], "name") == ["cat", "dog"]


# -- refusals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("key, value, words", [
    ("folds_hash", "000000000000", "different fold splits"),
    ("classes", [str(i) for i in range(9)] + ["ten"], "different class lists"),
    ("fingerprint", "0123456789abcdef", "other data"),
])
def test_refuses_incompatible_runs(work, capsys, key, value, words):
    clone = clone_run(work, "a", "odd")
    edit_json(clone / "config.json", **{key: value})
    assert ensemble(work, "--runs", "a,odd", "--out", "o.csv") == 2
    err = capsys.readouterr().err
    assert words in err and "odd" in err
    assert not (work / "submissions" / "o.csv").exists()


def test_refuses_other_rows(work, capsys):
    clone = clone_run(work, "a", "fewer")
    np.save(clone / "oof_rows.npy", np.load(clone / "oof_rows.npy")[::-1].copy() + 1)
    assert ensemble(work, "--runs", "a,fewer") == 2
    assert "different train rows" in capsys.readouterr().err
    assert ensemble(work, "--out", "default.csv") == 0  # the default leaves the odd run out
    index = pd.read_csv(work / "submissions" / "index.csv")
    assert "fewer" not in index.loc[0, "runs"]


def test_limit_picks_the_runs_of_that_subsample(work, capsys):
    assert ensemble(work, "--limit", "300", "--out", "l.csv") == 0  # how run.sh passes its arguments
    assert ensemble(work, "--limit", "200") == 2
    assert "--limit 200" in capsys.readouterr().err
    assert ensemble(work, "--runs", "a", "--limit", "200") == 2
    assert "other rows" in capsys.readouterr().err


def test_refuses_pretrained_unless_allowed(work, capsys):
    study = clone_run(work, "b", "x", into="studies")
    edit_json(study / "config.json", pretrained=True)
    assert ensemble(work, "--runs", "a,studies/x") == 2
    err = capsys.readouterr().err
    assert "studies/x" in err and "pretrained" in err and "forbid" in err
    assert ensemble(work, "--runs", "a,studies/x", "--allow-pretrained", "--out", "p.csv") == 0


def test_unknown_run_and_missing_tta_say_what_to_do(work, capsys):
    assert ensemble(work, "--runs", "a,nope") == 2
    assert "nope" in capsys.readouterr().err
    assert ensemble(work, "--runs", "a,b", "--tta", "flip-shift") == 2
    assert "comp predict --run a --tta flip-shift" in capsys.readouterr().err


# -- weights ---------------------------------------------------------------------------------


def test_fitted_weights_favour_better_runs_and_help_on_rows_they_were_not_fitted_on():
    from comp.stages.ensemble import blend_mean, fit_weights
    from comp.core.scoring import accuracy

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 4000)
    runs = []
    for noise in (1.0, 1.5, 4.0):  # three runs of different quality, their errors independent
        logits = np.eye(5)[labels] * 2 + rng.normal(0, noise, (4000, 5))
        runs.append(np.exp(logits) / np.exp(logits).sum(1, keepdims=True))
    fit, check = slice(0, 2000), slice(2000, 4000)
    weights = fit_weights([p[fit] for p in runs], labels[fit])
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1)
    assert weights[0] > weights[1] > weights[2]  # the better a run, the more it weighs
    # On rows the weights never saw, blending two runs with independent errors beats the best one.
    blended = accuracy(blend_mean([p[check] for p in runs], weights), labels[check])
    assert blended > accuracy(runs[0][check], labels[check])


def test_weights_on_real_runs_beat_the_best_single(shared):
    from comp.stages.ensemble import blend_mean, fit_weights
    from comp.store.runs import load_run
    from comp.core.scoring import accuracy
    from comp.workspace import Workspace

    workspace = Workspace(shared / "work")
    runs = [load_run(workspace, n) for n in ("a", "b")]
    labels = np.load(shared / "work" / "folds" / "a" / "oof_rows.npy")  # rows; labels come next
    from comp.data.sources import load_dataset

    dataset = load_dataset(shared / "demo", workspace.cache)
    labels = dataset.train_y[labels]
    oofs = [r.read_oof(t) for r, t in zip(runs, ("", ".flip"))]
    weights = fit_weights(oofs, labels)
    assert (weights >= 0).all() and weights.sum() == pytest.approx(1)
    assert accuracy(blend_mean(oofs, weights), labels) >= max(accuracy(p, labels) for p in oofs)


def test_geomean_and_vote():
    from comp.stages.ensemble import blend_geomean, blend_vote

    p = [np.array([[0.6, 0.4]]), np.array([[0.6, 0.4]]), np.array([[0.1, 0.9]])]
    assert blend_vote(p).argmax(1).tolist() == [0]  # two votes beat one confident vote
    assert np.allclose(blend_geomean(p).sum(1), 1)
    tie = [np.array([[0.51, 0.49]]), np.array([[0.2, 0.8]])]
    assert blend_vote(tie).argmax(1).tolist() == [1]  # a tie goes to the higher mean probability


# -- comp score --------------------------------------------------------------------------------


def test_score_against_answers(shared, work, tmp_path, capsys):
    answers = shared / "demo" / "answers.csv"
    assert main(["score", str(answers), "--answers", str(answers)]) == 0
    assert "accuracy 1.0000" in capsys.readouterr().out
    assert ensemble(work, "--out", "s.csv") == 0
    assert main(["score", str(work / "submissions" / "s.csv"), "--answers", str(answers)]) == 0
    assert "accuracy 0." in capsys.readouterr().out
    short = pd.read_csv(answers, dtype=str).iloc[:-3]
    short.loc[0, "id"] = "9999"
    short.to_csv(tmp_path / "short.csv", index=False)
    assert main(["score", str(tmp_path / "short.csv"), "--answers", str(answers)]) == 2
    err = capsys.readouterr().err
    assert "4 answer id(s) missing" in err and "1 submission id(s) not in the answers" in err


def ensemble_out(work: Path, capsys, *extra: str) -> tuple[int, str]:
    """Run comp ensemble without --quiet: (exit code, everything it printed)."""
    code = main(["ensemble", "--workdir", str(work), *extra])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize("file", ["oof_probs.npy", "fold1/test_probs.npy"])
def test_refuses_non_finite_probabilities(work, capsys, file):
    clone = clone_run(work, "a", "diverged")
    probs = np.load(clone / file)
    probs[3] = np.nan
    np.save(clone / file, probs)
    assert ensemble(work, "--runs", "a,diverged", "--out", "n.csv") == 2
    err = capsys.readouterr().err
    assert f"diverged: {clone / file} holds non-finite probabilities" in err and "retrain it" in err
    assert len(err.strip().splitlines()) == 1
    assert not (work / "submissions" / "n.csv").exists()


def test_keep_best_runs_are_named_and_get_no_fitted_weights(work, capsys):
    edit_json(work / "folds" / "a" / "config.json", keep="best")
    edit_json(work / "folds" / "b" / "config.json", keep="last")
    code, out = ensemble_out(work, capsys, "--runs", "a,b", "--out", "k.csv")
    assert code == 0
    assert "a: trained with keep=best" in " ".join(out.split())
    assert "b: trained with keep=best" not in out and "a, b: trained" not in out
    assert "no weights fitted on the keep=best OOF of a" in " ".join(out.split())
    index = pd.read_csv(work / "submissions" / "index.csv", dtype=str)
    assert index.loc[0, "method"] == "mean" and index.loc[0, "weights"] == "0.500;0.500"
    code, out = ensemble_out(work, capsys, "--runs", "a,b", "--method", "weights", "--out", "w.csv")
    assert code == 0 and "--method weights: fitted on the keep=best OOF of a" in " ".join(out.split())
    edit_json(work / "folds" / "a" / "config.json", keep="last")
    code, out = ensemble_out(work, capsys, "--runs", "a,b", "--out", "l.csv")
    assert code == 0 and "keep=best" not in out


def test_auto_never_fits_weights_on_keep_best_runs():
    from comp.stages.ensemble import choose_method

    assert choose_method(0.80, 0.85, []) == "weights"
    assert choose_method(0.80, 0.85, ["a"]) == "mean"
    assert choose_method(0.85, 0.85, []) == "mean"


def test_warns_on_a_run_at_chance_and_a_constant_submission(work, capsys):
    dull = clone_run(work, "a", "dull")
    classes = np.load(dull / "oof_probs.npy").shape[1]
    np.save(dull / "oof_probs.npy", np.full(np.load(dull / "oof_probs.npy").shape, 1 / classes, np.float32))
    for test in dull.glob("fold*/test_probs.npy"):
        constant = np.full(np.load(test).shape, 0.099, np.float32)
        constant[:, 4] = 0.109  # always class 4, but barely: blended with a, a decides
        np.save(test, constant)
    code, out = ensemble_out(work, capsys, "--runs", "a,dull", "--method", "mean", "--out", "c.csv")
    text = " ".join(out.split())
    assert code == 0
    assert "dull (0.1" in text and "within noise of chance" in text and "a (" not in text
    assert "constant" not in text  # a still varies the blend's answers
    code, out = ensemble_out(work, capsys, "--runs", "dull", "--out", "d.csv")
    text = " ".join(out.split())
    assert code == 0 and "within noise of chance" in text
    assert "every one of the 360 test rows is predicted '4' (runs dull)" in text
    assert (pd.read_csv(work / "submissions" / "d.csv")["target"] == 4).all()


def test_chance_line_is_the_largest_class_plus_two_standard_errors():
    from comp.stages.ensemble import chance_line

    labels = np.array([0] * 75 + [1] * 25)  # 75% is what always answering 0 scores
    chance, line = chance_line(labels)
    assert chance == 0.75 and line == pytest.approx(0.75 + 2 * np.sqrt(0.75 * 0.25 / 100))


# -- TTA chosen per run on OOF -------------------------------------------------------------------


def spoil(path: Path) -> None:
    """Make a run's OOF prediction file certainly wrong: every row's probability on a class other
    than its own (shuffling rows would not do: a near-chance tiny run scores alike either way)."""
    from comp.store.runs import load_run, oof_labels
    from comp.workspace import Workspace

    labels = oof_labels(load_run(Workspace(path.parents[2]), path.parent.name))
    probs = np.load(path)
    np.save(path, np.eye(probs.shape[1], dtype=probs.dtype)[(labels + 1) % probs.shape[1]])


@pytest.mark.parametrize("spoiled, chosen", [("oof_probs.flip.npy", "none"), ("oof_probs.npy", "flip")])
def test_tta_is_chosen_per_run_by_oof(work, capsys, spoiled, chosen):
    spoil(work / "folds" / "b" / spoiled)
    code, out = ensemble_out(work, capsys, "--runs", "a,b", "--method", "mean", "--out", "t.csv")
    assert code == 0
    text = " ".join(out.split())
    assert f"b: TTA flip {'kept' if chosen == 'flip' else 'dropped'} (OOF accuracy" in text
    assert "a: TTA" not in text  # a trained without flips: nothing to choose
    index = pd.read_csv(work / "submissions" / "index.csv", dtype=str)
    assert index.loc[0, "tta"] == f"none;{chosen}"
    # --tta fixes the policy for every run: no choice, even a spoiled one is used
    assert ensemble(work, "--runs", "b", "--tta", "flip", "--out", "f.csv") == 0
    assert pd.read_csv(work / "submissions" / "index.csv", dtype=str).loc[1, "tta"] == "flip"


# -- error bars ------------------------------------------------------------------------------


def test_ensemble_shows_and_logs_its_error_bars(work, capsys):
    code, out = ensemble_out(work, capsys, "--runs", "a,b", "--method", "mean", "--out", "e.csv")
    text = " ".join(out.split())
    assert code == 0
    assert "95% CI" in text and "vs best" in text and "ensemble (mean)" in text
    index = pd.read_csv(work / "submissions" / "index.csv")
    row = index.loc[0]
    start = list(index.columns).index("ci_accuracy")  # the metric's columns (comp.core.metrics) come after
    assert list(index.columns[start:start + 7]) == ["ci_accuracy", "ci_low", "ci_high", "best_run", "gain",
                                                    "gain_low", "gain_high"]
    assert row["ci_accuracy"] == row["oof_accuracy"]  # mean fits nothing: the interval is around its OOF score
    assert row["ci_low"] <= row["ci_accuracy"] <= row["ci_high"] and row["gain_low"] <= row["gain"] <= row["gain_high"]
    assert row["best_run"] in ("a", "b")
    assert (f"error bars: ensemble {row['ci_accuracy']:.4f} (95% CI {row['ci_low']:.3f}-{row['ci_high']:.3f}), "
            f"vs the best run {row['best_run']} {row['gain']:+.4f}") in text


def test_submission_object_carries_the_intervals(work):
    from comp.core.stats import Interval
    from comp.workspace import Workspace

    sub = Workspace(work).ensemble(["a", "b"], out="api.csv", method="vote")
    assert isinstance(sub.oof_interval, Interval) and isinstance(sub.gain_over_best, Interval)
    assert sub.oof_interval.estimate == pytest.approx(sub.oof_accuracy)
    assert sub.oof_interval.low <= sub.oof_accuracy <= sub.oof_interval.high
    assert sub.best_run in ("a", "b")
    assert sub.gain_over_best.low <= sub.gain_over_best.estimate <= sub.gain_over_best.high


def test_a_blend_of_one_run_twice_gains_exactly_nothing(work):
    from comp.workspace import Workspace

    clone_run(work, "a", "a2")
    sub = Workspace(work).ensemble(["a", "a2"], out="twice.csv", method="mean")
    assert tuple(sub.gain_over_best) == (0.0, 0.0, 0.0) and not sub.gain_over_best.real


def test_weights_are_given_error_bars_on_the_checked_blend(work, capsys):
    from comp.stages.ensemble import checked_weights_blend
    from comp.core.scoring import accuracy
    from comp.workspace import Workspace

    code, out = ensemble_out(work, capsys, "--runs", "a,b", "--method", "weights", "--tta", "none", "--out", "w.csv")
    assert code == 0 and "on the checked blend" in " ".join(out.split())
    row = pd.read_csv(work / "submissions" / "index.csv").loc[0]
    workspace = Workspace(work)
    runs = [workspace.run(name) for name in ("a", "b")]
    labels = workspace.dataset().train_y[runs[0].oof_rows()]
    checked = accuracy(checked_weights_blend([r.read_oof().astype(np.float64) for r in runs], labels), labels)
    assert row["ci_accuracy"] == pytest.approx(checked, abs=1e-4)  # not the fitted oof_accuracy
    assert row["ci_low"] <= checked <= row["ci_high"]


def test_an_old_index_still_loads_and_gains_the_columns(work):
    old = pd.DataFrame([{"time": "2026-01-01 00:00:00", "file": "submissions/old.csv", "runs": "a", "weights": "1.000",
                         "method": "mean", "tta": "none", "oof_accuracy": "0.5000", "oof_rows": "300",
                         "fingerprint": "f"}])
    (work / "submissions").mkdir()
    old.to_csv(work / "submissions" / "index.csv", index=False)
    assert ensemble(work, "--runs", "a,b", "--method", "mean", "--out", "new.csv") == 0
    index = pd.read_csv(work / "submissions" / "index.csv", dtype=str, keep_default_na=False)
    assert list(index.columns[:len(old.columns)]) == list(old.columns)
    assert index.loc[0, "file"] == "submissions/old.csv" and index.loc[0, "ci_low"] == ""  # old row: empty
    assert index.loc[1, "file"].endswith("new.csv") and float(index.loc[1, "ci_low"]) > 0


def oof_member(name: str, oof: np.ndarray, tag: str = ""):
    """An ensemble member from OOF probabilities alone (a run that trained with keep=last)."""
    from types import SimpleNamespace

    from comp.stages.ensemble import Member

    return Member(SimpleNamespace(name=name, kind="kfold", config={"keep": "last"}), tag, oof, oof[:0])


def test_error_bars_of_a_blend_that_beats_its_best_member():
    from comp.stages.ensemble import blend_error_bars, decide_blend

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, 4000)
    members = []
    for noise in (1.0, 1.1, 1.2):  # three runs of similar quality with independent errors
        logits = np.eye(5)[labels] * 2 + rng.normal(0, noise, (4000, 5))
        members.append(oof_member(f"noise{noise}", np.exp(logits) / np.exp(logits).sum(1, keepdims=True)))
    bars = blend_error_bars(members, labels, decide_blend(members, labels, "mean"))
    assert bars.best == 0 and bars.gain.low > 0 and bars.gain.real  # the mean of three really helps
    assert bars.member_gains[0] == (0.0, 0.0, 0.0) and bars.member_gains[2].high < 0


def test_no_error_bars_when_the_weights_cannot_be_checked():
    from comp.stages.ensemble import blend_error_bars, decide_blend

    labels = np.array([0, 0, 0, 1, 1, 2])  # class 2 has one row: nothing to hold out
    oofs = [np.eye(3)[labels] * 0.5 + 0.1, np.full((6, 3), 1 / 3)]
    members = [oof_member(f"run{i}", p) for i, p in enumerate(oofs)]
    choice = decide_blend(members, labels, "weights")
    assert choice.checked_probs is None
    bars = blend_error_bars(members, labels, choice)
    assert not bars.ensemble.known and not bars.gain.known and bars.members[0].known


def test_the_runs_table_fits_80_columns_with_its_error_bars():
    import io

    from rich.console import Console

    from comp.stages.ensemble import blend_error_bars, decide_blend, members_table

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, 1000)
    members = [oof_member(name, rng.dirichlet(np.ones(10), 1000), ".flip-shift")
               for name in ("fast-large-1a2b3c4d", "a-very-long-run-name-chosen-by-a-user")]
    choice = decide_blend(members, labels, "weights")
    out = io.StringIO()
    Console(file=out, width=80).print(members_table(members, labels, choice, blend_error_bars(members, labels, choice)))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "fast-large-1a2b3c4d" in text and "flip-shift" in text and "ensemble (checked)" in text
    assert text.count("..") == 2  # the second run's and the ensemble's difference from the best
