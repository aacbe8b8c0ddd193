"""The run's benchmark evaluations (spec.evaluation): after an evaluated stage succeeds, a batch/v1 Job from the
trainer image runs `vita-model eval` (lmms-eval) on the stage's output on the checkpoint volume. Pure: the Job and
what its finished pod says (vita_trainer/evaluation/run.py writes the scores as its termination message)."""

from __future__ import annotations

import posixpath
from typing import Any

from vita_api.naming import job_labels, job_name
from vita_api.plan import EVALUATION, GPUS_ENV, cluster_roots, evaluation_args, resolve_path
from vita_api.spec import API_GROUP, VitaTrainingRunSpec
from vita_api.termination import evaluation_of, failure_of

from .network_policy import DOWNLOADS
from .batch import batch_job
from .pods import container_env, trainer_container_state

CONTAINER = "evaluation"
LABEL_EVALUATION = f"{API_GROUP}/evaluation"
# lmms-eval's datasets (MME, MMBench, ...) are fetched once per run into this folder of its output.
HF_CACHE = ".cache/huggingface"


def evaluation_job(run_name: str, namespace: str, spec: VitaTrainingRunSpec, index: int) -> dict[str, Any]:
    """One pod with spec.evaluation's GPUs, placed and mounted as the evaluated stage's pods. Unlike the trainer,
    it reads the Hub (the tasks' datasets; HF_TOKEN through trainer.envFromSecrets), caching them on the
    checkpoint volume."""
    ev = spec.evaluation
    if ev is None:
        raise ValueError("the run asks for no evaluation")
    stage = spec.stages[index]
    limits = {"cpu": ev.cpu, "memory": ev.memory, **({"nvidia.com/gpu": str(ev.gpus)} if ev.gpus else {})}
    hf_home = posixpath.join(resolve_path(cluster_roots(spec).checkpoints, spec.output), HF_CACHE)
    env = [e for e in container_env(spec, index) if e["name"] not in (GPUS_ENV, "HF_HUB_OFFLINE", "HF_HOME")]
    container = {"name": CONTAINER, "command": ["vita-model"],
                 "args": evaluation_args(spec, index, cluster_roots(spec)),
                 # the image says HF_HUB_OFFLINE=1 (training never reads the Hub): the tasks' datasets do
                 "env": [*env, {"name": "HF_HUB_OFFLINE", "value": "0"}, {"name": "HF_HOME", "value": hf_home}],
                 "resources": {"requests": dict(limits), "limits": limits}}
    labels = {**job_labels(run_name, stage.name, 1), LABEL_EVALUATION: "true", **DOWNLOADS}
    return batch_job(spec, index, name=job_name(run_name, f"{EVALUATION}-{stage.name}", 1), namespace=namespace,
                     labels=labels, container=container, deadline_seconds=ev.deadline_seconds, shm=True,
                     annotations={f"{API_GROUP}/tasks": ",".join(ev.tasks)})


def result(pod: dict[str, Any]) -> dict[str, Any] | None:
    """{"evaluation": {task: {metric: value}}, "results": path} from a finished pod; None if it left none."""
    term = trainer_container_state(pod, CONTAINER)
    return evaluation_of(term.get("message", "")) if term.get("exitCode") == 0 else None


def error(pod: dict[str, Any]) -> str:
    """A failed pod's own reason (vita-model eval's error, else its log tail), "" if it has not failed."""
    term = trainer_container_state(pod, CONTAINER)
    if not term.get("exitCode"):
        return ""
    message = term.get("message", "")
    return failure_of(message) or f"exit code {term['exitCode']}: {message.strip()[-500:]}"
