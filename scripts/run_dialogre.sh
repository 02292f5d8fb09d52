#!/usr/bin/env bash
# DialogRE (Table 2 / Table 4 of Zhou & Lee, IJCAI 2022) with the BERT_s input of Yu et al. (ACL 2020):
# BERT-base uncased, max length 512, batch 24, lr 3e-5, warmup 0.1, 20 epochs, argument types on.
# Environment: MODEL, DATA_DIR, EPOCHS, LOSS, SEED, SHIFT, PSHIFT and CONFIG, one of the Table 4 rows:
#   ncrl (default) | ncrl_no_mr (no margin regularization) | ncrl_no_ms (no margin shifting) |
#   ncrl_no_both | bce | bce_pshift (BCE with probability shifting) | atl
# CONFIG sets LOSS; LOSS alone (bce|atl|ncrl) is used when CONFIG is unset. Extra arguments pass through,
# e.g. scripts/run_dialogre.sh --max_steps 100 --output_dir runs/dialogre-smoke
set -euo pipefail
cd "$(dirname "$0")/.."
SHIFT=${SHIFT:-0.05}
PSHIFT=${PSHIFT:-0.05}
case "${CONFIG:-${LOSS:-ncrl}}" in
  ncrl)         OPTS=(--loss ncrl --shift "$SHIFT") ;;
  ncrl_no_mr)   OPTS=(--loss ncrl --shift "$SHIFT" --no_margin_reg) ;;
  ncrl_no_ms)   OPTS=(--loss ncrl --shift 0) ;;
  ncrl_no_both) OPTS=(--loss ncrl --shift 0 --no_margin_reg) ;;
  bce)          OPTS=(--loss bce) ;;
  bce_pshift)   OPTS=(--loss bce --prob_shift "$PSHIFT") ;;
  atl)          OPTS=(--loss atl) ;;
  *) echo "unknown CONFIG/LOSS '${CONFIG:-${LOSS:-}}'" >&2; exit 2 ;;
esac
python dialogre.py \
  --data_dir "${DATA_DIR:-./dataset/dialogre}" \
  --model_name_or_path "${MODEL:-bert-base-uncased}" \
  --train_file train.json --dev_file dev.json --test_file test.json \
  --max_seq_length 512 --train_batch_size 24 --test_batch_size 32 \
  --learning_rate 3e-5 --classifier_lr 3e-5 --warmup_ratio 0.1 --max_grad_norm 1.0 \
  --num_train_epochs "${EPOCHS:-20}" --seed "${SEED:-66}" \
  "${OPTS[@]}" "$@"
