#!/usr/bin/env bash
# CDR (BioCreative V chemical-induced disease) with ATLOP's settings (Zhou et al., AAAI 2021; its scripts/run_cdr.sh):
# SciBERT cased, the adaptive thresholding loss, top-1 label, 2 classes, encoder lr 2e-5 (new layers 1e-4),
# warmup 0.06, 30 epochs, batch 4, seed 66, max length 512, best checkpoint by dev F1.
# Data: ATLOP's EoG files train_filter.data, dev_filter.data, test_filter.data in DATA_DIR (default
# ./dataset/cdr), or PubTator files given with --train_file/--dev_file/--test_file (docs/biomedical.md).
# Environment: MODEL, DATA_DIR, EPOCHS, SEED, NPROC, LOSS (a configuration of scripts/configs.py: atl, ncrl,
# bce, ...); extra arguments pass through to train_bio.py, where the last value of a flag wins.
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG_FLAGS=$(python scripts/configs.py "${LOSS:-atl}" --shift "${SHIFT:-0.05}")
source scripts/launch.sh
# shellcheck disable=SC2086  # the configuration's flags are words
$LAUNCH train_bio.py \
  --dataset "${DATASET:-cdr}" \
  --data_dir "${DATA_DIR:-./dataset/cdr}" \
  --model_name_or_path "${MODEL:-allenai/scibert_scivocab_cased}" \
  --train_file train_filter.data --dev_file dev_filter.data --test_file test_filter.data \
  --max_seq_length 512 --train_batch_size 4 --test_batch_size 4 --gradient_accumulation_steps 1 \
  --num_labels 1 --learning_rate 2e-5 --classifier_lr 1e-4 --max_grad_norm 1.0 --warmup_ratio 0.06 \
  --num_train_epochs "${EPOCHS:-30}" --num_class 2 --select_metric f1 --seed "${SEED:-66}" \
  $CONFIG_FLAGS "$@"
