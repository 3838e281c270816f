#!/usr/bin/env bash
# One command for everything. On a fresh machine it creates .venv and installs comp first.
#
#   ./run.sh                  demo: write the embedded digits set, tune -> train -> ensemble -> score
#   ./run.sh --data DIR       the same pipeline on a real competition folder (DACON or Kaggle layout)
#   ./run.sh test             install the test extras and run the test suite
#
# Extra arguments after --data DIR are passed to every comp stage (e.g. --limit 5000).
set -euo pipefail
cd "$(dirname "$0")"

PYTHON=${PYTHON:-python3}

setup() {  # setup EXTRAS: create .venv and install comp with those extras, once per pyproject change
    local extras=$1
    if [ ! -x .venv/bin/python ]; then
        "$PYTHON" -m venv .venv
    fi
    local stamp=".venv/.installed-${extras:-base}-$(sha1sum pyproject.toml | cut -c1-12)"
    if [ ! -f "$stamp" ]; then
        .venv/bin/python -m pip install -q --upgrade pip
        .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
        touch "$stamp"
    fi
}

if [ "${1:-}" = "test" ]; then
    shift
    setup test
    # The distributed-tuning test needs a PostgreSQL server; this installs Debian's if missing.
    bash .ci/postgres.sh || echo "warning: PostgreSQL could not be installed; its test will say why it skips"
    exec .venv/bin/python -m pytest "$@"
fi

setup ""
COMP=.venv/bin/comp
STAMP=$(date +%Y%m%d-%H%M%S)

if [ "${1:-}" = "--data" ]; then
    DATA=$2
    shift 2
    $COMP data check --data "$DATA" "$@"
    $COMP tune --data "$DATA" --trials 8 "$@"
    $COMP train --data "$DATA" --fold all "$@"
    $COMP ensemble --data "$DATA" --out "submission-$STAMP.csv" "$@"
    exit 0
fi

# The demo: 1,437 train / 360 test digits (scikit-learn's bundled set, 32x32), about 5 minutes on 2 cores.
DEMO=data/demo
if [ ! -f "$DEMO/sample_submission.csv" ]; then
    $COMP data demo "$DEMO"
fi
$COMP data check --data "$DEMO" "$@"
$COMP tune --data "$DEMO" --model baseline --trials 4 --epochs 8 "$@"
$COMP train --data "$DEMO" --fold all --epochs 15 "$@"
$COMP train --data "$DEMO" --fold all --model resnet --epochs 15 "$@"
$COMP ensemble --data "$DEMO" --out "demo-$STAMP.csv" "$@"
$COMP score "submissions/demo-$STAMP.csv" --answers "$DEMO/answers.csv"
