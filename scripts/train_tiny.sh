#!/usr/bin/env bash
# Retrain the embedded tiny model from scratch or from where it stopped: 10-minute resumable chunks of
# `python -m pipeline.train_tiny` until it has run every step, then export the EMA weights to
# pipeline/tiny_weights/ (bump TINY_VERSION in pipeline/presets.py after). About 95 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
until .venv/bin/python -m pipeline.train_tiny --minutes 10 | tee /dev/stderr | grep -Eq "step ([0-9]+) of \1;"; do :; done
.venv/bin/python -m pipeline.train_tiny --export
