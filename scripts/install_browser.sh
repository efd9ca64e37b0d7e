#!/usr/bin/env bash
# Install what the browser end-to-end test (tests/test_browser.py, marker `browser`) needs:
#   * Debian's Chromium at /usr/bin/chromium (Playwright's own browser download does not work
#     on our machines, so the test drives the system Chromium through executable_path);
#   * the Python package `playwright` (its wheel ships the driver) in the given venv.
# Idempotent: does nothing when both are already there.
#
# Usage: bash scripts/install_browser.sh [VENV_DIR]     (default: .venv)
set -euo pipefail

VENV="${1:-.venv}"
CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "install_browser.sh: $CHROMIUM is missing and this script is not running as root." >&2
        echo "  Install it with: sudo apt-get update && sudo apt-get install -y --no-install-recommends chromium" >&2
        exit 1
    fi
    echo "install_browser.sh: installing Debian package chromium ..."
    start=$(date +%s)
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q --no-install-recommends chromium
    echo "install_browser.sh: chromium installed in $(( $(date +%s) - start )) s"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "install_browser.sh: no Python venv at '$VENV' (pass its path as the first argument)" >&2
    exit 1
fi

if ! "$VENV/bin/python" -c "import playwright.sync_api" >/dev/null 2>&1; then
    echo "install_browser.sh: installing the Python package playwright into $VENV ..."
    "$VENV/bin/pip" install -q playwright
fi

echo "install_browser.sh: ok ($("$CHROMIUM" --version 2>/dev/null || echo chromium), playwright $("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("playwright"))'))"
