"""The run's export (spec.export): after the last stage, a CPU batch/v1 Job from the trainer image runs
`vita-model export` on its output and writes the asked format to a folder on the checkpoint volume. Pure."""

from __future__ import annotations

from typing import Any

from vita_api.naming import job_labels, job_name
from vita_api.plan import EXPORT, GPUS_ENV, cluster_roots, export_args, export_dir
from vita_api.spec import API_GROUP, VitaTrainingRunSpec

from .batch import batch_job
from .pods import container_env, trainer_container_state

CONTAINER = "export"
LABEL_EXPORT = f"{API_GROUP}/export"


def export_job(run_name: str, namespace: str, spec: VitaTrainingRunSpec, attempt: int) -> dict[str, Any]:
    """Where the last stage ran (its node selector and tolerations), without a GPU: export is a copy with new key
    names, in memory."""
    ex = spec.export
    if ex is None:
        raise ValueError("the run asks for no export")
    last = len(spec.stages) - 1
    limits = {"cpu": ex.cpu, "memory": ex.memory}
    container = {"name": CONTAINER, "command": ["vita-model"], "args": export_args(spec, cluster_roots(spec)),
                 "env": [e for e in container_env(spec, last) if e["name"] != GPUS_ENV],
                 "resources": {"requests": dict(limits), "limits": limits}}
    return batch_job(spec, last, name=job_name(run_name, EXPORT, attempt), namespace=namespace,
                     labels={**job_labels(run_name, EXPORT, attempt), LABEL_EXPORT: "true"}, container=container,
                     deadline_seconds=ex.deadline_seconds,
                     annotations={f"{API_GROUP}/export": export_dir(spec, cluster_roots(spec))})


def failure(pod: dict[str, Any]) -> str:
    """A failed export pod's last log lines (vita-model's error names the folder and what is wrong)."""
    term = trainer_container_state(pod, CONTAINER)
    if not term.get("exitCode"):
        return ""
    return f"exit code {term['exitCode']}: {term.get('message', '').strip()[-800:]}"
