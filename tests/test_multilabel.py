"""Multi-label targets (issue #24, item 3): detected in the labels CSV in both forms it ships in
(0/1 columns; space-separated labels), split by iterative stratification, trained with sigmoid
outputs and binary cross-entropy, ensembled on probabilities with per-label thresholds fitted by
cross-fitting, and submitted in the sample's form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from comp.cli import main
from comp.core.paths import Workdir

LABELS = ["ne", "nw", "se", "sw"]  # a bright quadrant each
SIZE = 8
TRAIN = ["--model", "baseline", "--epochs", "8", "--folds", "3", "--width", "0.5", "--quiet", "--name", "r",
         "--batch-size", "8", "--lr", "0.003"]


def quadrant_images(matrix: np.ndarray, seed: int) -> np.ndarray:
    """One 8x8 image per row of a multi-hot matrix: quadrant q bright where label q is on, plus noise."""
    rng = np.random.default_rng(seed)
    images = rng.normal(40, 20, (len(matrix), SIZE, SIZE, 3))
    half = SIZE // 2
    corners = [(0, half), (0, 0), (half, half), (half, 0)]  # (row, col) of ne, nw, se, sw
    for label, (top, left) in enumerate(corners):
        images[matrix[:, label] == 1, top:top + half, left:left + half] += 180
    return np.clip(images, 0, 255).astype(np.uint8)


def label_matrix(rows: int, seed: int) -> np.ndarray:
    """Each label on in about a third of the rows; every row has at least one label; skewed: the
    last label rarer."""
    rng = np.random.default_rng(seed)
    matrix = (rng.random((rows, len(LABELS))) < [0.45, 0.4, 0.35, 0.2]).astype(np.uint8)
    matrix[matrix.sum(1) == 0, 0] = 1
    return matrix


def make_multilabel_competition(root: Path, form: str, rows: int = 60, test_rows: int = 12, seed: int = 0) -> Path:
    """train/NNNN.png + train.csv (0/1 columns or space-separated labels), test/, sample_submission.csv."""
    from PIL import Image

    train_y, test_y = label_matrix(rows, seed), label_matrix(test_rows, seed + 1)
    test_y[0, :2] = 1  # the answers, too, show several labels in a row
    for folder, matrix, offset in (("train", train_y, 0), ("test", test_y, 1)):
        (root / folder).mkdir(parents=True)
        for i, image in enumerate(quadrant_images(matrix, seed + offset)):
            Image.fromarray(image).save(root / folder / f"{i:04d}.png")
    ids = [f"{i:04d}" for i in range(rows)]
    test_ids = [f"{i:04d}" for i in range(test_rows)]
    if form == "columns":
        pd.DataFrame({"id": ids, **{name: train_y[:, j] for j, name in enumerate(LABELS)}}).to_csv(
            root / "train.csv", index=False)
        pd.DataFrame({"id": test_ids, **{name: 0 for name in LABELS}}).to_csv(root / "sample_submission.csv",
                                                                               index=False)
        pd.DataFrame({"id": test_ids, **{name: test_y[:, j] for j, name in enumerate(LABELS)}}).to_csv(
            root / "answers.csv", index=False)
    else:
        spaced = [" ".join(LABELS[j] for j in np.flatnonzero(row)) for row in train_y]
        pd.DataFrame({"image": [f"{i}.png" for i in ids], "labels": spaced}).to_csv(root / "train.csv", index=False)
        pd.DataFrame({"image": [f"{i}.png" for i in test_ids], "labels": LABELS[0]}).to_csv(
            root / "sample_submission.csv", index=False)
        pd.DataFrame({"image": [f"{i}.png" for i in test_ids],
                      "labels": [" ".join(LABELS[j] for j in np.flatnonzero(row)) for row in test_y]}).to_csv(
            root / "answers.csv", index=False)
    return root


def run_pipeline(root: Path, form: str, metric: str) -> Path:
    """A tiny multi-label competition in `form`, then data check -> train -> ensemble: the workdir."""
    data = make_multilabel_competition(root / "data", form)
    work = root / "work"
    assert main(["data", "check", "--data", str(data), "--workdir", str(work), "--metric", metric, "--quiet"]) == 0
    assert main(["train", "--workdir", str(work), *TRAIN]) == 0
    assert main(["ensemble", "--workdir", str(work), "--out", "sub.csv"]) == 0
    return work


@pytest.fixture(scope="module")
def columns_work(tmp_path_factory) -> Path:
    return run_pipeline(tmp_path_factory.mktemp("columns"), "columns", "f1_samples")


@pytest.fixture(scope="module")
def spaces_work(tmp_path_factory) -> Path:
    return run_pipeline(tmp_path_factory.mktemp("spaces"), "spaces", "f1_micro")


def index_row(work: Path) -> dict:
    return pd.read_csv(work / "submissions" / "index.csv", dtype=str, keep_default_na=False).iloc[-1].to_dict()


# -- the pipeline through the CLI ------------------------------------------------------------


def test_zero_one_columns_give_a_zero_one_submission(columns_work):
    data = columns_work.parent / "data"
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    written = pd.read_csv(columns_work / "submissions" / "sub.csv", dtype=str)
    assert list(written.columns) == list(sample.columns)
    assert written["id"].tolist() == sample["id"].tolist()
    assert set(np.unique(written[LABELS].to_numpy())) <= {"0", "1"}
    assert written[LABELS].astype(int).to_numpy().sum() > 0


def test_space_separated_labels_give_space_separated_labels(spaces_work):
    data = spaces_work.parent / "data"
    sample = pd.read_csv(data / "sample_submission.csv", dtype=str)
    written = pd.read_csv(spaces_work / "submissions" / "sub.csv", dtype=str, keep_default_na=False)
    assert list(written.columns) == ["image", "labels"]
    assert written["image"].tolist() == sample["image"].tolist()
    words = [w for cell in written["labels"] for w in cell.split()]
    assert words and set(words) <= set(LABELS)
    assert any(len(cell.split()) > 1 for cell in written["labels"])  # several labels in some row


@pytest.mark.parametrize("work_name", ["columns_work", "spaces_work"])
def test_folds_are_iteratively_stratified_and_recorded(work_name, request):
    work = request.getfixturevalue(work_name)
    folds = pd.read_csv(work / "folds" / "folds.csv", dtype={"labels": str}, keep_default_na=False)
    from comp.data.folds import read_label_cells

    matrix = read_label_cells(folds["labels"].tolist(), len(LABELS))
    assert matrix.sum(1).max() > 1
    for label in range(len(LABELS)):  # each fold holds about a third of every label's rows
        per_fold = np.bincount(folds["fold"][matrix[:, label] == 1], minlength=3)
        assert per_fold.max() - per_fold.min() <= 1, (LABELS[label], per_fold)


@pytest.mark.parametrize("work_name", ["columns_work", "spaces_work"])
def test_runs_learn_the_labels_and_thresholds_are_cross_fitted(work_name, request):
    from comp.stages.ensemble import chance_line
    from comp.store.runs import load_run, oof_labels

    work = request.getfixturevalue(work_name)
    run = load_run(Workdir(work), "r")
    labels = oof_labels(run)
    assert run.multilabel and labels.shape == (60, len(LABELS))
    probs = run.oof_probs
    assert probs.shape == labels.shape and ((probs >= 0) & (probs <= 1)).all()
    assert not np.allclose(probs.sum(1), 1)  # sigmoids, not a softmax
    summary = json.loads((run.path / "summary.json").read_text())
    assert summary["cv_accuracy"] > chance_line(labels)[1]  # label accuracy beyond chance
    row = index_row(work)
    assert row["metric"] == run.metric and row["rule"] in ("identity", "label_thresholds") and row["oof_metric"]


@pytest.mark.parametrize("work_name, metric", [("columns_work", "f1_samples"), ("spaces_work", "f1_micro_multilabel")])
def test_score_grades_a_multilabel_submission(work_name, metric, request, capsys):
    from sklearn.metrics import f1_score

    work = request.getfixturevalue(work_name)
    capsys.readouterr()
    assert main(["score", str(work / "submissions" / "sub.csv"), "--workdir", str(work)]) == 0
    assert metric in capsys.readouterr().out
    written = pd.read_csv(work / "submissions" / "sub.csv", dtype=str, keep_default_na=False)
    answers = pd.read_csv(work.parent / "data" / "answers.csv", dtype=str, keep_default_na=False)
    if work_name == "columns_work":
        predicted, truth = written[LABELS].astype(int).to_numpy(), answers[LABELS].astype(int).to_numpy()
    else:
        predicted, truth = ([[int(name in cell.split()) for name in LABELS] for cell in frame["labels"]]
                            for frame in (written, answers))
    average = "samples" if metric == "f1_samples" else "micro"
    expected = f1_score(np.asarray(truth), np.asarray(predicted), average=average, zero_division=0)
    from comp.stages.submission import score_submission

    result = score_submission(work / "submissions" / "sub.csv", work.parent / "data" / "answers.csv", metric)
    assert result["value"] == pytest.approx(expected) and result["rows"] == 12 * len(LABELS)


def test_ensemble_reports_the_cross_fitted_thresholds(columns_work, capsys):
    capsys.readouterr()
    assert main(["ensemble", "--workdir", str(columns_work), "--out", "again.csv"]) == 0
    out = capsys.readouterr().out
    assert "label_thresholds" in out and "cross-fitted over the folds" in out


def test_a_metric_without_a_multilabel_form_is_refused_in_one_line(tmp_path, capsys):
    data = make_multilabel_competition(tmp_path / "data", "columns", rows=12, test_rows=2)
    capsys.readouterr()
    assert main(["data", "check", "--data", str(data), "--workdir", str(tmp_path / "w"), "--metric", "qwk"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "does not score multi-label targets" in error and "f1_samples" in error


def test_an_id_without_image_names_the_file_and_row(tmp_path):
    from comp.core.errors import CompError
    from comp.data.sources import load_dataset

    data = make_multilabel_competition(tmp_path / "data", "columns", rows=12, test_rows=2)
    (data / "train" / "0005.png").unlink()
    with pytest.raises(CompError) as err:
        load_dataset(data, None)
    assert "train.csv: id 0005 (row 7) has no image" in str(err.value) and "\n" not in str(err.value)


# -- detection ---------------------------------------------------------------------------------


def frame_csv(path: Path, columns: dict) -> Path:
    pd.DataFrame(columns).to_csv(path, index=False)
    return path


def read(path: Path):
    from comp.data.multilabel import read_multilabel
    from comp.data.sources import ID_COLUMN_NAMES, LABEL_COLUMN_NAMES

    return read_multilabel(path, (*ID_COLUMN_NAMES, "index"), LABEL_COLUMN_NAMES)


def test_zero_one_columns_with_several_ones_are_multilabel(tmp_path):
    found = read(frame_csv(tmp_path / "a.csv", {"index": [0, 1, 2], "a": [1, 0, 1], "b": [1, 0, 0], "c": [0, 1, 1]}))
    assert found.form == "columns" and found.classes == ["a", "b", "c"] and found.ids == ["0", "1", "2"]
    assert found.matrix.dtype == np.uint8 and found.matrix.tolist() == [[1, 1, 0], [0, 0, 1], [1, 0, 1]]


def test_one_hot_columns_are_not_multilabel(tmp_path):
    assert read(frame_csv(tmp_path / "a.csv", {"image_id": ["x", "y"], "healthy": [1, 0], "rust": [0, 1]})) is None


def test_zero_one_columns_beside_a_label_column_are_single_label(tmp_path):
    # id,fold,label with two folds and two classes: two 0/1 columns, yet one label a row
    assert read(frame_csv(tmp_path / "a.csv", {"id": list("abcd"), "fold": [0, 1, 1, 0],
                                               "label": [1, 1, 0, 0]})) is None


def test_space_separated_labels_are_multilabel(tmp_path):
    found = read(frame_csv(tmp_path / "a.csv", {"image": ["x.jpg", "y.jpg", "z.jpg"],
                                                "labels": ["scab", "scab frog_eye", "frog_eye healthy"]}))
    assert found.form == "spaces" and found.classes == ["frog_eye", "healthy", "scab"]
    assert found.matrix.tolist() == [[0, 0, 1], [1, 0, 1], [1, 1, 0]]


def test_class_names_with_a_space_stay_single_label(tmp_path):
    names = ["Common wheat", "Common Chickweed", "Maize", "Fat Hen"]
    assert read(frame_csv(tmp_path / "a.csv", {"id": list("abcd"), "label": names})) is None


# -- loss, metrics, folds, thresholds -----------------------------------------------------------


def test_binary_cross_entropy_matches_a_numpy_reference():
    from keras import ops

    from comp.engine.step import binary_cross_entropy

    rng = np.random.default_rng(0)
    logits = rng.normal(0, 4, (16, 5)).astype(np.float32)
    targets = rng.random((16, 5)).astype(np.float32)  # mixed targets are soft
    for smoothing in (0.0, 0.1):
        smoothed = targets * (1 - smoothing) + smoothing / 2
        p = 1 / (1 + np.exp(-logits.astype(np.float64)))
        reference = -np.mean(np.sum(smoothed * np.log(p) + (1 - smoothed) * np.log(1 - p), axis=1))
        value = float(ops.convert_to_numpy(binary_cross_entropy(logits, targets, smoothing)))
        assert value == pytest.approx(reference, rel=1e-5)


def test_multilabel_metrics_equal_scikit_learn():
    from sklearn.metrics import accuracy_score, f1_score

    from comp.core.metrics import score

    rng = np.random.default_rng(1)
    truth = (rng.random((50, 6)) < 0.3).astype(np.uint8)
    probs = np.clip(truth * 0.5 + rng.random((50, 6)) * 0.6, 0, 1)
    decided = (probs >= 0.5).astype(int)
    for name, average in (("f1_samples", "samples"), ("f1_micro", "micro"), ("f1_macro", "macro")):
        expected = f1_score(truth, decided, average=average, zero_division=0)
        assert score(name, truth, probs) == pytest.approx(expected)
    assert score("accuracy", truth, probs) == pytest.approx(accuracy_score(truth.ravel(), decided.ravel()))


def test_iterative_stratification_balances_every_label():
    from comp.data.folds import make_split

    matrix = label_matrix(300, seed=3)
    folds = make_split(matrix, 5, seed=0)
    for label in range(matrix.shape[1]):
        per_fold = np.bincount(folds[matrix[:, label] == 1], minlength=5)
        assert per_fold.max() - per_fold.min() <= 2, per_fold


def skewed_probs(rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Three labels, the last rare and under-confident: its positives mostly below 0.5."""
    rng = np.random.default_rng(seed)
    truth = (rng.random((rows, 3)) < [0.5, 0.4, 0.08]).astype(np.uint8)
    probs = np.where(truth == 1, rng.uniform(0.45, 0.95, truth.shape), rng.uniform(0.02, 0.55, truth.shape))
    probs[:, 2] = np.where(truth[:, 2] == 1, rng.uniform(0.15, 0.5, rows), rng.uniform(0.0, 0.25, rows))
    return probs, truth


@pytest.mark.parametrize("metric", ["f1_samples", "f1_micro", "f1_macro"])
def test_cross_fitted_thresholds_beat_half_on_held_out_rows(metric):
    from comp.core.decision import LabelThresholds, choose_rule, cross_fit
    from comp.core.metrics import score

    probs, truth = skewed_probs(600, seed=4)
    folds = np.arange(600) % 5
    held_out = cross_fit(LabelThresholds, probs, truth, folds, metric)
    assert score(metric, truth, held_out) > score(metric, truth, probs) + 0.01
    choice = choose_rule(probs, truth, folds, metric, resamples=200)
    assert choice.kept and choice.rule_name == "label_thresholds"
    assert choice.fitted_rule.thresholds[2] < 0.5  # the rare, under-confident label is cut lower
    # fitted on these rows, then applied to fresh rows of the same kind
    fresh_probs, fresh_truth = skewed_probs(600, seed=5)
    assert score(metric, fresh_truth, choice.fitted_rule.apply(fresh_probs)) > score(metric, fresh_truth, fresh_probs)


def test_threshold_rule_moves_each_threshold_to_one_half():
    from comp.core.decision import LabelThresholds, Rule

    rule = LabelThresholds([0.2, 0.5, 0.8])
    probs = np.array([[0.19, 0.49, 0.79], [0.2, 0.5, 0.8], [1.0, 0.0, 0.9]])
    moved = rule.apply(probs)
    assert ((moved >= 0.5) == (probs >= rule.thresholds)).all() and ((moved >= 0) & (moved <= 1)).all()
    assert Rule.from_json(rule.to_json()).thresholds.tolist() == [0.2, 0.5, 0.8]


def test_probability_sample_gets_probabilities(tmp_path):
    from comp.data.sources import read_submission_format
    from comp.stages.submission import submission_frame

    frame_csv(tmp_path / "sample_submission.csv", {"id": ["1", "2"], "b": [0.5, 0.5], "a": [0.5, 0.5]})
    fmt = read_submission_format(tmp_path, [])
    probs = np.array([[0.9, 0.2], [0.1, 0.7]])
    frame = submission_frame(fmt, ["a", "b"], probs, "f1_samples", multilabel=True)
    assert list(frame.columns) == ["id", "b", "a"]
    assert frame["a"].tolist() == [0.9, 0.1] and frame["b"].tolist() == [0.2, 0.7]


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 0.4)])
def test_mixup_and_cutmix_mix_multi_hot_targets(mixup, cutmix):
    from keras import ops

    from comp.engine.augment import make_mix_layer

    targets = label_matrix(8, seed=6).astype(np.float32)
    _, mixed = make_mix_layer(mixup, cutmix, seed=0)(ops.ones((8, 8, 8, 3)), ops.convert_to_tensor(targets),
                                                     training=True)
    mixed, partner = ops.convert_to_numpy(mixed), targets[::-1]  # the partner of row i is row 7 - i
    shares = []
    for i in range(8):  # each row a convex mix of its own multi-hot row and its partner's
        differ = targets[i] != partner[i]
        assert np.allclose(mixed[i][~differ], targets[i][~differ])
        own = np.unique(np.round((mixed[i] - partner[i])[differ] / (targets[i] - partner[i])[differ], 5))
        assert len(own) <= 1 and ((0 <= own) & (own <= 1)).all()
        shares += own.tolist()
    assert any(0 < share < 1 for share in shares)  # and some row is really mixed
