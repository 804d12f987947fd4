#!/usr/bin/env bash
# Quick start 1: set up, then render a one-minute video with the embedded tiny preset.
# Usage: bash scripts/render.sh [OUT.mp4] [extra `minutereel render` flags...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
out=${1:-minute.mp4}
shift || true
exec .venv/bin/minutereel render --prompt "a lighthouse on a cliff at dusk, waves rolling in" --out "$out" "$@"
