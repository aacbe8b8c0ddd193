"""The job backend protocol: one way to run a stage attempt as a Kubernetes object (one module per backend:
pytorchjob.py, trainjob.py); the state machine never sees which."""

from __future__ import annotations

from typing import Any, Protocol

from vita_api.spec import VitaTrainingRunSpec

from .pods import fabric_in, final_eval_loss_in, final_loss_in, oom_in, permanent_failure_in


class JobBackend(Protocol):
    name: str            # spec.trainer.backend
    kind: str
    api_version: str
    plural: str
    container: str       # the trainer container in the job's pods

    def build(self, run_name: str, namespace: str, spec: VitaTrainingRunSpec, index: int, attempt: int,
              suspend: bool = False) -> dict[str, Any]: ...

    def suspend_patch(self, suspend: bool) -> dict[str, Any]: ...

    def phase(self, job: dict[str, Any]) -> tuple[str, str]: ...

    def pods_selector(self, job_name: str) -> str: ...

    def node_count(self, job: dict[str, Any]) -> int: ...

    def suspended(self, job: dict[str, Any]) -> bool: ...

    def result_pod_selector(self, job_name: str) -> str: ...

    def index_fields(self, job: dict[str, Any]) -> dict[str, Any]: ...

    def permanent_failure(self, pod: dict[str, Any]) -> str | None: ...

    def out_of_memory(self, pod: dict[str, Any]) -> dict[str, Any] | None: ...

    def final_loss(self, pod: dict[str, Any]) -> float | None: ...

    def final_eval_loss(self, pod: dict[str, Any]) -> float | None: ...

    def fabric(self, pod: dict[str, Any]) -> dict[str, Any] | None: ...



def index_metadata(obj: dict[str, Any]) -> dict[str, Any]:
    """What the operator reads of an object's metadata (its indices hold thousands: no managedFields, no
    annotations)."""
    meta = obj.get("metadata") or {}
    return {k: meta[k] for k in ("name", "namespace", "uid", "labels", "ownerReferences", "creationTimestamp",
                                 "generation", "resourceVersion", "deletionTimestamp") if k in meta}


class ResultPodReader:
    """What every backend reads from its rank-0 pod's trainer container (named by the backend's `container`)."""
    container: str

    def permanent_failure(self, pod: dict[str, Any]) -> str | None:
        return permanent_failure_in(pod, self.container)

    def out_of_memory(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        return oom_in(pod, self.container)

    def final_loss(self, pod: dict[str, Any]) -> float | None:
        return final_loss_in(pod, self.container)

    def final_eval_loss(self, pod: dict[str, Any]) -> float | None:
        return final_eval_loss_in(pod, self.container)

    def fabric(self, pod: dict[str, Any]) -> dict[str, Any] | None:
        return fabric_in(pod, self.container)
