#!/usr/bin/env bash
# Installs the Debian packages some tests drive: Chromium (tests/test_browser.py, through
# Playwright from the `test` extra; `playwright install` is never needed) and wrk (the HTTP load
# generator of benchmarks/http.py, exercised by tests/test_benchmarks.py). Idempotent: installs
# only what is missing. Needs root or passwordless sudo to install.
set -euo pipefail
missing=()
[ -x /usr/bin/chromium ] || missing+=(chromium chromium-driver)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
if [ ${#missing[@]} -eq 0 ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
/usr/bin/chromium --version
wrk --version 2>&1 | head -1 || true
