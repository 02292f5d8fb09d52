#!/usr/bin/env bash
# GDA (gene-disease associations, Wu et al. 2019) with ATLOP's settings: those of run_cdr.sh (SciBERT cased, ATL,
# top-1, 2 classes, lr 2e-5 / 1e-4, warmup 0.06, batch 4, seed 66, max length 512) with 10 epochs, on
# ATLOP's EoG files train.data, dev.data, test.data in DATA_DIR (default ./dataset/gda). Environment and extra
# arguments as for run_cdr.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
DATASET=gda DATA_DIR="${DATA_DIR:-./dataset/gda}" EPOCHS="${EPOCHS:-10}" exec bash scripts/run_cdr.sh \
  --train_file train.data --dev_file dev.data --test_file test.data "$@"
