"""Cross-TTA on bench/airbench_ablation.sh's saved fold models: folds 0 and 1 of each run, their
validation rows predicted with the flip-shift and airbench policies and both averages.

    PYTHONPATH=. python bench/cross_tta.py WORKDIR DATA_DIR RUN [RUN ...]      (results: bench/RESULTS.md)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import keras

from comp.config.run_config import RunConfig
from comp.data.sources import apply_limit
from comp.stages.predict import load_net
from comp.stages.train import split_for
from comp.config.tta_policy import AVERAGES
from comp.engine.tta import average_views, predict_logits
from comp.workspace import Workspace

POLICIES = ("flip-shift", "airbench")


def main(work: Path, data: str, runs: list[str]) -> dict:
    workspace = Workspace(work, data=data)
    scores = {}
    for run in runs:
        config = RunConfig.from_dict(json.loads((work / "folds" / run / "config.json").read_text())["config"])
        dataset = workspace.dataset()  # fresh: apply_limit subsamples it in place
        split = split_for(workspace, dataset, config)
        limited = apply_limit(dataset, config.limit)
        for fold in (0, 1):
            _, val_pos = split.rows(fold, limited.rows)
            images, labels = limited.train_x[val_pos], limited.train_y[val_pos]
            keras.backend.clear_session()
            net = load_net(work / "folds" / run / f"fold{fold}" / "model.keras")
            for policy in POLICIES:
                logits = predict_logits(net, images, policy, 500)
                for average in AVERAGES:
                    accuracy = float((average_views(logits, average, policy).argmax(1) == labels).mean())
                    scores[f"{run}/fold{fold}/{policy}@{average}"] = accuracy
                    print(run, fold, policy, average, round(accuracy, 4), flush=True)
    return scores


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), sys.argv[2], sys.argv[3:])))
