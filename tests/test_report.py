"""comp report: the leaderboard of runs, the confusion matrix and the confident mistakes."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest

from comp.cli import main



def test_report_writes_leaderboard_and_plots(work, capsys):
    assert main(["report", "--workdir", str(work)]) == 0
    out = capsys.readouterr().out
    assert "leaderboard" in out and "weakest classes" in out
    report = work / "folds" / "report"
    board = pd.read_csv(report / "leaderboard.csv")
    assert sorted(board["run"]) == ["a", "b"]
    assert board["cv_accuracy_tta"].is_monotonic_decreasing  # best first
    for column in ("model", "epochs", "augment", "cv_accuracy", "fold_mean", "fold_std", "tta_gain", "seconds"):
        assert column in board
    assert board.set_index("run").loc["a", "tta_gain"] == 0  # run a has no TTA
    for name in ("confusion.png", "mistakes.png"):
        assert (report / name).stat().st_size > 1000


def test_report_for_one_run_into_another_folder(work, tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["report", "--workdir", str(work), "--run", "b", "--out", str(out), "--mistakes", "5"]) == 0
    assert "b (TTA flip" in capsys.readouterr().out
    assert (out / "confusion.png").exists() and (out / "mistakes.png").exists()


def test_report_without_runs_says_so(tmp_path, capsys):
    assert main(["report", "--workdir", str(tmp_path)]) == 2
    assert "no finished run" in capsys.readouterr().err


def test_confusion_counts_and_confident_mistakes():
    from comp.stages.report import confident_mistakes, confusion

    labels = np.array([0, 0, 1, 2, 2])
    predicted = np.array([0, 1, 1, 2, 0])
    counts = confusion(labels, predicted, 3)
    assert counts.tolist() == [[1, 1, 0], [0, 1, 0], [1, 0, 1]]
    probs = np.array([[0.9, 0.1, 0], [0.3, 0.7, 0], [0, 1, 0], [0, 0, 1], [0.95, 0, 0.05]])
    assert confident_mistakes(probs, labels, 10).tolist() == [4, 1]  # wrong rows, most confident first


def test_the_leaderboard_table_fits_80_columns():
    import io

    import pandas as pd
    from rich.console import Console

    from comp.stages.report import leaderboard_table

    rows = [{"run": name, "model": model, "epochs": 64, "cv_accuracy": 0.91234567, "cv_accuracy_tta": 0.92,
             "fold_std": 0.00234, "seconds": 1234.5, "fingerprint": "f", "ci_low": 0.9176, "ci_high": 0.9224,
             "best_run": "fast-large-1a2b3c4d", "gain": gain, "gain_low": gain - 0.0041, "gain_high": gain + 0.0039}
            for name, model, gain in (("fast-large-1a2b3c4d", "fast-large", 0.0),
                                      ("a-very-long-run-name-chosen-by-a-user", "vgg", -0.0123))]
    out = io.StringIO()
    Console(file=out, width=80).print(leaderboard_table(pd.DataFrame(rows), "f"))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "0.912" in text and "0.91234567" not in text  # rounded
    assert "0.918-0.922" in text and "-.016..-.008 real" in text  # the error bars fit too


@pytest.mark.parametrize("classes", [["cat", "dog"], [f"class{i}" for i in range(10)]])
def test_confusion_plot_titles_do_not_overlap(classes):
    import matplotlib.pyplot as plt

    from comp.stages.report import confusion_figure

    counts = np.arange(len(classes) ** 2).reshape(len(classes), -1) + 1
    fig = confusion_figure(counts, classes, "a-long-run-name-1a2b3c4d (TTA flip-shift, OOF accuracy 0.9123, 50,000 rows)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes[:2]] + [fig._suptitle.get_window_extent(renderer)]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (i, j)
    plt.close(fig)


# -- error bars ------------------------------------------------------------------------------


def own_correct(work, name):
    """Which OOF rows the run gets right with its own TTA, labels from the decoded data."""
    from comp.data.sources import load_dataset
    from comp.workspace import Workspace

    workspace = Workspace(work)
    run = workspace.run(name)
    labels = load_dataset(workspace.data_dir, workspace.cache).train_y[run.oof_rows()]
    return run.oof_probs.argmax(1) == labels


def test_report_shows_intervals_and_paired_differences_from_the_best(work, capsys):
    from comp.core.stats import ErrorBars

    assert main(["report", "--workdir", str(work)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "95% CI" in out and "vs best" in out and "real: it excludes 0" in out
    board = pd.read_csv(work / "folds" / "report" / "leaderboard.csv")
    best, other = board.loc[0], board.loc[1]
    assert list(board.columns[-6:]) == ["ci_low", "ci_high", "best_run", "gain", "gain_low", "gain_high"]
    for _, row in board.iterrows():
        assert row["ci_low"] <= row["cv_accuracy_tta"] <= row["ci_high"] and row["ci_low"] < row["ci_high"]
        assert f"{row['ci_low']:.3f}-{row['ci_high']:.3f}" in out
    assert best["best_run"] == other["best_run"] == best["run"]
    assert (best["gain"], best["gain_low"], best["gain_high"]) == (0, 0, 0)  # the best against itself
    assert other["gain"] == pytest.approx(other["cv_accuracy_tta"] - best["cv_accuracy_tta"], abs=1e-4)
    # the numbers are those of the runs' own OOF rows, resampled together (labels from folds.csv)
    bars = ErrorBars(np.stack([own_correct(work, best["run"]), own_correct(work, other["run"])]))
    assert (other["gain_low"], other["gain_high"]) == pytest.approx(tuple(bars.difference(1, 0))[1:], abs=1e-4)
    assert (best["ci_low"], best["ci_high"]) == pytest.approx(tuple(bars.accuracy(0))[1:], abs=1e-4)


def test_runs_dataframe_has_the_error_bars_and_survives_a_lost_split(work):
    from comp.workspace import Workspace

    board = Workspace(work).runs()
    assert board[["ci_low", "ci_high", "gain_low", "gain_high"]].notna().all().all()
    assert (board["ci_low"] <= board["cv_accuracy_tta"]).all() and (board["cv_accuracy_tta"] <= board["ci_high"]).all()
    (work / "folds" / "folds.csv").rename(work / "folds" / "folds.csv.away")  # the rows' labels are gone
    board = Workspace(work).runs()
    assert board["ci_low"].isna().all() and (board["best_run"] == "").all()
    assert board["cv_accuracy_tta"].notna().all()  # the rest of the leaderboard stays


def test_runs_on_other_rows_are_compared_with_their_own_best(work):
    from comp.stages.report import comparable_groups
    from comp.workspace import Workspace

    fewer = work / "folds" / "fewer"
    shutil.copytree(work / "folds" / "a", fewer)
    keep = np.arange(0, 300, 2)
    for name in ("oof_probs.npy", "oof_rows.npy"):
        np.save(fewer / name, np.load(fewer / name)[keep])
    board = Workspace(work).runs().set_index("run")
    assert board.loc["fewer", "best_run"] == "fewer"  # alone on its rows: its own best
    assert board.loc["a", "best_run"] == board.loc["b", "best_run"] != "fewer"
    assert [len(g) for g in comparable_groups([Workspace(work).run(n) for n in ("a", "fewer", "b")])] == [2, 1]
