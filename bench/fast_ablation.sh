#!/usr/bin/env bash
# CPU ablation of the `fast` recipe: each variant is today's defaults with one change, trained on
# fold 0 (5,000 validation rows) of a stratified 25,000-row subsample, at half width, 16 epochs.
# About 5 minutes a variant on a 2-core CPU; prints validation accuracy without and with TTA.
#
#   bash bench/fast_ablation.sh DATA_DIR [WORKDIR]      (results: bench/RESULTS.md)
set -euo pipefail
DATA=${1:?usage: bash bench/fast_ablation.sh DATA_DIR [WORKDIR]}
WORK=${2:-/tmp/comp-fast-ablation}
COMP=${COMP:-comp}
COMMON=(--data "$DATA" --workdir "$WORK" --model fast --width 0.5 --limit 25000 --fold 0 --quiet)

NAMES=()
variant() {  # variant NAME [flags...]
    local name=$1
    shift
    $COMP train "${COMMON[@]}" --name "$name" "$@"
    NAMES+=("$name")
}
variant defaults
variant no-lookahead --lookahead 0
variant random-flip --augment flip-crop
variant bias-lr-64 --bias-lr-scale 64
variant crop-2 --augment alt-flip,crop=2
variant reflect --augment alt-flip-crop,reflect

python3 - "$WORK" "${NAMES[@]}" <<'PY'
import json, pathlib, sys
print(f"{'variant':<14} {'val acc':>8} {'with TTA':>9} {'seconds':>8}")
for run in sys.argv[2:]:
    m = json.loads((pathlib.Path(sys.argv[1]) / "folds" / run / "fold0" / "metrics.json").read_text())
    tta = next(v for k, v in m.items() if k.startswith("val_accuracy."))
    print(f"{run:<14} {m['val_accuracy']:>8.4f} {tta:>9.4f} {m['seconds']:>8.0f}")
PY
