"""comp predict: re-predicting a run with a TTA policy (OOF measured), and labelling new images."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from comp.cli import main



def test_repredict_with_a_custom_policy_measures_it_on_oof(work, capsys):
    run = work / "folds" / "b"
    assert main(["predict", "--workdir", str(work), "--run", "b", "--tta", "flip,shift=1"]) == 0
    out = capsys.readouterr().out
    assert "mean of probabilities" in out and "mean of logits" in out  # both averages, measured
    for k in range(3):
        val = np.load(run / f"fold{k}" / "val_probs.flip+shift1.npy")
        assert np.allclose(val.sum(1), 1, atol=1e-4)
        assert np.load(run / f"fold{k}" / "test_probs.flip+shift1.npy").shape == (360, 10)
        assert "val_accuracy.flip+shift1" in json.loads((run / f"fold{k}" / "metrics.json").read_text())
    oof = np.load(run / "oof_probs.flip+shift1.npy")
    assert oof.shape == np.load(run / "oof_probs.npy").shape
    results = json.loads((run / "summary.json").read_text())["tta_results"]["flip+shift1"]
    plain = json.loads((run / "summary.json").read_text())["cv_accuracy"]
    # The first view is the image as is: re-predicting it gives what training measured.
    assert results["none"]["accuracy"] == pytest.approx(plain, abs=0.005)
    assert set(results) == {"none", "probs", "logits"}
    # The ensemble can now use the policy.
    assert main(["ensemble", "--workdir", str(work), "--quiet", "--tta", "flip+shift1", "--runs", "b",
                 "--out", "t.csv"]) == 0


def test_repredict_none_reproduces_training_and_logits_average_has_its_own_files(work):
    run = work / "folds" / "a"
    before = np.load(run / "oof_probs.npy")
    assert main(["predict", "--workdir", str(work), "--run", "a", "--tta", "none", "--quiet"]) == 0
    assert np.allclose(np.load(run / "oof_probs.npy"), before, atol=1e-5)
    assert main(["predict", "--workdir", str(work), "--run", "a", "--tta", "flip", "--tta-average", "logits",
                 "--quiet"]) == 0
    assert (run / "oof_probs.flip@logits.npy").exists() and not (run / "oof_probs.flip.npy").exists()


def test_predict_refuses_unfinished_and_unknown_runs(work, capsys):
    (work / "folds" / "a" / "fold1" / "metrics.json").unlink()
    assert main(["predict", "--workdir", str(work), "--run", "a"]) == 2
    assert "fold(s) 1 not finished" in capsys.readouterr().err
    assert main(["predict", "--workdir", str(work), "--run", "zzz"]) == 2
    assert "zzz" in capsys.readouterr().err


def test_label_new_images(shared, work, tmp_path):
    from PIL import Image

    folder = tmp_path / "new"
    folder.mkdir()
    test_images = sorted((shared / "demo" / "test").glob("*.png"))[:4]
    for path in test_images:
        shutil.copy(path, folder / path.name)
    Image.open(test_images[0]).convert("L").resize((50, 40)).save(folder / "odd-size.jpg")  # grey, other size
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "labels.csv"
    assert main(["predict", "--workdir", str(work), "--run", "a", "--images", str(folder), "--out", str(out),
                 "--quiet"]) == 0
    frame = pd.read_csv(out, dtype={"label": str})
    assert list(frame.columns) == ["file", "label", "confidence"]
    assert sorted(frame["file"]) == sorted([p.name for p in test_images] + ["odd-size.jpg"])
    assert set(frame["label"]) <= {str(i) for i in range(10)}
    assert frame["confidence"].between(0, 1).all()
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    assert main(["predict", "--workdir", str(work), "--run", "a", "--images", str(folder), "--out", str(out)]) == 2
    assert main(["predict", "--workdir", str(work), "--run", "a", "--images", str(folder), "--skip-bad",
                 "--quiet"]) == 0
    assert len(pd.read_csv(work / "predictions" / "a-new.csv")) == 5
