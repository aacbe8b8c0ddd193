"""The operator's own Prometheus metrics. Names are defined here once."""

import threading
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from vita_api.status import PHASES, Reason

REGISTRY = CollectorRegistry()
RUNS = Gauge("vita_operator_runs", "VitaTrainingRuns by phase", ["phase"], registry=REGISTRY)
STAGE_TRANSITIONS = Counter("vita_operator_stage_transitions", "Stage transitions (started, succeeded, retried)",
                            ["reason"], registry=REGISTRY)
JOB_FAILURES = Counter("vita_operator_job_failures", "Jobs (PyTorchJobs or TrainJobs) observed Failed",
                       registry=REGISTRY)
RECONCILE_ERRORS = Counter("vita_operator_reconcile_errors", "Reconciles that raised", ["reason"], registry=REGISTRY)
RECONCILE_SECONDS = Histogram("vita_operator_reconcile_seconds", "Reconcile latency", registry=REGISTRY,
                              buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10))

LEADER = Gauge("vita_operator_leader", "1 while this replica operates (it holds the Lease, or runs without leader "
               "election); 0 while it waits as a standby", registry=REGISTRY)
RUN_PHASE_SINCE = Gauge("vita_operator_run_phase_transition_timestamp_seconds", "When each run entered its phase "
                        "(status.phaseTransitionTime, Unix time): one series per run, labelled with the phase, its "
                        "reason and the current stage", ["namespace", "run", "phase", "reason", "stage"],
                        registry=REGISTRY)

PROGRESS_STALE = Gauge("vita_operator_progress_stale", "1 while a running run's trainer endpoint does not answer "
                       "(status.progress.stale)", ["namespace", "run"], registry=REGISTRY)

BENCHMARK_SCORE = Gauge("vita_operator_benchmark_score", "A benchmark score after a stage (spec.evaluation): "
                        "lmms-eval's metric value, as in status.evaluations", ["namespace", "run", "stage", "task",
                                                                            "metric"], registry=REGISTRY)

# Why a reconcile raised or stopped. The operator's own faults (or the platform's: a missing job CRD) alert the
# platform team; a tenant's state (a create the API server refused, a claim that does not fit, a backend the run
# names but this operator does not run) is reported on the run and repeats on every resync, so it does not.
OPERATOR_FAULTS = ("api", "resync", "progress", "crd_missing")
TENANT_STATES = ("create_refused", "volume", "backend_disabled", "fabric")

_phases: dict[str, str] = {}
_run_series: dict[tuple[str, str], tuple[str, ...]] = {}
_phase_lock = threading.Lock()
# Every known series exists from the start, at 0: increase() over a counter series that appears at 1 is 0, so the
# first failure after each operator start would not alert.
for _p in PHASES:
    RUNS.labels(_p).set(0)
# The transitions' reasons: the Reason constants, and Run<Phase> (conditions.set_phase), RunFailed among them.
for _r in {v for k, v in vars(Reason).items() if k.isupper() and isinstance(v, str)} | {f"Run{p}" for p in PHASES}:
    STAGE_TRANSITIONS.labels(_r)
for _e in OPERATOR_FAULTS + TENANT_STATES:
    RECONCILE_ERRORS.labels(_e)
_scores: dict[tuple[str, str], set[tuple[str, ...]]] = {}


def serve(port: int) -> None:
    """The /metrics endpoint, once per process: a standby serves it too (its leader gauge 0), so that two replicas
    are two healthy scrape targets and an absent leader is an alert, not a down target."""
    global _server
    with _phase_lock:
        if _server is None:
            _server = start_http_server(port, registry=REGISTRY)


_server: Any = None


def record_run(namespace: str, name: str, status: dict[str, Any] | None) -> None:
    """The run's phase now (None: the run is gone): the phase counts, and the run's own series with the time it
    entered the phase (its labels replaced when the phase, reason or stage change)."""
    key = (namespace, name)
    phase = (status or {}).get("phase")
    _record_phase(f"{namespace}/{name}", phase)
    labels, since = None, _unix((status or {}).get("phaseTransitionTime"))
    if status is not None and phase and since is not None:
        reason = next((c.get("reason") or "" for c in status.get("conditions") or [] if c.get("type") == "Ready"), "")
        labels = (namespace, name, phase, reason, status.get("currentStage") or "")
    with _phase_lock:
        old = _run_series.pop(key, None)
        if old is not None and old != labels:
            RUN_PHASE_SINCE.remove(*old)
        if labels is not None and since is not None:
            RUN_PHASE_SINCE.labels(*labels).set(since)
            _run_series[key] = labels


def _unix(rfc3339: str | None) -> float | None:
    if not rfc3339:
        return None
    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()


def _record_phase(run_key: str, phase: str | None) -> None:
    """The phase counts: only the two phases the run left and entered change."""
    with _phase_lock:  # reconciles run on many threads
        old = _phases.pop(run_key, None) if phase is None else _phases.get(run_key)
        if phase is not None:
            _phases[run_key] = phase
        if old == phase:
            return
        if old is not None:
            RUNS.labels(old).dec()
        if phase is not None:
            RUNS.labels(phase).inc()


def forget_progress(namespace: str, run: str) -> None:
    """Drop a run's stale-progress series (a run deleted, queued or finished has no endpoint to be stale)."""
    try:
        PROGRESS_STALE.remove(namespace, run)
    except KeyError:  # never read
        pass


def record_scores(namespace: str, run: str, evaluations: list[dict[str, Any]]) -> None:
    """The run's scores as they are in its status: series of evaluations no longer there are removed."""
    now = {(e["stage"], task, metric): value for e in evaluations for task, row in (e.get("scores") or {}).items()
           for metric, value in row.items()}
    for gone in _scores.get((namespace, run), set()) - set(now):
        BENCHMARK_SCORE.remove(namespace, run, *gone)
    for key, value in now.items():
        BENCHMARK_SCORE.labels(namespace, run, *key).set(value)
    if now:
        _scores[(namespace, run)] = set(now)
    else:
        _scores.pop((namespace, run), None)
