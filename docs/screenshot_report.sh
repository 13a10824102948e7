#!/usr/bin/env bash
# Take a headless-browser screenshot of a `skcflow compare` report, to check
# that index.html shows the table, the ROC plot and the image panels.
#
#   docs/screenshot_report.sh [REPORT_DIR] [OUT_PNG]
#
# Needs Debian's chromium (apt-get install chromium). The flags keep
# Chromium from reaching for the network, which a closed machine refuses.
set -euo pipefail
report=$(realpath "${1:-skcflow-report}")
out=$(realpath -m "${2:-$report/screenshot.png}")
[ -f "$report/index.html" ] || { echo "no index.html in $report: run 'make demo' first" >&2; exit 1; }
browser=$(command -v chromium || command -v chromium-browser) || {
  echo "chromium not found: apt-get install chromium" >&2; exit 1; }
profile=$(mktemp -d)
trap 'rm -rf "$profile"' EXIT
"$browser" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
  --disable-background-networking --disable-component-update --disable-sync \
  --user-data-dir="$profile" --hide-scrollbars --window-size=1100,2600 \
  --screenshot="$out" "file://$report/index.html" 2>/dev/null
echo "screenshot: $out"
