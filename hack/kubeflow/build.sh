#!/usr/bin/env bash
# Builds the Kubeflow stack the "kubeflow" test tier runs as processes, each from its own Go module here (their
# Kubernetes library versions differ): kwok, the training operator, Trainer v2's controller manager, JobSet and
# Kueue, at the versions each folder's go.mod pins. Binaries go to $1 (default ~/.cache/vita/kubeflow), one folder per
# component and version, so a version bump rebuilds only that one. kube-scheduler comes from hack/control-plane (the
# same k8s.io/kubernetes module as the API server). testing/kubeflow_stack.py calls this when a binary is missing.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=${1:-$HOME/.cache/vita/kubeflow}
shift || true
components=("$@")
[ ${#components[@]} -gt 0 ] || components=(kwok training-operator jobset trainer kueue)
for c in "${components[@]}"; do
  cd "$here/$c"
  pkg=$(awk '$1 == "tool" {print $2}' go.mod)
  mod=$(awk -v p="$pkg" '$1 != "module" && index(p, $1) == 1 && $2 ~ /^v/ {print $1, $2}' go.mod | sort -k1,1 | tail -1)
  version=${mod#* }
  out="$root/$c-$version"
  [ -x "$out/$c" ] && continue
  mkdir -p "$out"
  echo "building $c $version from $pkg into $out" >&2
  start=$(date +%s)
  go build -trimpath -ldflags "-s -w" -o "$out/.$c.tmp" "$pkg"
  mv "$out/.$c.tmp" "$out/$c"
  echo "built $c in $(( $(date +%s) - start )) s" >&2
done
