#!/usr/bin/env bash
# Builds the promtool the tests run (`promtool check rules`, `promtool test rules` on the chart's PrometheusRule) at
# the version go.mod pins, into $1 (default ~/.cache/vita/prometheus-<version>). testing/prometheus_tools.py calls
# this when the binary is missing; the first build on a machine takes minutes (Prometheus' dependency tree).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "github.com/prometheus/prometheus" {print $2}' "$here/go.mod")
out=${1:-$HOME/.cache/vita/prometheus-$version}
mkdir -p "$out"
[ -x "$out/promtool" ] && exit 0
cd "$here"
echo "building promtool $version into $out" >&2
go build -trimpath -ldflags "-s -w" -o "$out/.promtool.tmp" github.com/prometheus/prometheus/cmd/promtool
mv "$out/.promtool.tmp" "$out/promtool"
