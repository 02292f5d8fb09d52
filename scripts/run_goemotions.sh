#!/usr/bin/env bash
# GoEmotions with Neutral as the none class (NCRL paper, Table 3): BERT-base [CLS] classifier, batch 16,
# lr 5e-5 (head 1e-4), warmup 0.06, 4 epochs, max 128 tokens, plain NCRL (no margin regularization, no
# shifting), best checkpoint by dev mAP. Data: train.tsv, dev.tsv, test.tsv, labels.txt in DATA_DIR.
# Environment: MODEL, DATA_DIR, EPOCHS, LOSS (ncrl|atl|bce), SEED, NPROC; extra arguments pass through
# (e.g. --max_steps, --output_dir, --train_limit, --hf_dataset).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/launch.sh
$LAUNCH goemotions.py \
  --data_dir "${DATA_DIR:-./dataset/goemotions}" \
  --model_name_or_path "${MODEL:-bert-base-uncased}" \
  --max_seq_length 128 --train_batch_size 16 --test_batch_size 64 \
  --learning_rate 5e-5 --classifier_lr 1e-4 --warmup_ratio 0.06 \
  --num_train_epochs "${EPOCHS:-4}" \
  --loss "${LOSS:-ncrl}" --seed "${SEED:-66}" \
  "$@"
