"""The PyTorchJob backend (Kubeflow training operator v1). Pure: the job, its phase and its pods' selectors."""

from __future__ import annotations

from typing import Any

from vita_api.naming import job_labels
from vita_api.plan import cluster_roots, nproc_per_node, stage_args, stage_resources
from vita_api.spec import VitaTrainingRunSpec

from .backend import ResultPodReader, index_metadata
from .pods import (KUEUE_PODSET_GROUP, POD_SECURITY, TRAINER_MODULE, TTL_AFTER_FINISHED, condition_message,
                   container_env, container_resources, container_security, image_pull_policy, job_metadata,
                   pod_annotations, pod_identity, pod_placement, true_conditions, volumes_and_mounts)

# Set by the Kubeflow training operator on the pods it creates.
KUBEFLOW_JOB_NAME, KUBEFLOW_REPLICA_TYPE = "training.kubeflow.org/job-name", "training.kubeflow.org/replica-type"
TRAINER_CONTAINER = "pytorch"


def pod_template(spec: VitaTrainingRunSpec, index: int, labels: dict[str, Any], args: list[str]) -> dict[str, Any]:
    volumes, mounts = volumes_and_mounts(spec, index)
    container = {
        "name": TRAINER_CONTAINER, "image": spec.trainer.image,
        "imagePullPolicy": image_pull_policy(spec.trainer.image),
        # Kubeflow injects MASTER_ADDR/PORT and PET_NNODES/PET_NPROC_PER_NODE/PET_NODE_RANK, which torchrun reads.
        "command": ["torchrun"],
        "args": ["--master_addr=$(MASTER_ADDR)", "--master_port=$(MASTER_PORT)", *TRAINER_MODULE, *args],
        "env": container_env(spec, index),
        "ports": [{"name": "metrics", "containerPort": spec.trainer.metrics_port, "protocol": "TCP"}],
        "resources": container_resources(spec, index),
        "volumeMounts": mounts,
        # Success: the trainer's JSON result (vita_api.termination). Failure: the log tail.
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "securityContext": container_security(spec),
    }
    pod_spec = {"containers": [container], "volumes": volumes, "securityContext": dict(POD_SECURITY),
                **pod_placement(spec, index), **pod_identity(spec)}
    priority = stage_resources(spec, index).priority_class_name
    if priority:
        pod_spec["priorityClassName"] = priority
    return {"metadata": {"labels": dict(labels), "annotations": pod_annotations(spec)}, "spec": pod_spec}


# No pod-level restarts: torchrun's static rendezvous cannot take one restarted pod back, and a restart budget summed
# over all pods is spent by one NCCL failure on 4 nodes. A failed pod fails the job; the operator's next attempt is a
# fresh job (every pod, a new rendezvous) resuming from the checkpoint, and a permanent error is not retried at all.
# No runPolicy.backoffLimit either: with one set, the training operator v1.9.3 fails the job by deleting every pod
# first, the failed one too, so the worker's termination message (an OOM, a data error) is gone before anyone reads
# it (the kubeflow test tier shows it). Without it the job fails on the replica's failure and keeps the failed pod.
POD_RESTART_POLICY = "Never"


class PyTorchJobBackend(ResultPodReader):
    """Kubeflow training operator v1: one PyTorchJob per stage attempt, a Master and nodes-1 Workers."""
    name = "pytorchjob"
    kind = "PyTorchJob"
    api_version = "kubeflow.org/v1"
    plural = "pytorchjobs"
    container = TRAINER_CONTAINER

    def build(self, run_name: str, namespace: str, spec: VitaTrainingRunSpec, index: int, attempt: int,
              suspend: bool = False) -> dict[str, Any]:
        stage = spec.stages[index]
        res = stage_resources(spec, index)
        template = pod_template(spec, index, job_labels(run_name, stage.name, attempt),
                                 stage_args(spec, index, cluster_roots(spec)))
        def replica(n: int) -> dict[str, Any]:
            return {"replicas": n, "restartPolicy": POD_RESTART_POLICY, "template": template}
        if res.nodes > 1 and spec.scheduling.topology:
            # Master and Worker are two pod sets to Kueue: grouped, they are placed in one domain together
            template["metadata"]["annotations"][KUEUE_PODSET_GROUP] = "trainers"
        replicas = {"Master": replica(1)}
        if res.nodes > 1:
            replicas["Worker"] = replica(res.nodes - 1)
        run_policy: dict[str, Any] = {"cleanPodPolicy": "Running",
                      "ttlSecondsAfterFinished": TTL_AFTER_FINISHED, "suspend": suspend}
        if deadline := spec.stages[index].active_deadline_seconds:
            run_policy["activeDeadlineSeconds"] = deadline
        if spec.scheduling.volcano_queue:
            run_policy["schedulingPolicy"] = {"queue": spec.scheduling.volcano_queue, "minAvailable": res.nodes}
            if res.priority_class_name:
                run_policy["schedulingPolicy"]["priorityClass"] = res.priority_class_name
        return {"apiVersion": self.api_version, "kind": self.kind,
                "metadata": job_metadata(run_name, namespace, spec, index, attempt),
                "spec": {"nprocPerNode": str(nproc_per_node(spec, index)), "runPolicy": run_policy,
                         "pytorchReplicaSpecs": replicas}}

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        return {"spec": {"runPolicy": {"suspend": suspend}}}

    def phase(self, job: dict[str, Any]) -> tuple[str, str]:
        """(Pending|Running|Suspended|Succeeded|Failed, message) from the job's conditions."""
        conds = true_conditions(job)
        for kind in ("Succeeded", "Failed", "Suspended", "Running", "Restarting"):
            if kind in conds:
                return ("Running" if kind == "Restarting" else kind), condition_message(conds[kind])
        return "Pending", ""

    def pods_selector(self, job_name: str) -> str:
        return f"{KUBEFLOW_JOB_NAME}={job_name}"

    def node_count(self, job: dict[str, Any]) -> int:
        replicas = ((job.get("spec") or {}).get("pytorchReplicaSpecs") or {}).values()
        return sum(int(r.get("replicas", 1)) for r in replicas)

    def suspended(self, job: dict[str, Any]) -> bool:
        return bool(((job.get("spec") or {}).get("runPolicy") or {}).get("suspend"))

    def result_pod_selector(self, job_name: str) -> str:
        """The pod holding global rank 0, which writes the stage's result."""
        return f"{KUBEFLOW_JOB_NAME}={job_name},{KUBEFLOW_REPLICA_TYPE}=master"

    def index_fields(self, job: dict[str, Any]) -> dict[str, Any]:
        """What phase, node_count, suspended and active_since read: not the pod templates."""
        spec = job.get("spec") or {}
        return {"metadata": index_metadata(job), "status": job.get("status") or {},
                "spec": {"runPolicy": {"suspend": (spec.get("runPolicy") or {}).get("suspend")},
                         "pytorchReplicaSpecs": {k: {"replicas": (v or {}).get("replicas", 1)}
                                                 for k, v in (spec.get("pytorchReplicaSpecs") or {}).items()}}}
