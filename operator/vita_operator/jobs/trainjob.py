"""Kubeflow Trainer v2 backend: one TrainJob per stage attempt, on the chart's ClusterTrainingRuntime.

The runtime (helm/vita-operator/templates/clustertrainingruntime.yaml) carries what every stage shares: the torch
mlPolicy, one replicated job "node" whose container "node" keeps its termination message, no restarts at any level
(as PyTorchJobs: a retry is the operator's next attempt), the pod security context, /dev/shm and the cache folder.
Each TrainJob carries the rest: image, torchrun command and the stage's arguments, nodes and processes per node,
resources and env in `spec.trainer`; volumes, mounts, labels, annotations and placement in one `runtimePatches`
entry. Trainer upserts patched volumes by name, so the patch's /dev/shm (sized per stage) replaces the runtime's.
"""

from __future__ import annotations

from typing import Any

from vita_api.naming import job_labels
from vita_api.plan import cluster_roots, nproc_per_node, stage_args, stage_resources
from vita_api.spec import API_GROUP, VitaTrainingRunSpec

from .backend import ResultPodReader, index_metadata
from .pods import (POD_SECURITY, TRAINER_MODULE, condition_message,
                      container_env, container_resources, container_security, job_metadata, pod_annotations,
                      pod_placement, true_conditions, volumes_and_mounts)

TRAINER_GROUP = "trainer.kubeflow.org"
DEFAULT_RUNTIME = "vita-torch-distributed"
REPLICATED_JOB = "node"     # Trainer's torch plugin: the trainer step's replicated job and container
PATCH_MANAGER = f"{API_GROUP}/operator"
# Set by JobSet and the Job controller on the pods they create.
JOBSET_NAME, REPLICATED_JOB_NAME = "jobset.sigs.k8s.io/jobset-name", "jobset.sigs.k8s.io/replicatedjob-name"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"


class TrainJobBackend(ResultPodReader):
    name = "trainjob"
    kind = "TrainJob"
    api_version = f"{TRAINER_GROUP}/v1alpha1"
    plural = "trainjobs"
    container = REPLICATED_JOB

    def __init__(self, runtime: str = DEFAULT_RUNTIME):
        self.runtime = runtime

    def build(self, run_name: str, namespace: str, spec: VitaTrainingRunSpec, index: int, attempt: int,
              suspend: bool = False) -> dict[str, Any]:
        stage = spec.stages[index]
        volumes, mounts = volumes_and_mounts(spec, index)
        pod_spec = {"containers": [{"name": self.container, "volumeMounts": mounts,
                                    "securityContext": container_security(spec)}],
                    "volumes": volumes, "securityContext": dict(POD_SECURITY), **pod_placement(spec, index)}
        pod = {"metadata": {"labels": job_labels(run_name, stage.name, attempt),
                            "annotations": pod_annotations(spec)}, "spec": pod_spec}
        patch = {"manager": PATCH_MANAGER, "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [
            {"name": REPLICATED_JOB, "template": {"spec": {"template": pod}}}]}}}}
        trainer = {"image": spec.trainer.image,
                   # Trainer's torch plugin sets PET_NNODES/NPROC_PER_NODE/NODE_RANK/MASTER_ADDR/MASTER_PORT, which
                   # torchrun reads.
                   "command": ["torchrun"], "args": [*TRAINER_MODULE, *stage_args(spec, index, cluster_roots(spec))],
                   "env": container_env(spec, index),
                   "numNodes": stage_resources(spec, index).nodes, "numProcPerNode": nproc_per_node(spec, index),
                   "resourcesPerNode": container_resources(spec, index)}
        job_spec = {"runtimeRef": {"apiGroup": TRAINER_GROUP, "kind": "ClusterTrainingRuntime", "name": self.runtime},
                    "trainer": trainer, "runtimePatches": [patch], "suspend": suspend}
        if deadline := spec.stages[index].active_deadline_seconds:
            job_spec["activeDeadlineSeconds"] = deadline
        return {"apiVersion": self.api_version, "kind": self.kind,
                "metadata": job_metadata(run_name, namespace, spec, index, attempt), "spec": job_spec}

    def suspend_patch(self, suspend: bool) -> dict[str, Any]:
        return {"spec": {"suspend": suspend}}

    def phase(self, job: dict[str, Any]) -> tuple[str, str]:
        """(Pending|Running|Suspended|Succeeded|Failed, message): TrainJob's Complete/Failed/Suspended conditions,
        and Running once a child Job has an active pod."""
        conds = true_conditions(job)
        for kind, phase in (("Complete", "Succeeded"), ("Failed", "Failed"), ("Suspended", "Suspended")):
            if kind in conds:
                return phase, condition_message(conds[kind])
        if any(j.get("active") or j.get("ready") for j in (job.get("status") or {}).get("jobsStatus") or []):
            return "Running", ""
        return "Pending", ""

    def pods_selector(self, job_name: str) -> str:
        return f"{JOBSET_NAME}={job_name}"

    def node_count(self, job: dict[str, Any]) -> int:
        return int(((job.get("spec") or {}).get("trainer") or {}).get("numNodes") or 1)

    def suspended(self, job: dict[str, Any]) -> bool:
        return bool((job.get("spec") or {}).get("suspend"))

    def result_pod_selector(self, job_name: str) -> str:
        """Node 0 holds global rank 0 (Trainer: PET_NODE_RANK is the Job's completion index)."""
        return f"{JOBSET_NAME}={job_name},{REPLICATED_JOB_NAME}={REPLICATED_JOB},{COMPLETION_INDEX}=0"

    def index_fields(self, job: dict[str, Any]) -> dict[str, Any]:
        """What phase, node_count, suspended and active_since read: not the trainer's args, env or patches."""
        spec = job.get("spec") or {}
        return {"metadata": index_metadata(job), "status": job.get("status") or {},
                "spec": {"suspend": spec.get("suspend"),
                         "trainer": {"numNodes": (spec.get("trainer") or {}).get("numNodes")}}}
