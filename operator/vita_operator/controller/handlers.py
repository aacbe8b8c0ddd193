"""kopf registration: the run handlers and watch, startup (the job watches, informer.py, and the loops) and
cleanup. Each handler hands the run to reconcile.py (observe, decide, act); nothing here decides.

Run with: kopf run --standalone -m vita_operator.controller.handlers --liveness=http://0.0.0.0:8081/healthz
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from vita_api.naming import MANAGED_BY
from vita_api.spec import API_GROUP

from ..core.state import finished_and_seen
from ..crd import PLURAL, VERSION
from . import cache, kube, loops, metrics
from .cache import Key
from .config import Settings, load
from .informer import Informer, JobWatch
from .reconcile import forget, reconcile
from .run_queue import RunQueue

log = logging.getLogger(__name__)


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
    # From now on the watches below feed the cache, and every reconcile reads it (the resync and progress loops'
    # too).
    cache.start_feeding()
    # the job watches' reconciles run in kopf's thread pool (sized by Settings.workers), as kopf's own handlers do
    queue = RunQueue(settings.execution.executor, reconcile_owner)
    for w in job_watches(config, queue.add):
        informer = Informer(w)
        loops.start_thread(f"watch-{w.plural}", informer.run, informer.close)
    # Only kopf's warnings and errors become Kubernetes Events (the operator writes its own): at INFO, every handler
    # call ("Handler 'on_run' succeeded") was an Event, one per run at every start.
    settings.posting.level = logging.WARNING
    # No handler needs a finalizer any more; naming the one older versions added lets kopf remove it from runs.
    settings.persistence.finalizer = f"{API_GROUP}/finalizer"
    loops.start_loop("resync", config.resync_seconds, loops.resync_all)
    loops.start_loop("progress", config.progress_tick_seconds, loops.progress_all)
    if config.metrics_port:
        metrics.serve(config.metrics_port)
    metrics.LEADER.set(1)


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    loops.stop_loops()
    cache.stop_feeding()


@kopf.on.event(API_GROUP, VERSION, PLURAL, id="cache_run")
async def cache_run(event: kopf.RawEvent, body: kopf.Body, namespace: str | None, name: str, **_: Any) -> None:
    cache.runs.apply(event.get("type"), (namespace or "", name), cache.slim_run(dict(body)))


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


def job_watches(config: Settings, reconcile_later: Callable[[Key], None]) -> list[JobWatch]:
    """The enabled backends' jobs (cached) and the runs' batch Jobs (initializers, preflight, evaluation, export:
    only their events matter), each by the label the operator puts on every job it makes: the API server never
    streams the cluster's other Jobs and PyTorchJobs to the operator."""
    def changed(key: Key) -> None:
        known = cache.run_in_cache(*key)
        if known and finished_and_seen(known.get("status") or {}, known["metadata"].get("generation", 1)):
            return  # a finished run's job (garbage collection deleting it, say): nothing to do
        reconcile_later(key)
    selector = f"{MANAGED_BY[0]}={MANAGED_BY[1]}"
    namespaces: tuple[str | None, ...] = config.namespaces or (None,)  # one watch per namespace, or one for all
    out = [JobWatch(*kube.group_version(b.api_version), b.plural, selector, namespace,
                    cache.job_store(b.name), b.index_fields, changed)
           for b in (config.backends[name] for name in config.enabled) for namespace in namespaces]
    return out + [JobWatch("batch", "v1", "jobs", selector, namespace, None, lambda job: job, changed)
                  for namespace in namespaces]


def reconcile_owner(key: Key) -> None:
    """Reconcile the run a job event named (read fresh: the cache may lag the job's own event)."""
    namespace, run_name = key
    try:
        run = kube.get_run(namespace, run_name)
        if not run.get("metadata", {}).get("deletionTimestamp"):
            reconcile(run, log)
    except ApiException as e:
        if e.status == 404:
            return  # the run is gone; garbage collection removes its jobs
        metrics.RECONCILE_ERRORS.labels("api").inc()
        raise


@kopf.on.delete(API_GROUP, VERSION, PLURAL, optional=True)
def on_delete(body: kopf.Body, **_: Any) -> None:
    namespace, name = body["metadata"]["namespace"], body["metadata"]["name"]
    metrics.record_run(namespace, name, None)
    forget(namespace, name)
    metrics.forget_progress(namespace, name)
    metrics.record_scores(namespace, name, [])
