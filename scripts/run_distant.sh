#!/usr/bin/env bash
# Distant pretraining then fine-tuning (the NCRL paper's "+ distant" rows), for ENCODER roberta or deberta.
# Stage 1: DISTANT_EPOCHS (1) on train_distant.json at the encoder's rate; stage 2: FT_EPOCHS (8) on
# train_annotated.json at FT_LR (5e-6, the NCRL authors' rate) from the stage-1 best checkpoint. Both stages
# leave out the human-annotated training facts for Ign F1 (--ign_train_file, the default train_annotated.json)
# and also report the official "ignore distant" F1.
# Environment: ENCODER, LOSS, SEED, SHIFT, DATA_DIR, MODEL, NPROC, OUT; extra arguments pass to both stages.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-runs/${ENCODER:-roberta}-distant-${LOSS:-ncrl}-seed${SEED:-66}}
bash scripts/run_docred.sh --train_file train_distant.json --train_distant train_distant.json \
  --num_train_epochs "${DISTANT_EPOCHS:-1}" --output_dir "$OUT/stage1" "$@"
bash scripts/run_docred.sh --train_distant train_distant.json --load_path "$OUT/stage1/best.pt" --do_train \
  --learning_rate "${FT_LR:-5e-6}" --num_train_epochs "${FT_EPOCHS:-8}" --output_dir "$OUT/stage2" "$@"
