"""kopf handlers: read the cluster, call the pure `decide`, apply its answer idempotently.

Run with: kopf run --standalone -m vita_operator.handlers --liveness=http://0.0.0.0:8081/healthz
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import threading
from datetime import datetime, timezone

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException
from pydantic import ValidationError

from vita_api.spec import API_GROUP, JOB_BACKENDS, VitaTrainingRunSpec
from vita_api.plan import stage_resources, with_stage_args

from . import metrics
from .backends import backend_of, job_backends
from .builder import LABEL_ATTEMPT, LABEL_RUN, LABEL_STAGE, MANAGED_BY, JobBackend, stuck_reason
from .crd import PLURAL, VERSION
from . import preflight as pre
from . import progress as prog
from .state import (TERMINAL, CreateJob, CreatePreflight, Decision, DeleteJob, ObservedJob, ObservedPreflight,
                    SetJobSuspend, decide, decide_blocked, decide_invalid)
from .trainjob import DEFAULT_RUNTIME

log = logging.getLogger(__name__)
API_URL_ENV = "VITA_OPERATOR_API_URL"   # tests point the operator at an emulated API server
NAMESPACE_ENV = "VITA_OPERATOR_NAMESPACE"  # watch one namespace (as __main__ does); unset: all namespaces
RESYNC_ENV = "VITA_OPERATOR_RESYNC_SECONDS"
# How often the progress loop looks for runs due a read (each run is read every spec.progressIntervalSeconds), and
# how long one read of a trainer's /metrics may take: a slow endpoint must not hold up the others.
PROGRESS_TICK_ENV, SCRAPE_TIMEOUT_ENV = "VITA_OPERATOR_PROGRESS_TICK_SECONDS", "VITA_OPERATOR_SCRAPE_TIMEOUT_SECONDS"
# The chart sets these from its values: which backends its RBAC allows, the default one, the TrainJob runtime.
BACKENDS_ENV, DEFAULT_BACKEND_ENV = "VITA_OPERATOR_BACKENDS", "VITA_OPERATOR_DEFAULT_BACKEND"
RUNTIME_ENV = "VITA_OPERATOR_TRAINJOB_RUNTIME"
_locks: dict[str, threading.Lock] = {}
_client: client.ApiClient | None = None   # one connection pool for all handler threads, built at startup


def configured_backends(env: dict) -> tuple[list[str], str]:
    """(enabled backends, default backend) from the operator's environment; a bad setting stops the operator."""
    enabled = [b.strip() for b in env.get(BACKENDS_ENV, "pytorchjob").split(",") if b.strip()]
    default = env.get(DEFAULT_BACKEND_ENV) or (enabled[0] if enabled else "")
    unknown = [b for b in [*enabled, default] if b not in JOB_BACKENDS]
    if unknown or not enabled:
        raise SystemExit(f"{BACKENDS_ENV}={env.get(BACKENDS_ENV)!r}, {DEFAULT_BACKEND_ENV}={default!r}: name one or "
                         f"more of {', '.join(JOB_BACKENDS)} (unknown: {unknown})")
    if default not in enabled:
        raise SystemExit(f"{DEFAULT_BACKEND_ENV}={default!r} is not among the enabled backends {enabled} "
                         f"({BACKENDS_ENV}); enable it in the chart values too")
    return enabled, default


BACKENDS = job_backends(os.environ.get(RUNTIME_ENV) or DEFAULT_RUNTIME)
ENABLED, DEFAULT_BACKEND = configured_backends(dict(os.environ))


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _api_client() -> client.ApiClient:
    if _client is None:
        raise RuntimeError("the Kubernetes client is built by the startup handler")
    return _client


def _api() -> client.CustomObjectsApi:
    return client.CustomObjectsApi(_api_client())


def _core() -> client.CoreV1Api:
    return client.CoreV1Api(_api_client())


def _batch() -> client.BatchV1Api:
    return client.BatchV1Api(_api_client())


@kopf.on.login()
def login(**kwargs):
    url = os.environ.get(API_URL_ENV)
    if url:
        return kopf.ConnectionInfo(server=url, insecure=True, scheme="Bearer", token="test")
    return kopf.login_via_client(**kwargs)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_):
    global _client
    url = os.environ.get(API_URL_ENV)
    if url:
        client.Configuration.set_default(client.Configuration(host=url))
    else:
        try:
            config.load_incluster_config()
        except config.ConfigException:
            config.load_kube_config()
    cfg = client.Configuration.get_default_copy()
    # Handlers run in kopf's thread pool; size the pool so threads don't queue for connections.
    cfg.connection_pool_maxsize = max(cfg.connection_pool_maxsize, settings.execution.max_workers or 32)
    _client = client.ApiClient(cfg)
    settings.posting.level = 20  # INFO and up become Kubernetes Events
    # No handler needs a finalizer any more; naming the one older versions added lets kopf remove it from runs.
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    _loops[:] = [_start_loop("resync", float(os.environ.get(RESYNC_ENV, "60")), resync_all),
                 _start_loop("progress", float(os.environ.get(PROGRESS_TICK_ENV, "10")), progress_pass)]
    port = int(os.environ.get("VITA_OPERATOR_METRICS_PORT", "9090"))
    if port:
        from prometheus_client import start_http_server
        start_http_server(port, registry=metrics.REGISTRY)


def _group_version(backend: JobBackend) -> tuple[str, str]:
    group, version = backend.api_version.split("/")
    return group, version


def observed_jobs(backend: JobBackend, namespace: str, run_name: str, recorded_done: set[str],
                  read_pods: bool = True) -> list[ObservedJob]:
    """The run's jobs. The latest attempt of a stage not yet recorded done also gets what its pods say: the final
    loss (Succeeded), the trainer's permanent error (Failed) or why the pods cannot start (Pending/Running). Older
    attempts and finished runs (`read_pods=False`) read no pods: the state machine looks at neither."""
    items = _api().list_namespaced_custom_object(*_group_version(backend), namespace, backend.plural,
                                                 label_selector=f"{LABEL_RUN}={run_name}")["items"]
    jobs = []
    for job in items:  # filter again: cheap, and safe against proxies or mocks that ignore selectors
        labels = job.get("metadata", {}).get("labels", {})
        if labels.get(LABEL_RUN) != run_name or labels.get(MANAGED_BY[0]) != MANAGED_BY[1]:
            continue
        jobs.append(ObservedJob(job["metadata"]["name"], labels.get(LABEL_STAGE, ""),
                                int(labels.get(LABEL_ATTEMPT, "0")), *backend.phase(job)))
    latest: dict[str, int] = {}
    for j in jobs:
        latest[j.stage] = max(latest.get(j.stage, 0), j.attempt)
    return [_with_pod_reports(backend, namespace, j) if read_pods and j.attempt == latest[j.stage]
            and j.stage not in recorded_done else j for j in jobs]


def _with_pod_reports(backend: JobBackend, namespace: str, job: ObservedJob) -> ObservedJob:
    if job.phase == "Succeeded":
        losses = [backend.final_loss(p) for p in _pods(namespace, backend.result_pod_selector(job.name))]
        return dataclasses.replace(job, final_loss=next((x for x in losses if x is not None), None))
    if job.phase == "Failed":
        pods = _pods(namespace, backend.result_pod_selector(job.name))
        errors = [backend.permanent_failure(p) for p in pods]
        return dataclasses.replace(job, permanent=next((e for e in errors if e), ""),
                                   oom=next((o for o in map(backend.out_of_memory, pods) if o), None))
    if job.phase in ("Pending", "Running"):
        return dataclasses.replace(job, stuck=stuck_reason(_pods(namespace, backend.pods_selector(job.name))))
    return job


def preflight_needed(spec: VitaTrainingRunSpec, status: dict) -> bool:
    """Whether the state machine may look at preflight Jobs (saves a LIST per reconcile once it passed)."""
    return spec.preflight.enabled and status.get("phase") not in TERMINAL and \
        (status.get("preflight") or {}).get("phase") != "Succeeded" and \
        not any(r.get("attempts") for r in status.get("stages") or [])


def observed_preflight(namespace: str, run_name: str) -> list[ObservedPreflight]:
    """The run's preflight Jobs; the latest finished one also gets its pod's summary or permanent error."""
    raw = _batch().list_namespaced_job(namespace, label_selector=f"{LABEL_RUN}={run_name},{pre.LABEL_PREFLIGHT}=true",
                                       _preload_content=False)
    out = []
    for job in json.loads(raw.data).get("items") or []:
        labels = job.get("metadata", {}).get("labels", {})
        if labels.get(LABEL_RUN) == run_name and labels.get(MANAGED_BY[0]) == MANAGED_BY[1]:
            out.append(ObservedPreflight(job["metadata"]["name"], int(labels.get(LABEL_ATTEMPT, "0")),
                                         *pre.job_phase(job)))
    latest = max((o.attempt for o in out), default=0)
    for i, o in enumerate(out):
        if o.attempt == latest and o.phase in ("Succeeded", "Failed"):
            pods = _pods(namespace, pre.pod_selector(o.name))
            out[i] = dataclasses.replace(
                o, summary=next((s for s in map(pre.summary, pods) if s is not None), None),
                permanent=next((e for e in map(pre.permanent_failure, pods) if e), ""))
    return out


def _pods(namespace: str, selector: str) -> list[dict]:
    """Best effort: a failed read is logged and gives no pods; it never blocks the run."""
    try:
        # Raw JSON: only a few status fields are needed, not the client's full V1Pod models.
        raw = _core().list_namespaced_pod(namespace, label_selector=selector, _preload_content=False)
    except ApiException as e:
        if e.status not in (403, 404):  # 403: RBAC without pods; 404: no such resource
            log.warning("pods %s in %s not read: API error %s", selector, namespace, e.status)
        return []
    return json.loads(raw.data).get("items") or []


def emit_event(run: dict, etype: str, reason: str, message: str) -> None:
    """A core/v1 Event on the run (`kubectl describe` shows it). Written directly, not with kopf.info: that only
    works inside kopf's per-object tasks, and the resync loop reconciles from its own thread. Best effort."""
    meta = run["metadata"]
    now = datetime.now(timezone.utc)
    body = {"metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": run.get("apiVersion", f"{API_GROUP}/{VERSION}"),
                               "kind": run.get("kind", "VitaTrainingRun"), "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta.get("uid")},
            "type": etype, "reason": reason, "message": message[:1024], "count": 1,
            "firstTimestamp": now, "lastTimestamp": now, "source": {"component": "vita-operator"},
            "reportingComponent": "vita-operator", "reportingInstance": os.environ.get("HOSTNAME", "vita-operator")}
    try:
        _core().create_namespaced_event(meta["namespace"], body)
    except ApiException as e:
        log.warning("event %s on %s/%s not written: API error %s", reason, meta["namespace"], meta["name"], e.status)


def _patch_status(namespace: str, name: str, status: dict, resource_version: str | None = None) -> None:
    """With `resource_version`, the API server refuses (409) a status computed from an older copy of the run."""
    body: dict = {"status": status}
    if resource_version:
        body["metadata"] = {"resourceVersion": resource_version}
    _api().patch_namespaced_custom_object_status(API_GROUP, VERSION, namespace, PLURAL, name, body)


def _create_owned(run: dict, body: dict, create) -> None:
    """Create a job owned by the run (ownerReferences: deleting the run deletes its jobs). A 409 means an earlier
    pass created it: names are deterministic."""
    kopf.adopt(body, owner=run)
    try:
        create(body)
    except ApiException as e:
        if e.status != 409:
            raise


class _StaleRun(Exception):
    """The run changed since it was read: decide again from a fresh copy."""


def _apply_status_only(run: dict, decision: Decision) -> None:
    """Write a decision that creates nothing (invalid spec, blocked run): its status and its events."""
    meta = run["metadata"]
    if decision.status != (run.get("status") or {}):
        _patch_status(meta["namespace"], meta["name"], decision.status)
    for etype, reason, message in decision.events:
        emit_event(run, etype, reason, message)
    metrics.record_phase(f"{meta['namespace']}/{meta['name']}", decision.status.get("phase"))


def _blocked(run: dict, reason: str, message: str, metric: str) -> None:
    _apply_status_only(run, decide_blocked(run.get("status"), reason, message, _now(),
                                           run["metadata"].get("generation", 1)))
    metrics.RECONCILE_ERRORS.labels(metric).inc()


CRD_MISSING = {"pytorchjob": "the PyTorchJob CRD (kubeflow.org/v1) is not installed; install the Kubeflow training "
                             "operator, or run with trainer.backend: trainjob",
               "trainjob": "the TrainJob CRD (trainer.kubeflow.org/v1alpha1) is not installed; install Kubeflow "
                           "Trainer v2, or run with trainer.backend: pytorchjob"}


def reconcile(run: dict, logger, attempts: int = 3) -> None:
    """One pass for one run. Safe to call concurrently and repeatedly: a pass decided on a stale copy (a job event
    read the run just before another pass wrote its status) loses the write race and decides again, so nothing
    recorded only in status (the preflight's result) is overwritten."""
    for _ in range(attempts - 1):
        try:
            return _reconcile(run, logger)
        except _StaleRun:
            meta = run["metadata"]
            run = _api().get_namespaced_custom_object(API_GROUP, VERSION, meta["namespace"], PLURAL, meta["name"])
    _reconcile(run, logger)


def _reconcile(run: dict, logger) -> None:
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
        group, version = _group_version(backend)
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
            progress, j.name, now, spec.hang_timeout_seconds)) else j for j in jobs]
        preflight = observed_preflight(namespace, name) if preflight_needed(spec, run.get("status") or {}) else []
        decision = decide(name, meta.get("generation", 1), spec, run.get("status"), jobs, _now(), backend_name,
                          preflight)
        # Status first, guarded by the run's resourceVersion: a decision made on a stale copy changes nothing and
        # is made again. A crash between this write and the actions is what a restart already handles (a job that
        # status records but that does not exist is created).
        if decision.status != (run.get("status") or {}):
            try:
                _patch_status(namespace, name, decision.status, meta.get("resourceVersion"))
            except ApiException as e:
                if e.status == 409:
                    raise _StaleRun() from e
                raise
        for action in decision.actions:
            if isinstance(action, CreatePreflight):
                _create_owned(run, pre.preflight_job(name, namespace, spec, action.attempt),
                              lambda body: _batch().create_namespaced_job(namespace, body))
            elif isinstance(action, CreateJob):
                _create_owned(run, backend.build(name, namespace, with_stage_args(spec, action.index,
                                                                                  action.arg_overrides),
                                                 action.index, action.attempt, suspend=action.suspend),
                              lambda body: _api().create_namespaced_custom_object(group, version, namespace,
                                                                                  backend.plural, body))
            elif isinstance(action, DeleteJob):
                try:
                    _api().delete_namespaced_custom_object(group, version, namespace, backend.plural, action.name,
                                                           propagation_policy="Background")
                except ApiException as e:
                    if e.status != 404:
                        raise
            elif isinstance(action, SetJobSuspend):
                _api().patch_namespaced_custom_object(group, version, namespace, backend.plural, action.name,
                                                      backend.suspend_patch(action.suspend))
        for etype, reason, message in decision.events:
            emit_event(run, etype, reason, message)
            metrics.STAGE_TRANSITIONS.labels(reason).inc()
            if reason in ("StageRetrying", "StageFailed"):  # each is one job observed Failed
                metrics.JOB_FAILURES.inc()
        metrics.record_phase(key, decision.status.get("phase"))
        logger.info("reconciled %s: phase=%s stage=%s job=%s", key, decision.status.get("phase"),
                    decision.status.get("currentStage"), decision.status.get("currentJob"))


@kopf.on.resume(API_GROUP, VERSION, PLURAL)
@kopf.on.create(API_GROUP, VERSION, PLURAL)
@kopf.on.update(API_GROUP, VERSION, PLURAL, field="spec")
def on_run(body, logger, **_):
    try:
        reconcile(dict(body), logger)
    except ApiException as e:
        metrics.RECONCILE_ERRORS.labels("api").inc()
        raise kopf.TemporaryError(f"API error {e.status}: {e.reason}", delay=10) from e


def _list_runs() -> list[dict]:
    """Every run the operator watches: its namespace's (NAMESPACE_ENV), else the cluster's."""
    namespace = os.environ.get(NAMESPACE_ENV)
    return (_api().list_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL) if namespace
            else _api().list_cluster_custom_object(API_GROUP, VERSION, PLURAL))["items"]


def resync_all(logger=log, stop: threading.Event | None = None) -> int:
    """Safety net for missed job events: one reconcile of every run. Returns how many runs it saw.

    A loop of the operator's own, not a kopf timer: per-object timers make kopf put a finalizer on every run,
    and with the operator down or uninstalled `kubectl delete` of a run (or of the CRD) would then hang."""
    runs = _list_runs()
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


def _loop(stop: threading.Event, interval: float, one_pass, what: str) -> None:
    """The operator's own periodic loops (resync, progress): one pass every `interval` until stopped."""
    while not stop.wait(interval):
        try:
            one_pass(stop=stop)
        except Exception:  # API down: try again next interval
            log.exception("%s failed", what)


def metrics_url(pod: dict, port: int) -> str | None:
    """Where rank 0's trainer serves /metrics: its pod's IP (tests give their fake pods 127.0.0.1)."""
    ip = (pod.get("status") or {}).get("podIP")
    return f"http://{ip}:{port}/metrics" if ip else None


def scrape(url: str) -> str:
    import urllib.request
    with urllib.request.urlopen(url, timeout=float(os.environ.get(SCRAPE_TIMEOUT_ENV, "2"))) as r:
        return r.read().decode()


def read_progress(run: dict, spec: VitaTrainingRunSpec, now: datetime) -> dict:
    """The run's new status.progress: its current job's rank-0 endpoint read, or the old one marked stale."""
    st, meta = run.get("status") or {}, run["metadata"]
    job, stage_name = st["currentJob"], st.get("currentStage", "")
    backend = BACKENDS.get(st.get("backend") or DEFAULT_BACKEND)
    index = next((i for i, s in enumerate(spec.stages) if s.name == stage_name), None)
    if backend is None or index is None:
        return prog.stale_progress(st.get("progress"), job, now, "unknown stage or backend")
    pods = _pods(meta["namespace"], backend.result_pod_selector(job))
    url = next((u for u in (metrics_url(p, spec.trainer.metrics_port) for p in pods) if u), None)
    if url is None:
        return prog.stale_progress(st.get("progress"), job, now, "rank 0's pod has no IP yet")
    try:
        gauges = prog.read_exposition(scrape(url), stage_name)
    except (OSError, ValueError) as e:  # refused, timed out, not Prometheus text
        return prog.stale_progress(st.get("progress"), job, now, f"{url}: {e}")
    if not gauges:
        return prog.stale_progress(st.get("progress"), job, now, f"{url}: no metrics for stage {stage_name} yet")
    res = stage_resources(spec, index)
    record = next((r for r in st.get("stages", []) if r.get("name") == stage_name), {})
    return prog.next_progress(st.get("progress"), gauges, stage=stage_name, job=job, now=now,
                              stage_start=prog.parse_time(record.get("startTime")),
                              gpus=res.nodes * res.gpus_per_node)


def progress_pass(logger=log, stop: threading.Event | None = None) -> int:
    """Read every running run that is due; a run found hung is reconciled at once. Returns how many it read."""
    runs = _list_runs()
    read = 0
    for run in runs:
        if stop is not None and stop.is_set():
            break
        st, meta = run.get("status") or {}, run["metadata"]
        if st.get("phase") != "Running" or not st.get("currentJob") or meta.get("deletionTimestamp"):
            continue
        try:
            spec = VitaTrainingRunSpec.model_validate(run.get("spec") or {})
            now = datetime.now(timezone.utc)
            last = st.get("progress") or {}
            updated = prog.parse_time(last.get("updateTime"))
            if (last.get("job") == st["currentJob"] and updated is not None
                    and (now - updated).total_seconds() < spec.progress_interval_seconds):
                continue
            new = read_progress(run, spec, now)
            _patch_status(meta["namespace"], meta["name"], {"progress": prog.as_merge_patch(st.get("progress"), new)})
            metrics.PROGRESS_STALE.labels(meta["namespace"], meta["name"]).set(1 if new.get("stale") else 0)
            read += 1
            if prog.hang_reason(new, st["currentJob"], now, spec.hang_timeout_seconds):
                reconcile(_api().get_namespaced_custom_object(API_GROUP, VERSION, meta["namespace"], PLURAL,
                                                              meta["name"]), logger)
        except Exception:  # one run's endpoint or spec must not stop the others
            metrics.RECONCILE_ERRORS.labels("progress").inc()
            logger.exception("progress of %s/%s failed", meta.get("namespace"), meta.get("name"))
    return read


# The running loops, (stop, thread) each: one Event per start, and cleanup waits for them, so a loop never outlives
# its operator.
_loops: list[tuple[threading.Event, threading.Thread]] = []


def _start_loop(what: str, interval: float, one_pass) -> tuple[threading.Event, threading.Thread]:
    stop = threading.Event()
    thread = threading.Thread(target=_loop, name=f"vita-{what}", daemon=True, args=(stop, interval, one_pass, what))
    thread.start()
    return stop, thread


@kopf.on.cleanup()
def cleanup(**_):
    for stop, thread in _loops:
        stop.set()
        thread.join(timeout=30)


def on_job(body, logger, **_):
    """A job changed (Kubeflow wrote its status): reconcile the run that owns it."""
    labels = body.get("metadata", {}).get("labels", {})
    run_name, namespace = labels.get(LABEL_RUN), body["metadata"].get("namespace")
    if not run_name:
        return
    try:
        run = _api().get_namespaced_custom_object(API_GROUP, VERSION, namespace, PLURAL, run_name)
    except ApiException as e:
        if e.status == 404:
            return  # the run is gone; garbage collection removes its jobs
        raise
    if run.get("metadata", {}).get("deletionTimestamp"):
        return
    on_run(body=run, logger=logger)


# Watch only the enabled backends' jobs: the chart grants RBAC for those alone. And the preflight Jobs.
for _name in ENABLED:
    kopf.on.event(*_group_version(BACKENDS[_name]), BACKENDS[_name].plural, id=f"on_{_name}",
                  labels={MANAGED_BY[0]: MANAGED_BY[1]})(on_job)
kopf.on.event("batch", "v1", "jobs", id="on_preflight",
              labels={MANAGED_BY[0]: MANAGED_BY[1], pre.LABEL_PREFLIGHT: "true"})(on_job)


@kopf.on.delete(API_GROUP, VERSION, PLURAL, optional=True)
def on_delete(body, **_):
    metrics.record_phase(f"{body['metadata']['namespace']}/{body['metadata']['name']}", None)
    _locks.pop(f"{body['metadata']['namespace']}/{body['metadata']['name']}", None)  # its reconciles are over
    try:
        metrics.PROGRESS_STALE.remove(body["metadata"]["namespace"], body["metadata"]["name"])
    except KeyError:  # never read
        pass
