"""The operator's pure core: (spec, status, observed jobs) -> new status, actions and events.

Rules:
- Stages run in spec order; a stage's record is matched by name and a Succeeded record stays done.
- Each attempt of a stage is its own job, named deterministically (run, stage, attempt). The attempt counter is
  the larger of the recorded one and the highest attempt seen among existing jobs, so a restart between
  "create job" and "write status" neither duplicates nor forgets a job.
- A failed job whose trainer reported a permanent error (bad config or data) fails the run at once. Any
  other failed job is retried while attempts <= retryLimit; the trainer resumes from the newest checkpoint in
  the stage's output folder. After that the run is Failed with the job's reason.
- Spec edits: a job keeps the spec it was created with. Every job created after an edit (the next stage, or a
  retry) uses the new spec. Finished runs (Succeeded/Failed) ignore edits: delete and recreate to rerun.
- Initializers (spec.initializers): before preflight, a CPU Job fetches the run's models and datasets onto the
  dataset volume (Initializing); a failed attempt is retried (downloads resume), a permanent error (an unknown
  name) fails the run (InitializersFailed). Runs whose stages already started skip it.
- Preflight (spec.preflight, on by default): before the first stage's job, a CPU Job checks every stage's data.
  Problems beyond maxBadFraction fail the run (PreflightFailed) and no GPU job is ever created; a preflight Job
  that fails for other reasons is retried like a stage. Runs whose stages already started skip it.
- spec.suspend suspends the current job (its backend's suspend field) and creates new jobs suspended. A job that is
  suspended while the run is not (Kueue holding it in a queue) is left alone.
- Out of GPU memory (the trainer says so, with the batch it ran): under oomPolicy adjust the next attempt resumes
  with half the micro-batch and twice the accumulation (vita_api/oom.py), without using retryLimit; the changed args
  are kept in the stage's record (argOverrides) for every later attempt, each adjustment in oomAdjustments. At
  micro-batch 1, or under oomPolicy fail, the stage fails with that history.
- When a stage succeeds, its failed attempts' jobs are deleted (a TrainJob's JobSet must not come back).
- A stage renamed or removed after its job started: the job is deleted (StageRemoved), not left running unseen.
- A create the API server refuses (admission policy, webhook, quota): Blocked with the API's message until the same
  attempt's job exists (decide_refused).
- Evaluation (spec.evaluation): when an evaluated stage succeeds, its benchmark Job starts beside the next stage.
  Its scores (or its failure) go to status.evaluations; after the last stage the run is Evaluating until every
  benchmark Job ended, then Succeeded. A failed evaluation never fails the run: the message and the Evaluated
  condition say so. Not retried (its pod's failures are its own, not the model's).
- Export (spec.export): when the last stage succeeds, a CPU Job writes its model in the asked format to
  status.export.path (the run is Exporting); retried like preflight, then the run is Failed (ExportFailed) with the
  stages' outputs in place and the command to export by hand.
- Hung (spec.hangTimeoutSeconds; the handler reads status.progress): a running job whose step has not moved for
  the timeout is deleted and the stage retried from its checkpoint like a failed attempt (Hung event and condition).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from vita_api.spec import StageSpec, VitaTrainingRunSpec
from vita_api.oom import after_oom
from vita_api.naming import job_name
from vita_api.plan import (EVALUATION, EXPORT, INITIALIZE, PREFLIGHT, backend_problems, check_spec, cluster_roots,
                           evaluated_stages, evaluation_dir, export_args, export_dir, stage_output_dir)

TERMINAL = ("Succeeded", "Failed")


@dataclass(frozen=True)
class ObservedJob:
    name: str
    stage: str
    attempt: int
    phase: str          # Pending|Running|Suspended|Succeeded|Failed
    message: str = ""
    final_loss: float | None = None   # from the finished master pod, when the trainer reported it
    stuck: str = ""     # why its pods cannot start (ImagePullBackOff, missing Secret, Unschedulable); "" if not
    permanent: str = ""  # a failed job's error that another attempt cannot fix (bad config or data); "" if not
    oom: dict[str, Any] | None = None  # a failed job's out-of-memory report (termination.oom_of); None if not
    hung: str = ""      # why a running job counts as hung (progress.hang_reason); "" if it does not
    active_since: str | None = None  # creation or latest (re)admission (builder.active_since): hangs count from it
    final_eval_loss: float | None = None  # the stage's last validation loss, from the master pod's same report
    nodes: int = 1      # how many pods the job should have (one per node)
    suspended: bool = False  # its spec asks the controller to hold it (Kueue's admission, or parked after failing)


@dataclass(frozen=True)
class ObservedAttempt:
    """One attempt of a run's step that runs as a batch Job and reports in its pod's termination message."""
    name: str
    attempt: int
    phase: str                   # Pending|Running|Suspended|Succeeded|Failed
    message: str = ""
    report: dict[str, Any] | None = None  # what the finished pod said (preflight: tools/preflight.py's summary;
    #                                        initializers: tools/initialize.py's totals); None if not read
    permanent: str = ""          # an error another attempt cannot fix (a bad registry, an unknown model name)
    stuck: str = ""              # why its pod cannot start (builder.stuck_reason); "" if it can


ObservedPreflight = ObservedAttempt    # the data check (spec.preflight)
ObservedInitializer = ObservedAttempt  # the downloads (spec.initializers)
ObservedExport = ObservedAttempt       # the export (spec.export); its message is the failed pod's log tail


@dataclass(frozen=True)
class ObservedEvaluation:
    name: str
    stage: str
    phase: str                   # Pending|Running|Suspended|Succeeded|Failed
    message: str = ""
    scores: dict[str, dict[str, float]] | None = None  # from the finished pod's termination message
    results: str = ""            # where lmms-eval's full results are
    error: str = ""              # the failed pod's own error (vita-model eval's message); "" if none
    stuck: str = ""              # why its pod cannot start; "" if it can


@dataclass(frozen=True)
class CreateEvaluation:
    index: int


@dataclass(frozen=True)
class CreateExport:
    attempt: int


@dataclass(frozen=True)
class CreateInitializer:
    attempt: int


@dataclass(frozen=True)
class CreatePreflight:
    attempt: int


@dataclass(frozen=True)
class CreateJob:
    index: int
    attempt: int
    suspend: bool
    arg_overrides: dict[str, Any] = field(default_factory=dict)  # stage args this attempt runs with, not the spec's


@dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclass(frozen=True)
class SetJobSuspend:
    name: str
    suspend: bool


@dataclass
class Decision:
    status: dict[str, Any]
    actions: list[Any] = field(default_factory=list)
    events: list[Any] = field(default_factory=list)   # (type, reason, message)


def set_condition(status: dict[str, Any], ctype: str, value: bool, reason: str, message: str, now: str,
                  generation: int) -> None:
    """Update one standard condition in place; lastTransitionTime moves only when its status changes."""
    conds = status.setdefault("conditions", [])
    new = {"type": ctype, "status": "True" if value else "False", "reason": reason, "message": message,
           "observedGeneration": generation}
    for c in conds:
        if c["type"] == ctype:
            new["lastTransitionTime"] = c.get("lastTransitionTime", now) if c["status"] == new["status"] else now
            c.clear()
            c.update(new)
            return
    conds.append({**new, "lastTransitionTime": now})


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    """The status's condition of that type, if any."""
    return next((c for c in status.get("conditions", []) if c["type"] == ctype), None)


def _set_phase(d: Decision, phase: str, reason: str, message: str, now: str, generation: int) -> None:
    if d.status.get("phase") != phase:
        d.events.append(("Warning" if phase == "Failed" else "Normal", f"Run{phase}", message))
    d.status["phase"] = phase
    d.status["message"] = message
    for ctype in ("Running", "Suspended", "Succeeded", "Failed"):
        if ctype == phase:
            set_condition(d.status, ctype, True, reason, message, now, generation)
        else:  # API conventions: a False condition says why too (a non-empty CamelCase reason)
            set_condition(d.status, ctype, False, f"Run{phase}", f"the run is {phase}", now, generation)


def queued_reason(job: ObservedJob) -> str:
    """Why a job waits for capacity rather than runs: suspended by its queue (Kueue admits it by unsuspending), or
    pods the scheduler cannot place yet; "" if it does not wait."""
    if job.phase == "Suspended":
        return f"suspended, waiting for admission (e.g. by Kueue){': ' + job.message if job.message else ''}"
    if job.phase == "Pending" and "Unschedulable" in job.stuck:
        return job.stuck
    return ""


def _pods_ready(d: Decision, job: ObservedJob | ObservedAttempt, now: str, generation: int) -> None:
    """Pods that cannot start leave Kubeflow's job "Running" forever: say so (condition PodsReady=False, one
    Warning event per new cause). Not a failure: a pushed image or a created Secret heals it."""
    old = condition(d.status, "PodsReady")
    if job.stuck:
        if not old or old["status"] != "False" or old["message"] != job.stuck:
            d.events.append(("Warning", "PodsStuck", f"job {job.name}: {job.stuck}"))
        set_condition(d.status, "PodsReady", False, "PodsStuck", job.stuck, now, generation)
    elif old and old["status"] == "False":
        set_condition(d.status, "PodsReady", True, "PodsStarted", f"the pods of job {job.name} started", now,
                      generation)


PREFLIGHT_RETRIES = 2


def _preflight_verdict(summary: dict[str, Any], max_bad: float) -> tuple[list[str], int, int]:
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


def _fail_preflight(d: Decision, pf: dict[str, Any], msg: str, now: str, generation: int) -> bool:
    """The run is Failed with reason PreflightFailed: no stage job is ever created."""
    pf.update(phase="Failed", message=msg, completionTime=now)
    d.events.append(("Warning", "PreflightFailed", msg))
    _set_phase(d, "Failed", "PreflightFailed", msg, now, generation)
    return True


def _preflight(d: Decision, run_name: str, spec: VitaTrainingRunSpec, observed: Sequence[ObservedPreflight], now: str,
               generation: int) -> bool:
    """The preflight step; True while it holds the run (running, or failed it), False once it passed."""
    pf = d.status.setdefault("preflight", {"phase": "Pending", "attempts": 0})
    attempt = max([pf.get("attempts", 0)] + [o.attempt for o in observed])
    job = next((o for o in observed if o.attempt == attempt), None)
    if attempt == 0 or job is None:
        attempt = attempt or 1
        d.actions.append(CreatePreflight(attempt))
        if _still_refused(d.status, job_name(run_name, PREFLIGHT, attempt)):
            return True
        pf.update(phase="Running", attempts=attempt, jobName=job_name(run_name, PREFLIGHT, attempt))
        d.events.append(("Normal", "PreflightStarted", f"checking the data of {len(spec.stages)} stage(s): job "
                         f"{pf['jobName']}"))
        _set_phase(d, "Preflight", "Preflight", "preflight: checking every stage's data", now, generation)
        return True
    pf.update(attempts=attempt, jobName=job.name)
    _created(d.status, job.name, now, generation)
    if job.phase == "Succeeded" and job.report is not None:
        why, total, bad = _preflight_verdict(job.report, spec.preflight.max_bad_fraction)
        pf.update(samples=total, badSamples=bad, problemsByReason=job.report.get("problemsByReason", {}),
                  problems=job.report.get("problems", [])[:20], reportPath=job.report.get("report", ""),
                  completionTime=now)
        if why:
            first = f"; first: {pf['problems'][0]}" if pf["problems"] else ""
            reasons = ", ".join(f"{k} {v}" for k, v in pf["problemsByReason"].items())
            return _fail_preflight(d, pf, f"preflight: {'; '.join(why)} ({reasons}){first}; report: "
                                          f"{pf['reportPath']}", now, generation)
        pf.update(phase="Succeeded", message=f"{total} samples checked, {bad} with problems")
        d.events.append(("Normal", "PreflightPassed", f"{total} samples checked, {bad} with problems (allowed: "
                         f"{spec.preflight.max_bad_fraction:.2%} per stage)"))
        return False
    if job.phase in ("Succeeded", "Failed"):
        if job.permanent:
            return _fail_preflight(d, pf, f"preflight: {job.permanent}", now, generation)
        cause = job.message or "the preflight pod left no report"
        if attempt <= PREFLIGHT_RETRIES:
            d.actions.append(CreatePreflight(attempt + 1))
            pf.update(phase="Running", attempts=attempt + 1, jobName=job_name(run_name, PREFLIGHT, attempt + 1),
                      message=f"attempt {attempt} failed: {cause}")
            d.events.append(("Warning", "PreflightRetrying", f"preflight attempt {attempt} failed ({cause}); "
                             f"attempt {attempt + 1} starts"))
            return True
        return _fail_preflight(d, pf, f"preflight failed after {attempt} attempt(s): {cause}", now, generation)
    pf["phase"] = "Running"
    _pods_ready(d, job, now, generation)
    if job.phase == "Suspended":
        _set_phase(d, "Queued", "PreflightQueued", f"preflight job {job.name} waits for admission (e.g. by Kueue): "
                   f"{job.message}", now, generation)
    else:
        _set_phase(d, "Preflight", "Preflight", "preflight: checking every stage's data" +
                   (f"; its pod cannot start: {job.stuck}" if job.stuck else ""), now, generation)
    return True


def _evaluate_stage(d: Decision, run_name: str, spec: VitaTrainingRunSpec, index: int,
                    observed: dict[str, ObservedEvaluation], now: str) -> None:
    """The benchmark job of a succeeded stage (spec.evaluation): created once, then its scores or its failure in
    status.evaluations. It never changes the run's phase here: a failed evaluation is reported, not fatal."""
    stage = spec.stages[index]
    records = d.status.setdefault("evaluations", [])
    rec = next((r for r in records if r.get("stage") == stage.name), None)
    name = job_name(run_name, f"{EVALUATION}-{stage.name}", 1)
    job = observed.get(stage.name)
    if rec is None:
        rec = {"stage": stage.name, "phase": "Running", "jobName": name, "startTime": now,
               "resultsPath": evaluation_dir(spec, index, cluster_roots(spec))}
        records.append(rec)
        d.events.append(("Normal", "EvaluationStarted", f"benchmarks after stage {stage.name} "
                         f"({', '.join(spec.evaluation.tasks if spec.evaluation else [])}): job {name}"))
    if rec["phase"] in ("Succeeded", "Failed"):
        return
    if job is None:  # not created yet, or not seen yet: creating it again is a no-op (deterministic name)
        d.actions.append(CreateEvaluation(index))
        return
    if job.phase == "Succeeded" and job.scores:
        rec.update(phase="Succeeded", scores=job.scores, completionTime=now, message="")
        if job.results:
            rec["resultsPath"] = job.results
        summary = "; ".join(f"{t} {', '.join(f'{m} {v:.4g}' for m, v in row.items())}"
                            for t, row in job.scores.items())
        d.events.append(("Normal", "EvaluationSucceeded", f"stage {stage.name}: {summary}"[:1000]))
    elif job.phase in ("Succeeded", "Failed"):
        why = job.error or job.message or "the evaluation pod reported no scores"
        rec.update(phase="Failed", completionTime=now, message=why[:2000])
        d.events.append(("Warning", "EvaluationFailed", f"benchmarks after stage {stage.name} failed (job "
                         f"{job.name}): {why}"[:1000]))
    else:
        rec["message"] = job.stuck or (f"waiting for admission: {job.message}" if job.phase == "Suspended" else "")


EXPORT_RETRIES = 2


def _export(d: Decision, run_name: str, spec: VitaTrainingRunSpec, observed: Sequence[ObservedExport], now: str,
            generation: int) -> bool:
    """The export Job after the last stage (spec.export); True while it holds the run (running, or failed it)."""
    if spec.export is None:
        return False
    ex = d.status.setdefault("export", {"phase": "Pending", "attempts": 0})
    if ex["phase"] == "Succeeded":
        return False
    ex["path"] = export_dir(spec, cluster_roots(spec))
    attempt = max([ex.get("attempts", 0)] + [o.attempt for o in observed])
    job = next((o for o in observed if o.attempt == attempt), None)
    if attempt == 0 or job is None:
        attempt = attempt or 1
        d.actions.append(CreateExport(attempt))
        if _still_refused(d.status, job_name(run_name, EXPORT, attempt)):
            return True
        if ex.get("attempts") != attempt:
            d.events.append(("Normal", "ExportStarted", f"exporting stage {spec.stages[-1].name} as "
                             f"{spec.export.format} to {ex['path']}"))
        ex.update(phase="Running", attempts=attempt, jobName=job_name(run_name, EXPORT, attempt))
        _set_phase(d, "Exporting", "Exporting", f"all {len(spec.stages)} stages succeeded; exporting to "
                   f"{ex['path']}", now, generation)
        return True
    _created(d.status, job.name, now, generation)
    if job.phase == "Succeeded":
        ex.update(phase="Succeeded", completionTime=now, message=f"{spec.export.format} folder written")
        d.events.append(("Normal", "ExportSucceeded", f"{spec.export.format} folder: {ex['path']}"))
        return False
    if job.phase == "Failed":
        cause = job.message or "the export pod failed"
        if attempt <= EXPORT_RETRIES:
            d.actions.append(CreateExport(attempt + 1))
            ex.update(phase="Running", attempts=attempt + 1, jobName=job_name(run_name, EXPORT, attempt + 1),
                      message=f"attempt {attempt} failed: {cause}")
            d.events.append(("Warning", "ExportRetrying", f"export attempt {attempt} failed ({cause}); attempt "
                             f"{attempt + 1} starts"))
            _set_phase(d, "Exporting", "Exporting", f"exporting to {ex['path']} (attempt {attempt + 1})", now,
                       generation)
            return True
        msg = (f"every stage succeeded, but the export failed after {attempt} attempt(s): {cause}; the stages' "
               f"outputs are in place (export by hand: vita-model {' '.join(export_args(spec, cluster_roots(spec)))})")
        ex.update(phase="Failed", completionTime=now, message=cause[:2000])
        _set_phase(d, "Failed", "ExportFailed", msg[:2000], now, generation)
        return True
    ex["message"] = job.stuck
    _set_phase(d, "Exporting", "Exporting", f"all {len(spec.stages)} stages succeeded; exporting to {ex['path']}"
               + (f"; its pod cannot start: {job.stuck}" if job.stuck else ""), now, generation)
    return True


def _finish(d: Decision, run_name: str, spec: VitaTrainingRunSpec, exports: Sequence[ObservedExport], now: str,
            generation: int) -> Decision:
    """Every stage succeeded: Exporting while the export Job runs (spec.export; its failure fails the run: the
    folder it asked for does not exist), Evaluating while a benchmark job runs, then Succeeded (a failed evaluation
    is said in the message and the Evaluated condition, not by failing the run)."""
    d.status["currentJob"] = None
    if _export(d, run_name, spec, exports, now, generation):
        return d
    evals = d.status.get("evaluations") or []
    n = len(spec.stages)
    running = [e for e in evals if e.get("phase") not in ("Succeeded", "Failed")]
    if running:
        _set_phase(d, "Evaluating", "Evaluating", f"all {n} stages succeeded; benchmarks run after stage(s) "
                   f"{', '.join(e['stage'] for e in running)}", now, generation)
        return d
    failed = [e for e in evals if e.get("phase") == "Failed"]
    if evals:
        set_condition(d.status, "Evaluated", not failed, "EvaluationFailed" if failed else "EvaluationSucceeded",
                      "; ".join(f"after stage {e['stage']}: {e.get('message', '')}" for e in failed)[:2000] or
                      f"benchmarks after {len(evals)} stage(s) succeeded", now, generation)
    note = f"; the evaluation after stage(s) {', '.join(e['stage'] for e in failed)} failed (status.evaluations)" \
        if failed else ""
    _set_phase(d, "Succeeded", "AllStagesSucceeded", f"all {n} stages succeeded{note}", now, generation)
    return d


INITIALIZER_RETRIES = 3


def _initialize(d: Decision, run_name: str, spec: VitaTrainingRunSpec, observed: Sequence[ObservedInitializer],
                now: str, generation: int) -> bool:
    """The initializer step (spec.initializers) before preflight; True while it holds the run. A failed attempt is
    retried (downloads resume where they stopped) unless its error is permanent."""
    init = d.status.setdefault("initializers", {"phase": "Pending", "attempts": 0})
    attempt = max([init.get("attempts", 0)] + [o.attempt for o in observed])
    job = next((o for o in observed if o.attempt == attempt), None)
    if attempt == 0 or job is None:
        attempt = attempt or 1
        d.actions.append(CreateInitializer(attempt))
        if _still_refused(d.status, job_name(run_name, INITIALIZE, attempt)):
            return True
        if init.get("attempts") != attempt:
            d.events.append(("Normal", "InitializersStarted", f"fetching the run's models and datasets: job "
                             f"{job_name(run_name, INITIALIZE, attempt)}"))
        init.update(phase="Running", attempts=attempt, jobName=job_name(run_name, INITIALIZE, attempt))
        _set_phase(d, "Initializing", "Initializing", "fetching the run's models and datasets", now, generation)
        return True
    _created(d.status, job.name, now, generation)
    if job.phase == "Succeeded" and job.report is not None:
        r = job.report
        init.update(phase="Succeeded", completionTime=now, files=int(r.get("files", 0)), bytes=int(r.get("bytes", 0)),
                    transferredBytes=int(r.get("transferred", 0)), message="")
        d.events.append(("Normal", "InitializersSucceeded", f"{init['files']} files, {init['bytes']} bytes on the "
                         f"dataset volume ({init['transferredBytes']} transferred)"))
        return False
    if job.phase in ("Succeeded", "Failed"):
        cause = job.permanent or job.message or "the initializer pod left no report"
        if not job.permanent and attempt <= INITIALIZER_RETRIES:
            nxt = attempt + 1
            d.actions.append(CreateInitializer(nxt))
            init.update(phase="Running", attempts=nxt, jobName=job_name(run_name, INITIALIZE, nxt),
                        message=f"attempt {attempt} failed: {cause}")
            d.events.append(("Warning", "InitializersRetrying", f"initializer attempt {attempt} failed ({cause}); "
                             f"attempt {nxt} resumes the downloads"))
            return True
        init.update(phase="Failed", completionTime=now, message=cause[:2000])
        _set_phase(d, "Failed", "InitializersFailed", f"the run's models and datasets could not be fetched after "
                   f"{attempt} attempt(s): {cause}"[:2000], now, generation)
        return True
    init["message"] = job.stuck
    _pods_ready(d, job, now, generation)
    _set_phase(d, "Initializing", "Initializing", "fetching the run's models and datasets" +
               (f"; its pod cannot start: {job.stuck}" if job.stuck else ""), now, generation)
    return True


def decide_invalid(status: dict[str, Any] | None, error: str, now: str, generation: int) -> Decision:
    """A spec the run model rejects (the CRD schema normally rejects it first): Failed with reason InvalidSpec and
    the RunFailed event, the same shape as decide's for a spec that validates but cannot run."""
    import copy
    d = Decision(status=copy.deepcopy(status or {}))
    d.status["observedGeneration"] = generation
    if d.status.get("phase") in TERMINAL:
        return d
    _set_phase(d, "Failed", "InvalidSpec", error[:1000], now, generation)
    return d


def decide_blocked(status: dict[str, Any] | None, reason: str, message: str, now: str, generation: int) -> Decision:
    """Nothing can be created yet, but a person can fix it (install a job CRD, enable a backend, create a claim):
    the run is Blocked with Ready=False and one event per cause; the next reconcile tries again."""
    import copy
    d = Decision(status=copy.deepcopy(status or {}))
    if d.status.get("phase") in TERMINAL:
        return d
    d.status["phase"], d.status["message"] = "Blocked", message
    set_condition(d.status, "Ready", False, reason, message, now, generation)
    if d.status != (status or {}):
        d.events.append(("Warning", reason, message))
    return d


REFUSABLE = ("Running", "Suspended", "Pending", "Blocked", "Exporting", "Initializing")


def decide_refused(status: dict[str, Any], job: str, kind: str, message: str, now: str,
                   generation: int) -> Decision:
    """The API server refused to create `job` (an admission policy, a ValidatingAdmissionPolicy, a webhook such as
    Trainer's, a quota): the run is Blocked with the API's own message and what to change, and one event per new
    message; the next pass (a spec edit, the resync) creates the same attempt again."""
    import copy
    d = Decision(status=copy.deepcopy(status))
    if d.status.get("phase") not in REFUSABLE:
        return d
    msg = (f"the API server refused to create {kind} {job}: {message}. Change what it names (spec.trainer: image, "
           f"serviceAccountName, env, envFromSecrets, tolerations; spec.resources), or ask the namespace's admin; "
           f"the operator tries again on every spec change and resync")[:2000]
    old = condition(d.status, "Ready")
    if d.status.get("phase") == "Blocked" and old and old.get("message") != msg:
        d.events.append(("Warning", "CreateRefused", msg))
    _set_phase(d, "Blocked", "CreateRefused", msg, now, generation)
    set_condition(d.status, "Ready", False, "CreateRefused", msg, now, generation)
    return d


def decide_evaluation_refused(status: dict[str, Any], stage: str, message: str, now: str) -> Decision:
    """The API server refused a stage's benchmark Job: that evaluation is Failed with the API's message (one
    EvaluationFailed event); the run is not blocked, and the Job is not created again."""
    import copy
    d = Decision(status=copy.deepcopy(status))
    rec = next((e for e in d.status.get("evaluations") or [] if e.get("stage") == stage), None)
    if rec is None or rec.get("phase") in ("Succeeded", "Failed"):
        return d
    msg = f"the API server refused to create the evaluation Job: {message}"[:2000]
    rec.update(phase="Failed", completionTime=now, message=msg)
    d.events.append(("Warning", "EvaluationFailed", f"benchmarks after stage {stage}: {msg}"[:1000]))
    return d


def _still_refused(st: dict[str, Any], name: str) -> bool:
    """A Blocked run retrying the create that was refused: it stays Blocked until the job exists."""
    ready = condition(st, "Ready")
    return ready is not None and st.get("phase") == "Blocked" and ready["reason"] == "CreateRefused" and \
        f" {name}: " in ready["message"]


def _created(st: dict[str, Any], name: str, now: str, generation: int) -> None:
    """The job exists: a refusal recorded earlier is over."""
    ready = condition(st, "Ready")
    if ready and ready["status"] == "False" and ready["reason"] == "CreateRefused":
        set_condition(st, "Ready", True, "JobCreated", f"job {name} exists", now, generation)


def _after_oom(d: Decision, run_name: str, stage: StageSpec, index: int, rec: dict[str, Any], attempt: int,
               job: ObservedJob, suspend: bool, now: str, generation: int) -> Decision:
    """The next attempt with half the micro-batch (oomPolicy adjust), or the stage's end at micro-batch 1."""
    oom = job.oom or {}
    ran = (int(oom.get("perDeviceTrainBatchSize", 1)), int(oom.get("gradientAccumulationSteps", 1)))
    nxt = after_oom(*ran)
    entry: dict[str, Any] = {"attempt": attempt, "step": int(oom.get("step", 0)), "perDeviceTrainBatchSize": ran[0],
             "gradientAccumulationSteps": ran[1]}
    if nxt:
        entry.update(nextPerDeviceTrainBatchSize=nxt["per_device_train_batch_size"],
                     nextGradientAccumulationSteps=nxt["gradient_accumulation_steps"])
    history = rec.setdefault("oomAdjustments", [])
    history.append(entry)
    path = " -> ".join(str(h["perDeviceTrainBatchSize"]) for h in history)
    if nxt is None:
        msg = (f"out of GPU memory at micro-batch 1 (micro-batches tried: {path}); lower --model_max_length or "
               f"--max_tokens_per_batch, enable gradient checkpointing, or use more GPUs (zero3 / zero3_offload)")
        rec.update(phase="Failed", completionTime=now, message=msg)
        d.events.append(("Warning", "StageFailed", f"stage {stage.name} attempt {attempt}: {msg}"))
        _set_phase(d, "Failed", "OutOfMemory", f"stage {stage.name}: {msg}", now, generation)
        return d
    rec["argOverrides"] = {**rec.get("argOverrides", {}), **nxt}
    new_name = job_name(run_name, stage.name, attempt + 1)
    d.actions.append(CreateJob(index, attempt + 1, suspend, dict(rec["argOverrides"])))
    rec.update(phase="Running", attempts=attempt + 1, jobName=new_name,
               message=f"attempt {attempt} ran out of GPU memory at step {entry['step']} with micro-batch {ran[0]}")
    d.status["currentJob"] = new_name
    d.events.append(("Warning", "OutOfMemory", f"stage {stage.name} attempt {attempt} ran out of GPU memory at step "
                     f"{entry['step']} with per_device_train_batch_size {ran[0]}; attempt {attempt + 1} resumes from "
                     f"the last checkpoint with per_device_train_batch_size {nxt['per_device_train_batch_size']} and "
                     f"gradient_accumulation_steps {nxt['gradient_accumulation_steps']}"))
    return d


def _hung(d: Decision, run_name: str, stage: StageSpec, index: int, rec: dict[str, Any], attempt: int,
          job: ObservedJob, suspend: bool, now: str, generation: int) -> Decision:
    """Delete the hung job; retry the stage from its checkpoint while retries are left, else fail it."""
    d.actions.append(DeleteJob(job.name))
    set_condition(d.status, "Hung", True, "NoStepProgress", f"stage {stage.name} job {job.name}: {job.hung}", now,
                  generation)
    if attempt - len(rec.get("oomAdjustments", [])) <= stage.retry_limit:
        new_name = job_name(run_name, stage.name, attempt + 1)
        d.actions.append(CreateJob(index, attempt + 1, suspend, dict(rec.get("argOverrides", {}))))
        rec.update(phase="Running", attempts=attempt + 1, jobName=new_name,
                   message=f"attempt {attempt} hung: {job.hung}")
        d.status["currentJob"] = new_name
        d.events.append(("Warning", "Hung", f"stage {stage.name} attempt {attempt} hung ({job.hung}); deleted job "
                         f"{job.name}; attempt {attempt + 1} resumes from the last checkpoint"))
        return d
    rec.update(phase="Failed", completionTime=now, message=f"attempt {attempt} hung: {job.hung}")
    d.events.append(("Warning", "Hung", f"stage {stage.name} attempt {attempt} hung ({job.hung}); deleted job "
                     f"{job.name}; no retries left"))
    _set_phase(d, "Failed", "Hung", f"stage {stage.name} hung after {attempt} attempt(s): {job.hung}", now, generation)
    return d


def decide(run_name: str, generation: int, spec: VitaTrainingRunSpec, status: dict[str, Any] | None,
           jobs: list[ObservedJob], now: str, backend: str = "pytorchjob",
           preflight: Sequence[ObservedPreflight] = (), evaluations: Sequence[ObservedEvaluation] = (),
           exports: Sequence[ObservedExport] = (), initializers: Sequence[ObservedInitializer] = ()) -> Decision:
    """`backend`: the job backend the run uses (its own, else the operator's default); only its limits matter
    here, the jobs arrive as ObservedJob whatever their kind. `preflight`: the run's preflight Jobs.
    `evaluations`: the run's benchmark Jobs (spec.evaluation), one per evaluated stage. `exports`: its export
    Jobs (spec.export), one per attempt. `initializers`: its initializer Jobs (spec.initializers)."""
    import copy
    d = Decision(status=copy.deepcopy(status or {}))
    st = d.status
    st["observedGeneration"] = generation
    if st.get("phase") in TERMINAL:
        return d

    st["backend"] = backend
    problems = list(dict.fromkeys(check_spec(spec) + backend_problems(spec, backend)))
    if problems:
        _set_phase(d, "Failed", "InvalidSpec", "; ".join(problems), now, generation)
        return d

    # A job of a stage the spec no longer has (renamed or removed after it started) would hold its GPUs unseen.
    names = {s.name for s in spec.stages}
    for j in jobs:
        if j.stage not in names and j.phase in ("Pending", "Running", "Suspended"):
            d.actions.append(DeleteJob(j.name))
            d.events.append(("Warning", "StageRemoved", f"job {j.name} runs stage {j.stage!r}, which the spec no "
                             f"longer has (renamed or removed): deleted it to free its GPUs"))
    # A failed TrainJob is parked (suspended): Trainer v2.3.0 creates a failed TrainJob's JobSet again once the
    # runtime's TTL deleted it (kubeflow/trainer#3737), which would run the stale attempt on GPUs beside the retry.
    # Parked, it keeps its Failed condition.
    if backend == "trainjob":
        d.actions += [SetJobSuspend(j.name, True) for j in jobs if j.phase == "Failed" and not j.suspended]
    records = {r["name"]: r for r in st.get("stages", [])}
    st["stages"] = [records.get(s.name, {"name": s.name, "phase": "Pending", "attempts": 0}) for s in spec.stages]
    for i in range(len(spec.stages)):
        st["stages"][i]["checkpointPath"] = stage_output_dir(spec, i, cluster_roots(spec))

    started = any(r.get("attempts", 0) for r in st["stages"]) or any(jobs)
    if spec.initializers and not started and (st.get("initializers") or {}).get("phase") != "Succeeded":
        if _initialize(d, run_name, spec, list(initializers), now, generation):
            return d
    if spec.preflight.enabled and not started and (st.get("preflight") or {}).get("phase") != "Succeeded":
        if _preflight(d, run_name, spec, list(preflight), now, generation):
            return d

    evaluated = evaluated_stages(spec)
    observed_evals = {e.stage: e for e in evaluations}
    for i, stage in enumerate(spec.stages):
        rec = st["stages"][i]
        if rec["phase"] == "Succeeded":
            if i in evaluated:
                _evaluate_stage(d, run_name, spec, i, observed_evals, now)
            continue
        seen = [j for j in jobs if j.stage == stage.name]
        attempt = max([rec.get("attempts", 0)] + [j.attempt for j in seen])
        job = next((j for j in seen if j.attempt == attempt), None)
        if attempt == 0 or job is None:  # the attempt's job does not exist (yet): create it
            attempt = attempt or 1
            name = job_name(run_name, stage.name, attempt)
            st["currentStage"], st["currentJob"] = stage.name, name
            d.actions.append(CreateJob(i, attempt, spec.suspend, dict(rec.get("argOverrides", {}))))
            if _still_refused(st, name):
                return d
            rec.update(phase="Running", attempts=attempt, jobName=name)
            rec.setdefault("startTime", now)
            d.events.append(("Normal", "StageStarted", f"stage {stage.name} attempt {attempt}: created job {name}"))
            _set_phase(d, "Suspended" if spec.suspend else "Running", "StageRunning",
                       f"stage {stage.name} ({i + 1}/{len(spec.stages)})", now, generation)
            return d
        name = job_name(run_name, stage.name, attempt)
        st["currentStage"], st["currentJob"] = stage.name, name
        rec.update(attempts=attempt, jobName=name)
        _created(st, name, now, generation)
        if job.phase == "Succeeded":
            # its failed attempts are history now: removed, so nothing can bring one back (see the runtime's TTL)
            d.actions += [DeleteJob(j.name) for j in seen if j.attempt < attempt and j.phase == "Failed"]
            rec.update(phase="Succeeded", completionTime=now, message=job.message)
            if job.final_loss is not None:
                rec["finalLoss"] = job.final_loss
            if job.final_eval_loss is not None:
                rec["finalEvalLoss"] = job.final_eval_loss
            d.events.append(("Normal", "StageSucceeded", f"stage {stage.name} succeeded ({name})"))
            if i in evaluated:  # its benchmarks run beside the next stage
                _evaluate_stage(d, run_name, spec, i, observed_evals, now)
            continue  # start the next stage in the same pass
        if job.phase == "Failed":
            if job.permanent:
                rec.update(phase="Failed", completionTime=now, message=job.permanent)
                d.events.append(("Warning", "StageFailed", f"stage {stage.name} attempt {attempt} failed with an "
                                 f"error that a retry cannot fix, not retried: {job.permanent}"))
                _set_phase(d, "Failed", "PermanentError", f"stage {stage.name}: {job.permanent}", now, generation)
                return d
            if job.oom is not None and stage.oom_policy == "adjust":
                return _after_oom(d, run_name, stage, i, rec, attempt, job, spec.suspend, now, generation)
            if attempt - len(rec.get("oomAdjustments", [])) <= stage.retry_limit:
                nxt = attempt + 1
                new_name = job_name(run_name, stage.name, nxt)
                d.actions.append(CreateJob(i, nxt, spec.suspend, dict(rec.get("argOverrides", {}))))
                rec.update(phase="Running", attempts=nxt, jobName=new_name,
                           message=f"attempt {attempt} failed: {job.message}")
                st["currentJob"] = new_name
                d.events.append(("Warning", "StageRetrying", f"stage {stage.name} attempt {attempt} failed "
                                 f"({job.message}); attempt {nxt} resumes from the last checkpoint"))
                return d
            rec.update(phase="Failed", completionTime=now, message=job.message)
            d.events.append(("Warning", "StageFailed", f"stage {stage.name} attempt {attempt} failed "
                             f"({job.message}); no retries left"))
            _set_phase(d, "Failed", "JobFailed", f"stage {stage.name} failed after {attempt} attempt(s): "
                       f"{job.message}", now, generation)
            return d
        if job.hung and job.phase == "Running":
            return _hung(d, run_name, stage, i, rec, attempt, job, spec.suspend, now, generation)
        # Pending / Running / Suspended
        rec["phase"] = "Running"
        rec.setdefault("startTime", now)
        if spec.suspend and job.phase != "Suspended":
            d.actions.append(SetJobSuspend(name, True))
            d.events.append(("Normal", "StageSuspended", f"suspending job {name}"))
        elif not spec.suspend and st.get("phase") == "Suspended" and job.phase == "Suspended":
            d.actions.append(SetJobSuspend(name, False))
            d.events.append(("Normal", "StageResumed", f"resuming job {name}"))
            job = dataclasses.replace(job, phase="Running")  # unsuspended now: not waiting in a queue
        _pods_ready(d, job, now, generation)
        hung = condition(st, "Hung")
        if hung and hung["status"] == "True" and job.phase == "Running" and f" job {name}: " not in hung["message"]:
            set_condition(st, "Hung", False, "Progressing", f"stage {stage.name} job {name} runs", now, generation)
        msg = f"stage {stage.name} ({i + 1}/{len(spec.stages)})"
        waiting = queued_reason(job) if not spec.suspend else ""
        if waiting:
            _set_phase(d, "Queued", "JobQueued", f"{msg}: job {name} waits: {waiting}", now, generation)
        else:
            _set_phase(d, "Suspended" if spec.suspend else "Running", "StageRunning", msg, now, generation)
        return d

    return _finish(d, run_name, spec, exports, now, generation)
