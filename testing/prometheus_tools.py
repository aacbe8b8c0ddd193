"""promtool for the tests, built from its pinned Go module (hack/prometheus) and cached like the control plane.

A machine's first run builds it (minutes: Prometheus' dependency tree); later runs reuse the binary. Without Go
(outside CI) the tests that need it skip, saying so.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from testing.k8s_tools import require_go
from vita_trainer.data.shared_files import exclusive

REPO = Path(__file__).resolve().parents[1]
MODULE = REPO / "hack" / "prometheus"


def prometheus_version() -> str:
    for line in (MODULE / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "github.com/prometheus/prometheus":
            return parts[1]
    raise RuntimeError("hack/prometheus/go.mod does not require github.com/prometheus/prometheus")


def promtool() -> Path:
    out = Path(os.environ.get("VITA_PROMETHEUS_BIN", Path.home() / ".cache" / "vita" /
                              f"prometheus-{prometheus_version()}"))
    if not (out / "promtool").is_file():
        require_go("promtool")
        out.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(out):  # parallel test workers: one builds, the others wait for it
            if not (out / "promtool").is_file():
                subprocess.run(["bash", str(MODULE / "build.sh"), str(out)], check=True)
    return out / "promtool"
