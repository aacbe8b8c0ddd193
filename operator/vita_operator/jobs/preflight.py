"""The run's preflight: a CPU-only batch/v1 Job from the trainer image that runs `vita-data check` over every
stage's datasetUse on the mounted dataset volume, before the first GPU job (vita_trainer/tools/preflight.py).
Pure: the Job and what its finished pod says."""

from __future__ import annotations

from typing import Any

from vita_api.naming import job_labels, job_name
from vita_api.plan import GPUS_ENV, PREFLIGHT, cluster_roots, resolve_path, stage_max_length
from vita_api.spec import API_GROUP, VitaTrainingRunSpec
from vita_api.termination import preflight_summary_of

from .batch import batch_job
from .pods import container_env, permanent_failure_in, trainer_container_state

CONTAINER = "preflight"
LABEL_PREFLIGHT = f"{API_GROUP}/preflight"
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
    """A small CPU pod (no GPU) where the first stage will run, under a deadline, as the trainer's user."""
    pf = spec.preflight
    limits = {"cpu": pf.cpu, "memory": pf.memory}
    container = {"name": CONTAINER, "command": ["python", "-m", "vita_trainer.tools.preflight"],
                 "args": preflight_args(spec),
                 "env": [e for e in container_env(spec, 0) if e["name"] != GPUS_ENV],  # a CPU pod: no GPU check
                 "resources": {"requests": dict(limits), "limits": limits}}
    return batch_job(spec, 0, name=job_name(run_name, PREFLIGHT, attempt), namespace=namespace,
                     labels={**job_labels(run_name, PREFLIGHT, attempt), LABEL_PREFLIGHT: "true"},
                     container=container, deadline_seconds=pf.deadline_seconds,
                     annotations={f"{API_GROUP}/report": report_path(spec)})


def summary(pod: dict[str, Any]) -> dict[str, Any] | None:
    term = trainer_container_state(pod, CONTAINER)
    return preflight_summary_of(term.get("message", "")) if term.get("exitCode") == 0 else None


def permanent_failure(pod: dict[str, Any]) -> str | None:
    return permanent_failure_in(pod, CONTAINER)

