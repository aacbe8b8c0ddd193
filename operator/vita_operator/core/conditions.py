"""Conditions and the run's phase, kept the way the Kubernetes API conventions ask: one condition per type,
lastTransitionTime moving only when its status changes, a reason on False conditions too. Pure, in place."""

from __future__ import annotations

from typing import Any

from vita_api.status import PHASE_CONDITIONS, Condition, Reason

from .decision import Clock, Decision, ObservedAttempt, ObservedJob, normal, warning


def set_condition(status: dict[str, Any], ctype: str, value: bool, reason: str, message: str, clock: Clock) -> None:
    """Update one standard condition in place; lastTransitionTime moves only when its status changes."""
    conds = status.setdefault("conditions", [])
    new = {"type": ctype, "status": "True" if value else "False", "reason": reason, "message": message,
           "observedGeneration": clock.generation}
    for c in conds:
        if c["type"] == ctype:
            new["lastTransitionTime"] = c.get("lastTransitionTime", clock.now) if c["status"] == new["status"] \
                else clock.now
            c.clear()
            c.update(new)
            return
    conds.append({**new, "lastTransitionTime": clock.now})


def condition(status: dict[str, Any], ctype: str) -> dict[str, Any] | None:
    """The status's condition of that type, if any."""
    return next((c for c in status.get("conditions", []) if c["type"] == ctype), None)


# What each phase says to the tools that read a resource's health from its conditions, as (Ready, Reconciling,
# Stalled): Ready for Argo CD's health check (the chart's argocd/health.lua), `kubectl wait --for=condition=Ready` and
# people; Reconciling and Stalled for kstatus (Flux, kpt, cli-utils). Ready means nothing needs a person: True
# while the run works or waits its turn and once it Succeeded; False when suspended, Blocked or Failed.
HEALTH: dict[str, tuple[bool, bool, bool]] = {
    **{p: (True, True, False) for p in ("Pending", "Initializing", "Preflight", "Queued", "Running", "Exporting",
                                        "Evaluating")},
    "Suspended": (False, False, False), "Blocked": (False, False, True),
    "Succeeded": (True, False, False), "Failed": (False, False, True)}


def enter_phase(status: dict[str, Any], phase: str, reason: str, message: str, clock: Clock) -> None:
    """The run's phase, message and health conditions; phaseTransitionTime moves only when the phase changes (the
    alerts on a run Blocked or Queued too long read it)."""
    if status.get("phase") != phase or not status.get("phaseTransitionTime"):
        status["phaseTransitionTime"] = clock.now
    status["phase"], status["message"] = phase, message
    ready, reconciling, stalled = HEALTH[phase]
    for ctype, value in ((Condition.READY, ready), (Condition.RECONCILING, reconciling),
                         (Condition.STALLED, stalled)):
        # a False condition says why too: the phase's reason where it is the cause (Blocked, Failed), else Run<Phase>
        # (a suspended run's phase reason says what it would be doing)
        if value or (ctype == Condition.READY and phase != "Suspended"):
            set_condition(status, ctype, value, reason, message, clock)
        else:
            set_condition(status, ctype, False, f"Run{phase}", f"the run is {phase}", clock)


def set_phase(d: Decision, phase: str, reason: str, message: str, clock: Clock) -> None:
    """The run's phase and message, mirrored into the phase conditions; a new phase is one Run<Phase> event."""
    if d.status.get("phase") != phase:
        d.events.append((warning if phase == "Failed" else normal)(f"Run{phase}", message))
    enter_phase(d.status, phase, reason, message, clock)
    for ctype in PHASE_CONDITIONS:
        if ctype == phase:
            set_condition(d.status, ctype, True, reason, message, clock)
        else:  # API conventions: a False condition says why too (a non-empty CamelCase reason)
            set_condition(d.status, ctype, False, f"Run{phase}", f"the run is {phase}", clock)


def pods_ready(d: Decision, job: ObservedJob | ObservedAttempt, clock: Clock) -> None:
    """Pods that cannot start leave Kubeflow's job "Running" forever: say so (condition PodsReady=False, one
    Warning event per new cause). Not a failure: a pushed image or a created Secret heals it. The condition keeps
    the latest message; the event is for a new cause only (its pod and reason), since the scheduler rewords its
    message on every try while a gang waits."""
    old = condition(d.status, Condition.PODS_READY)
    if job.stuck:
        if not old or old["status"] != "False" or _cause(old["message"]) != _cause(job.stuck):
            d.events.append(warning(Reason.PODS_STUCK, f"job {job.name}: {job.stuck}"))
        set_condition(d.status, Condition.PODS_READY, False, Reason.PODS_STUCK, job.stuck, clock)
    elif old and old["status"] == "False":
        set_condition(d.status, Condition.PODS_READY, True, Reason.PODS_STARTED, f"the pods of job {job.name} started",
                      clock)


def _cause(stuck: str) -> str:
    """What a stuck message is about: "pod NAME: Reason" (pods.stuck_reason's first two fields)."""
    return ": ".join(stuck.split(": ")[:2])


def still_refused(status: dict[str, Any], name: str) -> bool:
    """A Blocked run retrying the create that was refused: it stays Blocked until the job exists."""
    return status.get("phase") == "Blocked" and (status.get("refused") or {}).get("job") == name


def created(status: dict[str, Any], name: str, clock: Clock) -> None:
    """The job exists: a refusal recorded earlier is over."""
    if status.get("refused"):
        status["refused"] = None  # a merge patch's null removes it
    ready = condition(status, Condition.READY)
    if ready and ready["status"] == "False" and ready["reason"] == Reason.CREATE_REFUSED:
        set_condition(status, Condition.READY, True, Reason.JOB_CREATED, f"job {name} exists", clock)
