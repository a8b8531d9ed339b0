#!/usr/bin/env bash
# Checks the Prometheus files in deploy/ with promtool (Debian's `prometheus` package ships it):
# the alert rules parse, their unit tests pass, and the example configuration and the rules it
# loads are valid. `make test` runs it. Without promtool it prints a SKIPPED line and succeeds,
# so a bare machine still runs the rest of the suite; .ci/run installs promtool, so CI checks.
set -euo pipefail
cd "$(dirname "$0")/prometheus"

if ! command -v promtool >/dev/null 2>&1; then
  echo "SKIPPED: promtool not installed (apt-get install prometheus): deploy/prometheus not checked"
  exit 0
fi
set -x
promtool check rules alerts.yml
promtool test rules alerts_test.yml
promtool check config prometheus.yml
