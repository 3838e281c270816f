#!/usr/bin/env bash
# How much keep=best flatters out-of-fold (OOF) accuracy, measured on the embedded demo set.
#
# keep=best keeps each fold's epoch with the best accuracy on that fold's validation rows, the
# very rows whose predictions become the OOF file. keep=last keeps the final epoch. For every
# seed, both are trained in one workdir (same split, same seed, so the same training up to the
# kept epoch) and scored twice: OOF accuracy, and accuracy on the demo's held-back answers
# (`comp score`). The held-back score is an ensemble of the K fold models, so it is not
# comparable with OOF directly; the bias is the difference in differences:
#     bias = (OOF best - OOF last) - (held-back best - held-back last)
# About 2 minutes a seed and keep on a 2-core CPU (baseline, 15 epochs, 5 folds).
#
#   bash bench/keep_bias.sh [WORKDIR]          SEEDS="0 1 2" EPOCHS=15 (results: bench/RESULTS.md)
#   TRAIN_ARGS="--limit 500" bash bench/keep_bias.sh /tmp/kb-500       extra comp train options
set -euo pipefail
WORK=${1:-/tmp/comp-keep-bias}
COMP=${COMP:-comp}
PYTHON=${PYTHON:-python3}
SEEDS=${SEEDS:-0 1 2}
EPOCHS=${EPOCHS:-15}
read -r -a TRAIN_ARGS <<< "${TRAIN_ARGS:-}"
DEMO=$WORK/demo

[ -f "$DEMO/sample_submission.csv" ] || $COMP data demo "$DEMO"
for seed in $SEEDS; do
    work=$WORK/seed$seed
    for keep in best last; do
        $COMP train --data "$DEMO" --workdir "$work" --model baseline --epochs "$EPOCHS" --seed "$seed" \
            --keep "$keep" --name "$keep" --fold all --quiet "${TRAIN_ARGS[@]}"
        $COMP ensemble --data "$DEMO" --workdir "$work" --runs "$keep" --tta none --method mean \
            --out "$keep.csv" --force --quiet
        $COMP score "$work/submissions/$keep.csv" --answers "$DEMO/answers.csv"
    done
done

"$PYTHON" - "$WORK" "$DEMO/answers.csv" $SEEDS <<'PY'
import json, pathlib, statistics, sys
from comp.stages.submission import score_submission

work, answers, seeds = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2]), sys.argv[3:]
print(f"{'seed':>4} {'keep':>4} {'OOF':>7} {'held-back':>9} {'OOF - held':>10} {'kept epochs':>18}")
biases = []
for seed in seeds:
    gap = {}
    for keep in ("best", "last"):
        run = work / f"seed{seed}" / "folds" / keep
        oof = json.loads((run / "summary.json").read_text())["cv_accuracy"]
        held = score_submission(work / f"seed{seed}" / "submissions" / f"{keep}.csv", answers)["accuracy"]
        epochs = [json.loads(p.read_text())["best_epoch"] if keep == "best" else "last"
                  for p in sorted(run.glob("fold*/metrics.json"))]
        gap[keep] = (oof, held)
        print(f"{seed:>4} {keep:>4} {oof:7.4f} {held:9.4f} {oof - held:+10.4f} {','.join(map(str, epochs)):>18}")
    biases.append((gap["best"][0] - gap["last"][0]) - (gap["best"][1] - gap["last"][1]))
    print(f"{seed:>4} bias (OOF gain of best) - (held-back gain of best): {biases[-1]:+.4f}")
spread = statistics.stdev(biases) if len(biases) > 1 else float("nan")
print(f"bias over {len(biases)} seed(s): mean {statistics.mean(biases):+.4f}, sd {spread:.4f}, "
      f"min {min(biases):+.4f}, max {max(biases):+.4f}")
PY
