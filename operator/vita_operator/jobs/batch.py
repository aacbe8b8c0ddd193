"""The run's batch/v1 Jobs from the trainer image beside its stage jobs (the preflight data check, the benchmark
evaluations): one pod, never restarted, under a deadline, placed and mounted like a stage's pods, queued by Kueue
like them. Pure: the Job, and its phase from its status."""

from __future__ import annotations

from typing import Any

from .pods import (POD_SECURITY, TTL_AFTER_FINISHED, condition_message, container_security, image_pull_policy,
                   kueue_labels, pod_identity, pod_placement, true_conditions, volumes_and_mounts)
from vita_api.spec import VitaTrainingRunSpec

# Set by the Job controller on the pods it creates.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"


def batch_job(spec: VitaTrainingRunSpec, index: int, *, name: str, namespace: str, labels: dict[str, str],
              container: dict[str, Any], deadline_seconds: int, annotations: dict[str, str],
              shm: bool = False) -> dict[str, Any]:
    """`container` gets the image, the stage's volume mounts and the restricted security context; the pod gets the
    stage's node selector, tolerations, affinity, pull secrets and ServiceAccount (on a cluster whose nodes are all
    GPU-tainted a pod without them never schedules)."""
    volumes, mounts = volumes_and_mounts(spec, index)
    if not shm:
        volumes = [v for v in volumes if v["name"] != "dshm"]
        mounts = [m for m in mounts if m["name"] != "dshm"]
    job_labels = {**labels, **kueue_labels(spec)}
    container = {"image": spec.trainer.image, "imagePullPolicy": image_pull_policy(spec.trainer.image), **container,
                 "volumeMounts": mounts,
                 "terminationMessagePolicy": "FallbackToLogsOnError",
                 "securityContext": {**container_security(spec), "capabilities": {"drop": ["ALL"]}}}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": name, "namespace": namespace, "labels": job_labels, "annotations": annotations},
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
                     "activeDeadlineSeconds": deadline_seconds,
                     # Kueue admits a queued Job by unsuspending it
                     **({"suspend": True} if spec.scheduling.kueue_queue else {}),
                     "template": {"metadata": {"labels": dict(labels)},
                                  "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes,
                                           "securityContext": dict(POD_SECURITY), **pod_placement(spec, index),
                                           **pod_identity(spec)}}}}


def job_phase(job: dict[str, Any]) -> tuple[str, str]:
    """(Pending|Running|Suspended|Succeeded|Failed, message) from a batch/v1 Job's status (Failed with reason
    DeadlineExceeded past activeDeadlineSeconds)."""
    conds = true_conditions(job)
    for kind, phase in (("Complete", "Succeeded"), ("Failed", "Failed"), ("Suspended", "Suspended")):
        if kind in conds:
            return phase, condition_message(conds[kind])
    if (job.get("spec") or {}).get("suspend"):
        return "Suspended", "the Job is suspended, waiting for admission"
    return ("Running" if (job.get("status") or {}).get("active") else "Pending"), ""


def pod_selector(job: str) -> str:
    return f"{JOB_NAME_LABEL}={job}"
