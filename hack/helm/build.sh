#!/usr/bin/env bash
# Builds the helm the tests run (helm lint/template of the chart) at the version go.mod pins, into $1
# (default ~/.cache/vita/k8s-tools/helm-<version>). testing/k8s_tools.py calls this when the binary is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "helm.sh/helm/v4" {print $2}' "$here/go.mod")
out=${1:-$HOME/.cache/vita/k8s-tools/helm-$version}
mkdir -p "$out"
[ -x "$out/helm" ] && exit 0
cd "$here"
echo "building helm $version into $out" >&2
# The version `helm version` reports, as a release build stamps it.
go build -trimpath -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$version" \
  -o "$out/.helm.tmp" helm.sh/helm/v4/cmd/helm
mv "$out/.helm.tmp" "$out/helm"
