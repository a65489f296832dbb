#!/usr/bin/env bash
# Installs Debian's Chromium for tests/test_browser.py (driven by Playwright from the `test` extra;
# `playwright install` is never needed: the tests launch /usr/bin/chromium). Idempotent: does
# nothing when Chromium is already there. Needs root or passwordless sudo to install.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver
/usr/bin/chromium --version
