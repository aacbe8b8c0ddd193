"""What Kueue says about a queued job, from its Workload (pure): quota, admission, eviction, preemption."""

from __future__ import annotations

from typing import Any

KUEUE_GROUP, WORKLOADS = "kueue.x-k8s.io", "workloads"
# The Workload versions this operator reads, newest first (their conditions, which is all it reads, are the same).
WORKLOAD_VERSIONS = ("v1beta2", "v1beta1")
JOB_UID_LABEL = "kueue.x-k8s.io/job-uid"  # Kueue labels each Workload with its job's uid


def workload_version(served: list[str]) -> str | None:
    """The newest Workload version the cluster serves that this operator reads; None without Kueue."""
    return next((v for v in WORKLOAD_VERSIONS if v in served), None)


def workload_state(workloads: list[dict[str, Any]]) -> str:
    """One line for the run: why the job waits (no quota, evicted, preempted, admission checks) or that Kueue
    admitted it; "" without a Workload (Kueue not installed, or not yet created)."""
    if not workloads:
        return ""
    newest = max(workloads, key=lambda w: str((w.get("metadata") or {}).get("creationTimestamp") or ""))
    conds = {c.get("type"): c for c in (newest.get("status") or {}).get("conditions") or []}

    def said(c: dict[str, Any]) -> str:
        return f"{c.get('reason', '')}: {c.get('message', '')}".strip(": ")
    for kind, what in (("Preempted", "preempted by Kueue"), ("Evicted", "evicted by Kueue")):
        if (conds.get(kind) or {}).get("status") == "True":
            return f"{what} ({said(conds[kind])}); it resumes from its checkpoint when re-admitted"
    quota, admitted = conds.get("QuotaReserved") or {}, conds.get("Admitted") or {}
    if admitted.get("status") == "True":
        return "admitted by Kueue"
    if quota.get("status") == "True":
        return f"quota reserved, waiting for admission checks ({said(admitted) or 'pending'})"
    return f"waiting for quota in Kueue ({said(quota) or 'no decision yet'})"
