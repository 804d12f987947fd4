#!/usr/bin/env bash
# Quick start 1: set up, then render a one-minute video with the embedded tiny preset.
# Chain mode: each segment continues the last, so the objects keep moving the prompt's way for the whole
# minute. The first frame is the prompt's scene drawn by the procedural world (python -m pipeline.world):
# the tiny model's own keyframes get the background right but not yet the objects (see README).
# Usage: bash scripts/render.sh [OUT.mp4] [extra `minutereel render` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-minute.mp4}
shift || true
prompt="${MINUTEREEL_DEMO_PROMPT:-a big yellow ball moving right on a blue background}"
first=$(mktemp --suffix=.png)
trap 'rm -f "$first"' EXIT
.venv/bin/python -m pipeline.world "$prompt" --out "$first" > /dev/null
.venv/bin/minutereel render --mode chain --prompt "$prompt" --image "$first" --out "$out" "$@"
