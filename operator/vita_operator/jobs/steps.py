"""What each batch step (core/steps.py) is on the cluster: the label its Jobs carry, how its Job is built, and what
its pods say. The controller observes and creates every step through this table."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vita_api.spec import VitaTrainingRunSpec

from . import export, initializers, preflight

PodRead = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class StepJobs:
    label: str  # "<label>=true" on its Jobs: one LIST finds a run's Jobs of this step
    build: Callable[[str, str, VitaTrainingRunSpec, int], dict[str, Any]]  # (run, namespace, spec, attempt) -> Job
    report: PodRead | None = None     # a finished pod's report (the step's summary); None if it left none
    permanent: PodRead | None = None  # an error no retry fixes; "" or None if not
    failure: PodRead | None = None    # a failed pod's reason, instead of the Job's condition


STEP_JOBS: dict[str, StepJobs] = {
    "initializers": StepJobs(initializers.LABEL_INITIALIZER, initializers.initializer_job, report=initializers.result,
                             permanent=initializers.permanent_failure),
    "preflight": StepJobs(preflight.LABEL_PREFLIGHT, preflight.preflight_job, report=preflight.summary,
                          permanent=preflight.permanent_failure),
    "export": StepJobs(export.LABEL_EXPORT, export.export_job, failure=export.failure),
}
