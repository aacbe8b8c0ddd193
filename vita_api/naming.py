"""How the operator names and labels what it creates: the state machine predicts the names, the job builders write
them, and the handlers find jobs by the labels. Pure."""

from __future__ import annotations

import hashlib

from .spec import API_GROUP

LABEL_RUN = f"{API_GROUP}/run"
LABEL_STAGE = f"{API_GROUP}/stage"
LABEL_ATTEMPT = f"{API_GROUP}/attempt"
MANAGED_BY = ("app.kubernetes.io/managed-by", "vita-operator")
JOB_NAME_MAX = 50  # leaves room for Kubeflow's "-master-0" / "-worker-12" pod suffixes within 63


def job_name(run_name: str, stage_name: str, attempt: int) -> str:
    """Deterministic and DNS-1035 safe; too long a name keeps its start and attempt around a hash of the whole."""
    name = f"{run_name}-{stage_name}-{attempt}"
    if len(name) <= JOB_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:8]
    return f"{name[:JOB_NAME_MAX - 9 - len(str(attempt)) - 1].rstrip('-')}-{digest}-{attempt}"


def job_labels(run_name: str, stage_name: str, attempt: int) -> dict[str, str]:
    """On the job and on its pods: what the operator finds them by."""
    return {MANAGED_BY[0]: MANAGED_BY[1], LABEL_RUN: run_name, LABEL_STAGE: stage_name, LABEL_ATTEMPT: str(attempt)}
