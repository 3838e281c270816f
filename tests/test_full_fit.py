"""Full-data fits: every train row, no holdout; ensemble submits them, scored by the same run's folds."""

from __future__ import annotations

import numpy as np
import pandas as pd

from comp.cli import main
from comp.core.fileio import read_json

from .conftest import make_competition

TINY = ["--model", "baseline", "--width", "0.25", "--epochs", "1", "--folds", "2", "--quiet", "--name", "r"]


def test_full_fits_feed_the_submission_and_the_folds_score_it(tmp_path, capsys):
    data = make_competition(tmp_path / "d", per_class=12, test_count=9)
    work = tmp_path / "w"
    train = ["train", "--data", str(data), "--workdir", str(work), *TINY]
    run = work / "folds" / "r"
    assert main(train) == 0  # the folds of the same run first: --full without them is refused
    assert main(train + ["--full", "--seeds", "2"]) == 0
    for seed in range(2):
        fit = run / "full" / f"seed{seed}"
        assert np.load(fit / "test_probs.npy").shape == (9, 3) and (fit / "metrics.json").exists()
    assert not np.allclose(np.load(run / "full" / "seed0" / "test_probs.npy"),
                           np.load(run / "full" / "seed1" / "test_probs.npy"))  # two seeds, two models
    capsys.readouterr()
    assert main(["ensemble", "--workdir", str(work), "--runs", "r", "--out", "x.csv"]) == 0
    out = capsys.readouterr().out
    assert "test predictions from its 2 full-data fit(s)" in out
    index = pd.read_csv(work / "submissions" / "index.csv", dtype=str)
    assert index["test_from"].tolist() == ["full x2"]
    full_mean = np.mean([np.load(run / "full" / f"seed{s}" / "test_probs.npy") for s in range(2)], axis=0)
    submitted = pd.read_csv(work / "submissions" / "x.csv", dtype=str)["target"]
    assert submitted.tolist() == [f"class{c}" for c in full_mean.argmax(1)]
    # The OOF score and weights come from the folds: the summary's OOF accuracy.
    summary = read_json(run / "summary.json")
    assert float(index["oof_accuracy"][0]) == round(summary["cv_accuracy"], 4)
