#!/usr/bin/env bash
# Distant pretraining then fine-tuning with deberta: see scripts/run_distant.sh.
ENCODER=deberta exec bash "$(dirname "$0")/run_distant.sh" "$@"
