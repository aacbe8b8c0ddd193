"""The batch steps around the stages, each declared once, and the one attempt logic they share.

A step is a CPU batch/v1 Job from the trainer image, numbered by attempt: created, retried while attempts are left
(unless its pod says the error is permanent), and its finished pod's report read into status[step.key]. While it
runs, the run is in the step's phase; its failure fails the run. Adding a step: its spec field and plan entry, one
jobs/ module (the Job and its pod readers, registered in jobs/steps.py) and one entry in STEPS here; every list
keyed by kind (what the controller observes and creates, what a refusal may block, the events it drops) derives
from STEPS.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from vita_api.naming import job_name
from vita_api.plan import EXPORT, INITIALIZE, PREFLIGHT, cluster_roots, export_args, export_dir
from vita_api.spec import VitaTrainingRunSpec
from vita_api.status import Reason

from .conditions import created, pods_ready, set_phase, still_refused
from .decision import Clock, CreateStepJob, Decision, Event, ObservedAttempt, normal, warning

Spec = VitaTrainingRunSpec
Record = dict[str, Any]


@dataclass(frozen=True)
class BatchStep:
    key: str                # status[key], CreateStepJob.step, jobs/steps.py's registry key
    title: str              # event reasons: <title>Started, <title>Retrying, <title>Succeeded, <title>Failed
    noun: str               # "preflight attempt 2 failed"
    job_kind: str           # the middle of its Jobs' names (<run>-<job_kind>-<attempt>)
    phase: str              # the run's phase while it runs
    retries: int            # attempts after the first one
    before_stages: bool     # runs before the first stage (and never once a stage started); else after the last
    wanted: Callable[[Spec], bool]
    running: Callable[[Spec, Record], str]                 # the run's message while it runs
    started: Callable[[Spec, Record], str]                 # the Started event's message
    # a finished pod's report into the record -> (why the step fails anyway, or "", the Succeeded event's message)
    succeeded: Callable[[Spec, Record, dict[str, Any]], tuple[str, str]]
    failed: Callable[[Spec, int, str, bool], str]           # (attempt, cause, permanent) -> the run's message
    needs_report: bool = True   # a Succeeded Job without its pod's report counts as failed
    retry_note: str = "starts"  # "attempt 3 <retry_note>"
    prepare: Callable[[Spec, Record], None] | None = None  # fields the record always shows
    succeeded_reason: str = ""  # the Succeeded event's reason, if not <title>Succeeded

    def reason(self, what: str) -> str:
        return f"{self.title}{what}"


# --- preflight ---

def preflight_verdict(summary: dict[str, Any], max_bad: float) -> tuple[list[str], int, int]:
    """(why it fails, samples, bad samples): a stage fails with unreadable files, no samples, or more bad samples
    than max_bad allows."""
    why, total, bad = [], 0, 0
    for name, st in (summary.get("preflight") or {}).items():
        n, b, files = st.get("samples", 0), st.get("badSamples", 0), st.get("fileProblems", 0)
        total, bad = total + n, bad + b
        if files:
            why.append(f"stage {name}: {files} chat file(s) cannot be read")
        elif not n:
            why.append(f"stage {name}: no samples")
        elif b > max_bad * n:
            why.append(f"stage {name}: {b} of {n} samples have problems (allowed: {max_bad:.2%})")
    return why, total, bad


def _preflight_succeeded(spec: Spec, rec: Record, report: dict[str, Any]) -> tuple[str, str]:
    why, total, bad = preflight_verdict(report, spec.preflight.max_bad_fraction)
    rec.update(samples=total, badSamples=bad, problemsByReason=report.get("problemsByReason", {}),
               problems=report.get("problems", [])[:20], reportPath=report.get("report", ""))
    if why:
        first = f"; first: {rec['problems'][0]}" if rec["problems"] else ""
        reasons = ", ".join(f"{k} {v}" for k, v in rec["problemsByReason"].items())
        return f"preflight: {'; '.join(why)} ({reasons}){first}; report: {rec['reportPath']}", ""
    rec["message"] = f"{total} samples checked, {bad} with problems"
    return "", (f"{total} samples checked, {bad} with problems (allowed: {spec.preflight.max_bad_fraction:.2%} per "
                f"stage)")


PREFLIGHT_STEP = BatchStep(
    key="preflight", title="Preflight", noun="preflight", job_kind=PREFLIGHT, phase="Preflight", retries=2,
    before_stages=True, wanted=lambda spec: spec.preflight.enabled,
    running=lambda spec, rec: "preflight: checking every stage's data",
    started=lambda spec, rec: f"checking the data of {len(spec.stages)} stage(s): job {rec['jobName']}",
    succeeded=_preflight_succeeded, succeeded_reason=Reason.PREFLIGHT_PASSED,
    failed=lambda spec, attempt, cause, permanent: f"preflight: {cause}" if permanent else
    f"preflight failed after {attempt} attempt(s): {cause}")


# --- initializers ---

def _initializers_succeeded(spec: Spec, rec: Record, report: dict[str, Any]) -> tuple[str, str]:
    rec.update(files=int(report.get("files", 0)), bytes=int(report.get("bytes", 0)),
               transferredBytes=int(report.get("transferred", 0)), message="")
    return "", (f"{rec['files']} files, {rec['bytes']} bytes on the dataset volume ({rec['transferredBytes']} "
                f"transferred)")


INITIALIZERS_STEP = BatchStep(
    key="initializers", title="Initializers", noun="initializer", job_kind=INITIALIZE, phase="Initializing",
    retries=3, before_stages=True, wanted=lambda spec: spec.initializers is not None,
    running=lambda spec, rec: "fetching the run's models and datasets",
    started=lambda spec, rec: f"fetching the run's models and datasets: job {rec['jobName']}",
    succeeded=_initializers_succeeded, retry_note="resumes the downloads",
    failed=lambda spec, attempt, cause, permanent: f"the run's models and datasets could not be fetched after "
    f"{attempt} attempt(s): {cause}")


# --- export ---

def _export_succeeded(spec: Spec, rec: Record, report: dict[str, Any]) -> tuple[str, str]:
    fmt = spec.export.format if spec.export else ""
    rec["message"] = f"{fmt} folder written"
    return "", f"{fmt} folder: {rec['path']}"


def _export_failed(spec: Spec, attempt: int, cause: str, permanent: bool) -> str:
    return (f"every stage succeeded, but the export failed after {attempt} attempt(s): {cause}; the stages' outputs "
            f"are in place (export by hand: vita-model {' '.join(export_args(spec, cluster_roots(spec)))})")


EXPORT_STEP = BatchStep(
    key="export", title="Export", noun="export", job_kind=EXPORT, phase="Exporting", retries=2, before_stages=False,
    wanted=lambda spec: spec.export is not None,
    running=lambda spec, rec: f"all {len(spec.stages)} stages succeeded; exporting to {rec['path']}",
    started=lambda spec, rec: f"exporting stage {spec.stages[-1].name} as "
    f"{spec.export.format if spec.export else ''} to {rec['path']}",
    succeeded=_export_succeeded, failed=_export_failed, needs_report=False,
    prepare=lambda spec, rec: rec.update(path=export_dir(spec, cluster_roots(spec))))


# In the order they run: initializers, preflight, (the stages), export.
STEPS: tuple[BatchStep, ...] = (INITIALIZERS_STEP, PREFLIGHT_STEP, EXPORT_STEP)
STEP_BY_KEY = {s.key: s for s in STEPS}
# Phases in which a pass creates something, so a refused create can block the run (see state.decide_refused).
CREATING_PHASES = ("Pending", "Running", "Suspended", "Blocked", *(s.phase for s in STEPS))
# Events a pass emits for a create that the API server then refused: they did not happen.
STARTED_REASONS = frozenset({"StageStarted", "RunRunning", "RunSuspended"} | {s.reason("Started") for s in STEPS}
                            | {f"Run{s.phase}" for s in STEPS})


def step_pending(step: BatchStep, spec: Spec, status: dict[str, Any]) -> bool:
    """Whether the step may still need its Jobs read (saves a LIST per reconcile once it is over or not wanted):
    wanted, not succeeded, the run not finished, and before the stages (no stage started) or after them (every
    stage succeeded)."""
    if not step.wanted(spec) or status.get("phase") in ("Succeeded", "Failed") or \
            (status.get(step.key) or {}).get("phase") == "Succeeded":
        return False
    stages = status.get("stages") or []
    if step.before_stages:
        return not any(r.get("attempts") for r in stages)
    return len(stages) == len(spec.stages) and all(r.get("phase") == "Succeeded" for r in stages)


def _fail(d: Decision, step: BatchStep, rec: Record, msg: str, clock: Clock) -> bool:
    """The step, and with it the run, is Failed (reason <title>Failed): nothing after it is created."""
    msg = msg[:2000]
    rec.update(phase="Failed", message=msg, completionTime=clock.now)
    d.events.append(warning(step.reason("Failed"), msg))
    set_phase(d, "Failed", step.reason("Failed"), msg, clock)
    return True


def run_step(d: Decision, step: BatchStep, run_name: str, spec: Spec, observed: Sequence[ObservedAttempt],
             clock: Clock) -> bool:
    """One pass of a batch step; True while it holds the run (running, or it failed the run), False once it is
    done. The attempt counter is the larger of the recorded one and the highest attempt among its Jobs, as for
    stages, so a restart between create and status write neither duplicates nor forgets a Job."""
    rec = d.status.setdefault(step.key, {"phase": "Pending", "attempts": 0})
    if step.prepare:
        step.prepare(spec, rec)
    if rec.get("phase") == "Succeeded":
        return False
    attempt = max([rec.get("attempts", 0)] + [o.attempt for o in observed])
    job = next((o for o in observed if o.attempt == attempt), None)
    if attempt == 0 or job is None:  # the attempt's Job does not exist (yet): create it
        attempt = attempt or 1
        name = job_name(run_name, step.job_kind, attempt)
        d.actions.append(CreateStepJob(step.key, attempt))
        if still_refused(d.status, name):
            return True
        new = rec.get("attempts") != attempt
        rec.update(phase="Running", attempts=attempt, jobName=name)
        if new:
            d.events.append(normal(step.reason("Started"), step.started(spec, rec)))
        set_phase(d, step.phase, step.phase, step.running(spec, rec), clock)
        return True
    rec.update(attempts=attempt, jobName=job.name)
    created(d.status, job.name, clock)
    if job.phase == "Succeeded" and (job.report is not None or not step.needs_report):
        rec["completionTime"] = clock.now
        problem, message = step.succeeded(spec, rec, job.report or {})
        if problem:
            return _fail(d, step, rec, problem, clock)
        rec["phase"] = "Succeeded"
        d.events.append(normal(step.succeeded_reason or step.reason("Succeeded"), message))
        return False
    if job.phase in ("Succeeded", "Failed"):
        cause = job.permanent or job.message or \
            f"the {step.noun} pod {'left no report' if step.needs_report else 'failed'}"
        if job.permanent or attempt > step.retries:
            return _fail(d, step, rec, step.failed(spec, attempt, cause, bool(job.permanent)), clock)
        nxt = attempt + 1
        d.actions.append(CreateStepJob(step.key, nxt))
        rec.update(phase="Running", attempts=nxt, jobName=job_name(run_name, step.job_kind, nxt),
                   message=f"attempt {attempt} failed: {cause}")
        d.events.append(warning(step.reason("Retrying"), f"{step.noun} attempt {attempt} failed ({cause}); attempt "
                                f"{nxt} {step.retry_note}"))
        set_phase(d, step.phase, step.phase, step.running(spec, rec), clock)
        return True
    rec.update(phase="Running", message=job.stuck)
    pods_ready(d, job, clock)
    if job.phase == "Suspended":
        set_phase(d, "Queued", step.reason("Queued"), f"{step.noun} job {job.name} waits for admission (e.g. by "
                  f"Kueue): {job.message}", clock)
    else:
        set_phase(d, step.phase, step.phase, step.running(spec, rec) +
                  (f"; its pod cannot start: {job.stuck}" if job.stuck else ""), clock)
    return True


def without_started(events: list[Event]) -> list[Event]:
    """The events of a pass whose create the API server refused, less the ones that said something started."""
    return [e for e in events if e.reason not in STARTED_REASONS]
