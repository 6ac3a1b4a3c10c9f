#!/bin/sh
# Static checks of deploy/: check_deploy.sh REPO_ROOT CHECK
# Exit 77 (reported by CTest as skipped) when the tool a check needs is missing.
set -eu
root=$1
check=$2
need() { command -v "$1" >/dev/null 2>&1 || { echo "$1 not installed"; exit 77; }; }
case $check in
  yamllint)
    need yamllint
    files=$(find "$root/deploy" -name '*.yaml' -o -name '*.yml' | sort)
    echo "$files"
    # shellcheck disable=SC2086
    yamllint -s -c "$root/tests/server/metrics/yamllint.yaml" $files
    ;;
  promtool-config)
    need promtool
    promtool check config "$root/deploy/prometheus/prometheus.yml"
    ;;
  promtool-config-kubernetes)
    need promtool
    out=$(promtool check config "$root/deploy/prometheus/prometheus-kubernetes.yml" 2>&1) && rc=0 || rc=$?
    echo "$out"
    if [ "$rc" -ne 0 ] && echo "$out" | grep -q "field kubernetes_sd_configs not found"; then
      echo "this promtool is built without Kubernetes service discovery"
      exit 77
    fi
    exit "$rc"
    ;;
  promtool-rules)
    need promtool
    promtool check rules "$root/deploy/prometheus/alerts.yaml"
    ;;
  promtool-test-rules)
    need promtool
    cd "$root/deploy/prometheus" && promtool test rules alerts_test.yaml
    ;;
  *)
    echo "unknown check $check"; exit 2
    ;;
esac
