"""The operator's progress loop: read each running run's rank-0 /metrics into status.progress, and hand a run
that stopped stepping to the reconciler. The arithmetic is pure, in progress.py; this is the I/O around it."""

from __future__ import annotations

import logging
import os
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

from vita_api.plan import stage_resources
from vita_api.spec import VitaTrainingRunSpec

from . import kube, metrics
from .clock import STARTED
from ..core import progress as prog
from ..jobs.backend import JobBackend

# How long one read of a trainer's /metrics may take in all: a slow endpoint must not hold up the others.
SCRAPE_TIMEOUT_ENV = "VITA_OPERATOR_SCRAPE_TIMEOUT_SECONDS"
# A trainer's exposition is a few KiB; anything larger is not one.
SCRAPE_MAX_BYTES = 1 << 20
# Runs read at once in one pass: each read is bounded, and one slow endpoint holds up only its own worker.
SCRAPE_WORKERS = 8


class ScrapeError(Exception):
    """Why an endpoint could not be read, in a fixed vocabulary: status never quotes what an endpoint sent (a run's
    image decides what it serves)."""


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        raise ScrapeError("redirect refused")


# No redirects (a trainer could point the operator at an internal URL) and no proxy from the environment.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects())


def owned_by_job(pod: dict[str, Any], job: str) -> bool:
    """The pod belongs to the job: its controller is the job itself (PyTorchJob) or a child named after it
    (Trainer's JobSet Jobs), not merely a pod that carries the job's labels."""
    owners = (pod.get("metadata") or {}).get("ownerReferences") or []
    return any(o.get("controller") and (o.get("name") == job or str(o.get("name", "")).startswith(job + "-"))
               for o in owners)


def metrics_url(pod: dict[str, Any], port: int) -> str | None:
    """Where rank 0's trainer serves /metrics: its pod's IP on the run's declared port."""
    ip = (pod.get("status") or {}).get("podIP")
    return f"http://{ip}:{port}/metrics" if ip else None


def scrape(url: str, timeout: float | None = None, max_bytes: int = SCRAPE_MAX_BYTES) -> str:
    """The endpoint's text, read within `timeout` seconds in all and `max_bytes`; ScrapeError otherwise."""
    timeout = timeout or float(os.environ.get(SCRAPE_TIMEOUT_ENV, "2"))
    deadline = time.monotonic() + timeout
    chunks, size = [], 0
    try:
        with _OPENER.open(url, timeout=timeout) as r:
            while chunk := r.read1(65536):
                size += len(chunk)
                if size > max_bytes:
                    raise ScrapeError("response too large")
                if time.monotonic() > deadline:
                    raise ScrapeError("timed out")
                chunks.append(chunk)
    except urllib.error.HTTPError as e:
        raise ScrapeError(f"HTTP status {e.code}") from None
    except (TimeoutError, urllib.error.URLError) as e:
        reason = getattr(e, "reason", e)
        if isinstance(reason, ScrapeError):
            raise reason from None
        raise ScrapeError("timed out" if isinstance(reason, TimeoutError) else
                          "connection refused" if isinstance(reason, ConnectionRefusedError) else
                          "unreachable") from None
    except OSError:
        raise ScrapeError("unreachable") from None
    if time.monotonic() > deadline:
        raise ScrapeError("timed out")
    try:
        return b"".join(chunks).decode("utf-8")
    except UnicodeDecodeError:
        raise ScrapeError("not Prometheus text") from None


def read_progress(run: dict[str, Any], spec: VitaTrainingRunSpec, backend: JobBackend | None,
                  now: datetime) -> dict[str, Any]:
    """The run's new status.progress: its current job's rank-0 endpoint read, or the old one marked stale."""
    st, meta = run.get("status") or {}, run["metadata"]
    job, stage_name = st["currentJob"], st.get("currentStage", "")
    index = next((i for i, s in enumerate(spec.stages) if s.name == stage_name), None)
    if backend is None or index is None:
        return prog.stale_progress(st.get("progress"), job, now, "unknown stage or backend")
    pods = [p for p in kube.pods(meta["namespace"], backend.result_pod_selector(job)) if owned_by_job(p, job)]
    url = next((u for u in (metrics_url(p, spec.trainer.metrics_port) for p in pods) if u), None)
    if url is None:
        return prog.stale_progress(st.get("progress"), job, now, "rank 0's pod has no IP yet")
    try:
        gauges = prog.read_exposition(scrape(url), stage_name)
    except ScrapeError as e:
        return prog.stale_progress(st.get("progress"), job, now, f"{url}: {e}")
    except ValueError:
        return prog.stale_progress(st.get("progress"), job, now, f"{url}: not Prometheus text")
    if not gauges:
        return prog.stale_progress(st.get("progress"), job, now, f"{url}: no metrics for stage {stage_name} yet")
    res = stage_resources(spec, index)
    record: dict[str, Any] = next((r for r in st.get("stages", []) if r.get("name") == stage_name), {})
    return prog.next_progress(st.get("progress"), gauges, stage=stage_name, job=job, now=now,
                              stage_start=prog.parse_time(record.get("startTime")),
                              gpus=res.nodes * res.gpus_per_node)


def progress_pass(runs: list[dict[str, Any]], backend_for: Callable[[dict[str, Any]], JobBackend | None],
                  reconcile_now: Callable[[dict[str, Any]], None], logger: logging.Logger,
                  stop: threading.Event | None = None) -> int:
    """Read every running run that is due, SCRAPE_WORKERS at a time (a slow endpoint holds up only its own
    read); a run found hung, or whose endpoint does not answer, goes to `reconcile_now` (a fresh copy) at once:
    the reconcile then says why (its pods cannot start, a partly created job) or acts. Returns how many it read."""
    due = []
    for run in runs:
        st, meta = run.get("status") or {}, run["metadata"]
        downloading = st.get("phase") == "Initializing" and (st.get("initializers") or {}).get("jobName")
        waiting = st.get("phase") == "Queued" and st.get("currentJob") and not meta.get("deletionTimestamp")
        if not waiting:  # its clock goes with it (deleted, admitted or finished runs leave nothing behind)
            _queued_checked.pop(f"{meta.get('namespace')}/{meta.get('name')}", None)
        elif _queued_check_due(run):
            due.append(run)  # reconciled, not read: why it waits changes without a job event (a refused pod)
            continue
        if not downloading and (st.get("phase") != "Running" or not st.get("currentJob")) or \
                meta.get("deletionTimestamp"):
            metrics.forget_progress(meta.get("namespace"), meta.get("name"))
            continue
        due.append(run)
    reading = {(r["metadata"]["namespace"], r["metadata"]["name"], (r.get("status") or {}).get("currentJob"))
               for r in due}
    for key in [k for k in _last_read if k not in reading]:  # its job ended, or its run did
        del _last_read[key]

    def one(run: dict[str, Any]) -> bool:
        if stop is not None and stop.is_set():
            return False
        try:
            if (run.get("status") or {}).get("phase") == "Initializing":
                return _download_progress_one(run)
            if (run.get("status") or {}).get("phase") == "Queued":
                reconcile_now(run)
                return True
            return _progress_one(run, backend_for, reconcile_now)
        except Exception:  # one run's endpoint or spec must not stop the others
            meta = run["metadata"]
            metrics.RECONCILE_ERRORS.labels("progress").inc()
            logger.exception("progress of %s/%s failed", meta.get("namespace"), meta.get("name"))
            return False
    if not due:
        return 0
    with ThreadPoolExecutor(max_workers=min(SCRAPE_WORKERS, len(due)), thread_name_prefix="vita-scrape") as pool:
        return sum(pool.map(one, due))


_queued_checked: dict[str, float] = {}


def _queued_check_due(run: dict[str, Any]) -> bool:
    """A Queued run is reconciled every spec.progressIntervalSeconds (kept in memory: nothing is written)."""
    meta = run["metadata"]
    key = f"{meta.get('namespace')}/{meta.get('name')}"
    interval = float((run.get("spec") or {}).get("progressIntervalSeconds") or 30)
    now = time.monotonic()
    if now - _queued_checked.get(key, -interval) < interval:
        return False
    _queued_checked[key] = now
    return True


def _progress_one(run: dict[str, Any], backend_for: Callable[[dict[str, Any]], JobBackend | None],
                  reconcile_now: Callable[[dict[str, Any]], None]) -> bool:
    """Read one run if it is due; True if it was read."""
    st, meta = run.get("status") or {}, run["metadata"]
    spec = VitaTrainingRunSpec.model_validate(run.get("spec") or {})
    now = datetime.now(timezone.utc)
    last = st.get("progress") or {}
    key = (meta["namespace"], meta["name"], st["currentJob"])
    # read last: by this process (kept in memory), else as status says (after a restart)
    updated = _last_read.get(key) or (prog.parse_time(last.get("updateTime"))
                                      if last.get("job") == st["currentJob"] else None)
    if updated is not None and (now - updated).total_seconds() < spec.progress_interval_seconds:
        return False
    new = read_progress(run, spec, backend_for(run), now)
    _last_read[key] = now
    hung = prog.hang_reason(new, st["currentJob"], now, spec.hang_timeout_seconds, not_before=STARTED)
    if prog.worth_writing(last, new) or hung:  # a hang is written: the reconcile decides from status
        kube.patch_status(meta["namespace"], meta["name"], {"progress": prog.as_merge_patch(last, new)})
    metrics.PROGRESS_STALE.labels(meta["namespace"], meta["name"]).set(1 if new.get("stale") else 0)
    if new.get("stale") or hung:
        reconcile_now(kube.get_run(meta["namespace"], meta["name"]))
    return True


# When each (namespace, run, job) was last read: the schedule, since a reading that changes nothing is not written.
# Only the jobs being read are kept (progress_pass drops the others).
_last_read: dict[tuple[str, str, str], datetime] = {}


def _download_progress_one(run: dict[str, Any]) -> bool:
    """An initializing run: its initializer pod's bytes so far into status.initializers.progress, every
    spec.progressIntervalSeconds; an endpoint that does not answer leaves the last reading."""
    from ..jobs.batch import pod_selector
    st, meta = run.get("status") or {}, run["metadata"]
    spec = VitaTrainingRunSpec.model_validate(run.get("spec") or {})
    init = st.get("initializers") or {}
    now = datetime.now(timezone.utc)
    updated = prog.parse_time((init.get("progress") or {}).get("updateTime"))
    if updated is not None and (now - updated).total_seconds() < spec.progress_interval_seconds:
        return False
    job = init["jobName"]
    pods = [p for p in kube.pods(meta["namespace"], pod_selector(job)) if owned_by_job(p, job)]
    url = next((u for u in (metrics_url(p, spec.trainer.metrics_port) for p in pods) if u), None)
    try:
        new = prog.download_progress(scrape(url), now) if url else None
    except (ScrapeError, ValueError):
        new = None
    if new is None:
        return False
    kube.patch_status(meta["namespace"], meta["name"], {"initializers": {"progress": new}})
    return True
