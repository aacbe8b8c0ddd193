"""One stage attempt that ended or cannot go on: retried (from the last checkpoint, after a backoff for the stage's
own failures, without spending retryLimit for disruptions and out-of-memory adjustments), or the stage failed;
each failed attempt and its nodes recorded, a node that failed twice kept off. Pure, in place on the Decision."""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from datetime import timedelta
from typing import Any

from vita_api.naming import job_name
from vita_api.oom import after_oom
from vita_api.plan import FLIGHT_RECORDER_DIR
from vita_api.spec import StageSpec
from vita_api.status import Condition, Reason

from .conditions import set_condition, set_phase
from .decision import Clock, CreateJob, Decision, DeleteJob, ObservedJob, warning
from .progress import format_time, parse_time


@dataclasses.dataclass(frozen=True)
class Attempt:
    """The stage attempt a pass looks at: which stage, its record, its number and job."""
    run_name: str
    stage: StageSpec
    index: int
    rec: dict[str, Any]
    attempt: int
    job: ObservedJob
    suspend: bool


def not_started(job: ObservedJob, timeout_seconds: int | None, clock: Clock) -> str:
    """Why a job counts as failed to start ("" if it does not): its pods cannot all start (job.stuck: refused
    creates, image pulls, missing Secrets) for `timeout_seconds` since it was created or admitted. Pods the
    scheduler cannot place yet, and jobs waiting in a queue, are waiting for capacity, not failing."""
    if not timeout_seconds or not job.stuck or "Unschedulable" in job.stuck or job.phase not in ("Pending", "Running"):
        return ""
    since, now = parse_time(job.active_since), parse_time(clock.now)
    if since is None or now is None or (now - since).total_seconds() < timeout_seconds:
        return ""
    return f"its pods did not all start within {timeout_seconds}s (startupTimeoutSeconds): {job.stuck}"


def create_job(index: int, attempt: int, suspend: bool, rec: dict[str, Any]) -> CreateJob:
    """A stage attempt's job, with what its record carries: changed args, nodes to keep off."""
    return CreateJob(index, attempt, suspend, dict(rec.get("argOverrides", {})), tuple(rec.get("avoidNodes") or ()))


def _retry(d: Decision, a: Attempt, message: str, event: str, event_message: str) -> Decision:
    """The stage's next attempt, resuming from its last checkpoint, with the args the record carries; `event` is
    emitted unless it is "" (the failure was announced when it was first seen)."""
    nxt = a.attempt + 1
    new_name = job_name(a.run_name, a.stage.name, nxt)
    d.actions.append(create_job(a.index, nxt, a.suspend, a.rec))
    a.rec.update(phase="Running", attempts=nxt, jobName=new_name, message=message, nextAttemptTime=None, nodes=None,
                 restartsInPlaceBefore=a.rec.get("restartsInPlace"))  # the next job counts its restarts from 0
    d.status["currentJob"] = new_name
    if event:
        d.events.append(warning(event, event_message))
    return d


def disruptions_so_far(rec: dict[str, Any]) -> int:
    """Disruptions the stage has met: attempts they ended, and in-place restarts of the current attempt."""
    return int(rec.get("disruptions") or 0) + int(rec.get("restartsInPlace") or 0)


def _counted(rec: dict[str, Any], attempt: int) -> int:
    """Attempts so far that count against retryLimit: out-of-memory adjustments and disruptions do not."""
    return attempt - len(rec.get("oomAdjustments", [])) - int(rec.get("disruptions") or 0)


def retries_left(stage: StageSpec, rec: dict[str, Any], attempt: int) -> bool:
    return _counted(rec, attempt) <= stage.retry_limit


MAX_FAILURES_KEPT = 20
# What PyTorch's NCCL watchdog says when a collective times out (the pod's log tail is the job's message): its
# flight recorder then wrote every rank's last collectives beside the stage's checkpoints.
COLLECTIVE_TIMEOUT = re.compile(r"Watchdog caught collective operation timeout|ran for \d+ milliseconds before timing "
                                r"out")
AVOID_AFTER = 2          # failed attempts on one node before the stage's next attempts are kept off it
MAX_BACKOFF_SECONDS = 900


def backoff_seconds(base: int, counted_failures: int) -> int:
    """Exponential: base, 2 base, 4 base ... capped at 15 minutes; 0 when the operator's base is 0."""
    return min(base * 2 ** max(counted_failures - 1, 0), MAX_BACKOFF_SECONDS) if base else 0


def _record_failure(d: Decision, a: Attempt, clock: Clock) -> bool:
    """The failed attempt in the stage's record (once: True the first time it is seen), its nodes counted; a node
    where AVOID_AFTER attempts failed is kept out of the stage's next attempts (NodeAvoided, once per node)."""
    failures = a.rec.setdefault("failures", [])
    if failures and failures[-1].get("attempt") == a.attempt:
        return False
    entry: dict[str, Any] = {"attempt": a.attempt, "message": (a.job.message or "")[:500]}
    if a.job.failed_nodes:
        entry["nodes"] = list(a.job.failed_nodes)
    if a.job.disruption:
        entry["disruption"] = a.job.disruption[:500]
    if COLLECTIVE_TIMEOUT.search(a.job.message or "") and a.rec.get("checkpointPath"):
        entry["flightRecorder"] = f"{a.rec['checkpointPath']}/{FLIGHT_RECORDER_DIR}/"
    failures.append(entry)
    del failures[:-MAX_FAILURES_KEPT]
    counts = Counter(n for f in failures for n in f.get("nodes") or [])
    avoid = sorted(n for n, c in counts.items() if c >= AVOID_AFTER)
    new = [n for n in avoid if n not in (a.rec.get("avoidNodes") or [])]
    if new:
        a.rec["avoidNodes"] = sorted(set(a.rec.get("avoidNodes") or []) | set(avoid))
        d.events.append(warning(Reason.NODE_AVOIDED, f"stage {a.stage.name}: attempts failed on node(s) "
                                f"{', '.join(new)} {AVOID_AFTER} times; the next attempts are kept off them "
                                f"(status.stages[].avoidNodes)"))
    return True


def _fail_stage(d: Decision, a: Attempt, message: str, event_message: str, reason: str, run_message: str,
                clock: Clock) -> Decision:
    a.rec.update(phase="Failed", completionTime=clock.now, message=message)
    d.events.append(warning(Reason.STAGE_FAILED, event_message))
    set_phase(d, "Failed", reason, run_message, clock)
    return d


def _after_oom(d: Decision, a: Attempt, clock: Clock) -> Decision:
    """The next attempt with half the micro-batch (oomPolicy adjust), or the stage's end at micro-batch 1."""
    oom = a.job.oom or {}
    ran = (int(oom.get("perDeviceTrainBatchSize", 1)), int(oom.get("gradientAccumulationSteps", 1)))
    nxt = after_oom(*ran)
    entry: dict[str, Any] = {"attempt": a.attempt, "step": int(oom.get("step", 0)),
                             "perDeviceTrainBatchSize": ran[0], "gradientAccumulationSteps": ran[1]}
    if nxt:
        entry.update(nextPerDeviceTrainBatchSize=nxt["per_device_train_batch_size"],
                     nextGradientAccumulationSteps=nxt["gradient_accumulation_steps"])
    history = a.rec.setdefault("oomAdjustments", [])
    history.append(entry)
    path = " -> ".join(str(h["perDeviceTrainBatchSize"]) for h in history)
    if nxt is None:
        msg = (f"out of GPU memory at micro-batch 1 (micro-batches tried: {path}); lower --model_max_length or "
               f"--max_tokens_per_batch, enable gradient checkpointing, or use more GPUs (zero3 / zero3_offload)")
        return _fail_stage(d, a, msg, f"stage {a.stage.name} attempt {a.attempt}: {msg}", Reason.OUT_OF_MEMORY,
                           f"stage {a.stage.name}: {msg}", clock)
    a.rec["argOverrides"] = {**a.rec.get("argOverrides", {}), **nxt}
    return _retry(d, a, f"attempt {a.attempt} ran out of GPU memory at step {entry['step']} with micro-batch "
                        f"{ran[0]}", Reason.OUT_OF_MEMORY,
                  f"stage {a.stage.name} attempt {a.attempt} ran out of GPU memory at step {entry['step']} with "
                  f"per_device_train_batch_size {ran[0]}; attempt {a.attempt + 1} resumes from the last checkpoint "
                  f"with per_device_train_batch_size {nxt['per_device_train_batch_size']} and "
                  f"gradient_accumulation_steps {nxt['gradient_accumulation_steps']}")


def attempt_restarts(rec: dict[str, Any]) -> int:
    """In-place restarts of the stage's current attempt that its record holds (restartsInPlace counts the stage's)."""
    return int(rec.get("restartsInPlace") or 0) - int(rec.get("restartsInPlaceBefore") or 0)


def restarted_in_place(d: Decision, a: Attempt, clock: Clock) -> Decision | None:
    """The attempt's pods were restarted in place since the last pass (a disruption the runtime's JobSet failure
    policy handled: the job keeps its admission): recorded and announced. Past disruptionLimit the attempt is
    stopped and counts as a failure of the stage's own (a node pool that keeps failing must not restart it for
    ever). None when there is nothing new."""
    job, stage, rec = a.job, a.stage, a.rec
    if job.restarts <= attempt_restarts(rec):
        return None
    rec["restartsInPlace"] = int(rec.get("restartsInPlaceBefore") or 0) + job.restarts
    where = f" (node {', '.join(job.failed_nodes)}: {job.disruption})" if job.failed_nodes else ""
    if disruptions_so_far(rec) <= stage.disruption_limit:
        d.events.append(warning(Reason.STAGE_RESTARTED_IN_PLACE, f"stage {stage.name} attempt {a.attempt}: its pods "
                                f"were restarted in place after a disruption{where}, resuming from the last "
                                f"checkpoint (disruption {disruptions_so_far(rec)} of {stage.disruption_limit})"))
        return None
    d.actions.append(DeleteJob(job.name))
    stopped = dataclasses.replace(job, phase="Failed", disruption="", message=(
        f"its pods were restarted in place {job.restarts} times, past disruptionLimit {stage.disruption_limit}"))
    return failed_attempt(d, dataclasses.replace(a, job=stopped), clock, 0)


def hung_attempt(d: Decision, a: Attempt, clock: Clock) -> Decision:
    """Delete the hung job; retry the stage from its checkpoint while retries are left, else fail it."""
    job = a.job
    d.actions.append(DeleteJob(job.name))
    set_condition(d.status, Condition.HUNG, True, Reason.NO_STEP_PROGRESS,
                  f"stage {a.stage.name} job {job.name}: {job.hung}", clock)
    d.status["hung"] = {"job": job.name, "stage": a.stage.name}
    if retries_left(a.stage, a.rec, a.attempt):
        return _retry(d, a, f"attempt {a.attempt} hung: {job.hung}", Reason.HUNG,
                      f"stage {a.stage.name} attempt {a.attempt} hung ({job.hung}); deleted job {job.name}; attempt "
                      f"{a.attempt + 1} resumes from the last checkpoint")
    a.rec.update(phase="Failed", completionTime=clock.now, message=f"attempt {a.attempt} hung: {job.hung}")
    d.events.append(warning(Reason.HUNG, f"stage {a.stage.name} attempt {a.attempt} hung ({job.hung}); deleted job "
                            f"{job.name}; no retries left"))
    set_phase(d, "Failed", Reason.HUNG, f"stage {a.stage.name} hung after {a.attempt} attempt(s): {job.hung}", clock)
    return d


def failed_attempt(d: Decision, a: Attempt, clock: Clock, backoff: int) -> Decision:
    job, stage, rec = a.job, a.stage, a.rec
    first = _record_failure(d, a, clock)
    if job.permanent:
        return _fail_stage(d, a, job.permanent, f"stage {stage.name} attempt {a.attempt} failed with an error that "
                           f"a retry cannot fix, not retried: {job.permanent}", Reason.PERMANENT_ERROR,
                           f"stage {stage.name}: {job.permanent}", clock)
    if job.oom is not None and stage.oom_policy == "adjust":
        return _after_oom(d, a, clock)
    if job.disruption and disruptions_so_far(rec) < stage.disruption_limit:
        if first:
            rec["disruptions"] = int(rec.get("disruptions") or 0) + 1
        where = f" on {', '.join(job.failed_nodes)}" if job.failed_nodes else ""
        return _retry(d, a, f"attempt {a.attempt} was disrupted{where}: {job.disruption}",
                      Reason.STAGE_DISRUPTED if first else "",
                      f"stage {stage.name} attempt {a.attempt} was disrupted{where} ({job.disruption}); attempt "
                      f"{a.attempt + 1} resumes from the last checkpoint without using retryLimit (disruption "
                      f"{disruptions_so_far(rec)} of {stage.disruption_limit})")
    if retries_left(stage, rec, a.attempt):
        delay = backoff_seconds(backoff, _counted(rec, a.attempt))
        now = parse_time(clock.now)
        due = rec.get("nextAttemptTime") or (format_time(now + timedelta(seconds=delay)) if delay and now else None)
        announce = (f"stage {stage.name} attempt {a.attempt} failed ({job.message}); attempt {a.attempt + 1} resumes "
                    f"from the last checkpoint" + (f" at {due}" if due else ""))
        if due and clock.now < due:  # RFC 3339 UTC times sort as strings
            rec.update(nextAttemptTime=due, message=f"attempt {a.attempt} failed: {job.message}; attempt "
                                                    f"{a.attempt + 1} starts at {due}")
            if first:
                d.events.append(warning(Reason.STAGE_RETRYING, announce))
            set_phase(d, "Running", Reason.STAGE_RUNNING, f"stage {stage.name} ({a.index + 1}/"
                      f"{len(d.status['stages'])}): attempt {a.attempt + 1} starts at {due}", clock)
            return d
        return _retry(d, a, f"attempt {a.attempt} failed: {job.message}", Reason.STAGE_RETRYING if first else "",
                      announce)
    return _fail_stage(d, a, job.message, f"stage {stage.name} attempt {a.attempt} failed ({job.message}); no "
                       f"retries left", Reason.JOB_FAILED, f"stage {stage.name} failed after {a.attempt} attempt(s): "
                       f"{job.message}", clock)
