"""RunConfig: every field checked by type and range before anything is written; run names stay one folder."""

from __future__ import annotations

import json

import pytest

from comp.cli import main
from comp.config.run_config import FIELD_RULES, RunConfig, build_config
from comp.core.errors import CompError
from comp.core.fileio import remove_tree

from .conftest import make_competition

BAD_VALUES = [
    ("epochs", "2"), ("epochs", 1.5), ("epochs", True), ("epochs", 0), ("lr", "fast"), ("lr", -0.01),
    ("lr", float("nan")), ("lr", 0), ("depth", "deep"), ("depth", [0]), ("depth", [2, "x"]), ("augment", 5),
    ("head", [0]), ("head", "wide"), ("seed", -1), ("seed", 1.5), ("dropout", 1.5), ("dropout", 1.0),
    ("label_smoothing", 3), ("label_smoothing", 1.0), ("width", 0), ("width", -1), ("mixup", -1),
    ("cutmix", float("inf")), ("batch_size", 0), ("folds", 1), ("weight_decay", -1e-4), ("momentum", 1.0),
    ("ema", 1.0), ("lookahead", -0.5), ("patience", -1), ("limit", -5), ("warmup_epochs", -1),
    ("keep", "first"), ("optimizer", "rmsprop"), ("precision", "fp8"), ("jit", "yes"), ("bias_lr_scale", 0),
    ("name", "."), ("name", ".."), ("name", "../escape"), ("name", "/some/dir"), ("name", "a/b"), ("name", 7),
    ("model", 3), ("model", "vggg"), ("tta", 2),
]


@pytest.mark.parametrize("key,value", BAD_VALUES)
def test_bad_values_are_refused_naming_the_key_and_the_source(key, value):
    with pytest.raises(CompError, match=rf"^best.json: {key} = "):
        RunConfig.from_dict({key: value}, "best.json")


def test_every_field_has_a_rule_and_good_values_are_canonical():
    assert set(FIELD_RULES) == {f for f in RunConfig.__dataclass_fields__}
    config = RunConfig.from_dict({"epochs": 3.0, "lr": 1, "depth": 2, "head": [64.0], "dropout": None,
                                  "name": "my-run_1.v2"}, "test")
    assert config.epochs == 3 and isinstance(config.epochs, int)
    assert config.lr == 1.0 and isinstance(config.lr, float)
    assert config.depth == [2] and config.head == [64]
    assert config.keep == "last"  # the default: the best epoch is chosen on the OOF rows themselves


def test_weight_averaging_with_keep_best_is_refused():
    with pytest.raises(CompError, match="keep = best with lookahead"):
        build_config({}, {"model": "fast", "keep": "best"})
    with pytest.raises(CompError, match="keep = best with ema"):
        build_config({}, {"ema": 0.99, "keep": "best"})
    assert build_config({}, {"keep": "best"}).keep == "best"  # without averaging it stays an option


def test_a_bad_value_is_refused_before_anything_is_written(tmp_path, capsys):
    data = make_competition(tmp_path / "d", per_class=6)
    work = tmp_path / "w"
    config = tmp_path / "c.json"
    for values in ({"epochs": "2"}, {"dropout": 1.0}, {"name": "/some/dir"}, {"head": [0]}):
        config.write_text(json.dumps(values))
        assert main(["train", "--data", str(data), "--workdir", str(work), "--config", str(config), "--quiet"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"error: {config}: ") and err.count("\n") == 1
    assert main(["train", "--data", str(data), "--workdir", str(work), "--name", ".", "--quiet"]) == 2
    assert "error: options: name = '.'" in capsys.readouterr().err
    # Nothing of a run was written: no run folder, no manifest.
    assert not list(work.glob("folds/*/config.json"))


def test_force_never_deletes_outside_the_run(tmp_path, capsys):
    data = make_competition(tmp_path / "d", per_class=6)
    work = tmp_path / "w"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    args = ["train", "--data", str(data), "--workdir", str(work), "--model", "baseline", "--width", "0.25",
            "--epochs", "1", "--folds", "2", "--fold", "0", "--quiet"]
    assert main(args + ["--name", "a"]) == 0
    for name in (".", "..", str(outside), "../outside"):
        assert main(args + ["--name", name, "--force"]) == 2
    assert (outside / "keep.txt").read_text() == "mine"
    assert (work / "folds" / "folds.csv").exists() and (work / "folds" / "a" / "fold0" / "metrics.json").exists()
    # The last guard, whatever a name or a link resolves to.
    with pytest.raises(AssertionError, match="not inside"):
        remove_tree(outside, inside=work / "folds")
    link = work / "folds" / "link"
    link.symlink_to(outside)
    with pytest.raises(AssertionError, match="not inside"):
        remove_tree(link, inside=work / "folds")
    assert (outside / "keep.txt").exists()
