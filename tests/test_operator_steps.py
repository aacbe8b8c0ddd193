"""The batch steps (core/steps.py) as one declaration each: every step is created, refused, retried and reported
the same way, and every list keyed by step derives from the declarations. Every status here is checked against the
CRD's generated status schema."""

from __future__ import annotations

import pytest

from testing.status_schema import assert_valid_status
from vita_api.spec import VitaTrainingRunSpec
from vita_api.status import PHASES
from vita_operator.core.decision import CreateJob, CreateStepJob, ObservedAttempt, ObservedEvaluation, ObservedJob
from vita_operator.core.state import decide, decide_refused
from vita_operator.core.steps import CREATING_PHASES, STEP_BY_KEY, STEPS
from vita_operator.jobs.steps import STEP_JOBS

NOW = "2026-12-07T00:00:00Z"


def spec() -> VitaTrainingRunSpec:
    return VitaTrainingRunSpec.model_validate({
        "model": {"base": "models/VITA-1.5"}, "data": {"registry": "registry.yaml"}, "output": "o",
        "initializers": {"models": [{"name": "vita-1.5"}]}, "export": {},
        "evaluation": {"tasks": ["mme"], "afterStages": ["s1"]},
        "stages": [{"name": "s1", "preset": "vision_align", "datasetUse": "d"},
                   {"name": "s2", "preset": "multimodal_sft", "datasetUse": "d"}]})


PREFLIGHT_OK = {"preflight": {"s1": {"samples": 10, "badSamples": 0}, "s2": {"samples": 5, "badSamples": 0}},
                "problemsByReason": {}, "problems": [], "report": "/ckpt/o/preflight-report.json"}
INIT_OK = {"files": 3, "bytes": 300, "transferred": 300}


def test_every_step_is_declared_on_both_sides_and_its_phase_is_a_run_phase():
    assert set(STEP_JOBS) == set(STEP_BY_KEY)
    for step in STEPS:
        assert step.phase in PHASES and step.phase in CREATING_PHASES
        assert STEP_JOBS[step.key].label.startswith("vita.training.dev/")


def walk():
    """A whole run, pass by pass: initializers, preflight, two stages (the first evaluated), export, Succeeded."""
    sp, st, out = spec(), None, []

    def step(jobs=(), evaluations=(), **steps):
        nonlocal st
        d = decide("run", 2, sp, st, list(jobs), NOW, evaluations=list(evaluations), steps=steps)
        out.append(d)
        st = d.status
        return d

    assert step().actions == [CreateStepJob("initializers", 1)]
    step(initializers=[ObservedAttempt("run-initialize-1", 1, "Running")])
    assert step(initializers=[ObservedAttempt("run-initialize-1", 1, "Succeeded", report=INIT_OK)]).actions == \
        [CreateStepJob("preflight", 1)]
    assert step(preflight=[ObservedAttempt("run-preflight-1", 1, "Succeeded", report=PREFLIGHT_OK)]).actions == \
        [CreateJob(0, 1, False)]
    s1 = ObservedJob("run-s1-1", "s1", 1, "Succeeded", final_loss=1.5)
    assert CreateJob(1, 1, False) in step([s1]).actions
    mme = ObservedEvaluation("run-evaluation-s1-1", "s1", "Succeeded", scores={"mme": {"score": 1400.0}})
    s2 = ObservedJob("run-s2-1", "s2", 1, "Succeeded")
    assert step([s1, s2], [mme]).actions == [CreateStepJob("export", 1)]
    assert st["phase"] == "Exporting"
    step([s1, s2], [mme], export=[ObservedAttempt("run-export-1", 1, "Failed", "DeadlineExceeded")])
    assert st["export"]["attempts"] == 2
    step([s1, s2], [mme], export=[ObservedAttempt("run-export-2", 2, "Succeeded")])
    assert st["phase"] == "Succeeded"
    return out


def test_a_whole_run_writes_only_statuses_the_crd_accepts():
    for d in walk():
        assert_valid_status(d.status)


@pytest.mark.parametrize("key", [s.key for s in STEPS])
def test_a_refused_step_job_blocks_the_run_with_the_apis_message_until_it_exists(key):
    """Every batch step's refused Job blocks the run with the API's message, retried quietly until it exists."""
    decisions = walk()
    before = next(d for d in decisions if CreateStepJob(key, 1) in d.actions)
    name = f"run-{STEP_BY_KEY[key].job_kind}-1"
    denial = f'admission webhook "policy" denied the request: job {name} may not run here'
    blocked = decide_refused(before.status, name, "Job", denial, NOW, 2)
    assert blocked.status["phase"] == "Blocked" and denial in blocked.status["message"]
    assert blocked.status["refused"] == {"job": name, "kind": "Job", "message": denial}
    ready = {c["type"]: c for c in blocked.status["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "CreateRefused"
    assert_valid_status(blocked.status)
    # the next pass tries the same Job again and stays Blocked, quietly
    index = decisions.index(before)
    previous = decisions[index - 1].status if index else None
    jobs = [ObservedJob(f"run-{s}-1", s, 1, "Succeeded") for s in ("s1", "s2")] if key == "export" else []
    again = decide("run", 2, spec(), blocked.status, jobs, NOW,
                   evaluations=[ObservedEvaluation("run-evaluation-s1-1", "s1", "Succeeded",
                                                   scores={"mme": {"score": 1.0}})] if key == "export" else [])
    assert CreateStepJob(key, 1) in again.actions and again.status["phase"] == "Blocked" and not again.events
    # once the Job exists, the refusal is over
    seen = decide("run", 2, spec(), again.status, jobs, NOW, steps={key: [ObservedAttempt(name, 1, "Running")]})
    assert seen.status["refused"] is None and seen.status["phase"] == STEP_BY_KEY[key].phase
    assert {c["type"]: c for c in seen.status["conditions"]}["Ready"]["status"] == "True"
    assert_valid_status(seen.status)
    assert previous is None or previous.get("phase") != "Blocked"


@pytest.mark.parametrize("key", [s.key for s in STEPS])
def test_every_step_waits_in_a_queue_visibly(key):
    decisions = walk()
    before = next(d for d in decisions if CreateStepJob(key, 1) in d.actions)
    name = f"run-{STEP_BY_KEY[key].job_kind}-1"
    jobs = [ObservedJob(f"run-{s}-1", s, 1, "Succeeded") for s in ("s1", "s2")] if key == "export" else []
    evals = [ObservedEvaluation("run-evaluation-s1-1", "s1", "Succeeded", scores={"mme": {"score": 1.0}})] \
        if key == "export" else []
    queued = decide("run", 2, spec(), before.status, jobs, NOW, evaluations=evals,
                    steps={key: [ObservedAttempt(name, 1, "Suspended", "no quota")]})
    assert queued.status["phase"] == "Queued" and "no quota" in queued.status["message"]
    assert_valid_status(queued.status)
