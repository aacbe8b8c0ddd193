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
  retry) uses the new spec. Finished runs (Succeeded/Failed) ignore edits (delete and recreate to rerun), except
  one: a run that Failed because a stage spent its retries resumes when that stage's retryLimit is raised.
- Batch steps (steps.py, one declaration each): initializers (spec.initializers: the run's models and datasets
  onto the dataset volume, Initializing) and preflight (spec.preflight, on by default: every stage's data checked,
  Preflight) before the first stage, and export after the last. A failed attempt is retried up to the step's
  limit unless its pod says the error is permanent; then the run is Failed (<Step>Failed). Problems beyond
  maxBadFraction fail preflight, and no GPU job is ever created. Runs whose stages already started skip the steps
  before them.
- spec.suspend suspends the current job (its backend's suspend field) and creates new jobs suspended. A job that is
  suspended while the run is not (Kueue holding it in a queue) is left alone.
- Out of GPU memory (the trainer says so, with the batch it ran): under oomPolicy adjust the next attempt resumes
  with half the micro-batch and twice the accumulation (vita_api/oom.py), without using retryLimit; the changed args
  are kept in the stage's record (argOverrides) for every later attempt, each adjustment in oomAdjustments. At
  micro-batch 1, or under oomPolicy fail, the stage fails with that history.
- When a stage succeeds, its failed attempts' jobs are deleted (a TrainJob's JobSet must not come back).
- A stage renamed or removed after its job started: the job is deleted (StageRemoved), not left running unseen.
- A create the API server refuses (admission policy, webhook, quota), of a stage job or a batch step's Job: Blocked
  with the API's message until the same attempt's job exists (decide_refused; status.refused names it).
- Evaluation (spec.evaluation): when an evaluated stage succeeds, its benchmark Job starts beside the next stage.
  Its scores (or its failure) go to status.evaluations; after the last stage the run is Evaluating until every
  benchmark Job ended, then Succeeded. A failed evaluation never fails the run: the message and the Evaluated
  condition say so. Not retried (its pod's failures are its own, not the model's).
- Hung (spec.hangTimeoutSeconds; the handler reads status.progress): a running job whose step has not moved for
  the timeout is deleted and the stage retried from its checkpoint like a failed attempt (Hung event and condition).
"""

from __future__ import annotations

import copy
import dataclasses
from datetime import datetime
from collections.abc import Mapping, Sequence
from typing import Any

from vita_api.naming import LABEL_RUN, job_name
from vita_api.plan import (EVALUATION, backend_problems, check_spec, cluster_roots, evaluated_stages, evaluation_dir,
                           stage_output_dir)
from vita_api.spec import VitaTrainingRunSpec
from vita_api.status import TERMINAL, Condition, Reason

from .conditions import condition, created, enter_phase, pods_ready, set_condition, set_phase, still_refused
from .progress import parse_time
from .decision import (Clock, CreateEvaluation, Decision, DeleteJob, ObservedAttempt, ObservedEvaluation,
                       ObservedJob, SetJobSuspend, normal, warning)
from .attempts import (Attempt, create_job, failed_attempt, hung_attempt, not_started, restarted_in_place,
                       retries_left)
from .steps import CREATING_PHASES, STEPS, run_step

Attempts = Mapping[str, Sequence[ObservedAttempt]]


def queued_reason(job: ObservedJob) -> str:
    """Why a job waits for capacity rather than runs: suspended by its queue (Kueue admits it by unsuspending), or
    pods the scheduler cannot place yet; "" if it does not wait."""
    if job.phase == "Suspended":
        return f"suspended, waiting for admission (e.g. by Kueue){': ' + job.message if job.message else ''}"
    if job.phase == "Pending" and "Unschedulable" in job.stuck:
        return job.stuck
    return ""


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
        d.events.append(normal(Reason.EVALUATION_STARTED, f"benchmarks after stage {stage.name} "
                               f"({', '.join(spec.evaluation.tasks if spec.evaluation else [])}): job {name}"))
    if rec["phase"] in TERMINAL:
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
        d.events.append(normal(Reason.EVALUATION_SUCCEEDED, f"stage {stage.name}: {summary}"[:1000]))
    elif job.phase in TERMINAL:
        why = job.error or job.message or "the evaluation pod reported no scores"
        rec.update(phase="Failed", completionTime=now, message=why[:2000])
        d.events.append(warning(Reason.EVALUATION_FAILED, f"benchmarks after stage {stage.name} failed (job "
                                f"{job.name}): {why}"[:1000]))
    else:
        rec["message"] = job.stuck or (f"waiting for admission: {job.message}" if job.phase == "Suspended" else "")


def _finish(d: Decision, run_name: str, spec: VitaTrainingRunSpec, attempts: Attempts, clock: Clock) -> Decision:
    """Every stage succeeded: the steps after the stages (export: its failure fails the run, the folder it asked
    for does not exist), Evaluating while a benchmark job runs, then Succeeded (a failed evaluation is said in the
    message and the Evaluated condition, not by failing the run)."""
    d.status["currentJob"] = None
    for step in STEPS:
        if not step.before_stages and step.wanted(spec) and \
                run_step(d, step, run_name, spec, attempts.get(step.key, ()), clock):
            return d
    evals = d.status.get("evaluations") or []
    n = len(spec.stages)
    running = [e for e in evals if e.get("phase") not in TERMINAL]
    if running:
        set_phase(d, "Evaluating", Reason.EVALUATING, f"all {n} stages succeeded; benchmarks run after stage(s) "
                  f"{', '.join(e['stage'] for e in running)}", clock)
        return d
    failed = [e for e in evals if e.get("phase") == "Failed"]
    if evals:
        set_condition(d.status, Condition.EVALUATED, not failed,
                      Reason.EVALUATION_FAILED if failed else Reason.EVALUATION_SUCCEEDED,
                      "; ".join(f"after stage {e['stage']}: {e.get('message', '')}" for e in failed)[:2000] or
                      f"benchmarks after {len(evals)} stage(s) succeeded", clock)
    note = f"; the evaluation after stage(s) {', '.join(e['stage'] for e in failed)} failed (status.evaluations)" \
        if failed else ""
    set_phase(d, "Succeeded", Reason.ALL_STAGES_SUCCEEDED, f"all {n} stages succeeded{note}", clock)
    return d


def decide_invalid(status: dict[str, Any] | None, error: str, now: str, generation: int) -> Decision:
    """A spec the run model rejects (the CRD schema normally rejects it first): Failed with reason InvalidSpec and
    the RunFailed event, the same shape as decide's for a spec that validates but cannot run."""
    d = Decision(status=copy.deepcopy(status or {}))
    d.status["observedGeneration"] = generation
    if d.status.get("phase") in TERMINAL:
        return d
    set_phase(d, "Failed", Reason.INVALID_SPEC, error[:1000], Clock(now, generation))
    return d


def decide_blocked(status: dict[str, Any] | None, reason: str, message: str, now: str, generation: int) -> Decision:
    """Nothing can be created yet, but a person can fix it (install a job CRD, enable a backend, create a claim):
    the run is Blocked with Ready=False and one event per cause; the next reconcile tries again."""
    d = Decision(status=copy.deepcopy(status or {}))
    if d.status.get("phase") in TERMINAL:
        return d
    enter_phase(d.status, "Blocked", reason, message, Clock(now, generation))
    if d.status != (status or {}):
        d.events.append(warning(reason, message))
    return d


def decide_refused(status: dict[str, Any], job: str, kind: str, message: str, now: str,
                   generation: int) -> Decision:
    """The API server refused to create `job` (an admission policy, a ValidatingAdmissionPolicy, a webhook such as
    Trainer's, a quota), a stage's job or a batch step's: the run is Blocked with the API's own message and what to
    change (status.refused names the job), and one event per new message; the next pass (a spec edit, the resync)
    creates the same attempt again."""
    d = Decision(status=copy.deepcopy(status))
    if d.status.get("phase") not in CREATING_PHASES:
        return d
    msg = (f"the API server refused to create {kind} {job}: {message}. Change what it names (spec.trainer: image, "
           f"serviceAccountName, env, envFromSecrets, tolerations; spec.resources), or ask the namespace's admin; "
           f"the operator tries again on every spec change and resync")[:2000]
    old = condition(d.status, Condition.READY)
    if d.status.get("phase") == "Blocked" and old and old.get("message") != msg:
        d.events.append(warning(Reason.CREATE_REFUSED, msg))
    clock = Clock(now, generation)
    d.status["refused"] = {"job": job, "kind": kind, "message": message[:1500]}
    set_phase(d, "Blocked", Reason.CREATE_REFUSED, msg, clock)
    return d


def decide_evaluation_refused(status: dict[str, Any], stage: str, message: str, now: str) -> Decision:
    """The API server refused a stage's benchmark Job: that evaluation is Failed with the API's message (one
    EvaluationFailed event); the run is not blocked, and the Job is not created again."""
    d = Decision(status=copy.deepcopy(status))
    rec = next((e for e in d.status.get("evaluations") or [] if e.get("stage") == stage), None)
    if rec is None or rec.get("phase") in TERMINAL:
        return d
    msg = f"the API server refused to create the evaluation Job: {message}"[:2000]
    rec.update(phase="Failed", completionTime=now, message=msg)
    d.events.append(warning(Reason.EVALUATION_FAILED, f"benchmarks after stage {stage}: {msg}"[:1000]))
    return d


def finished_and_seen(status: dict[str, Any], generation: int) -> bool:
    """Succeeded or Failed, and its latest spec already decided on (an edit may resume it): nothing to observe."""
    return status.get("phase") in TERMINAL and status.get("observedGeneration") == generation


def expired(status: dict[str, Any], ttl_seconds: int | None, now: datetime) -> bool:
    """Whether a finished run's TTL (spec.ttlSecondsAfterFinished, else the operator's default) has passed since it
    Succeeded or Failed (its phase condition's lastTransitionTime); never without a TTL."""
    if ttl_seconds is None or status.get("phase") not in TERMINAL:
        return False
    since = parse_time((condition(status, str(status["phase"])) or {}).get("lastTransitionTime"))
    return since is not None and (now - since).total_seconds() >= ttl_seconds


def _understood(d: Decision, clock: Clock) -> None:
    """The spec could be read again (the operator upgraded, or the unknown fields removed)."""
    old = condition(d.status, Condition.SPEC_UNDERSTOOD)
    if old and old["status"] == "False":
        set_condition(d.status, Condition.SPEC_UNDERSTOOD, True, Reason.SPEC_READ, "every field of the spec is known",
                      clock)


def decide_unknown_fields(status: dict[str, Any] | None, fields: Sequence[str], now: str,
                          generation: int) -> Decision:
    """A spec with fields this operator does not know (a newer CRD's, after an operator rollback): the run is left
    alone, not Failed (its running job goes on, nothing is created or deleted), and condition SpecUnderstood=False
    says so, with one event per new list of fields."""
    d = Decision(status=copy.deepcopy(status or {}))
    msg = (f"the spec has field(s) this operator does not know: {', '.join(fields)} (from a newer CRD?). The run and "
           f"its jobs are left as they are until the operator is upgraded or the fields are removed")[:2000]
    old = condition(d.status, Condition.SPEC_UNDERSTOOD)
    if not old or old["status"] != "False" or old["message"] != msg:
        d.events.append(warning(Reason.UNKNOWN_FIELDS, msg))
    set_condition(d.status, Condition.SPEC_UNDERSTOOD, False, Reason.UNKNOWN_FIELDS, msg, Clock(now, generation))
    return d


def _resume(d: Decision, run_name: str, spec: VitaTrainingRunSpec, clock: Clock) -> bool:
    """A run that Failed because a stage spent its retries (JobFailed, Hung) resumes once its retryLimit allows
    another attempt: the next attempt resumes from the stage's last checkpoint; finished stages stay done."""
    st = d.status
    failed = condition(st, "Failed")
    if st.get("phase") != "Failed" or not failed or failed.get("reason") not in (Reason.JOB_FAILED, Reason.HUNG):
        return False
    records = {r.get("name"): r for r in st.get("stages") or []}
    for i, stage in enumerate(spec.stages):
        rec = records.get(stage.name)
        if not rec or rec.get("phase") != "Failed" or not retries_left(stage, rec, rec.get("attempts", 0)):
            continue
        nxt = rec.get("attempts", 0) + 1
        name = job_name(run_name, stage.name, nxt)
        rec.update(phase="Running", attempts=nxt, jobName=name, completionTime=None,
                   message=f"resumed with retryLimit {stage.retry_limit}")
        st["currentStage"], st["currentJob"] = stage.name, name
        d.actions.append(create_job(i, nxt, spec.suspend, rec))
        d.events.append(normal(Reason.RUN_RESUMED, f"stage {stage.name}: retryLimit is {stage.retry_limit} now; "
                               f"attempt {nxt} resumes from the last checkpoint"))
        set_phase(d, "Running", Reason.STAGE_RUNNING, f"stage {stage.name} ({i + 1}/{len(spec.stages)})", clock)
        return True
    return False


def _report_foreign(d: Decision, foreign: Sequence[str]) -> None:
    """Jobs with the run's labels that it does not own are never adopted (their phase would drive the run): named in
    status.foreignJobs, and one Warning event each time that list changes."""
    names = sorted(set(foreign))
    if names == sorted(d.status.get("foreignJobs") or []):
        return
    if names:
        d.events.append(warning(Reason.FOREIGN_JOBS, f"job(s) {', '.join(names)} carry this run's labels but the run "
                                f"does not control them (no owner reference with its UID): ignored. A deleted run's "
                                f"jobs go once the garbage collector removes them; delete others by hand, or remove "
                                f"their {LABEL_RUN} label"[:1000]))
    d.status["foreignJobs"] = names or None


def _active(d: Decision, a: Attempt, spec: VitaTrainingRunSpec, clock: Clock) -> Decision:
    """A Pending / Running / Suspended job: suspend or resume it as the spec asks, say why it waits."""
    st, rec, job, name = d.status, a.rec, a.job, a.job.name
    rec["phase"] = "Running"
    if job.placed_on:
        rec["nodes"] = list(job.placed_on)
    rec.setdefault("startTime", clock.now)
    if spec.suspend and job.phase != "Suspended":
        d.actions.append(SetJobSuspend(name, True))
        d.events.append(normal(Reason.STAGE_SUSPENDED, f"suspending job {name}"))
    elif not spec.suspend and st.get("phase") == "Suspended" and job.phase == "Suspended":
        d.actions.append(SetJobSuspend(name, False))
        d.events.append(normal(Reason.STAGE_RESUMED, f"resuming job {name}"))
        job = dataclasses.replace(job, phase="Running")  # unsuspended now: not waiting in a queue
    pods_ready(d, job, clock)
    hung = condition(st, Condition.HUNG)
    if hung and hung["status"] == "True" and job.phase == "Running" and (st.get("hung") or {}).get("job") != name:
        set_condition(st, Condition.HUNG, False, Reason.PROGRESSING, f"stage {a.stage.name} job {name} runs", clock)
    msg = f"stage {a.stage.name} ({a.index + 1}/{len(spec.stages)})"
    waiting = queued_reason(job) if not spec.suspend else ""
    if waiting:
        set_phase(d, "Queued", Reason.JOB_QUEUED, f"{msg}: job {name} waits: {waiting}", clock)
    else:
        set_phase(d, "Suspended" if spec.suspend else "Running", Reason.STAGE_RUNNING,
                  f"{msg}: its pods cannot start: {job.stuck}" if job.stuck else msg, clock)
    return d


def decide(run_name: str, generation: int, spec: VitaTrainingRunSpec, status: dict[str, Any] | None,
           jobs: list[ObservedJob], now: str, backend: str = "pytorchjob", *,
           evaluations: Sequence[ObservedEvaluation] = (), steps: Attempts | None = None,
           foreign: Sequence[str] = (), retry_backoff_seconds: int = 0,
           startup_timeout_seconds: int | None = None) -> Decision:
    """`backend`: the job backend the run uses (its own, else the operator's default); only its limits matter
    here, the jobs arrive as ObservedJob whatever their kind. `evaluations`: the run's benchmark Jobs
    (spec.evaluation), one per evaluated stage. `steps`: each batch step's Jobs by its key (steps.STEPS).
    `foreign`: jobs that carry the run's labels but that the run does not control (left out of `jobs`).
    `retry_backoff_seconds`: the first retry's delay after a failure of the stage's own (doubling, capped).
    `startup_timeout_seconds`: how long a job's pods may fail to start before the attempt counts as failed."""
    attempts: Attempts = steps or {}
    clock = Clock(now, generation)
    d = Decision(status=copy.deepcopy(status or {}))
    st = d.status
    st["observedGeneration"] = generation
    _understood(d, clock)
    if _resume(d, run_name, spec, clock):
        return d
    if st.get("phase") in TERMINAL:
        return d

    st["backend"] = backend
    _report_foreign(d, foreign)
    problems = list(dict.fromkeys(check_spec(spec) + backend_problems(spec, backend)))
    if problems:
        set_phase(d, "Failed", Reason.INVALID_SPEC, "; ".join(problems), clock)
        return d

    # A job of a stage the spec no longer has (renamed or removed after it started) would hold its GPUs unseen.
    names = {s.name for s in spec.stages}
    for j in jobs:
        if j.stage not in names and j.phase in ("Pending", "Running", "Suspended"):
            d.actions.append(DeleteJob(j.name))
            d.events.append(warning(Reason.STAGE_REMOVED, f"job {j.name} runs stage {j.stage!r}, which the spec no "
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
    for step in STEPS:
        if step.before_stages and step.wanted(spec) and not started and \
                run_step(d, step, run_name, spec, attempts.get(step.key, ()), clock):
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
            d.actions.append(create_job(i, attempt, spec.suspend, rec))
            if still_refused(st, name):
                return d
            rec.update(phase="Running", attempts=attempt, jobName=name)
            rec.setdefault("startTime", now)
            d.events.append(normal(Reason.STAGE_STARTED, f"stage {stage.name} attempt {attempt}: created job {name}"))
            set_phase(d, "Suspended" if spec.suspend else "Running", Reason.STAGE_RUNNING,
                      f"stage {stage.name} ({i + 1}/{len(spec.stages)})", clock)
            return d
        name = job_name(run_name, stage.name, attempt)
        st["currentStage"], st["currentJob"] = stage.name, name
        rec.update(attempts=attempt, jobName=name)
        created(st, name, clock)
        if job.phase == "Succeeded":
            # its failed attempts are history now: removed, so nothing can bring one back (see the runtime's TTL)
            d.actions += [DeleteJob(j.name) for j in seen if j.attempt < attempt and j.phase == "Failed"]
            rec.update(phase="Succeeded", completionTime=now, message=job.message)
            if job.final_loss is not None:
                rec["finalLoss"] = job.final_loss
            if job.final_eval_loss is not None:
                rec["finalEvalLoss"] = job.final_eval_loss
            if job.fabric is not None:
                rec["fabric"] = job.fabric
            d.events.append(normal(Reason.STAGE_SUCCEEDED, f"stage {stage.name} succeeded ({name})"))
            if i in evaluated:  # its benchmarks run beside the next stage
                _evaluate_stage(d, run_name, spec, i, observed_evals, now)
            continue  # start the next stage in the same pass
        a = Attempt(run_name, stage, i, rec, attempt, job, spec.suspend)
        if job.phase == "Failed":
            return failed_attempt(d, a, clock, retry_backoff_seconds)
        if job.hung and job.phase == "Running":
            return hung_attempt(d, a, clock)
        if (stopped := restarted_in_place(d, a, clock)) is not None:
            return stopped
        if why := not_started(job, startup_timeout_seconds, clock):
            # deleted, and retried at once (a waiting retry would find no job and re-create this attempt)
            d.actions.append(DeleteJob(job.name))
            return failed_attempt(d, dataclasses.replace(a, job=dataclasses.replace(job, phase="Failed", message=why)),
                           clock, 0)
        return _active(d, a, spec, clock)

    return _finish(d, run_name, spec, attempts, clock)
