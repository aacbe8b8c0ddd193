"""The run's initializers (spec.initializers): before preflight, a CPU batch/v1 Job from the trainer image fetches
the run's pretrained parts and datasets onto the dataset volume (vita_trainer/tools/initialize.py), mounted
read-write for this Job alone. Pure: the Job and what its finished pod says."""

from __future__ import annotations

from typing import Any

from vita_api.naming import job_labels, job_name
from vita_api.plan import GPUS_ENV, INITIALIZE, cluster_roots, initializer_args
from vita_api.spec import API_GROUP, VitaTrainingRunSpec
from vita_api.termination import initialized_of

from .network_policy import DOWNLOADS
from .batch import batch_job
from .pods import container_env, permanent_failure_in, trainer_container_state

CONTAINER = "initializer"
LABEL_INITIALIZER = f"{API_GROUP}/initializer"


def _writable_dataset(job: dict[str, Any]) -> dict[str, Any]:
    pod = job["spec"]["template"]["spec"]
    for v in pod["volumes"]:
        if v["name"] == "dataset":
            v["persistentVolumeClaim"].pop("readOnly", None)
    for m in pod["containers"][0]["volumeMounts"]:
        if m["name"] == "dataset":
            m.pop("readOnly", None)
    return job


def initializer_job(run_name: str, namespace: str, spec: VitaTrainingRunSpec, attempt: int) -> dict[str, Any]:
    """Where the first stage will run, without a GPU, reading the Hub (the image is offline for training)."""
    init = spec.initializers
    if init is None:
        raise ValueError("the run asks for no initializers")
    limits = {"cpu": init.cpu, "memory": init.memory}
    env = [e for e in container_env(spec, 0) if e["name"] not in (GPUS_ENV, "HF_HUB_OFFLINE")]
    env.append({"name": "HF_HUB_OFFLINE", "value": "0"})
    if init.token_secret:
        secret, _, key = init.token_secret.partition("/")
        env = [e for e in env if e["name"] != "HF_TOKEN"] + [
            {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": secret, "key": key}}}]
    container = {"name": CONTAINER, "command": ["python", "-m", "vita_trainer.tools.initialize"],
                 "args": initializer_args(spec, cluster_roots(spec)), "env": env,
                 "resources": {"requests": dict(limits), "limits": limits}}
    return _writable_dataset(batch_job(
        spec, 0, name=job_name(run_name, INITIALIZE, attempt), namespace=namespace,
        labels={**job_labels(run_name, INITIALIZE, attempt), LABEL_INITIALIZER: "true", **DOWNLOADS},
        container=container,
        deadline_seconds=init.deadline_seconds, annotations={}))


def result(pod: dict[str, Any]) -> dict[str, Any] | None:
    term = trainer_container_state(pod, CONTAINER)
    return initialized_of(term.get("message", "")) if term.get("exitCode") == 0 else None


def permanent_failure(pod: dict[str, Any]) -> str | None:
    return permanent_failure_in(pod, CONTAINER)
