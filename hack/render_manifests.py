"""Render manifests/operator.yaml from the Helm chart for clusters without Helm (`make generate`).

Helm's ownership labels are dropped: objects applied with kubectl are not Helm's, and a later `helm install`
should not be told otherwise (`app.kubernetes.io/managed-by: kubectl`, no `helm.sh/chart`).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
HEADER = "# Rendered from helm/vita-operator with default values (make generate); do not edit by hand.\n"


def _relabel(node):
    if isinstance(node, dict):
        for key in ("labels", "matchLabels"):
            labels = node.get(key)
            if isinstance(labels, dict) and "helm.sh/chart" in labels:
                labels.pop("helm.sh/chart")
                labels["app.kubernetes.io/managed-by"] = "kubectl"
        for value in node.values():
            _relabel(value)
    elif isinstance(node, list):
        for value in node:
            _relabel(value)
    return node


def render(helm: str) -> str:
    out = subprocess.run([helm, "template", "vita-operator", str(REPO / "helm" / "vita-operator"), "-n", "vita-system",
                          "--skip-tests", "--set", "crds.install=false"],  # the CRD is manifests/crd/
                         capture_output=True, text=True, check=True).stdout
    docs = [_relabel(d) for d in yaml.safe_load_all(out) if d]
    return HEADER + yaml.safe_dump_all(docs, sort_keys=False, width=120)


if __name__ == "__main__":
    sys.stdout.write(render(sys.argv[1]))
