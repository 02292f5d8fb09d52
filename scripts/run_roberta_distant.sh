#!/usr/bin/env bash
# Distant pretraining then fine-tuning with roberta: see scripts/run_distant.sh.
ENCODER=roberta exec bash "$(dirname "$0")/run_distant.sh" "$@"
