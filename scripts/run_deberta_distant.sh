#!/usr/bin/env bash
# Distant pretraining then fine-tuning with DeBERTa-large (the NCRL paper's "+ distant" rows).
# Stage 1: DISTANT_EPOCHS (1) on train_distant.json at lr 1e-5; stage 2: FT_EPOCHS (8) on
# train_annotated.json at FT_LR (5e-6, the NCRL authors' rate) from the stage-1 best checkpoint.
# Environment: LOSS, SEED, SHIFT, DATA_DIR, MODEL, NPROC, OUT; extra arguments pass to both stages.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/deberta-distant-${LOSS:-ncrl}-seed${SEED:-66}}
MODEL=${MODEL:-microsoft/deberta-large}
SEED=${SEED:-66} LOSS=${LOSS:-ncrl} MODEL=$MODEL bash scripts/run_deberta.sh \
  --train_file train_distant.json --num_train_epochs "${DISTANT_EPOCHS:-1}" --output_dir "$OUT/stage1" "$@"
SEED=${SEED:-66} LOSS=${LOSS:-ncrl} MODEL=$MODEL bash scripts/run_deberta.sh \
  --load_path "$OUT/stage1/best.pt" --do_train --learning_rate "${FT_LR:-5e-6}" \
  --num_train_epochs "${FT_EPOCHS:-8}" --output_dir "$OUT/stage2" "$@"
