"""comp report: the leaderboard of runs, the confusion matrix and the confident mistakes."""

from __future__ import annotations

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
    from comp.report import confident_mistakes, confusion

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

    from comp.report import leaderboard_table

    rows = [{"run": name, "model": model, "epochs": 64, "cv_accuracy": 0.91234567, "cv_accuracy_tta": 0.92,
             "fold_std": 0.00234, "seconds": 1234.5, "fingerprint": "f"}
            for name, model in (("fast-large-1a2b3c4d", "fast-large"), ("a-very-long-run-name-chosen-by-a-user", "vgg"))]
    out = io.StringIO()
    Console(file=out, width=80).print(leaderboard_table(pd.DataFrame(rows), "f"))
    text = out.getvalue()
    assert max(len(line) for line in text.splitlines()) <= 80
    assert "0.912" in text and "0.91234567" not in text  # rounded


@pytest.mark.parametrize("classes", [["cat", "dog"], [f"class{i}" for i in range(10)]])
def test_confusion_plot_titles_do_not_overlap(classes):
    import matplotlib.pyplot as plt

    from comp.report import confusion_figure

    counts = np.arange(len(classes) ** 2).reshape(len(classes), -1) + 1
    fig = confusion_figure(counts, classes, "a-long-run-name-1a2b3c4d (TTA flip-shift, OOF accuracy 0.9123, 50,000 rows)")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [ax.title.get_window_extent(renderer) for ax in fig.axes[:2]] + [fig._suptitle.get_window_extent(renderer)]
    for i in range(len(boxes)):
        for j in range(i + 1, len(boxes)):
            assert not boxes[i].overlaps(boxes[j]), (i, j)
    plt.close(fig)
