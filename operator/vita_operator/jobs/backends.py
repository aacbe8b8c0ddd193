"""The job backends by name (spec.trainer.backend), and which one a run uses."""

from __future__ import annotations

from typing import Any

from vita_api.spec import JOB_BACKENDS

from .backend import JobBackend
from .pytorchjob import PyTorchJobBackend
from .trainjob import DEFAULT_RUNTIME, TrainJobBackend

# The chart sets these from its values: which backends its RBAC allows, the default one, the TrainJob runtime.
BACKENDS_ENV, DEFAULT_BACKEND_ENV = "VITA_OPERATOR_BACKENDS", "VITA_OPERATOR_DEFAULT_BACKEND"
RUNTIME_ENV = "VITA_OPERATOR_TRAINJOB_RUNTIME"


def job_backends(trainjob_runtime: str = DEFAULT_RUNTIME) -> dict[str, JobBackend]:
    backends: dict[str, JobBackend] = {"pytorchjob": PyTorchJobBackend(), "trainjob": TrainJobBackend(trainjob_runtime)}
    assert tuple(backends) == JOB_BACKENDS
    return backends


def backend_of(run: dict[str, Any], default: str) -> str:
    """The run's own choice; else the one recorded when it started (a changed operator default must not move a
    running run to another backend); else the operator's default."""
    return ((run.get("spec") or {}).get("trainer") or {}).get("backend") or \
        (run.get("status") or {}).get("backend") or default


def configured_backends(env: dict[str, Any]) -> tuple[list[str], str]:
    """(enabled backends, default backend) from the operator's environment; a bad setting stops the operator."""
    enabled = [b.strip() for b in env.get(BACKENDS_ENV, "pytorchjob").split(",") if b.strip()]
    default = env.get(DEFAULT_BACKEND_ENV) or (enabled[0] if enabled else "")
    unknown = [b for b in [*enabled, default] if b not in JOB_BACKENDS]
    if unknown or not enabled:
        raise SystemExit(f"{BACKENDS_ENV}={env.get(BACKENDS_ENV)!r}, {DEFAULT_BACKEND_ENV}={default!r}: name one or "
                         f"more of {', '.join(JOB_BACKENDS)} (unknown: {unknown})")
    if default not in enabled:
        raise SystemExit(f"{DEFAULT_BACKEND_ENV}={default!r} is not among the enabled backends {enabled} "
                         f"({BACKENDS_ENV}); enable it in the chart values too")
    return enabled, default
