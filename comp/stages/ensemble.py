"""`comp ensemble`: blend finished runs into a leaderboard CSV, scored on out-of-fold rows.

    comp ensemble                          every finished run that fits the data, best method
    comp ensemble --runs a,b --method weights --out final.csv

Within a run, the test probabilities are the mean of its K fold models. Across runs:
    mean      arithmetic mean of the runs' probabilities
    geomean   geometric mean (mean of log-probabilities, renormalised)
    vote      majority of the runs' labels; ties go to the highest mean probability
    weights   a weighted mean, the weights fitted on the out-of-fold (OOF) predictions by greedy
              ensemble selection (Caruana et al. 2004): non-negative, summing to 1
    auto      (default) mean or weights, whichever scores better on OOF rows the weights were
              not fitted on (see choose_method)

Runs are only combined when their OOF predictions are comparable row for row: same data
(fingerprint), class list, fold split and train rows. Runs from pretrained weights (the
transfer track) are refused: these competitions forbid pretrained weights, and so are runs
whose probabilities are not finite (a diverged training).

Each run brings its plain predictions or its TTA ones, whichever scores better on its OOF
rows (or the ones --tta names). Runs trained with keep=best are named: their OOF accuracy is
flattered (each fold's epoch was picked on those very rows), so auto does not fit weights on it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from comp.core.console import console, info, warn
from comp.core.errors import CompError
from comp.store.runs import Run, check_same_data, finished_runs, require_finished
from comp.core.metrics import better, get_metric, score
from comp.core.scoring import accuracy, log_loss
from comp.core.stats import (
    DIFFERENCE_LEGEND,
    UNKNOWN,
    ErrorBars,
    Interval,
    MetricBars,
    correct_rows,
    format_difference,
    format_interval,
)
from comp.config.tta_policy import AVERAGES, DEFAULT_AVERAGE, parse_policy, prediction_tag
from comp.store.runs import load_run

METHODS = ("auto", "mean", "geomean", "vote", "weights")
# Greedy selection adds one run (with replacement) per round, so weights are multiples of
# 1/GREEDY_ROUNDS: fine enough to matter, coarse enough not to chase noise in the OOF rows.
GREEDY_ROUNDS = 25
# The weights' honest score: fit on all OOF rows but one part, score on that part, for each of
# CHECK_PARTS parts. Five parts leave 80% of the rows for each fit, as K-fold training does.
CHECK_PARTS = 5
CHECK_SEED = 0
PROB_FLOOR = 1e-7  # log of a zero probability would be -inf in geomean and log-loss
# An OOF accuracy is "within noise of chance" below chance + CHANCE_MARGIN_SE binomial standard
# errors, where chance is the largest class's share (what always answering it scores) and the
# standard error is sqrt(chance * (1 - chance) / rows): a run that learned nothing stays below
# that line about 98% of the time (one-sided, normal approximation).
CHANCE_MARGIN_SE = 2
MEMBER_NAME_WIDTH = 20  # the runs table: longer names fold, so it fits 80 columns with TTA flip-shift


# -- which runs ------------------------------------------------------------------------------


@dataclass
class Member:
    """A run as an ensemble member: its predictions for one TTA tag."""

    run: Run
    tag: str
    oof: np.ndarray  # (OOF rows, classes)
    test: np.ndarray  # (test images, classes): mean of the full-data fits if any, else of the fold models
    full_fits: int = 0  # how many full-data fits the test probabilities come from (0: the fold models)

    @property
    def name(self) -> str:
        return self.run.name

    @property
    def test_source(self) -> str:
        return f"full x{self.full_fits}" if self.full_fits else "folds"

    @property
    def tta(self) -> str:
        return self.tag.lstrip(".") or "none"


def keeps_best(run: Run) -> bool:
    """A comp train run that kept each fold's best epoch, chosen on its OOF rows (flattered OOF)."""
    return run.kind == "kfold" and run.config.get("keep") == "best"


def refuse_pretrained(runs: list[Run], allow: bool) -> None:
    if allow:
        for run in (r for r in runs if r.pretrained):
            warn(f"{run.name}: made from pretrained weights, included because of --allow-pretrained; "
                 "a submission with it breaks the no-pretrained-weights rule")
        return
    bad = [r.name for r in runs if r.pretrained]
    if bad:
        raise CompError(
            f"{', '.join(bad)}: made from pretrained weights (config.json says \"pretrained\": true); these "
            "competitions forbid pretrained weights, so a submission must not use them. Drop them from --runs "
            "(--allow-pretrained only for a private experiment)"
        )


def check_compatible(runs: list[Run], dataset) -> None:
    """Every run against the data and the first run; CompError naming the runs and the reason."""
    for run in runs:
        check_same_data(run, dataset, "its test predictions belong to another test set. Pass --data with its "
                                      "folder, or leave it out of --runs")
    first = runs[0]
    for run in runs[1:]:
        if run.classes != first.classes:
            raise CompError(
                f"cannot combine {first.name} and {run.name}: different class lists ({len(first.classes or [])} vs "
                f"{len(run.classes or [])} classes); column i of their probabilities means different classes"
            )
        if run.split_hash != first.split_hash:
            raise CompError(
                f"cannot combine {first.name} and {run.name}: different fold splits ({first.split_hash} vs "
                f"{run.split_hash}); their out-of-fold predictions are not comparable row for row, so the "
                "blend's OOF score would not be honest. Retrain one of them on the current folds/folds.csv"
            )
        if not np.array_equal(run.oof_rows(), first.oof_rows()):
            raise CompError(
                f"cannot combine {first.name} and {run.name}: different train rows ({len(first.oof_rows()):,} vs "
                f"{len(run.oof_rows()):,}; another --limit, or a holdout run of some folds beside one of all); their OOF "
                "predictions cover different images"
            )


def default_runs(runs: list[Run], workspace, dataset, rows: np.ndarray | None) -> list[Run]:
    """Finished runs under folds/ on this data, the largest group that shares a split and rows.

    Runs on other data, pretrained runs and runs on another split or --limit are left out with a
    note; among several groups, the one on the current folds/folds.csv is preferred. `rows`
    (from --limit) keeps only the runs trained on exactly those rows.
    """
    from comp.core.fileio import read_json

    candidates = []
    for run in runs:
        if run.pretrained:
            warn(f"{run.name}: made from pretrained weights; left out (pass it in --runs with --allow-pretrained)")
        elif run.fingerprint != dataset.fingerprint:
            info(f"{run.name}: trained on other data; left out")
        elif rows is not None and not run.trained_on(rows):
            info(f"{run.name}: trained on other rows than --limit {len(rows)}; left out")
        else:
            candidates.append(run)
    if not candidates:
        raise CompError(f"no finished run under {workspace.folds} fits {dataset.data_dir}"
                        f"{' with --limit ' + str(len(rows)) if rows is not None else ''}; "
                        "train one first (comp train --fold all)")
    meta_path = workspace.folds / "folds.json"
    current = read_json(meta_path).get("hash") if meta_path.exists() else None
    groups: dict[tuple, list[Run]] = {}
    for run in candidates:
        groups.setdefault((run.split_hash, run.oof_rows().tobytes()), []).append(run)
    # The most OOF rows first (every fold over a holdout's, all rows over a --limit's), then the most runs.
    best = max(groups.values(), key=lambda g: (g[0].split_hash == current, len(g[0].oof_rows()), len(g)))
    for group in groups.values():
        if group is not best:
            info(f"{', '.join(r.name for r in group)}: another split, --limit or holdout folds than "
                 f"{', '.join(r.name for r in best)}; left out")
    return best


def limited_rows(limit: int, dataset) -> np.ndarray | None:
    """The train rows --limit selects (as comp train does), or None without --limit."""
    from comp.data.sources import limit_rows

    return limit_rows(dataset.train_y, limit) if limit else None


def candidate_runs(workspace, names: list[str] | None) -> list[Run]:
    """The runs named (loaded once), or every finished run under folds/ without names."""
    if names is None:
        return finished_runs(workspace)
    if len(set(names)) != len(names):
        raise CompError(f"--runs {','.join(names)}: a run is named twice")
    return [load_run(workspace, n) for n in names]


def select_runs(workspace, dataset, candidates: list[Run], named: bool, limit: int,
                allow_pretrained: bool) -> list[Run]:
    """Of `candidate_runs`, the ones to blend: checked (named) or chosen (all) for this data."""
    rows = limited_rows(limit, dataset)
    if not named:
        runs = default_runs(candidates, workspace, dataset, rows)
    else:
        runs = candidates
        refuse_pretrained(runs, allow_pretrained)  # before anything else: the rule, not a detail
        for run in runs:
            require_finished(run)
            if rows is not None and not run.trained_on(rows):
                raise CompError(f"{run.name}: trained on other rows than --limit {limit}; drop --limit or the run")
    check_compatible(runs, dataset)
    return runs


def member_tags(run: Run, tta: str | None, average: str) -> list[str]:
    """The prediction tags to choose from: --tta's for every run; else plain and the run's own policy."""
    if run.kind != "kfold":
        return [""]  # study runs write plain predictions only
    if tta:
        return [prediction_tag(parse_policy(tta), average)]
    own = prediction_tag(parse_policy(run.tta), average)
    return [""] if own == "" else ["", own]


def require_finite(run: Run, tag: str, oof: np.ndarray, test: np.ndarray) -> None:
    """A diverged training leaves NaN or inf: refuse it, naming the first file that holds them."""
    if np.isfinite(oof).all() and np.isfinite(test).all():
        return
    files = [run.path / f"oof_probs{tag}.npy"] if not np.isfinite(oof).all() else [
        run.fold_dir(k) / f"test_probs{tag}.npy" for k in run.folds]
    bad = next((f for f in files if not np.isfinite(np.load(f)).all()), files[0])
    raise CompError(f"{run.name}: {bad} holds non-finite probabilities (NaN or inf: its training diverged); "
                    f"retrain it ({run.retrain_hint()}, with a lower --lr if the loss blew up), or leave it out of --runs")


def load_member(run: Run, tag: str) -> Member:
    """The run's OOF probabilities (to score and weight it) and its test probabilities (to submit):
    from its full-data fits when it has them -- the same config trained on every row, a little
    better than its fold models, which each saw (K-1)/K of the rows -- else from the fold models."""
    full = run.read_full_test(tag)
    test = full if full is not None else run.read_test(tag)
    oof, test = run.read_oof(tag).astype(np.float64), test.astype(np.float64)
    require_finite(run, tag, oof, test)
    return Member(run, tag, oof, test, len(run.full_fits()) if full is not None else 0)


def choose_member(run: Run, tags: list[str], labels: np.ndarray, metric: str = "accuracy") -> Member:
    """The run's plain or TTA predictions, whichever scores better on its OOF rows (ties: plain).

    This is a choice made on the rows that then report the score, so it flatters the OOF a
    little; it is one binary choice per run, so the flattery is tiny next to a fitted weight.
    A keep=best run's plain OOF already holds the epoch picked on those rows, which tilts this
    comparison towards plain; such runs are named by warn_keep_best.
    """
    candidates = [load_member(run, tag) for tag in tags]
    chosen = max(candidates, key=lambda m: _score(m.oof, labels, metric))  # max keeps the first of equals: plain
    if len(candidates) > 1:
        plain, tta = (score(metric, labels, m.oof) for m in candidates)
        verdict = "kept" if chosen.tag else "dropped"
        info(f"{run.name}: TTA {candidates[1].tta} {verdict} (OOF {metric} {tta:.4f} with it, {plain:.4f} "
             "without; --tta sets one policy for every run)")
    return chosen


def load_members(runs: list[Run], labels: np.ndarray, tta: str | None, average: str,
                 metric: str = "accuracy") -> list[Member]:
    return [choose_member(run, member_tags(run, tta, average), labels, metric) for run in runs]


# -- combining -------------------------------------------------------------------------------


def blend_mean(probs: list[np.ndarray], weights: np.ndarray | None = None) -> np.ndarray:
    weights = np.full(len(probs), 1 / len(probs)) if weights is None else weights
    return np.tensordot(weights, np.stack(probs), axes=1)


def blend_geomean(probs: list[np.ndarray], multilabel: bool = False) -> np.ndarray:
    if multilabel:  # each label's own probability: the geometric mean of its odds (mean logit)
        clipped = np.clip(np.stack(probs), PROB_FLOOR, 1 - PROB_FLOOR)
        return 1 / (1 + np.exp(-np.log(clipped / (1 - clipped)).mean(axis=0)))
    logs = np.log(np.clip(np.stack(probs), PROB_FLOOR, 1)).mean(axis=0)
    out = np.exp(logs - logs.max(axis=1, keepdims=True))
    return out / out.sum(axis=1, keepdims=True)


def blend_vote(probs: list[np.ndarray], multilabel: bool = False) -> np.ndarray:
    """Vote shares; the mean probability (scaled below one vote) breaks ties. Multi-label: each
    label's votes are the runs that give it 0.5 or more."""
    stack = np.stack(probs)
    votes = np.zeros(stack.shape[1:])
    for p in stack:
        if multilabel:
            votes += p >= 0.5
        else:
            votes[np.arange(len(p)), p.argmax(1)] += 1
    return (votes + stack.mean(axis=0) * 0.5) / (len(probs) + 0.5)


def blend(method: str, probs: list[np.ndarray], weights: np.ndarray | None = None,
          multilabel: bool = False) -> np.ndarray:
    """`multilabel`: the probabilities are one sigmoid per label (rows need not sum to 1)."""
    if method == "geomean":
        return blend_geomean(probs, multilabel)
    if method == "vote":
        return blend_vote(probs, multilabel)
    return blend_mean(probs, weights if method == "weights" else None)


# -- fitting weights -------------------------------------------------------------------------


def _score(probs: np.ndarray, labels: np.ndarray, metric: str = "accuracy") -> tuple[float, float]:
    """The competition's metric first, turned so that larger is better; log-loss breaks ties."""
    value = score(metric, labels, probs)
    return (value if get_metric(metric).greater_is_better else -value), -log_loss(probs, labels)


def fit_weights(oofs: list[np.ndarray], labels: np.ndarray, rounds: int = GREEDY_ROUNDS,
                metric: str = "accuracy") -> np.ndarray:
    """Greedy ensemble selection with replacement; weights = how often each run was picked.

    Round one picks the best single run, and the best prefix of rounds is returned, so the
    blend never scores below the best single run on the rows it was fitted on. Picks are judged
    by the competition's `metric` in its direction (log-loss breaks ties).
    """
    counts = np.zeros(len(oofs))
    total = np.zeros_like(oofs[0])
    best_score, best_counts = None, None
    for step in range(1, rounds + 1):
        scores = [_score((total + p) / step, labels, metric) for p in oofs]
        pick = max(range(len(oofs)), key=lambda i: scores[i])  # tuples: the metric, then loss
        counts[pick] += 1
        total += oofs[pick]
        if best_score is None or scores[pick] > best_score:
            best_score, best_counts = scores[pick], counts.copy()
    return best_counts / best_counts.sum()


def checked_weights_blend(oofs: list[np.ndarray], labels: np.ndarray, metric: str = "accuracy") -> np.ndarray | None:
    """The weighted blend of every OOF row with weights fitted on the other rows (CHECK_PARTS-fold);
    None when a class has fewer than two rows to split.

    Fitting weights on the same rows that score them flatters them, most with few rows; this
    blend's accuracy is the number to compare with the plain mean, which fits nothing, and the
    one whose error bars mean something.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    if labels.ndim == 2:  # multi-label: no class to stratify by; parts of at least two rows
        parts = min(CHECK_PARTS, len(labels) // 2)
        splitter = KFold(parts, shuffle=True, random_state=CHECK_SEED) if parts >= 2 else None
    else:
        parts = min(CHECK_PARTS, int(np.bincount(labels).min()))
        splitter = StratifiedKFold(parts, shuffle=True, random_state=CHECK_SEED) if parts >= 2 else None
    if splitter is None:
        return None
    blended = np.zeros_like(oofs[0])
    for fit_rows, check_rows in splitter.split(labels, labels if labels.ndim == 1 else None):
        weights = fit_weights([p[fit_rows] for p in oofs], labels[fit_rows], metric=metric)
        blended[check_rows] = blend_mean([p[check_rows] for p in oofs], weights)
    return blended


def choose_method(mean_accuracy: float, checked_accuracy: float, flattered: list[str], metric: str = "accuracy") -> str:
    """auto: fitted weights only when they beat the mean on rows they were not fitted on.

    Ties go to the mean: it fits nothing, so its OOF score is already honest. With keep=best
    runs (`flattered`) it is always the mean: their OOF rows picked their epochs, so weights
    fitted there favour whichever run was flattered most, and held-out parts of the same rows
    cannot tell.
    """
    if flattered:
        return "mean"
    return "weights" if better(metric, checked_accuracy, mean_accuracy) else "mean"


# -- output ----------------------------------------------------------------------------------


def members_table(members: list[Member], labels: np.ndarray, choice: Blend, error_bars: BlendErrorBars):
    """Every member and the ensemble: OOF accuracy, its 95% CI, the paired difference from the best
    member, log-loss and weight; within 80 columns (the model is in the leaderboard)."""
    from rich import box
    from rich.table import Table

    table = Table(title=f"runs: out-of-fold score on {len(labels):,} rows", box=box.SIMPLE_HEAD, padding=0,
                  show_edge=False, caption=f"vs best: {DIFFERENCE_LEGEND}")
    for column in ("run", "TTA", "OOF", "95% CI", "vs best", "loss", "weight"):
        table.add_column(column, justify="left" if column in ("run", "TTA", "vs best") else "right",
                         overflow="fold", max_width=MEMBER_NAME_WIDTH if column == "run" else None)
    for i, m in enumerate(members):
        weight = f"{choice.weights[i]:.3f}" if choice.weights is not None else "-"
        gain = "best" if i == error_bars.best else format_difference(error_bars.member_gains[i], compact=True)
        table.add_row(m.name, m.tta, f"{accuracy(m.oof, labels):.4f}", format_interval(error_bars.members[i]),
                      gain, f"{log_loss(m.oof, labels):.4f}", weight, end_section=i == len(members) - 1)
    ensemble = error_bars.ensemble
    table.add_row(f"[bold]ensemble[/bold] ({'checked' if error_bars.checked else choice.method})", "",
                  f"{ensemble.estimate:.4f}" if ensemble.known else "-", format_interval(ensemble),
                  format_difference(error_bars.gain, compact=True), "", "")
    return table


def default_out_name() -> str:
    return f"ensemble-{time.strftime('%Y%m%d-%H%M%S')}.csv"


@dataclass
class Blend:
    """The chosen way of combining the members, with its out-of-fold evidence."""

    method: str
    weights: np.ndarray | None  # per member for mean and weights; None for geomean and vote
    fitted: np.ndarray  # the fitted weights (used when method is "weights")
    scores: dict  # OOF metric of every method on all rows (weights: on the rows they were fitted on)
    checked_probs: np.ndarray | None  # OOF rows blended by weights fitted on other rows (None: too few rows)
    checked: float  # their metric: the weights' score on rows they were not fitted on
    flattered: list[str]  # keep=best runs: their OOF picked their epochs
    metric: str = "accuracy"  # the competition's: what scores, fitted weights and auto's choice use
    accuracies: dict = None  # OOF accuracy of every method, as scores
    multilabel: bool = False  # one sigmoid per label: how geomean and vote combine them

    @property
    def accuracy(self) -> float:
        return (self.accuracies or self.scores)[self.method]

    @property
    def score(self) -> float:
        """The chosen method's OOF value of the competition's metric."""
        return self.scores[self.method]


def decide_blend(members: list[Member], labels: np.ndarray, requested: str, metric: str = "accuracy") -> Blend:
    """Fit weights for the competition's metric, score every method on OOF rows, and pick --method
    (or auto's choice)."""
    oofs = [m.oof for m in members]
    fitted = fit_weights(oofs, labels, metric=metric) if len(members) > 1 else np.ones(1)
    multilabel = labels.ndim == 2
    blends = {name: blend(name, oofs, fitted, multilabel) for name in ("mean", "geomean", "vote", "weights")}
    scores = {name: score(metric, labels, probs) for name, probs in blends.items()}
    accuracies = {name: accuracy(probs, labels) for name, probs in blends.items()}
    checked_probs = checked_weights_blend(oofs, labels, metric) if len(members) > 1 else oofs[0]
    checked = score(metric, labels, checked_probs) if checked_probs is not None else float("nan")
    flattered = [m.name for m in members if keeps_best(m.run)] if len(members) > 1 else []
    method = requested if requested != "auto" else choose_method(scores["mean"], checked, flattered, metric)
    weights = {"weights": fitted, "mean": np.full(len(members), 1 / len(members))}.get(method)
    return Blend(method, weights, fitted, scores, checked_probs, checked, flattered, metric, accuracies, multilabel)


# -- error bars ------------------------------------------------------------------------------


@dataclass
class BlendErrorBars:
    """95% bootstrap intervals on the OOF rows: every member's accuracy and its difference from
    the best member, and the ensemble's accuracy and its gain over the best member (paired)."""

    members: list[Interval]
    member_gains: list[Interval]  # member minus the best member
    best: int  # which member scores best on the OOF rows
    ensemble: Interval
    gain: Interval  # ensemble minus the best member
    checked: bool  # the ensemble's numbers come from the checked blend (method weights)


def honest_blend(choice: Blend, oofs: list[np.ndarray]) -> np.ndarray | None:
    """The blend's OOF probabilities from nothing fitted on the rows they score: for weights the
    checked blend (weights fitted on other rows; None when there were too few), else the blend."""
    if choice.method == "weights":
        return choice.checked_probs
    return blend(choice.method, oofs, choice.fitted, choice.multilabel)


def blend_error_bars(members: list[Member], labels: np.ndarray, choice: Blend) -> BlendErrorBars:
    oofs = [m.oof for m in members]
    ensemble = honest_blend(choice, oofs)
    bars = ErrorBars(correct_rows(oofs + ([ensemble] if ensemble is not None else []), labels))
    best = int(np.argmax(bars.accuracies[:len(members)]))  # the first of equals
    member_intervals = [bars.accuracy(i) for i in range(len(members))]
    member_gains = [bars.difference(i, best) for i in range(len(members))]
    if ensemble is None:
        return BlendErrorBars(member_intervals, member_gains, best, UNKNOWN, UNKNOWN, True)
    return BlendErrorBars(member_intervals, member_gains, best, bars.accuracy(len(members)),
                          bars.difference(len(members), best), choice.method == "weights")


def explain_error_bars(error_bars: BlendErrorBars, members: list[Member], choice: Blend, rows: int) -> None:
    """One line: the ensemble's interval and its paired gain over the best run, and what they are measured on."""
    if not error_bars.ensemble.known:
        info("no error bars for the ensemble: a class has fewer than 2 OOF rows, too few to score fitted weights "
             "on rows they were not fitted on")
        return
    ensemble, gain = error_bars.ensemble, error_bars.gain
    checked = (f"; on the checked blend (weights fitted on other rows than they score: {choice.accuracy:.4f} on "
               "their own rows flatters them)" if error_bars.checked else "")
    info(f"error bars: ensemble {ensemble.estimate:.4f} (95% CI {format_interval(ensemble)}), vs the best run "
         f"{members[error_bars.best].name} {gain.estimate:+.4f} (95% CI {format_difference(gain)}); "
         f"bootstrap over {rows:,} OOF rows{checked}")


def explain_blend(choice: Blend, requested: str, rows: int) -> None:
    info(f"ensemble OOF {choice.metric}: " + ", ".join(f"{k} {v:.4f}" for k, v in choice.scores.items())
         + f"; weights on rows they were not fitted on: {choice.checked:.4f}")
    flattered = ", ".join(choice.flattered)
    if requested == "auto" and choice.flattered:
        info(f"method: [bold]mean[/bold] (auto: no weights fitted on the keep=best OOF of {flattered}; "
             "their epochs were picked on those rows)")
    elif requested == "auto":
        info(f"method: [bold]{choice.method}[/bold] (auto: weights only if they beat the mean on rows they were "
             f"not fitted on: {choice.checked:.4f} vs {choice.scores['mean']:.4f})")
    elif choice.method == "weights" and choice.flattered:
        warn(f"--method weights: fitted on the keep=best OOF of {flattered}, whose epochs were picked on those "
             "rows; the weights favour the most flattered run. --method mean fits nothing")
    elif choice.method == "weights" and better(choice.metric, choice.scores["mean"], choice.checked):
        warn(f"the fitted weights scored {choice.checked:.4f} on rows they were not fitted on, below the plain "
             f"mean ({choice.scores['mean']:.4f}): with {rows:,} rows they likely fit noise; --method mean is safer")


def review_members(members: list[Member], labels: np.ndarray) -> None:
    """Warn about members whose OOF numbers mislead: flattered by keep=best, or near chance."""
    warn_keep_best(members)
    warn_near_chance(members, labels)


def warn_keep_best(members: list[Member]) -> None:
    names = [m.name for m in members if keeps_best(m.run)]
    if names:
        warn(f"{', '.join(names)}: trained with keep=best, so each fold kept the epoch that scored best on the "
             "very rows its OOF accuracy is measured on: that OOF accuracy is optimistic (by 0.006 on the demo "
             "set, 0.02 with 100 validation rows a fold: bench/RESULTS.md); retrain with --keep last for "
             "honest numbers")


def chance_line(labels: np.ndarray) -> tuple[float, float]:
    """(chance, the accuracy below which a score is within noise of it); see CHANCE_MARGIN_SE.
    Multi-label: the label accuracy of answering each label's commoner value, over rows x labels."""
    if labels.ndim == 2:
        share = labels.mean(0)
        chance, count = float(np.maximum(share, 1 - share).mean()), labels.size
    else:
        chance, count = float(np.bincount(labels).max() / len(labels)), len(labels)
    return chance, chance + CHANCE_MARGIN_SE * float(np.sqrt(chance * (1 - chance) / count))


def warn_near_chance(members: list[Member], labels: np.ndarray) -> None:
    chance, line = chance_line(labels)
    dull = [f"{m.name} ({accuracy(m.oof, labels):.4f})" for m in members if accuracy(m.oof, labels) < line]
    if dull:
        what = "answering each label's commoner value" if labels.ndim == 2 else "the largest class's share"
        warn(f"{', '.join(dull)}: OOF accuracy within noise of chance ({chance:.4f}, {what}; "
             f"below {line:.4f} = chance + {CHANCE_MARGIN_SE} standard errors on {len(labels):,} rows): "
             "the run learned next to nothing; check its curves (comp report) or leave it out of --runs")


def warn_constant(predicted: np.ndarray, classes: list[str], members: list[Member]) -> None:
    """Every test row given the same class: almost always a broken run, never a good submission."""
    if len(predicted) > 1 and (predicted == predicted[0]).all():
        warn(f"every one of the {len(predicted):,} test rows is predicted {classes[predicted[0]]!r} (runs "
             f"{', '.join(m.name for m in members)}): a constant submission scores that class's share at best")


def index_entry(workspace, out: Path, members: list[Member], choice: Blend, error_bars: BlendErrorBars, rows: int,
                fingerprint: str, verdict: "MetricVerdict | None" = None) -> dict:
    """The row submissions/index.csv keeps about this submission (the error bars last: older files
    gain the columns when this row is appended)."""
    ensemble, gain = error_bars.ensemble, error_bars.gain
    return {
        "file": str(out.relative_to(workspace.root)) if out.is_relative_to(workspace.root) else str(out),
        "runs": ";".join(m.name for m in members),
        "weights": ";".join(f"{w:.3f}" for w in choice.weights) if choice.weights is not None else "",
        "method": choice.method,
        "tta": ";".join(m.tta for m in members),
        "oof_accuracy": f"{choice.accuracy:.4f}",
        "oof_rows": rows,
        "fingerprint": fingerprint,
        "ci_accuracy": _rounded(ensemble.estimate),  # what the interval is around: checked for method weights
        "ci_low": _rounded(ensemble.low),
        "ci_high": _rounded(ensemble.high),
        "best_run": members[error_bars.best].name,
        "gain": _rounded(gain.estimate),
        "gain_low": _rounded(gain.low),
        "gain_high": _rounded(gain.high),
        "test_from": ";".join(m.test_source for m in members),  # full x<seeds> | folds
        **(verdict.index_columns() if verdict is not None else {}),
    }


def _rounded(value: float) -> str:
    return f"{value:.4f}" if np.isfinite(value) else ""  # unknown: empty, as in rows older than the column


# -- the competition's metric: its error bars and the decision rule -----------------------------


@dataclass
class MetricVerdict:
    """The blend under the competition's metric: its value and 95% bootstrap interval on the honest
    OOF blend (nothing fitted on the rows it scores), its log-loss, and the decision rule chosen by
    cross-fitting over the run's folds (comp.core.decision.choose_rule), applied to the test set."""

    metric: str
    value: float  # the metric of the honest OOF blend (for method weights: the checked blend)
    interval: Interval
    gain: Interval  # over the best member under the metric (paired)
    best_run: str
    loss: float  # log-loss of the honest OOF blend
    choice: object | None  # comp.core.decision.Choice, None when the folds of the rows are unknown

    @property
    def rule(self) -> str:
        return self.choice.rule_name if self.choice is not None else "identity"

    @property
    def final(self) -> float:
        """The metric the submission's decision earns on OOF rows: cross-fitted when a rule was kept."""
        return self.choice.crossfit_score if self.choice is not None and self.choice.kept else self.value

    def index_columns(self) -> dict:
        return {"metric": self.metric, "oof_metric": _rounded(self.value), "metric_low": _rounded(self.interval.low),
                "metric_high": _rounded(self.interval.high), "oof_log_loss": _rounded(self.loss),
                "rule": self.rule, "oof_metric_rule": _rounded(self.final)}


def metric_verdict(metric: str, members: list[Member], labels: np.ndarray, choice: Blend,
                   folds: np.ndarray | None, error_bars: BlendErrorBars) -> MetricVerdict:
    """Under accuracy (the default) the error bars are the accuracy's own, and no rule is fitted: the
    argmax of the probabilities is already the decision accuracy rewards, so the submission stays
    what it was before the metric could be chosen."""
    from comp.core.decision import choose_rule

    oofs = [m.oof for m in members]
    honest = honest_blend(choice, oofs)
    honest = honest if honest is not None else blend(choice.method, oofs, choice.fitted, choice.multilabel)
    if metric == "accuracy" and not choice.multilabel:  # multi-label: per-label thresholds are fitted
        return MetricVerdict(metric, accuracy(honest, labels), error_bars.ensemble, error_bars.gain,
                             members[error_bars.best].name, log_loss(honest, labels), None)
    bars = MetricBars(metric, labels, oofs + [honest])
    best = max(range(len(members)), key=lambda i: _score(oofs[i], labels, metric))
    ruled = None
    if folds is not None and len(np.unique(folds)) > 1:
        ruled = choose_rule(honest, labels, folds, metric)
    return MetricVerdict(metric, float(bars.estimates[-1]), bars.interval(len(members)),
                         bars.gain(len(members), best), members[best].name, log_loss(honest, labels), ruled)


def explain_verdict(verdict: MetricVerdict, rows: int) -> None:
    """The metric's error bars and which decision rule was fitted, with what it bought."""
    info(f"{verdict.metric}: ensemble {verdict.value:.4f} (95% CI {format_interval(verdict.interval)}), vs the "
         f"best run {verdict.best_run} {verdict.gain.estimate:+.4f} (95% CI {format_difference(verdict.gain)}, "
         f"+ = better); log-loss {verdict.loss:.4f}; bootstrap over {rows:,} OOF rows")
    ruled = verdict.choice
    if ruled is None:
        info("decision rule: identity (the fold of each OOF row is unknown, so no rule can be cross-fitted)")
        return
    gain = Interval(ruled.crossfit_score - ruled.plain_score if get_metric(verdict.metric).greater_is_better
                    else ruled.plain_score - ruled.crossfit_score, *ruled.gain_interval)
    if ruled.candidate == "identity":
        info(f"decision rule: identity (no rule to fit for {verdict.metric}); the probabilities as blended")
    elif ruled.kept:
        info(f"decision rule: [bold]{ruled.candidate}[/bold] fitted for {verdict.metric}, cross-fitted over the folds "
             f"{ruled.plain_score:.4f} -> {ruled.crossfit_score:.4f} (gain 95% CI {format_difference(gain)}, "
             f"better in {ruled.gain_share:.0%} of resamples); applied to the test set: "
             f"{ruled.fitted_rule.describe()}")
    else:
        info(f"decision rule: identity; {ruled.candidate} cross-fitted over the folds scored "
             f"{ruled.crossfit_score:.4f} "
             f"vs {ruled.plain_score:.4f} plain (gain 95% CI {format_difference(gain)}, better in only "
             f"{ruled.gain_share:.0%} of resamples, 95% needed), so it bought nothing sure and is not applied")


@dataclass
class Submission:
    """A written leaderboard CSV and how it was made."""

    path: Path
    method: str
    weights: dict  # run name -> weight in the blend (empty for geomean and vote)
    oof_accuracy: float  # the blend's accuracy on the out-of-fold rows (method weights: fitted there)
    oof_rows: int
    runs: list[str]
    # 95% bootstrap interval of the OOF accuracy of the blend, or for method weights of the checked
    # blend (weights fitted on other rows), whose accuracy is oof_interval.estimate
    oof_interval: Interval
    best_run: str  # the member with the best OOF accuracy
    gain_over_best: Interval  # paired 95% interval of (ensemble - best_run) on the same rows
    metric: str = "accuracy"  # the competition's metric
    oof_score: float = float("nan")  # its OOF value for the submission's decision (after the rule)
    metric_interval: Interval = UNKNOWN  # 95% bootstrap interval of the blend's metric
    rule: str = "identity"  # the decision rule applied to the test probabilities


def ensemble(workspace, runs: list[str] | None = None, *, out=None, method: str = "auto", tta: str | None = None,
             average: str = DEFAULT_AVERAGE, force: bool = False, allow_pretrained: bool = False,
             limit: int = 0) -> Submission:
    """Blend finished runs (named, or every one that fits the data) into a leaderboard CSV. -> Submission."""
    from comp.stages.predict import dataset_for_runs
    from comp.stages.submission import append_index, check_format, submission_frame, write_submission
    from comp.store.runs import oof_folds

    if method not in METHODS:
        raise CompError(f"--method {method}: choose one of {', '.join(METHODS)}")
    if average not in AVERAGES:
        raise CompError(f"--tta-average {average}: choose one of {', '.join(AVERAGES)}")
    started = time.time()
    out = workspace.submission_path(out or default_out_name()).expanduser().resolve()
    if out.exists() and not force:  # say so now, not after the work
        raise CompError(f"{out}: already exists; choose another --out, or pass --force to replace it")
    # 1. The runs: named, or every finished one that fits the data; refused when not comparable.
    candidates = candidate_runs(workspace, runs)
    dataset = dataset_for_runs(workspace, candidates)
    chosen = select_runs(workspace, dataset, candidates, runs is not None, limit, allow_pretrained)
    metric = workspace.metric
    check_format(dataset.submission, dataset.classes, metric, dataset.multilabel)
    # 2. Their predictions: OOF rows (to score and fit) and test images (to submit), plain or TTA.
    labels = dataset.train_y[chosen[0].oof_rows()]
    members = load_members(chosen, labels, tta, average, metric)
    review_members(members, labels)
    for member in (m for m in members if m.full_fits):
        info(f"{member.name}: test predictions from its {member.full_fits} full-data fit(s), scored and weighted "
             f"by its {len(member.run.folds)} folds' OOF predictions")
    # 3. How to combine them, decided on the OOF rows.
    choice = decide_blend(members, labels, method, metric)
    error_bars = blend_error_bars(members, labels, choice)
    console.print(members_table(members, labels, choice, error_bars))
    explain_blend(choice, method, len(labels))
    explain_error_bars(error_bars, members, choice, len(labels))
    # 4. The competition's metric: its error bars, and the decision rule cross-fitted over the folds.
    verdict = metric_verdict(metric, members, labels, choice, oof_folds(chosen[0]), error_bars)
    if metric != "accuracy" or dataset.multilabel:  # under accuracy the lines above said it all
        explain_verdict(verdict, len(labels))
    # 5. The CSV, checked, and its line in the history.
    probs = blend(choice.method, [m.test for m in members], choice.fitted, choice.multilabel)
    if verdict.choice is not None:
        probs = verdict.choice.fitted_rule.apply(probs)
    if not dataset.multilabel:
        warn_constant(probs.argmax(1), dataset.classes, members)
    frame = submission_frame(dataset.submission, dataset.classes, probs, metric, dataset.multilabel)
    write_submission(out, frame, dataset.submission, dataset.classes, force=force, metric=metric,
                     multilabel=dataset.multilabel)
    index = append_index(workspace, index_entry(workspace, out, members, choice, error_bars, len(labels),
                                                dataset.fingerprint, verdict))
    best_single = max(accuracy(m.oof, labels) for m in members)
    named = "" if metric == "accuracy" else f"OOF {metric} [bold]{verdict.final:.4f}[/bold] (rule {verdict.rule}), "
    info(f"wrote {out}: {len(frame):,} rows, method {choice.method}, {named}OOF accuracy "
         f"{'[bold]' if not named else ''}{choice.accuracy:.4f}{'[/bold]' if not named else ''} "
         f"(best single run {best_single:.4f}); history: {index} ({time.time() - started:.0f}s)")
    weights = {} if choice.weights is None else {m.name: float(w) for m, w in zip(members, choice.weights)}
    return Submission(out, choice.method, weights, choice.accuracy, len(labels), [m.name for m in members],
                      error_bars.ensemble, members[error_bars.best].name, error_bars.gain, metric, verdict.final,
                      verdict.interval, verdict.rule)
