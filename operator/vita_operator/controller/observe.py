"""Observe: what the cluster says about a run, as the state machine's Observed* values. Reads the cache where
it can and the API server where it must (pods, events, Kueue Workloads); never writes."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
import logging
from collections.abc import Sequence
from typing import Any

from kubernetes.client.exceptions import ApiException

from vita_api.naming import LABEL_ATTEMPT, LABEL_RUN, LABEL_STAGE, MANAGED_BY
from vita_api.plan import evaluated_stages
from vita_api.spec import VitaTrainingRunSpec
from vita_api.status import TERMINAL

from ..core.decision import ObservedAttempt, ObservedEvaluation, ObservedJob
from ..core.kueue import JOB_UID_LABEL, workload_state
from ..core.steps import STEPS, step_pending
from ..jobs import evaluation as ev
from ..jobs.backend import JobBackend
from ..jobs.batch import job_phase, pod_selector
from ..jobs.pods import (KUEUE_LABEL, active_since, creation_failure, disruption_of, exited_with_error, failed_node,
                         node_lost, restarts_in_place, running_nodes, stuck_reason)
from ..jobs.steps import STEP_JOBS, PodRead
from . import cache, kube
from .config import settings

log = logging.getLogger(__name__)


def all_runs() -> list[dict[str, Any]]:
    """Every run, from the cache (a LIST before the operator's watches feed it, e.g. in a bare call)."""
    if cache.fed.is_set():
        return cache.runs.all()
    return [run for namespace in settings().namespaces or (None,) for run in kube.list_runs(namespace)]


@dataclass
class RunRef:
    """The run being observed, and what observing it found that is not its own."""
    namespace: str
    name: str
    uid: str | None   # metadata.uid; None only for a run object that has none (never one from the API server)
    foreign: list[str] = field(default_factory=list)  # jobs with its labels that it does not control

    def owns(self, obj: dict[str, Any]) -> bool:
        """Whether `obj` is this run's: its labels name the run and the operator, and the run controls it (an owner
        reference with the run's UID and controller: true, as create_owned writes). A job with the labels but
        another owner (made by hand, or left by an earlier run of the same name until the garbage collector
        removes it) is recorded in `foreign`, never adopted."""
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        if labels.get(LABEL_RUN) != self.name or labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
            return False
        if self.uid is None or any(r.get("uid") == self.uid and r.get("controller")
                                   for r in meta.get("ownerReferences") or []):
            return True
        self.foreign.append(str(meta.get("name", "")))
        return False


def cached_jobs(backend_name: str, namespace: str, run_name: str) -> list[dict[str, Any]]:
    """The run's jobs as the cache holds them; [] if it holds none (or is not fed)."""
    return cache.job_store(backend_name).group((namespace, run_name)) if cache.fed.is_set() else []


def observed_jobs(backend: JobBackend, run: RunRef, recorded_done: set[str], read_pods: bool = True,
                  recorded_nodes: dict[str, list[str]] | None = None,
                  recorded_restarts: dict[str, int] | None = None) -> list[ObservedJob]:
    """The run's jobs, from the cache. Only a run the cache holds no job for asks the API server (a LIST):
    its first job may not be cached yet, and only the API can say that the backend's CRD is missing (404).

    The latest attempt of a stage not yet recorded done also gets what its pods say: the final loss (Succeeded),
    the trainer's permanent error (Failed) or why the pods cannot start (Pending/Running). Older attempts and
    finished runs (`read_pods=False`) read no pods: the state machine looks at neither. `recorded_nodes`: where
    each job's pods ran, as status recorded it (by job name); `recorded_restarts`: the in-place restarts of each
    job that status has recorded (a new one is looked into: which node went)."""
    namespace = run.namespace
    items = cached_jobs(backend.name, namespace, run.name) or kube.custom_objects(
        backend.api_version, backend.plural, namespace, f"{LABEL_RUN}={run.name}")
    jobs, queued_uids = [], {}
    for job in items:  # filter again: the owner, and proxies or mocks that ignore selectors
        if not run.owns(job):
            continue
        labels = job["metadata"]["labels"]
        jobs.append(ObservedJob(job["metadata"]["name"], labels.get(LABEL_STAGE, ""),
                                int(labels.get(LABEL_ATTEMPT, "0")), *backend.phase(job),
                                active_since=active_since(job), nodes=backend.node_count(job),
                                suspended=backend.suspended(job)))
        if KUEUE_LABEL in labels and jobs[-1].phase == "Suspended":
            queued_uids[jobs[-1].name] = job["metadata"].get("uid", "")
    latest: dict[str, int] = {}
    for j in jobs:
        latest[j.stage] = max(latest.get(j.stage, 0), j.attempt)
    out = [_with_pod_reports(backend, namespace, j, (recorded_nodes or {}).get(j.name, ()),
                             (recorded_restarts or {}).get(j.name, 0))
           if read_pods and j.attempt == latest[j.stage] and j.stage not in recorded_done else j for j in jobs]
    # a job Kueue holds: what its Workload says (no quota, evicted, preempted) is why the run is Queued
    return [dataclasses.replace(j, message=workload_state(kube.workloads(namespace, f"{JOB_UID_LABEL}={uid}"))
                                or j.message)
            if read_pods and (uid := queued_uids.get(j.name)) and j.attempt == latest[j.stage] else j for j in out]


def _with_pod_reports(backend: JobBackend, namespace: str, job: ObservedJob,
                      recorded_nodes: Sequence[str] = (), recorded_restarts: int = 0) -> ObservedJob:
    if job.phase == "Succeeded":
        pods = kube.pods(namespace, backend.result_pod_selector(job.name))
        losses = [backend.final_loss(p) for p in pods]
        evals = [backend.final_eval_loss(p) for p in pods]
        fabrics = [backend.fabric(p) for p in pods]
        return dataclasses.replace(job, final_loss=next((x for x in losses if x is not None), None),
                                   final_eval_loss=next((x for x in evals if x is not None), None),
                                   fabric=next((x for x in fabrics if x is not None), None))
    if job.phase == "Failed":  # every pod: a worker's OOM or data error is as much the stage's as rank 0's
        pods = kube.pods(namespace, backend.pods_selector(job.name))
        errors = [backend.permanent_failure(p) for p in pods]
        failed = tuple(sorted({n for n in map(failed_node, pods) if n}))
        disruption = next((d for d in map(disruption_of, pods) if d), "")
        if not disruption and not any(errors) and not any(map(exited_with_error, pods)):
            # pod garbage collection deletes a lost node's pods (with their DisruptionTarget) before anyone reads
            # them: the nodes they ran on say it instead
            disruption, lost = _lost_node(failed or tuple(recorded_nodes))
            failed = failed or lost
        return dataclasses.replace(job, permanent=next((e for e in errors if e), ""),
                                   oom=next((o for o in map(backend.out_of_memory, pods) if o), None),
                                   disruption=disruption, failed_nodes=failed)
    if job.phase in ("Pending", "Running"):
        pods = kube.pods(namespace, backend.pods_selector(job.name))
        restarts = restarts_in_place(pods)
        # restarted in place since status last looked: which of its nodes went, if one did
        disruption, lost = _lost_node(recorded_nodes) if restarts > recorded_restarts else ("", ())
        return dataclasses.replace(job, stuck=why_waiting(namespace, job.name, pods, job.nodes),
                                   placed_on=running_nodes(pods), restarts=restarts, disruption=disruption,
                                   failed_nodes=lost)
    return job


def _lost_node(nodes: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """(why, which) for the first of `nodes` that is gone or NotReady; ("", ()) if none is, or if nodes cannot be
    read (the chart grants get on nodes; without it the failure counts as the stage's own)."""
    for name in nodes:
        try:
            why = node_lost(name, kube.node(name))
        except ApiException as e:
            log.warning("node %s not read (API error %s): a lost node cannot be told apart", name, e.status)
            return "", ()
        if why:
            return why, (name,)
    return "", ()


def run_batch_jobs(run: RunRef, kind_label: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(job, its labels) of the run's batch Jobs of one kind (preflight, initializer, export, evaluation)."""
    return [(job, job["metadata"]["labels"])
            for job in kube.batch_jobs(run.namespace, f"{LABEL_RUN}={run.name},{kind_label}=true") if run.owns(job)]


def why_waiting(namespace: str, job_name: str, pods: list[dict[str, Any]], nodes: int = 1) -> str:
    """Why a job's pods do not start: their own reason, else, while fewer than its `nodes` exist, its controllers'
    failed creates. Events are read only then: the training operator creates the master and then fails on a worker
    that admission refuses (PodSecurity refuses its injected init container)."""
    return stuck_reason(pods) or (creation_failure(job_name, kube.warning_events(namespace), pods)
                                  if len(pods) < nodes else "")


def observed_attempts(run: RunRef, kind_label: str, *, report: PodRead | None = None,
                      permanent: PodRead | None = None, failure: PodRead | None = None) -> list[ObservedAttempt]:
    """The run's Jobs of one attempt-numbered step (preflight, initializers, export). The latest attempt's pods are
    read when it waits (why it cannot start) or when it finished and its pods say something: `report` (a finished
    pod's result), `permanent` (an error no retry fixes), `failure` (a failed pod's reason, instead of the Job's)."""
    def first(read: PodRead | None, pods: list[dict[str, Any]], default: Any) -> Any:
        return next((r for r in map(read, pods) if r not in (None, "")), default) if read else default
    out = [ObservedAttempt(job["metadata"]["name"], int(labels.get(LABEL_ATTEMPT, "0")), *job_phase(job))
           for job, labels in run_batch_jobs(run, kind_label)]
    namespace = run.namespace
    latest = max((o.attempt for o in out), default=0)
    for i, o in enumerate(out):
        waiting = o.phase in ("Pending", "Running")
        readers = (report, permanent) + ((failure,) if o.phase == "Failed" else ())
        if o.attempt != latest or not (waiting or (o.phase in ("Succeeded", "Failed") and any(readers))):
            continue
        pods = kube.pods(namespace, pod_selector(o.name))
        out[i] = dataclasses.replace(o, stuck=why_waiting(namespace, o.name, pods)) if waiting else \
            dataclasses.replace(o, report=first(report, pods, None), permanent=first(permanent, pods, ""),
                                message=first(failure, pods, o.message) if o.phase == "Failed" else o.message)
    return out


def observed_steps(spec: VitaTrainingRunSpec, status: dict[str, Any], run: RunRef) -> dict[str, list[ObservedAttempt]]:
    """Each batch step's Jobs that the state machine may still need (steps.step_pending), by step key."""
    out = {}
    for step in STEPS:
        if step_pending(step, spec, status):
            jobs = STEP_JOBS[step.key]
            out[step.key] = observed_attempts(run, jobs.label, report=jobs.report, permanent=jobs.permanent,
                                              failure=jobs.failure)
    return out


def evaluations_needed(spec: VitaTrainingRunSpec, status: dict[str, Any]) -> bool:
    """Whether an evaluated stage has succeeded without its evaluation having ended (saves a LIST otherwise)."""
    if status.get("phase") in TERMINAL or spec.evaluation is None:
        return False
    ended = {e.get("stage") for e in status.get("evaluations") or [] if e.get("phase") in ("Succeeded", "Failed")}
    records = {r.get("name"): r for r in status.get("stages") or []}
    return any((records.get(spec.stages[i].name) or {}).get("phase") == "Succeeded" and spec.stages[i].name not in
               ended for i in evaluated_stages(spec))


def observed_evaluations(run: RunRef) -> list[ObservedEvaluation]:
    """The run's benchmark Jobs; a finished one also gets its pod's scores or error, a waiting one why."""
    out, namespace = [], run.namespace
    for job, labels in run_batch_jobs(run, ev.LABEL_EVALUATION):
        o = ObservedEvaluation(job["metadata"]["name"], labels.get(LABEL_STAGE, ""), *job_phase(job))
        pods = kube.pods(namespace, pod_selector(o.name)) if o.phase != "Suspended" else []
        if o.phase in ("Succeeded", "Failed"):
            found = next((r for r in map(ev.result, pods) if r is not None), None)
            o = dataclasses.replace(o, scores=(found or {}).get("evaluation"), results=(found or {}).get("results", ""),
                                    error=next((e for e in map(ev.error, pods) if e), ""))
        elif o.phase in ("Pending", "Running"):
            o = dataclasses.replace(o, stuck=why_waiting(namespace, o.name, pods))
        out.append(o)
    return out
