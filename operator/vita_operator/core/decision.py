"""What the state machine reads (the observed jobs) and what it answers (a Decision: new status, actions, events).
Plain data: the controller edge builds the Observed* values from the cluster and carries out the actions."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

JobPhase = Literal["Pending", "Running", "Suspended", "Succeeded", "Failed"]


@dataclass(frozen=True)
class ObservedJob:
    """One attempt of a stage (a PyTorchJob or TrainJob)."""
    name: str
    stage: str
    attempt: int
    phase: str          # JobPhase
    message: str = ""
    final_loss: float | None = None   # from the finished master pod, when the trainer reported it
    stuck: str = ""     # why its pods cannot start (ImagePullBackOff, missing Secret, Unschedulable); "" if not
    permanent: str = ""  # a failed job's error that another attempt cannot fix (bad config or data); "" if not
    oom: dict[str, Any] | None = None  # a failed job's out-of-memory report (termination.oom_of); None if not
    hung: str = ""      # why a running job counts as hung (progress.hang_reason); "" if it does not
    active_since: str | None = None  # creation or latest (re)admission (pods.active_since): hangs count from it
    final_eval_loss: float | None = None  # the stage's last validation loss, from the master pod's same report
    fabric: dict[str, Any] | None = None  # the stage's fabric probe (transport, busBandwidthGBps), same report
    nodes: int = 1      # how many pods the job should have (one per node)
    suspended: bool = False  # its spec asks the controller to hold it (Kueue's admission, or parked after failing)
    disruption: str = ""  # a failed job's disruption (pods.disruption_of): a lost node, eviction, preemption
    failed_nodes: tuple[str, ...] = ()  # the nodes of its failed pods
    placed_on: tuple[str, ...] = ()  # a running job's pods' nodes (recorded: the evidence if its pods vanish)
    restarts: int = 0   # in-place restarts of its pods so far (JobSet's restart attempt; PyTorchJobs have none)


@dataclass(frozen=True)
class ObservedAttempt:
    """One attempt of a batch step (steps.py: initializers, preflight, export), reporting in its pod's termination
    message."""
    name: str
    attempt: int
    phase: str                   # JobPhase
    message: str = ""
    report: dict[str, Any] | None = None  # what the finished pod said (the step's own summary); None if not read
    permanent: str = ""          # an error another attempt cannot fix (a bad registry, an unknown model name)
    stuck: str = ""              # why its pod cannot start (pods.stuck_reason); "" if it can


@dataclass(frozen=True)
class ObservedEvaluation:
    """The benchmark Job after one stage (spec.evaluation)."""
    name: str
    stage: str
    phase: str                   # JobPhase
    message: str = ""
    scores: dict[str, dict[str, float]] | None = None  # from the finished pod's termination message
    results: str = ""            # where lmms-eval's full results are
    error: str = ""              # the failed pod's own error (vita-model eval's message); "" if none
    stuck: str = ""              # why its pod cannot start; "" if it can


@dataclass(frozen=True)
class CreateJob:
    """The job of stage `index`, attempt `attempt`."""
    index: int
    attempt: int
    suspend: bool
    arg_overrides: dict[str, Any] = field(default_factory=dict)  # stage args this attempt runs with, not the spec's
    avoid_nodes: tuple[str, ...] = ()  # nodes this attempt's pods are kept off


@dataclass(frozen=True)
class CreateStepJob:
    """The Job of a batch step (steps.STEPS, by key), attempt `attempt`."""
    step: str
    attempt: int


@dataclass(frozen=True)
class CreateEvaluation:
    index: int


@dataclass(frozen=True)
class DeleteJob:
    name: str


@dataclass(frozen=True)
class SetJobSuspend:
    name: str
    suspend: bool


Action = CreateJob | CreateStepJob | CreateEvaluation | DeleteJob | SetJobSuspend
CREATES = (CreateJob, CreateStepJob, CreateEvaluation)


class Event(NamedTuple):
    """A Kubernetes Event on the run."""
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


def normal(reason: str, message: str) -> Event:
    return Event("Normal", reason, message)


def warning(reason: str, message: str) -> Event:
    return Event("Warning", reason, message)


@dataclass
class Decision:
    status: dict[str, Any]
    actions: list[Action] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)


@dataclass(frozen=True)
class Clock:
    """When a pass decides (RFC 3339) and the run's generation it decides for: what every condition records."""
    now: str
    generation: int
