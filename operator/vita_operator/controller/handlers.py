"""kopf registration: the run and job watches, the indices, startup and cleanup. Each handler hands the run to
reconcile.py (observe, decide, act); nothing here decides.

Run with: kopf run --standalone -m vita_operator.controller.handlers --liveness=http://0.0.0.0:8081/healthz
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from vita_api.naming import LABEL_RUN, MANAGED_BY
from vita_api.spec import API_GROUP

from ..core.state import finished_and_seen
from ..crd import PLURAL, VERSION
from ..jobs.backend import JobBackend, index_metadata
from . import kube, loops, metrics, observe
from .config import BACKENDS, ENABLED, Settings, load
from .reconcile import forget, reconcile

JOB_INDEX_IDS = {name: f"{name}_jobs_by_run" for name in ENABLED}
RUNS_INDEX_ID = "runs_by_key"
# Watch only the enabled backends' jobs: the chart grants RBAC for those alone. And the run's batch Jobs
# (initializers, preflight, evaluation, export): one watch, by the label the operator puts on every Job it makes.
WATCHED_JOBS = [(*kube.group_version(BACKENDS[n].api_version), BACKENDS[n].plural) for n in ENABLED] + \
    [("batch", "v1", "jobs")]


@kopf.on.login()
def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
    url = Settings.from_env().api_url
    if url:
        return kopf.ConnectionInfo(server=url, insecure=True, scheme="Bearer", token="test")
    return kopf.login_via_client(**kwargs)


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **kwargs: Any) -> None:
    config = load()
    settings.execution.max_workers = config.workers
    kube.connect(config.api_url, config.workers)
    # The indices, for the reconciles that run outside kopf's handlers (the resync and progress loops) too.
    observe.job_indices.update({name: kwargs[index_id] for name, index_id in JOB_INDEX_IDS.items()})
    observe.runs_index[:] = [kwargs[RUNS_INDEX_ID]]
    # Server-side label selectors on the job watches: without them the API server streams every batch Job and
    # PyTorchJob of the cluster to the operator, which kopf's label filters then drop.
    for group, version, plural in WATCHED_JOBS:
        settings.watching.label_selectors[group, version, plural] = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"
    # Only kopf's warnings and errors become Kubernetes Events (the operator writes its own): at INFO, every handler
    # call ("Handler 'on_pytorchjob' succeeded") was an Event, 10,000 of them for the jobs listed at startup.
    settings.posting.level = logging.WARNING
    # No handler needs a finalizer any more; naming the one older versions added lets kopf remove it from runs.
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    loops.start_loop("resync", config.resync_seconds, loops.resync_all)
    loops.start_loop("progress", config.progress_tick_seconds, loops.progress_all)
    if config.metrics_port:
        from prometheus_client import start_http_server
        start_http_server(config.metrics_port, registry=metrics.REGISTRY)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    loops.stop_loops()


@kopf.index(API_GROUP, VERSION, PLURAL, id=RUNS_INDEX_ID)
def index_run(namespace: str | None, name: str, body: kopf.Body, **_: Any) -> dict[tuple[str | None, str],
                                                                                   dict[str, Any]]:
    """A run as the loops read it: its spec and status, its metadata without managedFields or annotations."""
    return {(namespace, name): {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"),
                                "metadata": index_metadata(dict(body)), "spec": dict(body.get("spec") or {}),
                                "status": dict(body.get("status") or {})}}


def job_indexer(backend: JobBackend) -> Callable[..., dict[tuple[str | None, str], dict[str, Any]]]:
    """The index of a backend's jobs by (namespace, run): only the fields the operator reads (10,000 jobs of
    finished runs stay in memory)."""
    def index_job_by_run(namespace: str | None, labels: kopf.Labels, body: kopf.Body,
                         **_: Any) -> dict[tuple[str | None, str], dict[str, Any]]:
        run = labels.get(LABEL_RUN)
        return {(namespace, run): backend.index_fields(dict(body))} if run else {}
    return index_job_by_run


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


def on_job(body: kopf.Body, event: kopf.RawEvent, logger: kopf.Logger, **_: Any) -> None:
    """A job changed (Kubeflow wrote its status): reconcile the run that owns it. Not for the initial listing of
    every job (event type None): the runs are resumed on their own at startup, and 10,000 jobs of finished runs
    would be 10,000 reads before the first real event. Nor for a finished run's jobs (the index says it is)."""
    labels = body.get("metadata", {}).get("labels", {})
    run_name, namespace = labels.get(LABEL_RUN), body["metadata"].get("namespace")
    if not run_name or event.get("type") is None:
        return
    known = observe.indexed_run(namespace, run_name)
    if known and finished_and_seen(known.get("status") or {}, known["metadata"].get("generation", 1)):
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


for _name in ENABLED:
    _resource = (*kube.group_version(BACKENDS[_name].api_version), BACKENDS[_name].plural)
    kopf.index(*_resource, id=JOB_INDEX_IDS[_name], labels={MANAGED_BY[0]: MANAGED_BY[1]})(job_indexer(BACKENDS[_name]))
    kopf.on.event(*_resource, id=f"on_{_name}", labels={MANAGED_BY[0]: MANAGED_BY[1]})(on_job)
kopf.on.event("batch", "v1", "jobs", id="on_batch_job", labels={MANAGED_BY[0]: MANAGED_BY[1]})(on_job)


@kopf.on.delete(API_GROUP, VERSION, PLURAL, optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    metrics.record_phase(f"{namespace}/{name}", None)
    forget(namespace, name)
    metrics.forget_progress(namespace, name)
    metrics.record_scores(namespace, name, [])
