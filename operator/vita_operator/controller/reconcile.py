"""Reconcile one run: observe, decide (the pure core), write the status once, act. Safe to call concurrently and
repeatedly; every pass decides from the run's own status and the cluster."""

from __future__ import annotations

import dataclasses
import logging
import threading
from datetime import datetime, timezone
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException
from pydantic import ValidationError

from vita_api.spec import VitaTrainingRunSpec
from vita_api.status import TERMINAL

from ..core import progress as prog
from ..core.attempts import attempt_restarts
from ..core.decision import CREATES, Decision
from ..core.state import (decide, decide_blocked, decide_invalid, decide_refused, decide_unknown_fields, expired,
                          finished_and_seen)
from ..core.steps import without_started
from ..core.volumes import claim_names, claim_problems
from ..jobs import fabric
from ..jobs.backends import backend_of
from . import kube, metrics
from .act import Refused, apply_actions
from .clock import STARTED, now_rfc3339
from .config import settings
from .observe import RunRef, evaluations_needed, observed_evaluations, observed_jobs, observed_steps

log = logging.getLogger(__name__)
_locks: dict[str, threading.Lock] = {}

CRD_MISSING = {"pytorchjob": "the PyTorchJob CRD (kubeflow.org/v1) is not installed; install the Kubeflow training "
                             "operator, or run with trainer.backend: trainjob",
               "trainjob": "the TrainJob CRD (trainer.kubeflow.org/v1alpha1) is not installed; install Kubeflow "
                           "Trainer v2, or run with trainer.backend: pytorchjob"}


class StaleRun(Exception):
    """The run changed since it was read: decide again from a fresh copy."""


def pruned(value: Any) -> Any:
    """What the API server keeps of a merge patch: null fields removed (at any depth)."""
    if isinstance(value, dict):
        return {k: pruned(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [pruned(v) for v in value]
    return value


def write_status(run: dict[str, Any], status: dict[str, Any], written: dict[str, Any] | None,
                 resource_version: str | None) -> str | None:
    """Write `status` if it differs from `written` (what the run holds), guarded by the run's resourceVersion: a
    status decided on a stale copy changes nothing (StaleRun) and is decided again. Returns the new
    resourceVersion (the old one when nothing was written)."""
    if pruned(status) == pruned(written or {}):
        return resource_version
    meta = run["metadata"]
    try:
        return kube.patch_status(meta["namespace"], meta["name"], status, resource_version)
    except ApiException as e:
        if e.status == 409:
            raise StaleRun() from e
        raise


def forget(namespace: str, name: str) -> None:
    """A deleted run's reconciles are over."""
    _locks.pop(f"{namespace}/{name}", None)


def _apply_status_only(run: dict[str, Any], decision: Decision) -> None:
    """Write a decision that creates nothing (invalid spec, blocked run): its status and its events."""
    meta = run["metadata"]
    write_status(run, decision.status, run.get("status"), meta.get("resourceVersion"))
    for event in decision.events:
        kube.emit_event(run, *event)
    metrics.record_run(meta["namespace"], meta["name"], decision.status)


def _blocked(run: dict[str, Any], reason: str, message: str, metric: str) -> None:
    _apply_status_only(run, decide_blocked(run.get("status"), reason, message, now_rfc3339(),
                                           run["metadata"].get("generation", 1)))
    metrics.RECONCILE_ERRORS.labels(metric).inc()


def unknown_fields(error: ValidationError) -> list[str]:
    """The fields a spec has that this operator's model does not know, when that is all that is wrong with it."""
    errors = error.errors()
    if not errors or any(e["type"] != "extra_forbidden" for e in errors):
        return []
    return [".".join(["spec", *map(str, e["loc"])]) for e in errors]


def _finished(run: dict[str, Any], spec: VitaTrainingRunSpec, status: dict[str, Any]) -> None:
    """A Succeeded or Failed run whose spec has not changed since: deleted once its TTL has passed (its jobs go with
    it, by their owner references), else left alone."""
    meta = run["metadata"]
    ttl = spec.ttl_seconds_after_finished if spec.ttl_seconds_after_finished is not None else \
        settings().run_ttl_seconds
    if expired(status, ttl, datetime.now(timezone.utc)):
        kube.delete_run(meta["namespace"], meta["name"])
        metrics.record_run(meta["namespace"], meta["name"], None)
        return
    metrics.record_run(meta["namespace"], meta["name"], status)
    metrics.record_scores(meta["namespace"], meta["name"], status.get("evaluations") or [])


def reconcile(run: dict[str, Any], logger: kopf.Logger | Any, attempts: int = 3) -> None:
    """One pass for one run. A pass decided on a stale copy (a job event read the run just before another pass wrote
    its status) loses the write race and decides again, so nothing recorded only in status (the preflight's result)
    is overwritten."""
    for _ in range(attempts - 1):
        try:
            return _reconcile(run, logger)
        except StaleRun:
            meta = run["metadata"]
            run = kube.get_run(meta["namespace"], meta["name"])
    _reconcile(run, logger)


def _reconcile(run: dict[str, Any], logger: kopf.Logger | Any) -> None:
    meta = run["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    key = f"{namespace}/{name}"
    status = run.get("status") or {}
    generation = meta.get("generation", 1)
    with _locks.setdefault(key, threading.Lock()), metrics.RECONCILE_SECONDS.time():
        try:
            spec = VitaTrainingRunSpec.model_validate(run.get("spec") or {})
        except ValidationError as e:  # the CRD schema normally rejects these first
            unknown = unknown_fields(e)
            _apply_status_only(run, decide_unknown_fields(run.get("status"), unknown, now_rfc3339(), generation)
                               if unknown else decide_invalid(run.get("status"), str(e), now_rfc3339(), generation))
            return
        if finished_and_seen(status, generation):
            _finished(run, spec, status)  # nothing to read: a finished run costs no request per resync
            return
        config = settings()
        backend_name = backend_of(run, config.default_backend)
        if backend_name not in config.enabled and status.get("phase") not in TERMINAL:
            _blocked(run, "BackendNotEnabled", f"trainer.backend {backend_name} is not enabled in this operator "
                     f"(enabled: {', '.join(config.enabled)}); set backends.{backend_name}.enabled in the chart "
                     "values", "backend_disabled")
            return
        if (no_profile := fabric.unknown_profile(spec, config.fabric)) and status.get("phase") not in TERMINAL:
            _blocked(run, "FabricProfileUnknown", no_profile, "fabric")
            return
        spec = fabric.with_profile(spec, config.fabric)  # the platform's network settings, as the jobs get them
        backend = config.backends[backend_name]
        try:
            ref = RunRef(namespace, name, meta.get("uid"))
            records = status.get("stages") or []
            jobs = observed_jobs(backend, ref, {r.get("name") for r in records if r.get("phase") == "Succeeded"},
                                 read_pods=status.get("phase") not in TERMINAL,
                                 recorded_nodes={r["jobName"]: r["nodes"] for r in records
                                                 if r.get("jobName") and r.get("nodes")},
                                 recorded_restarts={r["jobName"]: attempt_restarts(r)
                                                    for r in records if r.get("jobName")})
        except ApiException as e:
            if e.status == 404:
                _blocked(run, f"{backend.kind}CRDMissing", CRD_MISSING[backend_name], "crd_missing")
                return
            raise
        now = datetime.now(timezone.utc)
        jobs = [dataclasses.replace(j, hung=why) if j.phase == "Running" and (why := prog.hang_reason(
            status.get("progress"), j.name, now, spec.hang_timeout_seconds, j.active_since, STARTED)) else j
            for j in jobs]
        evaluations = observed_evaluations(ref) if evaluations_needed(spec, status) else []
        steps = observed_steps(spec, status, ref)
        decision = decide(name, generation, spec, run.get("status"), jobs, now_rfc3339(), backend_name,
                          evaluations=evaluations, steps=steps, foreign=ref.foreign,
                          retry_backoff_seconds=settings().retry_backoff_seconds,
                          startup_timeout_seconds=spec.startup_timeout_seconds or settings().startup_timeout_seconds)
        if any(isinstance(a, CREATES) for a in decision.actions) and \
                (problems := claim_problems(spec, {c: kube.claim(namespace, c) for c in claim_names(spec)})):
            _blocked(run, "VolumeNotReady", "; ".join(problems), "volume")
            return
        # Status first, guarded by the run's resourceVersion: a decision made on a stale copy changes nothing and
        # is made again. A crash between this write and the actions is what a restart already handles (a job that
        # status records but that does not exist is created).
        version = write_status(run, decision.status, run.get("status"), meta.get("resourceVersion"))
        written = decision.status
        try:
            apply_actions(run, spec, backend, decision, config.trainer_network_policy)
        except Refused as refused:
            # what did happen stays (a stage that succeeded); what did not (a job started, the run Running) goes
            kept = without_started(decision.events)
            decision = decide_refused(decision.status, refused.job, refused.kind, refused.message, now_rfc3339(),
                                      generation)
            decision.events[:0] = kept
            metrics.RECONCILE_ERRORS.labels("create_refused").inc()
        # a refusal changes the status after the first write: written again, guarded by the version it left
        write_status(run, decision.status, written, version)
        metrics.record_scores(namespace, name, decision.status.get("evaluations") or [])
        for event in decision.events:
            kube.emit_event(run, *event)
            metrics.STAGE_TRANSITIONS.labels(event.reason).inc()
            if event.reason in ("StageRetrying", "StageFailed"):  # each is one job observed Failed
                metrics.JOB_FAILURES.inc()
        metrics.record_run(namespace, name, decision.status)
        logger.info("reconciled %s: phase=%s stage=%s job=%s", key, decision.status.get("phase"),
                    decision.status.get("currentStage"), decision.status.get("currentJob"))
