"""examples/quickstart.ipynb runs end to end on the demo data and writes a valid submission."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from .conftest import REPO

nbclient = pytest.importorskip("nbclient")
nbformat = pytest.importorskip("nbformat")


@pytest.mark.slow
def test_quickstart_notebook_writes_a_valid_csv(tmp_path, monkeypatch):
    notebook = nbformat.read(REPO / "examples" / "quickstart.ipynb", as_version=4)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    client = nbclient.NotebookClient(notebook, timeout=None, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()
    csv = tmp_path / "work" / "submissions" / "demo.csv"
    frame = pd.read_csv(csv, dtype=str)
    sample = pd.read_csv(tmp_path / "data" / "demo" / "sample_submission.csv", dtype=str)
    assert list(frame.columns) == list(sample.columns) and frame["id"].tolist() == sample["id"].tolist()
    assert set(frame["target"]) <= {str(d) for d in range(10)}
    score = notebook.cells[-1].outputs[0]["data"]["text/plain"]
    assert "'accuracy'" in score
    accuracy = float(score.split("'accuracy':")[1].split(",")[0])
    assert accuracy > 0.5  # the digits are easy: a working pipeline learns them in a few epochs
    shutil.rmtree(tmp_path / "work", ignore_errors=True)
