#!/usr/bin/env bash
# DocRED with bert and the NCRL paper's settings: see scripts/run_docred.sh for the settings and the environment.
ENCODER=bert exec bash "$(dirname "$0")/run_docred.sh" "$@"
