#!/usr/bin/env bash
# Checks what deploy/ ships, offline; `make test` runs it.
#
# 1. The Prometheus files, with promtool (Debian's `prometheus` package ships it): the alert
#    rules parse, their unit tests pass, and the example configuration and the rules it loads
#    are valid. Without promtool it prints a SKIPPED line and goes on, so a bare machine still
#    runs the rest of the suite; .ci/run installs promtool, so CI checks.
# 2. The Kubernetes manifests, with kubernetes/check.py: rendered with kubectl kustomize,
#    validated against the 1.30 schemas, their properties checked, the sidecar's config run
#    through `tether-proxy check`, then the same checks proven against broken copies of that
#    one render (--with-self-test: the check, then the self-test). Without kubectl or
#    kubernetes-validate it prints SKIPPED, except under CI (CI=true), where .ci/run has
#    installed both and a missing one fails.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

check_prometheus() (
  cd "$here/prometheus"
  if ! command -v promtool >/dev/null 2>&1; then
    echo "SKIPPED: promtool not installed (apt-get install prometheus):" \
      "deploy/prometheus not checked"
    return 0
  fi
  set -x
  promtool check rules alerts.yml
  promtool test rules alerts_test.yml
  promtool check config prometheus.yml
)

check_kubernetes() {
  if ! command -v python3 >/dev/null 2>&1; then
    if [ -n "${CI:-}" ] && [ "${CI}" != false ] && [ "${CI}" != 0 ]; then
      echo "FAILED: python3 not installed (CI is set, and .ci/run installs it)" >&2
      return 1
    fi
    echo "SKIPPED: python3 not installed: deploy/kubernetes not checked"
    return 0
  fi
  python3 "$here/kubernetes/check.py" --with-self-test
}

check_prometheus
check_kubernetes
