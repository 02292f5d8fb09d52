#!/usr/bin/env bash
# NCRL on DocRED with BERT-base, the paper's setting (Zhou & Lee, IJCAI 2022): batch 4 x accumulation 2,
# lr 5e-5, warmup 0.06, 8 epochs, top-4 labels, 97 classes, margin shifting 0.05 with margin regularization.
# Environment: LOSS (ncrl|atl|bce), SEED, SHIFT, DATA_DIR, MODEL, NPROC; extra arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/launch.sh
$LAUNCH train.py \
  --data_dir "${DATA_DIR:-./dataset/docred}" \
  --model_name_or_path "${MODEL:-bert-base-cased}" \
  --train_file train_annotated.json --dev_file dev.json --test_file test.json \
  --train_batch_size 4 --test_batch_size 8 --gradient_accumulation_steps 2 \
  --num_labels 4 --learning_rate 5e-5 --classifier_lr 1e-4 --max_grad_norm 1.0 \
  --warmup_ratio 0.06 --num_train_epochs 8 --num_class 97 \
  --loss "${LOSS:-ncrl}" --shift "${SHIFT:-0.05}" --seed "${SEED:-66}" \
  "$@"
