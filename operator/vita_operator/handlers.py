"""kopf handlers: read the cluster, call the pure `decide`, apply its answer idempotently.

Run with: kopf run --standalone -m vita_operator.handlers --liveness=http://0.0.0.0:8081/healthz
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, TypeVar, cast

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from vita_api.naming import LABEL_ATTEMPT, LABEL_RUN, LABEL_STAGE, MANAGED_BY
from vita_api.plan import evaluated_stages, with_stage_args
from vita_api.spec import API_GROUP, VitaTrainingRunSpec

from . import evaluation as ev
from . import export as exp
from . import initializers as ini
from . import kube, metrics
from . import preflight as pre
from .batch_jobs import job_phase, pod_selector
from . import progress as prog
from .backends import RUNTIME_ENV, backend_of, configured_backends, job_backends
from .builder import KUEUE_LABEL, JobBackend, active_since, creation_failure, stuck_reason
from .kueue import JOB_UID_LABEL, workload_state
from .crd import PLURAL, VERSION
from .progress_loop import progress_pass
from .volumes import claim_names, claim_problems
from .state import (TERMINAL, CreateEvaluation, CreateExport, CreateInitializer, CreateJob, CreatePreflight, Decision,
                    DeleteJob, ObservedAttempt, ObservedEvaluation, ObservedExport, ObservedInitializer, ObservedJob,
                    ObservedPreflight, SetJobSuspend, decide, decide_blocked, decide_evaluation_refused,
                    decide_invalid, decide_refused)
from .trainjob import DEFAULT_RUNTIME

log = logging.getLogger(__name__)
API_URL_ENV = "VITA_OPERATOR_API_URL"   # tests point the operator at their own API server
NAMESPACE_ENV = "VITA_OPERATOR_NAMESPACE"  # watch one namespace (as __main__ does); unset: all namespaces
RESYNC_ENV = "VITA_OPERATOR_RESYNC_SECONDS"
WORKERS_ENV = "VITA_OPERATOR_WORKERS"  # reconciles at once
# How often the progress loop looks for runs due a read (each run is read every spec.progressIntervalSeconds).
PROGRESS_TICK_ENV = "VITA_OPERATOR_PROGRESS_TICK_SECONDS"
_locks: dict[str, threading.Lock] = {}

BACKENDS = job_backends(os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME)
ENABLED, DEFAULT_BACKEND = configured_backends(dict(os.environ))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    url = os.environ.get(API_URL_ENV)
    if url:
        return kopf.ConnectionInfo(server=url, insecure=True, scheme="Bearer", token="test")
    return kopf.login_via_client(**kwargs)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    # Reconciles are mostly waiting on the API server: Python's default pool (cpus + 4 threads) would serialise a
    # burst of stage transitions behind a handful of them.
    workers = int(os.environ.get(WORKERS_ENV, "32"))
    settings.execution.max_workers = workers
    kube.connect(os.environ.get(API_URL_ENV), workers)
    # The indices, for the reconciles that run outside kopf's handlers (the resync and progress loops) too.
    _job_indices.update({name: kwargs[index_id] for name, index_id in JOB_INDEX_IDS.items()})
    _runs_index[:] = [kwargs[RUNS_INDEX_ID]]
    # Server-side label selectors on the job watches: without them the API server streams every batch Job and
    # PyTorchJob of the cluster to the operator, which kopf's label filters then drop.
    for group, version, plural in WATCHED_JOBS:
        settings.watching.label_selectors[group, version, plural] = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"
    settings.posting.level = 20  # INFO and up become Kubernetes Events
    # No handler needs a finalizer any more; naming the one older versions added lets kopf remove it from runs.
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    _loops[:] = [_start_loop("resync", float(os.environ.get(RESYNC_ENV, "60")), resync_all),
                 _start_loop("progress", float(os.environ.get(PROGRESS_TICK_ENV, "10")), progress_all)]
    port = int(os.environ.get("VITA_OPERATOR_METRICS_PORT", "9090"))
    if port:
        from prometheus_client import start_http_server
        start_http_server(port, registry=metrics.REGISTRY)


# The enabled backends' jobs by (namespace, run), kept by kopf from the watch it runs anyway for on_job: a reconcile
# reads its run's jobs from memory instead of LISTing them.
JOB_INDEX_IDS = {name: f"{name}_jobs_by_run" for name in ENABLED}
_job_indices: dict[str, kopf.Index[tuple[str | None, str], dict[str, Any]]] = {}


# Every run, kept by kopf from the watch it runs anyway for the run handlers: the resync and progress loops read it
# instead of LISTing every run of the cluster each pass.
RUNS_INDEX_ID = "runs_by_key"
_runs_index: list[kopf.Index[tuple[str | None, str], dict[str, Any]]] = []


@kopf.index(API_GROUP, VERSION, PLURAL, id=RUNS_INDEX_ID)
def index_run(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str | None, str],
                                                                                   dict[str, Any]]:
    return {(namespace, name): dict(body)}


T = TypeVar("T")


def _snapshot(read: Callable[[], list[T]], attempts: int) -> list[T]:
    """A copy of (part of) a kopf index, read from another thread than kopf's loop: if the loop changed it meanwhile
    (RuntimeError), read again; the last attempt's error propagates."""
    for _ in range(attempts - 1):
        try:
            return read()
        except RuntimeError:
            continue
    return read()


def all_runs() -> list[dict[str, Any]]:
    """Every run as kopf's index holds it (a LIST before the operator started, e.g. in a bare call, or if the index
    kept changing under the read)."""
    if _runs_index:
        try:
            return _snapshot(lambda: [run for store in list(_runs_index[0].values()) for run in list(store)], 3)
        except RuntimeError:
            pass
    return kube.list_runs(os.environ.get(NAMESPACE_ENV))


def index_job_by_run(namespace: str | None, labels: kopf.Labels, body: kopf.Body,
                     **_: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
    run = labels.get(LABEL_RUN)
    return {(namespace, run): dict(body)} if run else {}


def indexed_jobs(backend_name: str, namespace: str, run_name: str) -> list[dict[str, Any]]:
    """The run's jobs as kopf's index holds them; [] if it holds none."""
    index = _job_indices.get(backend_name)
    store = index.get((namespace, run_name)) if index is not None else None
    return _snapshot(lambda: list(store or []), 4)


def observed_jobs(backend: JobBackend, namespace: str, run_name: str, recorded_done: set[str],
                  read_pods: bool = True) -> list[ObservedJob]:
    """The run's jobs, from kopf's index. Only a run the index holds no job for asks the API server (a LIST):
    its first job may not be indexed yet, and only the API can say that the backend's CRD is missing (404).

    The latest attempt of a stage not yet recorded done also gets what its pods say: the final loss (Succeeded),
    the trainer's permanent error (Failed) or why the pods cannot start (Pending/Running). Older attempts and
    finished runs (`read_pods=False`) read no pods: the state machine looks at neither."""
    items = indexed_jobs(backend.name, namespace, run_name) or kube.custom_objects(
        backend.api_version, backend.plural, namespace, f"{LABEL_RUN}={run_name}")
    jobs, queued_uids = [], {}
    for job in items:  # filter again: cheap, and safe against proxies or mocks that ignore selectors
        labels = job.get("metadata", {}).get("labels", {})
        if labels.get(LABEL_RUN) != run_name or labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
            continue
        jobs.append(ObservedJob(job["metadata"]["name"], labels.get(LABEL_STAGE, ""),
                                int(labels.get(LABEL_ATTEMPT, "0")), *backend.phase(job),
                                active_since=active_since(job), nodes=backend.node_count(job),
                                suspended=backend.suspended(job)))
        if KUEUE_LABEL in labels and jobs[-1].phase == "Suspended":
            queued_uids[jobs[-1].name] = job["metadata"].get("uid", "")
    latest: dict[str, int] = {}
    for j in jobs:
        latest[j.stage] = max(latest.get(j.stage, 0), j.attempt)
    out = [_with_pod_reports(backend, namespace, j) if read_pods and j.attempt == latest[j.stage]
           and j.stage not in recorded_done else j for j in jobs]
    # a job Kueue holds: what its Workload says (no quota, evicted, preempted) is why the run is Queued
    return [dataclasses.replace(j, message=workload_state(kube.workloads(namespace, f"{JOB_UID_LABEL}={uid}"))
                                or j.message)
            if read_pods and (uid := queued_uids.get(j.name)) and j.attempt == latest[j.stage] else j for j in out]


def _with_pod_reports(backend: JobBackend, namespace: str, job: ObservedJob) -> ObservedJob:
    if job.phase == "Succeeded":
        pods = kube.pods(namespace, backend.result_pod_selector(job.name))
        losses = [backend.final_loss(p) for p in pods]
        evals = [backend.final_eval_loss(p) for p in pods]
        return dataclasses.replace(job, final_loss=next((x for x in losses if x is not None), None),
                                   final_eval_loss=next((x for x in evals if x is not None), None))
    if job.phase == "Failed":  # every pod: a worker's OOM or data error is as much the stage's as rank 0's
        pods = kube.pods(namespace, backend.pods_selector(job.name))
        errors = [backend.permanent_failure(p) for p in pods]
        return dataclasses.replace(job, permanent=next((e for e in errors if e), ""),
                                   oom=next((o for o in map(backend.out_of_memory, pods) if o), None))
    if job.phase in ("Pending", "Running"):
        pods = kube.pods(namespace, backend.pods_selector(job.name))
        return dataclasses.replace(job, stuck=why_waiting(namespace, job.name, pods, job.nodes))
    return job


def run_batch_jobs(namespace: str, run_name: str, kind_label: str) -> list[tuple[dict[str, Any], dict[str, str]]]:
    """(job, its labels) of the run's batch Jobs of one kind (preflight, initializer, export, evaluation)."""
    out = []
    for job in kube.batch_jobs(namespace, f"{LABEL_RUN}={run_name},{kind_label}=true"):
        labels = job.get("metadata", {}).get("labels", {})
        if labels.get(LABEL_RUN) == run_name and labels.get(MANAGED_BY[0]) == MANAGED_BY[1]:
            out.append((job, labels))
    return out


def why_waiting(namespace: str, job_name: str, pods: list[dict[str, Any]], nodes: int = 1) -> str:
    """Why a job's pods do not start: their own reason, else, while fewer than its `nodes` exist, its controllers'
    failed creates. Events are read only then: the training operator creates the master and then fails on a worker
    that admission refuses (PodSecurity refuses its injected init container)."""
    return stuck_reason(pods) or (creation_failure(job_name, kube.warning_events(namespace), pods)
                                  if len(pods) < nodes else "")


def before_stages(spec_asks: bool, status: dict[str, Any], key: str) -> bool:
    """Whether a step before the first stage (status[key]: preflight, initializers) may still need its Jobs read:
    the spec asks for it, it has not succeeded and no stage started (saves a LIST per reconcile once it passed)."""
    return spec_asks and status.get("phase") not in TERMINAL and (status.get(key) or {}).get("phase") != "Succeeded" \
        and not any(r.get("attempts") for r in status.get("stages") or [])


def preflight_needed(spec: VitaTrainingRunSpec, status: dict[str, Any]) -> bool:
    return before_stages(spec.preflight.enabled, status, "preflight")


def initializers_needed(spec: VitaTrainingRunSpec, status: dict[str, Any]) -> bool:
    return before_stages(spec.initializers is not None, status, "initializers")


Read = Callable[[dict[str, Any]], Any]


def observed_attempts(namespace: str, run_name: str, kind_label: str, *, report: Read | None = None,
                      permanent: Read | None = None, failure: Read | None = None) -> list[ObservedAttempt]:
    """The run's Jobs of one attempt-numbered step (preflight, initializers, export). The latest attempt's pods are
    read when it waits (why it cannot start) or when it finished and its pods say something: `report` (a finished
    pod's result), `permanent` (an error no retry fixes), `failure` (a failed pod's reason, instead of the Job's)."""
    def first(read: Read | None, pods: list[dict[str, Any]], default: Any) -> Any:
        return next((r for r in map(read, pods) if r not in (None, "")), default) if read else default
    out = [ObservedAttempt(job["metadata"]["name"], int(labels.get(LABEL_ATTEMPT, "0")), *job_phase(job))
           for job, labels in run_batch_jobs(namespace, run_name, kind_label)]
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


def observed_preflight(namespace: str, run_name: str) -> list[ObservedPreflight]:
    """The run's preflight Jobs; the latest finished one also gets its pod's summary or permanent error."""
    return observed_attempts(namespace, run_name, pre.LABEL_PREFLIGHT, report=pre.summary,
                             permanent=pre.permanent_failure)


def observed_initializers(namespace: str, run_name: str) -> list[ObservedInitializer]:
    """The run's initializer Jobs; the latest one also gets its pod's result, error, or why it waits."""
    return observed_attempts(namespace, run_name, ini.LABEL_INITIALIZER, report=ini.result,
                             permanent=ini.permanent_failure)


def evaluations_needed(spec: VitaTrainingRunSpec, status: dict[str, Any]) -> bool:
    """Whether an evaluated stage has succeeded without its evaluation having ended (saves a LIST otherwise)."""
    if status.get("phase") in TERMINAL or spec.evaluation is None:
        return False
    ended = {e.get("stage") for e in status.get("evaluations") or [] if e.get("phase") in ("Succeeded", "Failed")}
    records = {r.get("name"): r for r in status.get("stages") or []}
    return any((records.get(spec.stages[i].name) or {}).get("phase") == "Succeeded" and spec.stages[i].name not in
               ended for i in evaluated_stages(spec))


def observed_evaluations(namespace: str, run_name: str) -> list[ObservedEvaluation]:
    """The run's benchmark Jobs; a finished one also gets its pod's scores or error, a waiting one why."""
    out = []
    for job, labels in run_batch_jobs(namespace, run_name, ev.LABEL_EVALUATION):
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


def export_needed(spec: VitaTrainingRunSpec, status: dict[str, Any]) -> bool:
    """Every stage succeeded and the export has not (saves a LIST otherwise)."""
    stages = status.get("stages") or []
    return spec.export is not None and status.get("phase") not in TERMINAL and \
        (status.get("export") or {}).get("phase") != "Succeeded" and len(stages) == len(spec.stages) and \
        all(r.get("phase") == "Succeeded" for r in stages)


def observed_exports(namespace: str, run_name: str) -> list[ObservedExport]:
    """The run's export Jobs; the latest one that failed or waits also gets why, from its pod."""
    return observed_attempts(namespace, run_name, exp.LABEL_EXPORT, failure=exp.failure)


class _Refused(Exception):
    """The API server refused a create for a reason that retrying the same body cannot fix (admission)."""

    def __init__(self, job: str, kind: str, message: str):
        super().__init__(message)
        self.job, self.kind, self.message = job, kind, message


# Refusals a person must act on: a bad request, a policy or webhook denial (403 also when the operator's own RBAC
# lacks the verb), an invalid object. Anything else (5xx, timeouts) kopf retries.
REFUSED_STATUSES = (400, 403, 422)


def api_message(e: ApiException) -> str:
    """The API server's own message (admission denials name the policy and say why)."""
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except ValueError:
        return str(e.reason)


def _create_owned(run: dict[str, Any], body: dict[str, Any], create: Callable[[dict[str, Any]], None]) -> None:
    """Create a job owned by the run (ownerReferences: deleting the run deletes its jobs). A 409 means an earlier
    pass created it: names are deterministic. Only the owner reference: kopf.adopt would also copy the run's labels,
    so Argo CD's instance label would let it prune running jobs, and a queue-name label would bypass the spec."""
    kopf.append_owner_reference(body, owner=cast(kopf.Body, run))  # kopf reads only its metadata
    try:
        create(body)
    except ApiException as e:
        if e.status in REFUSED_STATUSES:
            raise _Refused(body["metadata"]["name"], body.get("kind", "job"), api_message(e)) from e
        if e.status != 409:
            raise


class _StaleRun(Exception):
    """The run changed since it was read: decide again from a fresh copy."""


def _apply_status_only(run: dict[str, Any], decision: Decision) -> None:
    """Write a decision that creates nothing (invalid spec, blocked run): its status and its events."""
    meta = run["metadata"]
    if decision.status != (run.get("status") or {}):
        kube.patch_status(meta["namespace"], meta["name"], decision.status)
    for etype, reason, message in decision.events:
        kube.emit_event(run, etype, reason, message)
    metrics.record_phase(f"{meta['namespace']}/{meta['name']}", decision.status.get("phase"))


def _blocked(run: dict[str, Any], reason: str, message: str, metric: str) -> None:
    _apply_status_only(run, decide_blocked(run.get("status"), reason, message, _now(),
                                           run["metadata"].get("generation", 1)))
    metrics.RECONCILE_ERRORS.labels(metric).inc()


CRD_MISSING = {"pytorchjob": "the PyTorchJob CRD (kubeflow.org/v1) is not installed; install the Kubeflow training "
                             "operator, or run with trainer.backend: trainjob",
               "trainjob": "the TrainJob CRD (trainer.kubeflow.org/v1alpha1) is not installed; install Kubeflow "
                           "Trainer v2, or run with trainer.backend: pytorchjob"}


def reconcile(run: dict[str, Any], logger: kopf.Logger, attempts: int = 3) -> None:
    """One pass for one run. Safe to call concurrently and repeatedly: a pass decided on a stale copy (a job event
    read the run just before another pass wrote its status) loses the write race and decides again, so nothing
    recorded only in status (the preflight's result) is overwritten."""
    for _ in range(attempts - 1):
        try:
            return _reconcile(run, logger)
        except _StaleRun:
            meta = run["metadata"]
            run = kube.get_run(meta["namespace"], meta["name"])
    _reconcile(run, logger)


def _reconcile(run: dict[str, Any], logger: kopf.Logger) -> None:
    meta = run["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    key = f"{namespace}/{name}"
    with _locks.setdefault(key, threading.Lock()), metrics.RECONCILE_SECONDS.time():
        try:
            spec = VitaTrainingRunSpec.model_validate(run.get("spec") or {})
        except ValidationError as e:  # the CRD schema normally rejects these first
            _apply_status_only(run, decide_invalid(run.get("status"), str(e), _now(), meta.get("generation", 1)))
            return
        backend_name = backend_of(run, DEFAULT_BACKEND)
        if backend_name not in ENABLED and (run.get("status") or {}).get("phase") not in TERMINAL:
            _blocked(run, "BackendNotEnabled", f"trainer.backend {backend_name} is not enabled in this operator "
                     f"(enabled: {', '.join(ENABLED)}); set backends.{backend_name}.enabled in the chart values",
                     "backend_disabled")
            return
        backend = BACKENDS[backend_name]
        try:
            records = (run.get("status") or {}).get("stages") or []
            jobs = observed_jobs(backend, namespace, name,
                                 {r.get("name") for r in records if r.get("phase") == "Succeeded"},
                                 read_pods=(run.get("status") or {}).get("phase") not in TERMINAL)
        except ApiException as e:
            if e.status == 404:
                _blocked(run, f"{backend.kind}CRDMissing", CRD_MISSING[backend_name], "crd_missing")
                return
            raise
        now = datetime.now(timezone.utc)
        progress = (run.get("status") or {}).get("progress")
        jobs = [dataclasses.replace(j, hung=why) if j.phase == "Running" and (why := prog.hang_reason(
            progress, j.name, now, spec.hang_timeout_seconds, j.active_since)) else j for j in jobs]
        preflight = observed_preflight(namespace, name) if preflight_needed(spec, run.get("status") or {}) else []
        evaluations = observed_evaluations(namespace, name) if evaluations_needed(spec, run.get("status") or {}) \
            else []
        exports = observed_exports(namespace, name) if export_needed(spec, run.get("status") or {}) else []
        inits = observed_initializers(namespace, name) if initializers_needed(spec, run.get("status") or {}) else []
        decision = decide(name, meta.get("generation", 1), spec, run.get("status"), jobs, _now(), backend_name,
                          preflight, evaluations, exports, inits)
        creates = (CreateJob, CreatePreflight, CreateEvaluation, CreateExport, CreateInitializer)
        if any(isinstance(a, creates) for a in decision.actions) and \
                (problems := claim_problems(spec, {c: kube.claim(namespace, c) for c in claim_names(spec)})):
            _blocked(run, "VolumeNotReady", "; ".join(problems), "volume")
            return
        # Status first, guarded by the run's resourceVersion: a decision made on a stale copy changes nothing and
        # is made again. A crash between this write and the actions is what a restart already handles (a job that
        # status records but that does not exist is created).
        if decision.status != (run.get("status") or {}):
            try:
                kube.patch_status(namespace, name, decision.status, meta.get("resourceVersion"))
            except ApiException as e:
                if e.status == 409:
                    raise _StaleRun() from e
                raise
        try:
            _apply_actions(run, spec, backend, decision)
        except _Refused as refused:
            # what did happen stays (a stage that succeeded); what did not (a job started, the run Running) goes
            started = [e for e in decision.events if e[1] not in (
                "StageStarted", "PreflightStarted", "ExportStarted", "InitializersStarted", "RunRunning",
                "RunSuspended", "RunExporting", "RunInitializing")]
            decision = decide_refused(decision.status, refused.job, refused.kind, refused.message, _now(),
                                      meta.get("generation", 1))
            decision.events[:0] = started
            kube.patch_status(namespace, name, decision.status)
            metrics.RECONCILE_ERRORS.labels("create_refused").inc()
        metrics.record_scores(namespace, name, decision.status.get("evaluations") or [])
        for etype, reason, message in decision.events:
            kube.emit_event(run, etype, reason, message)
            metrics.STAGE_TRANSITIONS.labels(reason).inc()
            if reason in ("StageRetrying", "StageFailed"):  # each is one job observed Failed
                metrics.JOB_FAILURES.inc()
        metrics.record_phase(key, decision.status.get("phase"))
        logger.info("reconciled %s: phase=%s stage=%s job=%s", key, decision.status.get("phase"),
                    decision.status.get("currentStage"), decision.status.get("currentJob"))


def _apply_actions(run: dict[str, Any], spec: VitaTrainingRunSpec, backend: JobBackend, decision: Decision) -> None:
    """Carry out the decision's actions; a refused create raises _Refused (the actions after it wait)."""
    meta = run["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    for action in decision.actions:
        if isinstance(action, CreateEvaluation):
            _create_evaluation(run, spec, action.index, decision)
        elif isinstance(action, CreateInitializer):
            _create_owned(run, ini.initializer_job(name, namespace, spec, action.attempt),
                          lambda body: kube.create_batch_job(namespace, body))
        elif isinstance(action, CreateExport):
            _create_owned(run, exp.export_job(name, namespace, spec, action.attempt),
                          lambda body: kube.create_batch_job(namespace, body))
        elif isinstance(action, CreatePreflight):
            _create_owned(run, pre.preflight_job(name, namespace, spec, action.attempt),
                          lambda body: kube.create_batch_job(namespace, body))
        elif isinstance(action, CreateJob):
            _create_owned(run, backend.build(name, namespace, with_stage_args(spec, action.index,
                                                                              action.arg_overrides),
                                             action.index, action.attempt, suspend=action.suspend),
                          lambda body: kube.create_custom(backend.api_version, backend.plural, namespace, body))
        elif isinstance(action, DeleteJob):
            kube.delete_custom(backend.api_version, backend.plural, namespace, action.name)
        elif isinstance(action, SetJobSuspend):
            kube.patch_custom(backend.api_version, backend.plural, namespace, action.name,
                              backend.suspend_patch(action.suspend))


def _create_evaluation(run: dict[str, Any], spec: VitaTrainingRunSpec, index: int, decision: Decision) -> None:
    """A refused benchmark Job (a quota, a policy) fails that evaluation, reported on the run; training goes on."""
    meta = run["metadata"]
    try:
        _create_owned(run, ev.evaluation_job(meta["name"], meta["namespace"], spec, index),
                      lambda body: kube.create_batch_job(meta["namespace"], body))
    except _Refused as refused:
        refusal = decide_evaluation_refused(decision.status, spec.stages[index].name, refused.message, _now())
        kube.patch_status(meta["namespace"], meta["name"], refusal.status)
        decision.status = refusal.status
        decision.events += refusal.events
        metrics.RECONCILE_ERRORS.labels("create_refused").inc()


@kopf.on.resume(API_GROUP, VERSION, PLURAL)
@kopf.on.create(API_GROUP, VERSION, PLURAL)
@kopf.on.update(API_GROUP, VERSION, PLURAL, field="spec")
def on_run(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    _reconcile_or_retry_later(dict(body), logger)


def _reconcile_or_retry_later(run: dict[str, Any], logger: kopf.Logger) -> None:
    try:
        reconcile(run, logger)
    except ApiException as e:
        metrics.RECONCILE_ERRORS.labels("api").inc()
        raise kopf.TemporaryError(f"API error {e.status}: {e.reason}", delay=10) from e


def resync_all(logger: logging.Logger = log, stop: threading.Event | None = None) -> int:
    """Safety net for missed job events: one reconcile of every run. Returns how many runs it saw.

    A loop of the operator's own, not a kopf timer: per-object timers make kopf put a finalizer on every run,
    and with the operator down or uninstalled `kubectl delete` of a run (or of the CRD) would then hang."""
    runs = all_runs()
    for run in runs:
        if stop is not None and stop.is_set():
            break
        if run.get("metadata", {}).get("deletionTimestamp"):
            continue
        try:
            reconcile(run, logger)
        except Exception:  # one bad run must not stop the others; the next pass retries it
            metrics.RECONCILE_ERRORS.labels("resync").inc()
            logger.exception("resync of %s/%s failed", run["metadata"].get("namespace"), run["metadata"]["name"])
    return len(runs)


OnePass = Callable[..., int]


def _loop(stop: threading.Event, interval: float, one_pass: OnePass, what: str) -> None:
    """The operator's own periodic loops (resync, progress): one pass every `interval` until stopped."""
    while not stop.wait(interval):
        try:
            one_pass(stop=stop)
        except Exception:  # API down: try again next interval
            log.exception("%s failed", what)


# The running loops, (stop, thread) each: one Event per start, and cleanup waits for them, so a loop never outlives
# its operator.
_loops: list[tuple[threading.Event, threading.Thread]] = []


def _start_loop(what: str, interval: float, one_pass: OnePass) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=_loop, name=f"vita-{what}", daemon=True, args=(stop, interval, one_pass, what))
    thread.start()
    return stop, thread


def progress_all(logger: logging.Logger = log, stop: threading.Event | None = None) -> int:
    """One progress pass over every run (progress_loop.py); a run found hung is reconciled at once."""
    return progress_pass(all_runs(),
                         lambda run: BACKENDS.get((run.get("status") or {}).get("backend") or DEFAULT_BACKEND),
                         lambda run: reconcile(run, logger), logger, stop)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    for stop, thread in _loops:
        stop.set()
        thread.join(timeout=30)


def on_job(body: kopf.Body, logger: kopf.Logger, **_: Any) -> None:
    """A job changed (Kubeflow wrote its status): reconcile the run that owns it."""
    labels = body.get("metadata", {}).get("labels", {})
    run_name, namespace = labels.get(LABEL_RUN), body["metadata"].get("namespace")
    if not run_name:
        return
    try:
        run = kube.get_run(namespace, run_name)
    except ApiException as e:
        if e.status == 404:
            return  # the run is gone; garbage collection removes its jobs
        raise
    if run.get("metadata", {}).get("deletionTimestamp"):
        return
    _reconcile_or_retry_later(run, logger)


# Watch only the enabled backends' jobs: the chart grants RBAC for those alone. And the run's batch Jobs
# (initializers, preflight, evaluation, export): one watch, by the label the operator puts on every Job it makes.
WATCHED_JOBS = [(*kube.group_version(BACKENDS[n].api_version), BACKENDS[n].plural) for n in ENABLED] + \
    [("batch", "v1", "jobs")]
for _name in ENABLED:
    _resource = (*kube.group_version(BACKENDS[_name].api_version), BACKENDS[_name].plural)
    kopf.index(*_resource, id=JOB_INDEX_IDS[_name], labels={MANAGED_BY[0]: MANAGED_BY[1]})(index_job_by_run)
    kopf.on.event(*_resource, id=f"on_{_name}", labels={MANAGED_BY[0]: MANAGED_BY[1]})(on_job)
kopf.on.event("batch", "v1", "jobs", id="on_batch_job", labels={MANAGED_BY[0]: MANAGED_BY[1]})(on_job)


@kopf.on.delete(API_GROUP, VERSION, PLURAL, optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    metrics.record_phase(f"{body['metadata']['namespace']}/{body['metadata']['name']}", None)
    _locks.pop(f"{body['metadata']['namespace']}/{body['metadata']['name']}", None)  # its reconciles are over
    metrics.forget_progress(body["metadata"]["namespace"], body["metadata"]["name"])
    metrics.record_scores(body["metadata"]["namespace"], body["metadata"]["name"], [])
