"""The job backends by name (spec.trainer.backend), and which one a run uses."""

from __future__ import annotations

from vita_api.spec import JOB_BACKENDS

from .builder import JobBackend, PyTorchJobBackend
from .trainjob import DEFAULT_RUNTIME, TrainJobBackend


def job_backends(trainjob_runtime: str = DEFAULT_RUNTIME) -> dict[str, JobBackend]:
    backends: dict[str, JobBackend] = {"pytorchjob": PyTorchJobBackend(), "trainjob": TrainJobBackend(trainjob_runtime)}
    assert tuple(backends) == JOB_BACKENDS
    return backends


def backend_of(run: dict, default: str) -> str:
    """The run's own choice; else the one recorded when it started (a changed operator default must not move a
    running run to another backend); else the operator's default."""
    return ((run.get("spec") or {}).get("trainer") or {}).get("backend") or \
        (run.get("status") or {}).get("backend") or default
