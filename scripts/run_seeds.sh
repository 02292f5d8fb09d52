#!/usr/bin/env bash
# Rerun a paper script over several seeds and configurations, then tabulate mean ± std.
#   LOSSES="bce atl ncrl" SEEDS="61 62 63 64 65" bash scripts/run_seeds.sh scripts/run_roberta.sh [train.py args]
# Environment: LOSSES (configurations: bce atl ncrl, ncrl-noreg ncrl-noshift ncrl-noboth bce-pshift, or
# `ablation` for all six rows of Table 4; default ncrl), SEEDS (default 61 62 63 64 65), SWEEP_DIR (default
# runs/sweep-<time>), PSHIFT (--prob_shift of bce-pshift, 0.05), plus what the run script reads (DATA_DIR,
# MODEL, SHIFT, NPROC, ...). Run it again with the same SWEEP_DIR to continue: finished runs are skipped.
set -uo pipefail
cd "$(dirname "$0")/.."
if [ $# -lt 1 ]; then
  echo "usage: [LOSSES=...] [SEEDS=...] [SWEEP_DIR=...] bash scripts/run_seeds.sh scripts/run_<model>.sh [train.py args]" >&2
  exit 2
fi
SCRIPT=$1; shift
SWEEP_DIR=${SWEEP_DIR:-runs/sweep-$(date +%Y%m%d-%H%M%S)}
# shellcheck disable=SC2086  # LOSSES and SEEDS are word lists
python scripts/sweep.py "$SCRIPT" --configs ${LOSSES:-ncrl} --seeds ${SEEDS:-61 62 63 64 65} \
  --sweep_dir "$SWEEP_DIR" --pshift "${PSHIFT:-0.05}" -- "$@"
rc=$?
# a refused command (2) or a stopped sweep (130) has said why; there is nothing new to tabulate
if [ "$rc" -eq 2 ] || [ "$rc" -eq 130 ]; then exit $rc; fi
python scripts/make_tables.py "$SWEEP_DIR" --paper --plot || { [ "$rc" -ne 0 ] || rc=1; }
exit $rc
