#!/usr/bin/env bash
# Builds the Prometheus tools the tests run at the version go.mod pins, into $1 (default
# ~/.cache/vita/prometheus-<version>): promtool (`promtool check rules`, `promtool test rules` on the chart's
# PrometheusRule) and prometheus (the dashboard test scrapes a real operator and trainer with it).
# testing/prometheus_tools.py calls this when a binary is missing; the first build on a machine takes minutes
# (Prometheus' dependency tree), the second binary reuses most of Go's build cache.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "github.com/prometheus/prometheus" {print $2}' "$here/go.mod")
out=${1:-$HOME/.cache/vita/prometheus-$version}
mkdir -p "$out"
cd "$here"
for tool in promtool prometheus; do
  [ -x "$out/$tool" ] && continue
  echo "building $tool $version into $out" >&2
  go build -trimpath -ldflags "-s -w" -o "$out/.$tool.tmp" "github.com/prometheus/prometheus/cmd/$tool"
  mv "$out/.$tool.tmp" "$out/$tool"
done
