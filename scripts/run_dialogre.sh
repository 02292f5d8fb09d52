#!/usr/bin/env bash
# DialogRE (Table 2 / Table 4 of Zhou & Lee, IJCAI 2022) with the BERT_s input of Yu et al. (ACL 2020):
# BERT-base uncased, max length 512, batch 24, lr 3e-5, warmup 0.1, 20 epochs, argument types on.
# Environment: MODEL, DATA_DIR, EPOCHS, SEED, SHIFT (0.05), PSHIFT (0.05) and LOSS, a configuration of
# scripts/configs.py (Table 4's rows: ncrl, ncrl-noreg, ncrl-noshift, ncrl-noboth, bce, bce-pshift; or atl).
# CONFIG is accepted as before for LOSS, with the old names (ncrl_no_mr, ...). Extra arguments pass through,
# e.g. scripts/run_dialogre.sh --max_steps 100 --output_dir runs/dialogre-smoke
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG_FLAGS=$(python scripts/configs.py "${CONFIG:-${LOSS:-ncrl}}" --shift "${SHIFT:-0.05}" --pshift "${PSHIFT:-0.05}")
source scripts/launch.sh
# shellcheck disable=SC2086  # the configuration's flags are words
$LAUNCH dialogre.py \
  --data_dir "${DATA_DIR:-./dataset/dialogre}" \
  --model_name_or_path "${MODEL:-bert-base-uncased}" \
  --train_file train.json --dev_file dev.json --test_file test.json \
  --max_seq_length 512 --train_batch_size 24 --test_batch_size 32 \
  --learning_rate 3e-5 --classifier_lr 3e-5 --warmup_ratio 0.1 --max_grad_norm 1.0 \
  --num_train_epochs "${EPOCHS:-20}" --seed "${SEED:-66}" \
  $CONFIG_FLAGS "$@"
