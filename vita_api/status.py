"""The `VitaTrainingRun` status: one typed model that the CRD's status schema is generated from (as the spec's is),
the run's phases, and the reasons its conditions and events give.

The operator builds status as plain dicts (it is patched as JSON); a fast test validates every status the state
table produces against the schema generated from this model, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any, Final, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

from .spec import JOB_BACKENDS, MAX_STAGES

# Pending: nothing created yet; Initializing: models and datasets are fetched (spec.initializers); Preflight: the
# data check runs; Queued: a job waits for Kueue or the scheduler; Running; Suspended (spec.suspend); Blocked: a
# person must act (a create refused, a missing claim or CRD); Exporting / Evaluating: every stage succeeded and the
# export Job (spec.export) or benchmark Jobs (spec.evaluation) still run.
Phase = Literal["Pending", "Initializing", "Preflight", "Queued", "Running", "Suspended", "Blocked", "Exporting",
                "Evaluating", "Succeeded", "Failed"]
PHASES: Final[tuple[str, ...]] = get_args(Phase)
TERMINAL: Final = ("Succeeded", "Failed")
StepPhase = Literal["Pending", "Running", "Succeeded", "Failed"]


class Reason:
    """Condition and event reasons (CamelCase, as the API conventions ask), in one place."""
    # the run's phase (conditions Running/Suspended/Succeeded/Failed, and the phase's own reason)
    STAGE_RUNNING = "StageRunning"
    JOB_QUEUED = "JobQueued"
    JOB_FAILED = "JobFailed"
    PERMANENT_ERROR = "PermanentError"
    OUT_OF_MEMORY = "OutOfMemory"
    HUNG = "Hung"
    INVALID_SPEC = "InvalidSpec"
    ALL_STAGES_SUCCEEDED = "AllStagesSucceeded"
    EVALUATING = "Evaluating"
    # stage events
    STAGE_STARTED = "StageStarted"
    STAGE_SUCCEEDED = "StageSucceeded"
    STAGE_RETRYING = "StageRetrying"
    STAGE_FAILED = "StageFailed"
    STAGE_SUSPENDED = "StageSuspended"
    STAGE_RESUMED = "StageResumed"
    STAGE_REMOVED = "StageRemoved"
    # conditions Ready / PodsReady / Hung / Evaluated
    CREATE_REFUSED = "CreateRefused"
    JOB_CREATED = "JobCreated"
    PODS_STUCK = "PodsStuck"
    PODS_STARTED = "PodsStarted"
    NO_STEP_PROGRESS = "NoStepProgress"
    PROGRESSING = "Progressing"
    EVALUATION_STARTED = "EvaluationStarted"
    EVALUATION_SUCCEEDED = "EvaluationSucceeded"
    EVALUATION_FAILED = "EvaluationFailed"
    FOREIGN_JOBS = "ForeignJobs"
    RUN_RESUMED = "RunResumed"
    STAGE_DISRUPTED = "StageDisrupted"
    STAGE_RESTARTED_IN_PLACE = "StageRestartedInPlace"
    NODE_AVOIDED = "NodeAvoided"
    UNKNOWN_FIELDS = "UnknownFields"
    SPEC_READ = "SpecRead"
    # the preflight verdict (the other batch steps' reasons come from their names: <Name>Started, ...)
    PREFLIGHT_PASSED = "PreflightPassed"


class Condition:
    """Condition types besides the phases' own (Running, Suspended, Succeeded, Failed)."""
    READY = "Ready"                # healthy: True while the run works or waits its turn, and once it Succeeded
    RECONCILING = "Reconciling"    # kstatus: the run is still working toward its end
    STALLED = "Stalled"            # kstatus: a person must act (Blocked, Failed)
    PODS_READY = "PodsReady"
    HUNG = "Hung"
    EVALUATED = "Evaluated"
    SPEC_UNDERSTOOD = "SpecUnderstood"


PHASE_CONDITIONS: Final = ("Running", "Suspended", "Succeeded", "Failed")


class _Status(BaseModel):
    model_config = ConfigDict(extra="forbid", alias_generator=to_camel, populate_by_name=True)


class StatusCondition(_Status):
    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    observed_generation: int | None = None


class OomAdjustment(_Status):
    attempt: int | None = Field(None, description="The attempt that ran out of memory")
    step: int | None = None
    per_device_train_batch_size: int | None = Field(None, description="It ran with this")
    gradient_accumulation_steps: int | None = None
    next_per_device_train_batch_size: int | None = Field(None, description="The next attempt's; unset when none "
                                                         "was left to try")
    next_gradient_accumulation_steps: int | None = None


class StageFailure(_Status):
    """One failed attempt: where its failed pods ran, and whether a disruption ended it."""
    attempt: int
    nodes: list[str] | None = Field(None, description="Nodes of its failed pods")
    disruption: str | None = Field(None, description="The disruption that ended it (DisruptionTarget's reason); "
                                   "unset for a failure of its own")
    flight_recorder: str | None = Field(None, description="A collective timed out: the folder of each rank's NCCL "
                                        "flight recorder dump (rank_<N>), on the checkpoint volume")
    message: str | None = None


class FabricResult(_Status):
    transport: str | None = Field(None, description="What the collectives used: ib (InfiniBand or RoCE), socket, "
                                  "gloo, a plugin's name, or unknown")
    bus_bandwidth_gbps: float | None = Field(None, alias="busBandwidthGBps", description="The all-reduce probe's "
                                             "bus bandwidth, GB/s")


class StageStatus(_Status):
    name: str | None = Field(None, max_length=30)
    phase: StepPhase | None = None
    job_name: str | None = Field(None, description="Job (PyTorchJob or TrainJob) of the latest attempt")
    attempts: int | None = Field(None, ge=0)
    start_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    checkpoint_path: str | None = Field(None, description="Where the stage writes checkpoints and its output")
    final_loss: float | None = Field(None, description="Last logged training loss, from the master pod's "
                                     "termination message; unset when not reported")
    fabric: FabricResult | None = Field(None, description="The stage's fabric probe (multi-node stages, or "
                                        "args.fabric_probe: on), from the same report")
    final_eval_loss: float | None = Field(None, description="Validation loss at the stage's end, from the same "
                                          "message; unset when the stage had no validation data")
    arg_overrides: dict[str, Any] | None = Field(None, description="Stage args the operator changed for the "
                                                 "attempts from now on (after running out of memory: the "
                                                 "micro-batch and the accumulation)")
    oom_adjustments: list[OomAdjustment] | None = Field(None, description="Each out-of-memory retry (oomPolicy "
                                                        "adjust)")
    nodes: list[str] | None = Field(None, description="Nodes of the current attempt's pods (a lost node's pods are "
                                    "deleted by pod garbage collection; this says where they ran)")
    disruptions: int | None = Field(None, ge=0, description="Attempts a disruption ended (not counted against "
                                    "retryLimit; capped by disruptionLimit)")
    restarts_in_place: int | None = Field(None, ge=0, description="Times the stage's pods were restarted in place "
                                          "after a disruption (the TrainJob runtime's JobSet failure policy: the "
                                          "job keeps its queue admission); counted with disruptions toward "
                                          "disruptionLimit")
    restarts_in_place_before: int | None = Field(None, ge=0, description="Of restartsInPlace, those of earlier "
                                                 "attempts")
    failures: list[StageFailure] | None = Field(None, max_length=20, description="The latest failed attempts")
    avoid_nodes: list[str] | None = Field(None, description="Nodes where two attempts failed: the next attempts "
                                          "are kept off them (node anti-affinity)")
    next_attempt_time: str | None = Field(None, json_schema_extra={"format": "date-time"},
                                          description="When the next attempt starts (retries back off)")
    message: str | None = None


class _StepStatus(_Status):
    """What every batch step around the stages records (preflight, initializers, export)."""
    phase: StepPhase | None = None
    attempts: int | None = Field(None, ge=0)
    job_name: str | None = None
    completion_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    message: str | None = None


class PreflightStatus(_StepStatus):
    """The data check before the first stage (spec.preflight)"""
    samples: int | None = None
    bad_samples: int | None = None
    problems_by_reason: dict[str, int] | None = None
    problems: list[str] | None = Field(None, max_length=20, description="The first problems; every one is in the "
                                       "report")
    report_path: str | None = Field(None, description="The full JSON report, on the checkpoint volume")


class DownloadProgress(_Status):
    bytes: int | None = None
    expected_bytes: int | None = None
    percent: int | None = None
    update_time: str | None = Field(None, json_schema_extra={"format": "date-time"})


class InitializersStatus(_StepStatus):
    """The downloads before preflight (spec.initializers)"""
    files: int | None = Field(None, description="Files of the run's models and datasets")
    bytes: int | None = Field(None, description="Their size")
    transferred_bytes: int | None = Field(None, description="What this run fetched (the rest was already there)")
    progress: DownloadProgress | None = Field(None, description="While it runs, read from the initializer pod "
                                              "every spec.progressIntervalSeconds")


class ExportStatus(_StepStatus):
    """The export after the last stage (spec.export)"""
    path: str | None = Field(None, description="The exported folder, on the checkpoint volume")


class FirstSeen(_Status):
    step: int | None = None
    time: str | None = Field(None, json_schema_extra={"format": "date-time"})


class ProgressStatus(_Status):
    """The current stage's progress, read from its rank-0 metrics endpoint every spec.progressIntervalSeconds"""
    stage: str | None = None
    job: str | None = None
    step: int | None = None
    total_steps: int | None = None
    percent: int | None = None
    summary: str | None = Field(None, description="step/total (%)")
    samples_per_second: float | None = None
    tokens_per_second: float | None = None
    eta: str | None = Field(None, description="Time left at the pace since the job was first seen")
    eta_seconds: int | None = None
    gpu_hours_so_far: float | None = Field(None, description="GPUs x time since the stage started")
    gpu_hours_estimate: float | None = Field(None, description="So far plus GPUs x eta")
    update_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    last_step_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    first_seen: FirstSeen | None = None
    eval_loss: float | None = Field(None, description="Validation loss at the stage's latest evaluation "
                                    "(--eval_strategy)")
    stale: bool | None = Field(None, description="The endpoint did not answer at the last read")
    stale_reason: str | None = None


class EvaluationStatus(_Status):
    """Benchmarks after one stage (spec.evaluation)"""
    stage: str | None = None
    phase: Literal["Running", "Succeeded", "Failed"] | None = None
    job_name: str | None = None
    start_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    completion_time: str | None = Field(None, json_schema_extra={"format": "date-time"})
    scores: dict[str, dict[str, float]] | None = Field(None, description="task -> metric -> value, computed by "
                                                       "lmms-eval")
    results_path: str | None = Field(None, description="lmms-eval's full results and per-sample logs, on the "
                                     "checkpoint volume")
    message: str | None = Field(None, description="Why it failed, or why its pod waits")


class Refusal(_Status):
    """A create the API server refused (admission policy, webhook, quota): the run is Blocked until it exists"""
    job: str = Field(description="The job the operator tries to create")
    kind: str | None = None
    message: str | None = Field(None, description="The API server's message")


class HungJob(_Status):
    """The job the hang rule deleted last (condition Hung says why)"""
    job: str
    stage: str | None = None


class VitaTrainingRunStatus(_Status):
    """Observed state, written by the operator."""
    initializers: InitializersStatus | None = None
    export: ExportStatus | None = None
    evaluations: list[EvaluationStatus] | None = None
    preflight: PreflightStatus | None = None
    progress: ProgressStatus | None = None
    phase: Phase | None = None
    message: str | None = Field(None, description="Why the run is in its phase, and what to change")
    phase_transition_time: str | None = Field(None, json_schema_extra={"format": "date-time"},
                                              description="When the run entered its phase")
    current_stage: str | None = None
    current_job: str | None = None
    backend: Literal[JOB_BACKENDS] | None = Field(  # type: ignore[valid-type]
        None, description="The job backend the run uses: spec.trainer.backend, else the operator's default when "
                          "the run started")
    observed_generation: int | None = None
    refused: Refusal | None = None
    hung: HungJob | None = None
    foreign_jobs: list[str] | None = Field(None, description="Jobs that carry this run's labels but that it does not "
                                           "control (ownerReferences): ignored, never adopted")
    conditions: list[StatusCondition] | None = None
    stages: list[StageStatus] | None = Field(None, max_length=MAX_STAGES)
