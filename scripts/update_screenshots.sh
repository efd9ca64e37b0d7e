#!/usr/bin/env bash
# Refresh the README's pictures: run the browser tests (headless Chromium drives each
# notebook's panel) and copy the screenshot each takes after moving its slider to
# docs/screenshots/NN_name.png. Usage: bash scripts/update_screenshots.sh
set -euo pipefail
cd "$(dirname "$0")/.."
shots=$(mktemp -d)
WORKBENCH_SCREENSHOT_DIR="$shots" .venv/bin/python -m pytest -q -m browser tests/test_browser.py
mkdir -p docs/screenshots
for pair in shieldgemma:01_shieldgemma fgsm:02_fgsm pgd:03_pgd lat:04_lat lat_llm:05_lat_llm redteam:06_redteam defenses:07_defenses; do
  prefix=${pair%%:*} name=${pair##*:}
  cp "$shots/browser_${prefix}_3_moved_output.png" "docs/screenshots/${name}.png"
done
rm -rf "$shots"
echo "docs/screenshots/ updated: review and commit"
