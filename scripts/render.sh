#!/usr/bin/env bash
# Quick start 1: set up, then render a one-minute video with the embedded tiny preset.
# Chain mode: the tiny T2I draws the first keyframe from the prompt, and each segment continues the last,
# so the object keeps moving the prompt's way for the whole minute.
# Usage: bash scripts/render.sh [OUT.mp4] [extra `minutereel render` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-minute.mp4}
shift || true
prompt="${MINUTEREEL_DEMO_PROMPT:-a big yellow ball moving right on a blue background}"
exec .venv/bin/minutereel render --mode chain --prompt "$prompt" --out "$out" "$@"
