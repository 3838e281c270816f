#!/usr/bin/env bash
# CPU ablation: today's `fast` against the airbench-exact recipe (`airbench94`) at equal epochs, on
# folds 0 and 1 (5,000 validation rows each) of a stratified 25,000-row subsample, at half width.
# Prints validation accuracy without and with each run's own TTA, and seconds per epoch; the raw
# numbers go to $OUT (default bench/results/cpu-airbench-ablation.json).
#
#   bash bench/airbench_ablation.sh DATA_DIR [WORKDIR]      (results: bench/RESULTS.md)
set -euo pipefail
DATA=${1:?usage: bash bench/airbench_ablation.sh DATA_DIR [WORKDIR]}
WORK=${2:-/tmp/comp-airbench-ablation}
COMP=${COMP:-comp}
PYTHON=${PYTHON:-python3}
EPOCHS=${EPOCHS:-10}
MODELS=${MODELS:-fast airbench94}
OUT=${OUT:-bench/results/cpu-airbench-ablation.json}
COMMON=(--data "$DATA" --workdir "$WORK" --width 0.5 --limit 25000 --fold 0,1 --epochs "$EPOCHS" --quiet)

NAMES=()
for model in $MODELS; do
    $COMP train "${COMMON[@]}" --model "$model" --name "$model-e$EPOCHS"
    NAMES+=("$model-e$EPOCHS")
done

"$PYTHON" - "$WORK" "$OUT" "${NAMES[@]}" <<'PY'
import json, pathlib, platform, sys
import pandas as pd
work, out, runs = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
rows = []
print(f"{'run':<18} {'fold':>4} {'val acc':>8} {'with TTA':>9} {'TTA':>10} {'s/epoch':>8}")
for run in runs:
    config = json.loads((work / "folds" / run / "config.json").read_text())["config"]
    for fold in (0, 1):
        folder = work / "folds" / run / f"fold{fold}"
        m = json.loads((folder / "metrics.json").read_text())
        tta_key = next(k for k in m if k.startswith("val_accuracy."))
        epoch_seconds = pd.read_csv(folder / "history.csv")["seconds"].tolist()
        rows.append({"run": run, "fold": fold, "val_accuracy": m["val_accuracy"], "tta": tta_key.split(".", 1)[1],
                     "val_accuracy_tta": m[tta_key], "fold_seconds": m["seconds"], "epoch_seconds": epoch_seconds,
                     "config": config})
        r = rows[-1]
        print(f"{run:<18} {fold:>4} {r['val_accuracy']:>8.4f} {r['val_accuracy_tta']:>9.4f} {r['tta']:>10} "
              f"{sum(epoch_seconds) / len(epoch_seconds):>8.1f}")
out.write_text(json.dumps({"machine": platform.processor() or platform.machine(), "rows": rows}, indent=1))
print(f"wrote {out}")
PY
