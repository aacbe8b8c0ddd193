"""promtool and prometheus for the tests, built from their pinned Go module (hack/prometheus) and cached like the
control plane.

A machine's first run builds it (minutes: Prometheus' dependency tree); later runs reuse the binary. Without Go
(outside CI) the tests that need it skip, saying so.
"""

from __future__ import annotations

import os
from pathlib import Path

from testing.k8s_tools import REPO, built, module_version

MODULE = REPO / "hack" / "prometheus"


def _tool(name: str) -> Path:
    version = module_version(MODULE, "github.com/prometheus/prometheus")
    out = Path(os.environ.get("VITA_PROMETHEUS_BIN", Path.home() / ".cache" / "vita" / f"prometheus-{version}"))
    return built(out, name, MODULE / "build.sh")


def promtool() -> Path:
    return _tool("promtool")


def prometheus() -> Path:
    return _tool("prometheus")
