#!/usr/bin/env bash
# Builds the control plane that the apiserver test tier runs (etcd, kube-apiserver, kube-controller-manager; and
# kube-scheduler, which the kubeflow tier adds) at the versions go.mod pins, into $1 (default ~/.cache/vita/k8s/<kubernetes version>). Only a machine's
# first run pays the build (about 15 minutes on 2 cores); testing/control_plane.py calls this when a binary is
# missing. Go's module and build caches (~/go/pkg/mod, ~/.cache/go-build) make a rerun cheap.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
version=$(awk '$1 == "k8s.io/kubernetes" {print $2}' "$here/go.mod")
minor=$(echo "$version" | cut -d. -f2)
out=${1:-$HOME/.cache/vita/k8s/$version}
mkdir -p "$out"
cd "$here"
# The version the binaries report (kubectl version, /version), as a release build would stamp it.
stamp="-X k8s.io/component-base/version.gitVersion=$version -X k8s.io/component-base/version.gitMajor=1"
stamp="$stamp -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean"
build() {  # binary-name go-package
  [ -x "$out/$1" ] && return
  echo "building $1 from $2 into $out" >&2
  go build -trimpath -ldflags "-s -w $stamp" -o "$out/.$1.tmp" "$2"
  mv "$out/.$1.tmp" "$out/$1"
}
build etcd go.etcd.io/etcd/server/v3
build kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver
build kube-controller-manager k8s.io/kubernetes/cmd/kube-controller-manager
build kube-scheduler k8s.io/kubernetes/cmd/kube-scheduler
build kubectl k8s.io/kubernetes/cmd/kubectl
