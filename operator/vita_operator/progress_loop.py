"""The operator's progress loop: read each running run's rank-0 /metrics into status.progress, and hand a run
that stopped stepping to the reconciler. The arithmetic is pure, in progress.py; this is the I/O around it."""

from __future__ import annotations

import logging
import os
import threading
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from vita_api.plan import stage_resources
from vita_api.spec import VitaTrainingRunSpec

from . import kube, metrics
from . import progress as prog
from .builder import JobBackend

# How long one read of a trainer's /metrics may take: a slow endpoint must not hold up the others.
SCRAPE_TIMEOUT_ENV = "VITA_OPERATOR_SCRAPE_TIMEOUT_SECONDS"


def metrics_url(pod: dict[str, Any], port: int) -> str | None:
    """Where rank 0's trainer serves /metrics: its pod's IP (tests give their fake pods 127.0.0.1)."""
    ip = (pod.get("status") or {}).get("podIP")
    return f"http://{ip}:{port}/metrics" if ip else None


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=float(os.environ.get(SCRAPE_TIMEOUT_ENV, "2"))) as r:
        return str(r.read().decode())


def read_progress(run: dict[str, Any], spec: VitaTrainingRunSpec, backend: JobBackend | None,
                  now: datetime) -> dict[str, Any]:
    """The run's new status.progress: its current job's rank-0 endpoint read, or the old one marked stale."""
    st, meta = run.get("status") or {}, run["metadata"]
    job, stage_name = st["currentJob"], st.get("currentStage", "")
    index = next((i for i, s in enumerate(spec.stages) if s.name == stage_name), None)
    if backend is None or index is None:
        return prog.stale_progress(st.get("progress"), job, now, "unknown stage or backend")
    pods = kube.pods(meta["namespace"], backend.result_pod_selector(job))
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
    record: dict[str, Any] = next((r for r in st.get("stages", []) if r.get("name") == stage_name), {})
    return prog.next_progress(st.get("progress"), gauges, stage=stage_name, job=job, now=now,
                              stage_start=prog.parse_time(record.get("startTime")),
                              gpus=res.nodes * res.gpus_per_node)


def progress_pass(runs: list[dict[str, Any]], backend_for: Callable[[dict[str, Any]], JobBackend | None],
                  on_hung: Callable[[dict[str, Any]], None], logger: logging.Logger,
                  stop: threading.Event | None = None) -> int:
    """Read every running run that is due; a run found hung goes to `on_hung` (a fresh copy) at once. Returns how
    many it read."""
    read = 0
    for run in runs:
        if stop is not None and stop.is_set():
            break
        st, meta = run.get("status") or {}, run["metadata"]
        if st.get("phase") != "Running" or not st.get("currentJob") or meta.get("deletionTimestamp"):
            try:  # a queued or finished run has no endpoint to be stale
                metrics.PROGRESS_STALE.remove(meta.get("namespace"), meta.get("name"))
            except KeyError:
                pass
            continue
        try:
            spec = VitaTrainingRunSpec.model_validate(run.get("spec") or {})
            now = datetime.now(timezone.utc)
            last = st.get("progress") or {}
            updated = prog.parse_time(last.get("updateTime"))
            if (last.get("job") == st["currentJob"] and updated is not None
                    and (now - updated).total_seconds() < spec.progress_interval_seconds):
                continue
            new = read_progress(run, spec, backend_for(run), now)
            kube.patch_status(meta["namespace"], meta["name"], {"progress": prog.as_merge_patch(st.get("progress"),
                                                                                                  new)})
            metrics.PROGRESS_STALE.labels(meta["namespace"], meta["name"]).set(1 if new.get("stale") else 0)
            read += 1
            if prog.hang_reason(new, st["currentJob"], now, spec.hang_timeout_seconds):
                on_hung(kube.get_run(meta["namespace"], meta["name"]))
        except Exception:  # one run's endpoint or spec must not stop the others
            metrics.RECONCILE_ERRORS.labels("progress").inc()
            logger.exception("progress of %s/%s failed", meta.get("namespace"), meta.get("name"))
    return read
