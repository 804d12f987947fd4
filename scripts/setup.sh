#!/usr/bin/env bash
# Set up .venv for minutereel on a machine with only python3: the CPU build of torch first
# (a bare `torch` requirement would pull a multi-GB CUDA build), then minutereel with its test
# extra at the versions in scripts/constraints.txt (so a fresh clone gets what was tested), then
# the embedded tiny checkpoints. Re-running is cheap: it skips pip while pyproject.toml, this
# script and the constraints are unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$python" -m venv .venv
stamp=.venv/.minutereel-setup
want=$(sha256sum pyproject.toml scripts/setup.sh scripts/constraints.txt | sha256sum | cut -c1-16)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet torch==2.13.0
  .venv/bin/python -m pip install --quiet -c scripts/constraints.txt -e ".[test]"
  echo "$want" > "$stamp"
fi
.venv/bin/python -m pipeline.tiny > /dev/null
# The studio page test (tests/test_serve.py) drives Debian's headless Chromium through its chromedriver; nothing
# downloads a browser at run time. MINUTEREEL_NO_BROWSER=1 skips this step and that test.
install_browser() {
  local sudo=
  [ "$(id -u)" = 0 ] || sudo=sudo
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null 2>&1 \
    || { $sudo apt-get update -qq > /dev/null \
         && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver > /dev/null; }
}
if [ -z "${MINUTEREEL_NO_BROWSER:-}" ] && ! { [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; }; then
  if ! command -v apt-get > /dev/null; then
    echo "setup.sh: no apt-get: install Chromium and chromedriver as /usr/bin/chromium and /usr/bin/chromedriver" \
         "(the studio page test needs them), or set MINUTEREEL_NO_BROWSER=1 to skip that test" >&2
    exit 1
  fi
  install_browser || { echo "setup.sh: apt-get install chromium chromium-driver failed (see above)" >&2; exit 1; }
fi
