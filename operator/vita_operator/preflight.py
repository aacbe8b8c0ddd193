"""The run's preflight: a CPU-only batch/v1 Job from the trainer image that runs `vita-data check` over every
stage's datasetUse on the mounted dataset volume, before the first GPU job (vita_trainer/tools/preflight.py).
Pure: the Job and what its finished pod says."""

from __future__ import annotations

from typing import Any

from vita_api.naming import job_labels, job_name
from vita_api.plan import GPUS_ENV, PREFLIGHT, cluster_roots, resolve_path, stage_max_length
from vita_api.spec import API_GROUP, VitaTrainingRunSpec
from vita_api.termination import preflight_summary_of

from .builder import (KUEUE_LABEL, POD_SECURITY, TTL_AFTER_FINISHED, condition_message, container_env,
                      container_security, permanent_failure_in, pod_placement, trainer_container_state,
                      true_conditions, volumes_and_mounts)

CONTAINER = "preflight"
LABEL_PREFLIGHT = f"{API_GROUP}/preflight"
# Set by the Job controller on the pods it creates.
JOB_NAME_LABEL = "batch.kubernetes.io/job-name"
REPORT_FILE = "preflight-report.json"


def report_path(spec: VitaTrainingRunSpec) -> str:
    """Next to the run's stage outputs on the checkpoint volume."""
    return f"{resolve_path(cluster_roots(spec).checkpoints, spec.output)}/{REPORT_FILE}"


def preflight_args(spec: VitaTrainingRunSpec) -> list[str]:
    r = cluster_roots(spec)
    args = ["--registry", resolve_path(r.data, spec.data.registry),
            "--tokenizer", spec.model.tokenizer if spec.model.tokenizer == "qwen2.5"
            else resolve_path(r.data, spec.model.tokenizer), "--report", report_path(spec)]
    for i, stage in enumerate(spec.stages):
        args += ["--stage", f"{stage.name}={stage.dataset_use}:{stage_max_length(spec, i)}"]
    args += ["--output", resolve_path(r.checkpoints, spec.output)]
    return args + ["--decode"] if spec.preflight.decode else args


def preflight_job(run_name: str, namespace: str, spec: VitaTrainingRunSpec, attempt: int) -> dict[str, Any]:
    """A small CPU pod (no GPU) where the first stage will run: its node selector, tolerations, affinity, pull
    secrets and ServiceAccount, and its Kueue queue (on a cluster whose nodes are all GPU-tainted a pod without them
    never schedules), under a deadline. It mounts the volumes as the trainer does, as the trainer's user."""
    pf = spec.preflight
    labels = {**job_labels(run_name, PREFLIGHT, attempt), LABEL_PREFLIGHT: "true"}
    job_labels_only = dict(labels)
    if spec.scheduling.kueue_queue:
        job_labels_only[KUEUE_LABEL] = spec.scheduling.kueue_queue
    volumes, mounts = volumes_and_mounts(spec, 0)
    volumes = [v for v in volumes if v["name"] != "dshm"]
    mounts = [m for m in mounts if m["name"] != "dshm"]
    placement = pod_placement(spec, 0)
    limits = {"cpu": pf.cpu, "memory": pf.memory}
    container = {"name": CONTAINER, "image": spec.trainer.image, "imagePullPolicy": "IfNotPresent",
                 "command": ["python", "-m", "vita_trainer.tools.preflight"], "args": preflight_args(spec),
                 "env": [e for e in container_env(spec, 0) if e["name"] != GPUS_ENV],  # a CPU pod: no GPU check
                 "resources": {"requests": dict(limits), "limits": limits}, "volumeMounts": mounts,
                 "terminationMessagePolicy": "FallbackToLogsOnError",
                 "securityContext": {**container_security(spec), "capabilities": {"drop": ["ALL"]}}}
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": job_name(run_name, PREFLIGHT, attempt), "namespace": namespace,
                         "labels": job_labels_only, "annotations": {f"{API_GROUP}/report": report_path(spec)}},
            "spec": {"backoffLimit": 0, "ttlSecondsAfterFinished": TTL_AFTER_FINISHED,
                     "activeDeadlineSeconds": pf.deadline_seconds,
                     # Kueue admits a queued Job by unsuspending it
                     **({"suspend": True} if spec.scheduling.kueue_queue else {}),
                     "template": {"metadata": {"labels": labels},
                                  "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes,
                                           "securityContext": dict(POD_SECURITY), **placement}}}}


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


def summary(pod: dict[str, Any]) -> dict[str, Any] | None:
    term = trainer_container_state(pod, CONTAINER)
    return preflight_summary_of(term.get("message", "")) if term.get("exitCode") == 0 else None


def permanent_failure(pod: dict[str, Any]) -> str | None:
    return permanent_failure_in(pod, CONTAINER)

