"""`comp report`: what the runs so far are worth, and where the best one goes wrong.

    folds/report/leaderboard.csv    every finished run: model, key settings, CV accuracy,
                                    fold mean +- std, TTA gain, training time (also a table)
    folds/report/confusion.png      confusion matrix and per-class accuracy, from OOF rows
    folds/report/mistakes.png       the most confident OOF mistakes, true and predicted label

The plots use the best run on the current data (highest CV accuracy with its TTA), or --run.
Everything is read from run files; nothing is predicted again.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from comp.core.console import console, info
from comp.core.errors import CompError
from comp.core.fileio import save_csv, save_figure
from comp.store.runs import Run, finished_runs, oof_labels, require_finished
from comp.core.scoring import accuracy
from comp.core.stats import (
    DIFFERENCE_LEGEND,
    ErrorBars,
    Interval,
    correct_rows,
    format_difference,
    format_interval,
)
from comp.store.runs import load_run

MISTAKES_SHOWN = 24  # a 4x6 grid: enough to see a pattern, small enough to read the labels
MISTAKES_COLUMNS = 6
# Settings shown beside the score: the ones that most often explain a difference between runs.
KEY_SETTINGS = ("epochs", "width", "augment", "lr", "schedule", "mixup", "tta")
# The error bars, after the older columns so that readers of the old CSV keep working.
ERROR_BAR_COLUMNS = ("ci_low", "ci_high", "best_run", "gain", "gain_low", "gain_high")
RUN_NAME_WIDTH = 19  # "fast-large-1a2b3c4d" on one line; longer names fold, so the table fits 80 columns


# -- the leaderboard ---------------------------------------------------------------------------


def leaderboard_row(run: Run) -> dict:
    summary = run.summary
    plain = summary.get("cv_accuracy", float("nan"))
    with_tta = summary.get("cv_accuracy_tta", plain)
    return {
        "run": run.name,
        "model": run.config.get("model", ""),
        **{key: run.config.get(key, "") for key in KEY_SETTINGS},
        "rows": summary.get("rows", ""),
        "cv_accuracy": round(plain, 4),
        "cv_accuracy_tta": round(with_tta, 4),
        "tta_gain": round(with_tta - plain, 4),
        "fold_mean": round(summary.get("fold_accuracy_mean", float("nan")), 4),
        "fold_std": round(summary.get("fold_accuracy_std", float("nan")), 4),
        "seconds": round(summary.get("seconds", 0.0)),
        "fingerprint": run.fingerprint,
    }


def metric_value(run: Run, metric: str) -> float:
    """The run's OOF value of the competition's metric with its TTA, re-scored from its saved
    probabilities (so runs made under another metric compare); NaN where it cannot be."""
    try:
        value = run.oof_score(metric)
    except CompError:
        return float("nan")
    return float("nan") if value is None else round(value, 4)


def leaderboard(runs: list[Run], metric: str = "accuracy") -> pd.DataFrame:
    """One row per run, best first (by the competition's metric, else CV accuracy, with the run's
    TTA), with its error bars; under a metric other than accuracy, `metric` and `cv_metric` (its
    OOF value) are the last columns."""
    from comp.core.metrics import get_metric

    frame = pd.DataFrame([leaderboard_row(r) for r in runs])
    by_name = {r.name: r for r in runs}
    if metric == "accuracy":  # as before the metric could be chosen: no extra columns
        frame = frame.sort_values(["cv_accuracy_tta", "cv_accuracy"], ascending=False, ignore_index=True)
        return add_error_bars(frame, [by_name[name] for name in frame["run"]])
    frame["cv_metric"] = [metric_value(by_name[name], metric) for name in frame["run"]]
    ascending = not get_metric(metric).greater_is_better
    frame = frame.sort_values(["cv_metric", "cv_accuracy_tta"], ascending=[ascending, False], ignore_index=True)
    extra = frame[["cv_metric"]].assign(metric=metric)[["metric", "cv_metric"]]
    frame = add_error_bars(frame.drop(columns=["cv_metric"]), [by_name[name] for name in frame["run"]])
    return frame.join(extra)  # the competition's metric last, after the error bars


def comparable_groups(runs: list[Run]) -> list[list[Run]]:
    """Runs whose OOF predictions cover the same rows of the same data, in the order given."""
    groups: dict[tuple, list[Run]] = {}
    for run in runs:
        groups.setdefault((run.fingerprint, run.oof_rows().tobytes()), []).append(run)
    return list(groups.values())


def group_labels(group: list[Run]) -> np.ndarray | None:
    """The OOF rows' labels, from the first run whose split file is still there."""
    return next((labels for labels in map(oof_labels, group) if labels is not None), None)


def add_error_bars(frame: pd.DataFrame, ordered: list[Run]) -> pd.DataFrame:
    """ci_low/ci_high: the 95% bootstrap interval of each run's OOF accuracy with its TTA;
    best_run, gain, gain_low/gain_high: the paired interval of its difference from the best run
    among those on the same data and rows (the best's own is exactly 0). NaN where the labels
    of the rows are gone (split rewritten)."""
    columns = {name: [float("nan")] * len(frame) for name in ERROR_BAR_COLUMNS}
    columns["best_run"] = [""] * len(frame)
    position = {run.name: i for i, run in enumerate(ordered)}
    for group in comparable_groups(ordered):  # `ordered` is best first, so each group is too
        labels = group_labels(group)
        if labels is None:
            continue
        bars = ErrorBars(correct_rows([run.oof_probs for run in group], labels))
        for i, run in enumerate(group):
            own, gain = bars.accuracy(i), bars.difference(i, 0)
            row = position[run.name]
            columns["ci_low"][row], columns["ci_high"][row] = round(own.low, 4), round(own.high, 4)
            columns["best_run"][row] = group[0].name
            for name, value in zip(("gain", "gain_low", "gain_high"), gain):
                columns[name][row] = round(value, 4)
    return frame.assign(**columns)


def row_interval(row, prefix: str, estimate: str) -> Interval:
    return Interval(row[estimate], row[f"{prefix}_low"], row[f"{prefix}_high"])


def leaderboard_table(frame: pd.DataFrame, fingerprint: str | None):
    """The leaderboard for a terminal: 80 columns, rounded; every setting is in the CSV beside it."""
    from rich import box
    from rich.table import Table

    metric = frame["metric"].iloc[0] if "metric" in frame and len(frame) else "accuracy"
    named = metric != "accuracy"
    title = f"{metric} (best first) and accuracy" if named else "accuracy"
    table = Table(title=f"leaderboard: {len(frame)} finished run(s), {title} on out-of-fold rows",
                  caption=f"95% CI: bootstrap over the OOF rows, with TTA. vs best: {DIFFERENCE_LEGEND}",
                  box=box.SIMPLE_HEAD, padding=0, show_edge=False)
    for column in ("run", "model", "ep", *([metric[:8]] if named else []), "OOF", "+TTA", "95% CI", "vs best", "time"):
        table.add_column(column, justify="left" if column in ("run", "model", "vs best") else "right",
                         overflow="fold", max_width=RUN_NAME_WIDTH if column == "run" else None)
    top_of_data = set()  # the data whose best-ranked run was seen: another group's best is "other rows"
    for _, r in frame.iterrows():  # best first: the order is the rank
        other = " [dim](other data)[/dim]" if r["fingerprint"] != fingerprint else ""
        if r["best_run"] != r["run"]:
            gain = format_difference(row_interval(r, "gain", "gain"), compact=True)
        else:  # its group's best; beside a better group on other rows (a holdout, a --limit) not comparable
            gain = "other rows" if r["fingerprint"] in top_of_data else "best"
        top_of_data.add(r["fingerprint"])
        value = [f"{r['cv_metric']:.3f}"] if named else []
        table.add_row(f"{r['run']}{other}", str(r["model"]), str(r["epochs"]), *value, f"{r['cv_accuracy']:.3f}",
                      f"{r['cv_accuracy_tta']:.3f}", format_interval(row_interval(r, "ci", "cv_accuracy_tta")),
                      gain, _duration(r["seconds"]))
    return table


def _duration(seconds: float) -> str:
    return f"{seconds:.0f}s" if seconds < 600 else f"{seconds / 60:.0f}m"


# -- the plots ---------------------------------------------------------------------------------


def best_oof(run: Run) -> tuple[np.ndarray, str]:
    """The run's OOF probabilities with its TTA policy when written, else without."""
    tag = run.own_tag
    return run.read_oof(tag), (tag.lstrip(".") or "none")


def confusion(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def plot_confusion(counts: np.ndarray, classes: list[str], title: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig = confusion_figure(counts, classes, title)
    save_figure(path, fig)
    plt.close(fig)
    return path


def confusion_figure(counts: np.ndarray, classes: list[str], title: str):
    """Confusion matrix beside per-class accuracy; laid out by matplotlib so titles never overlap."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(classes)
    per_class = np.diag(counts) / np.maximum(counts.sum(axis=1), 1)
    rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # rows sum to 1: recall view
    size = max(4.5, 0.45 * n + 2)
    fig, (ax_matrix, ax_bars) = plt.subplots(1, 2, figsize=(size * 2, size), gridspec_kw={"width_ratios": [1.2, 1]},
                                             layout="constrained")
    ax_matrix.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    if n <= 30:  # beyond that the numbers overlap; the colours still tell
        for t in range(n):
            for p in range(n):
                ax_matrix.text(p, t, str(counts[t, p]), ha="center", va="center", fontsize=7,
                               color="white" if rates[t, p] > 0.5 else "black")
    ticks = range(n) if n <= 40 else []
    ax_matrix.set_xticks(list(ticks), [classes[i] for i in ticks], rotation=90, fontsize=7)
    ax_matrix.set_yticks(list(ticks), [classes[i] for i in ticks], fontsize=7)
    ax_matrix.set_xlabel("predicted")
    ax_matrix.set_ylabel("true")
    ax_matrix.set_title("confusion\n(counts; colour = share of the true class)", fontsize=9)
    order = np.argsort(per_class)
    ax_bars.barh(range(n), per_class[order], color="tab:blue")
    ax_bars.set_yticks(range(n), [classes[i] for i in order], fontsize=7)
    ax_bars.axvline(np.trace(counts) / max(counts.sum(), 1), color="tab:red", ls="--", label="overall")
    ax_bars.set_xlim(0, 1)
    ax_bars.set_title("accuracy per class\n(worst at the bottom)", fontsize=9)
    ax_bars.legend(loc="lower right")
    fig.suptitle(title)
    return fig


def confident_mistakes(probs: np.ndarray, labels: np.ndarray, count: int) -> np.ndarray:
    """Positions of wrong predictions, most confident first."""
    wrong = np.flatnonzero(probs.argmax(1) != labels)
    return wrong[np.argsort(-probs[wrong].max(1))][:count]


def plot_mistakes(images: np.ndarray, probs: np.ndarray, labels: np.ndarray, classes: list[str],
                  title: str, path: Path, count: int = MISTAKES_SHOWN) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from comp.stages.check import show_image

    chosen = confident_mistakes(probs, labels, count)
    cols = MISTAKES_COLUMNS
    rows = max(1, -(-len(chosen) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(cols * 1.9, rows * 2.2), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, i in zip(axes.ravel(), chosen):
        show_image(ax, images[i])
        predicted = probs[i].argmax()
        ax.set_title(f"true {classes[labels[i]]}\npred {classes[predicted]} {probs[i, predicted]:.2f}", fontsize=7)
    fig.suptitle(f"{title}: {len(chosen)} most confident mistakes" if len(chosen) else f"{title}: no mistakes")
    save_figure(path, fig)
    plt.close(fig)
    return path


# -- the command -----------------------------------------------------------------------------


def pick_run(workspace, run, board: pd.DataFrame, runs: list[Run], fingerprint: str) -> Run:
    if run is not None:
        chosen = load_run(workspace, run)
        require_finished(chosen)
        return chosen
    fitting = board[board["fingerprint"] == fingerprint]
    if fitting.empty:
        raise CompError(f"no finished run on the current data ({fingerprint}); pass --run or --data")
    return next(r for r in runs if r.name == fitting.iloc[0]["run"])


def per_label_line(probs: np.ndarray, labels: np.ndarray, classes: list[str]) -> str:
    """Multi-label: each label's F1 at probability 0.5 on the OOF rows, weakest first."""
    decided, truth = probs >= 0.5, labels.astype(bool)
    overlap, sizes = (decided & truth).sum(0), decided.sum(0) + truth.sum(0)
    f1 = np.divide(2 * overlap, sizes, out=np.zeros(len(classes)), where=sizes > 0)
    return "per-label F1 at 0.5, weakest first: " + ", ".join(
        f"{classes[c]} {f1[c]:.3f}" for c in np.argsort(f1, kind="stable"))


def report(workspace, run=None, out_dir: Path | None = None, mistakes: int | None = None) -> dict:
    """Leaderboard (table + CSV), confusion matrix and confident mistakes of the best run (or `run`)."""
    from comp.stages.predict import dataset_for_runs

    out_dir = Path(out_dir).expanduser() if out_dir else workspace.folds / "report"
    runs = finished_runs(workspace)
    if not runs and run is None:
        raise CompError(f"no finished run under {workspace.folds}; train one first (comp train --fold all)")
    chosen_hint = [load_run(workspace, run)] if run is not None else runs
    dataset = dataset_for_runs(workspace, chosen_hint, prefer_recorded=run is not None)
    board = leaderboard(runs, workspace.metric) if runs else pd.DataFrame(columns=["run", "fingerprint"])
    if runs:
        console.print(leaderboard_table(board, dataset.fingerprint))
        save_csv(out_dir / "leaderboard.csv", board)
        info(f"leaderboard: {out_dir / 'leaderboard.csv'}")

    best = pick_run(workspace, run, board, runs, dataset.fingerprint)
    if best.fingerprint != dataset.fingerprint:
        raise CompError(f"{best.name}: trained on other data than {dataset.data_dir}; pass --data with its folder")
    probs, tta = best_oof(best)
    rows = best.oof_rows()
    labels = dataset.train_y[rows]
    title = f"{best.name} (TTA {tta}, OOF accuracy {accuracy(probs, labels):.4f}, {len(rows):,} rows)"
    if dataset.multilabel:  # no confusion between classes: each label's own F1 says where it fails
        info(f"{title}\n{per_label_line(probs, labels, dataset.classes)}")
        return {"leaderboard": board, "run": best.name, "confusion": None, "mistakes": None}
    counts = confusion(labels, probs.argmax(1), dataset.num_classes)
    confusion_png = plot_confusion(counts, dataset.classes, title, out_dir / "confusion.png")
    mistakes_png = plot_mistakes(dataset.train_x[rows], probs, labels, dataset.classes, best.name,
                                 out_dir / "mistakes.png", MISTAKES_SHOWN if mistakes is None else mistakes)
    per_class = np.diag(counts) / np.maximum(counts.sum(axis=1), 1)
    worst = np.argsort(per_class)[:3]
    info(f"{title}\nweakest classes: " + ", ".join(f"{dataset.classes[c]} {per_class[c]:.3f}" for c in worst))
    info(f"plots: {confusion_png}, {mistakes_png}")
    return {"leaderboard": board, "run": best.name, "confusion": confusion_png, "mistakes": mistakes_png}
