#!/usr/bin/env bash
# DocRED with the NCRL paper's settings (Zhou & Lee, IJCAI 2022), for one of three encoders:
#
#   ENCODER   model                      encoder lr   as in
#   bert      bert-base-cased            5e-5         the paper's BERT-base rows
#   roberta   roberta-large              3e-5         the paper's RoBERTa-large rows
#   deberta   microsoft/deberta-large    1e-5         the paper's DeBERTa-large rows
#
# Shared: batch 4 x accumulation 2, head lr 1e-4, warmup 0.06, 8 epochs, top-4 labels, 97 classes, margin
# shifting 0.05 with margin regularization, their max-symmetrized bilinear head (--bilinear maxsym), weight
# decay 0.01 on the new layers, best checkpoint by dev F1,
# as the NCRL authors' DocRED scripts did. Environment: ENCODER, LOSS (a configuration of scripts/configs.py:
# ncrl|atl|bce|ncrl-noreg|...), SEED, SHIFT, DATA_DIR, MODEL, NPROC; extra arguments pass through to train.py.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${ENCODER:-roberta}" in
  bert)    DEFAULT_MODEL=bert-base-cased;         LR=5e-5 ;;
  roberta) DEFAULT_MODEL=roberta-large;           LR=3e-5 ;;
  deberta) DEFAULT_MODEL=microsoft/deberta-large; LR=1e-5 ;;
  *) echo "run_docred.sh: unknown ENCODER '${ENCODER}' (bert, roberta or deberta)" >&2; exit 2 ;;
esac
# shellcheck disable=SC2046  # the configuration's flags are words
CONFIG_FLAGS=$(python scripts/configs.py "${LOSS:-ncrl}" --shift "${SHIFT:-0.05}")
source scripts/launch.sh
# shellcheck disable=SC2086
$LAUNCH train.py \
  --data_dir "${DATA_DIR:-./dataset/docred}" \
  --model_name_or_path "${MODEL:-$DEFAULT_MODEL}" \
  --train_file train_annotated.json --dev_file dev.json --test_file test.json \
  --train_batch_size 4 --test_batch_size 8 --gradient_accumulation_steps 2 \
  --num_labels 4 --learning_rate "$LR" --classifier_lr 1e-4 --max_grad_norm 1.0 \
  --warmup_ratio 0.06 --num_train_epochs 8 --num_class 97 --bilinear maxsym --classifier_weight_decay 0.01 \
  --select_metric f1 --seed "${SEED:-66}" $CONFIG_FLAGS \
  "$@"
