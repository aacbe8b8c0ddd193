"""Table-driven tests of the operator's pure state machine."""

import dataclasses
import re

import pytest

from testing.operator_scenarios import BACKENDS, job_status
from vita_operator.jobs.backends import job_backends
from testing.status_schema import assert_valid_status
from vita_api.naming import LABEL_ATTEMPT, LABEL_STAGE
from vita_operator.core.decision import CreateJob, ObservedAttempt, ObservedJob, SetJobSuspend
from vita_operator.core.state import decide
from vita_api.spec import VitaTrainingRunSpec

NOW = "2026-11-26T00:00:00Z"


def spec(suspend=False, retry=1, stages=("s1", "s2", "s3")):
    presets = {"s1": "vision_align", "s2": "audio_align", "s3": "multimodal_sft"}
    return VitaTrainingRunSpec.model_validate({
        "model": {"base": "b"}, "data": {"registry": "r.yaml"}, "output": "o", "suspend": suspend,
        "preflight": {"enabled": False},  # test_preflight_* turn it on
        "stages": [{"name": s, "preset": presets.get(s, "multimodal_sft"), "datasetUse": "d", "retryLimit": retry}
                   for s in stages]})


def job(stage, attempt, phase, msg=""):
    return ObservedJob(f"run-{stage}-{attempt}", stage, attempt, phase, msg)


def rec(name, phase, attempts):
    return {"name": name, "phase": phase, "attempts": attempts, "jobName": f"run-{name}-{attempts}"}


def status(*records, phase="Running"):
    return {"phase": phase, "stages": list(records)}


# (case, spec, status, jobs) -> (actions, phase, stage phases, event reasons)
CASES = [
    ("new run creates stage 1 attempt 1", spec(), None, [],
     [CreateJob(0, 1, False)], "Running", ["Running", "Pending", "Pending"], ["StageStarted", "RunRunning"]),
    ("running job: nothing to do", spec(), status(rec("s1", "Running", 1)), [job("s1", 1, "Running")],
     [], "Running", ["Running", "Pending", "Pending"], []),
    ("success chains to the next stage", spec(), status(rec("s1", "Running", 1)), [job("s1", 1, "Succeeded")],
     [CreateJob(1, 1, False)], "Running", ["Succeeded", "Running", "Pending"], ["StageSucceeded", "StageStarted"]),
    ("last success finishes the run", spec(),
     status(rec("s1", "Succeeded", 1), rec("s2", "Succeeded", 1), rec("s3", "Running", 1)),
     [job("s3", 1, "Succeeded")], [], "Succeeded", ["Succeeded"] * 3, ["StageSucceeded", "RunSucceeded"]),
    ("failure within the retry limit retries", spec(retry=1), status(rec("s1", "Running", 1)),
     [job("s1", 1, "Failed", "OOMKilled")], [CreateJob(0, 2, False)], "Running", ["Running", "Pending", "Pending"],
     ["StageRetrying"]),
    ("exhausted retries fail the run", spec(retry=1), status(rec("s1", "Running", 2)),
     [job("s1", 1, "Failed"), job("s1", 2, "Failed", "BackoffLimitExceeded: x")], [], "Failed",
     ["Failed", "Pending", "Pending"], ["StageFailed", "RunFailed"]),
    ("retry limit 0 fails at once", spec(retry=0), status(rec("s1", "Running", 1)), [job("s1", 1, "Failed")],
     [], "Failed", ["Failed", "Pending", "Pending"], ["StageFailed", "RunFailed"]),
    ("suspend a running job", spec(suspend=True), status(rec("s1", "Running", 1)), [job("s1", 1, "Running")],
     [SetJobSuspend("run-s1-1", True)], "Suspended", ["Running", "Pending", "Pending"],
     ["StageSuspended", "RunSuspended"]),
    ("suspended run creates its next job suspended", spec(suspend=True), status(rec("s1", "Running", 1),
                                                                                phase="Suspended"),
     [job("s1", 1, "Succeeded")], [CreateJob(1, 1, True)], "Suspended", ["Succeeded", "Running", "Pending"],
     ["StageSucceeded", "StageStarted"]),
    ("resume a suspended run", spec(), status(rec("s1", "Running", 1), phase="Suspended"),
     [job("s1", 1, "Suspended")], [SetJobSuspend("run-s1-1", False)], "Running", ["Running", "Pending", "Pending"],
     ["StageResumed", "RunRunning"]),
    ("Kueue-held job is left alone, the run Queued", spec(), status(rec("s1", "Running", 1)),
     [job("s1", 1, "Suspended")], [], "Queued", ["Running", "Pending", "Pending"], ["RunQueued"]),
    ("unschedulable pods: Queued with the scheduler's reason", spec(), status(rec("s1", "Running", 1)),
     [ObservedJob("run-s1-1", "s1", 1, "Pending", stuck="pod run-s1-1-master-0: Unschedulable: 0/4 nodes")],
     [], "Queued", ["Running", "Pending", "Pending"], ["PodsStuck", "RunQueued"]),
    # operator restarts: status may be behind or ahead of the cluster
    ("restart: job exists but status never recorded it", spec(), None, [job("s1", 1, "Running")],
     [], "Running", ["Running", "Pending", "Pending"], ["RunRunning"]),
    ("restart: status recorded a job that was never created", spec(), status(rec("s1", "Running", 1)), [],
     [CreateJob(0, 1, False)], "Running", ["Running", "Pending", "Pending"], ["StageStarted"]),
    ("restart: retry job exists, status still at attempt 1", spec(retry=2), status(rec("s1", "Running", 1)),
     [job("s1", 1, "Failed"), job("s1", 2, "Running")], [], "Running", ["Running", "Pending", "Pending"], []),
    ("restart in Succeeded: nothing to do", spec(), {"phase": "Succeeded", "stages": []}, [], [], "Succeeded",
     None, []),
    ("restart in Failed: nothing to do", spec(), {"phase": "Failed", "stages": []}, [], [], "Failed", None, []),
    ("spec edit adds a stage after the run: finished runs stay finished", spec(stages=("s1", "s2", "s3", "s4")),
     {"phase": "Succeeded", "stages": [rec("s1", "Succeeded", 1)]}, [], [], "Succeeded", None, []),
    ("spec edit: a new later stage is picked up", spec(stages=("s1", "s2", "s3", "s4")),
     status(rec("s1", "Succeeded", 1), rec("s2", "Succeeded", 1), rec("s3", "Running", 1)),
     [job("s3", 1, "Succeeded")], [CreateJob(3, 1, False)], "Running", ["Succeeded"] * 3 + ["Running"],
     ["StageSucceeded", "StageStarted"]),
    ("spec edit: an unknown preset fails with InvalidSpec", spec(stages=("s1", "zz")), None, [], [], "Failed",
     None, ["RunFailed"]),
]


def as_backend_leaves_it(backend: str, sp, jobs: list[ObservedJob]) -> list[ObservedJob]:
    """Each job as it would be on the cluster: built by `backend`, given the status its Kubeflow controller writes
    for the job's phase, and read back through the backend (what the handlers do)."""
    b = job_backends()[backend]
    observed = []
    for j in jobs:
        raw = b.build("run", "ns", sp, [s.name for s in sp.stages].index(j.stage), j.attempt)
        raw["status"] = job_status(backend, j.phase)
        labels = raw["metadata"]["labels"]
        observed.append(ObservedJob(raw["metadata"]["name"], labels[LABEL_STAGE], int(labels[LABEL_ATTEMPT]),
                                    *b.phase(raw), stuck=j.stuck,  # what the pods say is not the job's
                                    nodes=b.node_count(raw), suspended=b.suspended(raw)))
        assert observed[-1].phase == j.phase and observed[-1].name == j.name
    return observed


@pytest.mark.parametrize("backend", [None, *BACKENDS])
@pytest.mark.parametrize("case,sp,st,jobs,actions,phase,stage_phases,events", CASES, ids=[c[0] for c in CASES])
def test_transitions(case, sp, st, jobs, actions, phase, stage_phases, events, backend):
    """The one scenario table: as plain observations, and on each backend's real job objects."""
    if case.endswith("InvalidSpec"):
        sp = sp.model_copy(update={"stages": [sp.stages[0], sp.stages[1].model_copy(update={"preset": "nope"})]})
    if backend:
        jobs = as_backend_leaves_it(backend, sp, jobs)
    d = decide("run", 3, sp, st, jobs, NOW, backend or "pytorchjob")
    if backend == "trainjob" and (st or {}).get("phase") not in ("Succeeded", "Failed"):
        # a failed TrainJob is first parked (suspended), so Trainer cannot run it again after its JobSet's TTL
        actions = [SetJobSuspend(j.name, True) for j in jobs if j.phase == "Failed"] + actions
    assert d.actions == actions
    assert d.status["phase"] == phase
    if st is None or st.get("phase") not in ("Succeeded", "Failed"):
        assert d.status["backend"] == (backend or "pytorchjob")
    assert d.status["observedGeneration"] == 3
    if stage_phases is not None:
        assert [r["phase"] for r in d.status["stages"]] == stage_phases
    assert [reason for _, reason, _ in d.events] == events
    assert_valid_status(d.status)  # what the CRD's generated status schema accepts
    # metav1.Condition: every condition, False ones included, carries a CamelCase reason
    for c in d.status.get("conditions", []):
        assert re.fullmatch(r"[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?", c["reason"]), c


def test_failed_reason_comes_from_the_job():
    d = decide("run", 1, spec(retry=0), status(rec("s1", "Running", 1)),
               [job("s1", 1, "Failed", "BackoffLimitExceeded: pod OOMKilled")], NOW)
    cond = {c["type"]: c for c in d.status["conditions"]}["Failed"]
    assert cond["status"] == "True" and cond["reason"] == "JobFailed" and "OOMKilled" in cond["message"]


def test_invalid_spec_reason_in_conditions():
    sp = spec()
    sp = sp.model_copy(update={"stages": [sp.stages[0], sp.stages[0]]})  # duplicate names
    d = decide("run", 1, sp, None, [], NOW)
    cond = {c["type"]: c for c in d.status["conditions"]}["Failed"]
    assert cond["reason"] == "InvalidSpec" and "unique" in cond["message"]


def test_decide_is_pure():
    st = status(rec("s1", "Running", 1))
    before = repr(st)
    decide("run", 1, spec(), st, [job("s1", 1, "Succeeded")], NOW)
    assert repr(st) == before


def test_checkpoint_paths_are_recorded():
    d = decide("run", 1, spec(), None, [], NOW)
    assert [r["checkpointPath"] for r in d.status["stages"]] == ["/checkpoints/o/s1", "/checkpoints/o/s2",
                                                                "/checkpoints/o/s3"]


def test_final_loss_is_recorded_when_the_stage_succeeds():
    done = ObservedJob("run-s1-1", "s1", 1, "Succeeded", "", final_loss=0.125, final_eval_loss=0.25)
    d = decide("run", 1, spec(), status(rec("s1", "Running", 1)), [done], NOW)
    assert d.status["stages"][0]["finalLoss"] == 0.125 and "finalLoss" not in d.status["stages"][1]
    assert d.status["stages"][0]["finalEvalLoss"] == 0.25
    d = decide("run", 1, spec(), status(rec("s1", "Running", 1)), [job("s1", 1, "Succeeded")], NOW)
    assert "finalLoss" not in d.status["stages"][0]  # not reported: left unset, not zero
    assert "finalEvalLoss" not in d.status["stages"][0]


def test_pods_that_cannot_start_are_reported_once_and_cleared_when_they_start():
    stuck = ObservedJob("run-s1-1", "s1", 1, "Running", "", None, "pod run-s1-1-master-0: ImagePullBackOff: no tag")
    first = decide("run", 1, spec(), status(rec("s1", "Running", 1)), [stuck], NOW)
    cond = {c["type"]: c for c in first.status["conditions"]}["PodsReady"]
    assert (cond["status"], cond["reason"]) == ("False", "PodsStuck") and "ImagePullBackOff" in cond["message"]
    assert [e[1] for e in first.events] == ["PodsStuck"] and first.events[0][0] == "Warning"
    assert first.status["phase"] == "Running" and not first.actions  # reported, not failed: it can heal
    again = decide("run", 1, spec(), first.status, [stuck], NOW)
    assert "PodsStuck" not in [e[1] for e in again.events]  # one event per cause, not per reconcile
    # the scheduler rewords its message on every try while a gang waits: the condition follows, no new event
    waiting = [dataclasses.replace(stuck, stuck=f"pod run-s1-1-master-0: Unschedulable: 0/{n} nodes are available")
               for n in (4, 5)]
    first_wait = decide("run", 1, spec(), again.status, waiting[:1], NOW)
    reworded = decide("run", 1, spec(), first_wait.status, waiting[1:], NOW)
    assert [e[1] for e in first_wait.events] == ["PodsStuck"] and "PodsStuck" not in [e[1] for e in reworded.events]
    assert "0/5 nodes" in {c["type"]: c for c in reworded.status["conditions"]}["PodsReady"]["message"]
    healed = decide("run", 1, spec(), again.status, [job("s1", 1, "Running")], NOW)
    assert {c["type"]: c["status"] for c in healed.status["conditions"]}["PodsReady"] == "True"
    plain = decide("run", 1, spec(), status(rec("s1", "Running", 1)), [job("s1", 1, "Running")], NOW)
    assert "PodsReady" not in {c["type"] for c in plain.status.get("conditions", [])}


def test_a_permanent_error_fails_the_run_without_retries():
    failed = ObservedJob("run-s1-1", "s1", 1, "Failed", "PyTorchJobFailed: job failed", None, "",
                         "ConfigError: --model_name_or_path /m has no config.json")
    d = decide("run", 1, spec(retry=3), status(rec("s1", "Running", 1)), [failed], NOW)
    assert not d.actions and d.status["phase"] == "Failed"
    assert d.status["stages"][0]["phase"] == "Failed" and "no config.json" in d.status["stages"][0]["message"]
    cond = {c["type"]: c for c in d.status["conditions"]}["Failed"]
    assert cond["reason"] == "PermanentError" and "ConfigError" in cond["message"]
    # an unknown failure (NCCL, OOM-kill, node loss) is still retried
    retried = decide("run", 1, spec(retry=3), status(rec("s1", "Running", 1)), [job("s1", 1, "Failed")], NOW)
    assert retried.actions == [CreateJob(0, 2, False)]


def test_the_default_backends_limits_apply_to_runs_that_name_none():
    """A run without trainer.backend on an operator whose default is trainjob: what a TrainJob cannot carry fails
    the run before any job exists, with the same message the CRD gives runs that name the backend."""
    sp = VitaTrainingRunSpec.model_validate({**spec().model_dump(by_alias=True, exclude_none=True),
                                             "scheduling": {"volcanoQueue": "gpu"}})
    assert decide("run", 1, sp, None, [], NOW, "pytorchjob").actions == [CreateJob(0, 1, False)]
    d = decide("run", 1, sp, None, [], NOW, "trainjob")
    cond = {c["type"]: c for c in d.status["conditions"]}["Failed"]
    assert not d.actions and cond["reason"] == "InvalidSpec" and "volcanoQueue needs the pytorchjob" in cond["message"]


def preflight_spec(max_bad=0.0):
    return spec().model_copy(update={"preflight": spec().preflight.model_copy(
        update={"enabled": True, "max_bad_fraction": max_bad})})


def summary(bad=0, samples=10, files=0, stage="s1"):
    return {"preflight": {stage: {"samples": samples, "badSamples": bad, "fileProblems": files},
                          "s2": {"samples": 5, "badSamples": 0, "fileProblems": 0}},
            "problemsByReason": {"missing_file": bad} if bad else {}, "report": "/checkpoints/o/preflight-report.json",
            "problems": [f"d.json: sample x{i} [image[0]] missing_file: gone" for i in range(bad)]}


def pf_job(attempt, phase, summary=None, permanent="", msg=""):
    return ObservedAttempt(f"run-preflight-{attempt}", attempt, phase, msg, summary, permanent)


def test_preflight_runs_before_the_first_gpu_job_and_passes_to_stage_one():
    from vita_operator.core.decision import CreateStepJob
    first = decide("run", 1, preflight_spec(), None, [], NOW)
    assert first.actions == [CreateStepJob("preflight", 1)]
    assert first.status["preflight"]["jobName"] == "run-preflight-1"
    assert first.status["phase"] == "Preflight"
    assert [e[1] for e in first.events] == ["PreflightStarted", "RunPreflight"]
    waiting = decide("run", 1, preflight_spec(), first.status, [], NOW, steps={"preflight": [pf_job(1, "Running")]})
    assert not waiting.actions and all(r["phase"] == "Pending" for r in waiting.status["stages"])
    passed = decide("run", 1, preflight_spec(), waiting.status, [], NOW,
                    steps={"preflight": [pf_job(1, "Succeeded", summary())]})
    assert passed.actions == [CreateJob(0, 1, False)]
    assert passed.status["preflight"]["phase"] == "Succeeded" and passed.status["preflight"]["samples"] == 15
    assert [e[1] for e in passed.events] == ["PreflightPassed", "StageStarted", "RunRunning"]
    # once passed it is not looked at again, and a run that started stages before preflight existed never runs it
    later = decide("run", 1, preflight_spec(), passed.status, [job("s1", 1, "Running")], NOW)
    assert not later.actions and later.status["preflight"]["phase"] == "Succeeded"
    old = decide("run", 1, preflight_spec(), status(rec("s1", "Running", 1)), [job("s1", 1, "Running")], NOW)
    assert not old.actions and "preflight" not in old.status


@pytest.mark.parametrize("max_bad,bad,files,fails", [
    (0.0, 1, 0, True), (0.0, 0, 0, False), (0.2, 2, 0, False), (0.2, 3, 0, True), (0.5, 0, 1, True)])
def test_preflight_problems_beyond_the_allowed_fraction_fail_the_run_without_a_gpu_job(max_bad, bad, files, fails):
    st = {"preflight": {"phase": "Running", "attempts": 1}}
    d = decide("run", 1, preflight_spec(max_bad), st, [], NOW,
               steps={"preflight": [pf_job(1, "Succeeded", summary(bad=bad, files=files))]})
    pf = d.status["preflight"]
    assert pf["badSamples"] == bad and pf["problemsByReason"] == ({"missing_file": bad} if bad else {})
    if fails:
        assert d.actions == [] and d.status["phase"] == "Failed" and pf["phase"] == "Failed"
        cond = {c["type"]: c for c in d.status["conditions"]}["Failed"]
        assert cond["reason"] == "PreflightFailed" and "preflight-report.json" in cond["message"]
        assert "PreflightFailed" in [e[1] for e in d.events]
        assert ("cannot be read" if files else f"{bad} of 10 samples have problems") in cond["message"]
        if bad:
            assert "sample x0" in cond["message"] and len(pf["problems"]) == bad
    else:
        assert d.actions == [CreateJob(0, 1, False)] and pf["phase"] == "Succeeded"


def test_a_preflight_job_that_fails_for_other_reasons_is_retried_then_fails_the_run():
    from vita_operator.core.decision import CreateStepJob
    from vita_operator.core.steps import PREFLIGHT_STEP
    st = {"preflight": {"phase": "Running", "attempts": 1}}
    d = decide("run", 1, preflight_spec(), st, [], NOW,
               steps={"preflight": [pf_job(1, "Failed", msg="BackoffLimitExceeded")]})
    assert d.actions == [CreateStepJob("preflight", 2)] and "PreflightRetrying" in [e[1] for e in d.events]
    # finished but no report read (e.g. the pod was evicted): another attempt too
    d = decide("run", 1, preflight_spec(), st, [], NOW, steps={"preflight": [pf_job(1, "Succeeded")]})
    assert d.actions == [CreateStepJob("preflight", 2)]
    last = PREFLIGHT_STEP.retries + 1
    st = {"preflight": {"phase": "Running", "attempts": last}}
    d = decide("run", 1, preflight_spec(), st, [], NOW,
               steps={"preflight": [pf_job(last, "Failed", msg="DeadlineExceeded")]})
    assert not d.actions and d.status["phase"] == "Failed"
    assert {c["type"]: c for c in d.status["conditions"]}["Failed"]["reason"] == "PreflightFailed"
    # a registry that does not exist is the run's own error: no retry
    st = {"preflight": {"phase": "Running", "attempts": 1}}
    permanent = "ConfigError: dataset registry /data/r.yaml does not exist"
    d = decide("run", 1, preflight_spec(), st, [], NOW, steps={"preflight": [pf_job(1, "Failed", permanent=permanent)]})
    assert not d.actions and "does not exist" in d.status["preflight"]["message"]


def oom_job(attempt, micro, accum, step=40):
    return ObservedJob(f"run-s1-{attempt}", "s1", attempt, "Failed", "PyTorchJobFailed: job failed",
                       oom={"step": step, "perDeviceTrainBatchSize": micro, "gradientAccumulationSteps": accum})


def test_out_of_memory_halves_the_micro_batch_until_one_without_using_the_retries():
    sp = spec(retry=0)
    d = decide("run", 1, sp, status(rec("s1", "Running", 1)), [oom_job(1, 8, 2)], NOW)
    assert d.actions == [CreateJob(0, 2, False, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4})]
    r = d.status["stages"][0]
    assert r["argOverrides"] == {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4}
    assert r["oomAdjustments"] == [{"attempt": 1, "step": 40, "perDeviceTrainBatchSize": 8,
                                    "gradientAccumulationSteps": 2, "nextPerDeviceTrainBatchSize": 4,
                                    "nextGradientAccumulationSteps": 4}]
    assert ("Warning", "OutOfMemory") == d.events[0][:2] and "per_device_train_batch_size 4" in d.events[0][2]
    # the job of attempt 2 exists; a restart of the operator before it runs keeps the overrides
    d2 = decide("run", 1, sp, d.status, [oom_job(1, 8, 2)], NOW)
    assert d2.actions == [CreateJob(0, 2, False, {"per_device_train_batch_size": 4, "gradient_accumulation_steps": 4})]
    # 4 -> 2 -> 1, then the stage fails with the history (retryLimit 0 was never used)
    d = decide("run", 1, sp, d.status, [oom_job(2, 4, 4)], NOW)
    d = decide("run", 1, sp, d.status, [oom_job(3, 2, 8)], NOW)
    assert d.actions == [CreateJob(0, 4, False, {"per_device_train_batch_size": 1, "gradient_accumulation_steps": 16})]
    d = decide("run", 1, sp, d.status, [oom_job(4, 1, 16)], NOW)
    assert not d.actions and d.status["phase"] == "Failed"
    cond = {c["type"]: c for c in d.status["conditions"]}["Failed"]
    assert cond["reason"] == "OutOfMemory" and "micro-batches tried: 8 -> 4 -> 2 -> 1" in cond["message"]


def test_after_an_oom_adjustment_other_retries_keep_the_smaller_batch_and_their_own_count():
    sp = spec(retry=1)
    d = decide("run", 1, sp, status(rec("s1", "Running", 1)), [oom_job(1, 4, 1)], NOW)
    smaller = {"per_device_train_batch_size": 2, "gradient_accumulation_steps": 2}
    d = decide("run", 1, sp, d.status, [job("s1", 2, "Failed", "node lost")], NOW)  # a retry, not an OOM
    assert d.actions == [CreateJob(0, 3, False, smaller)]
    d = decide("run", 1, sp, d.status, [job("s1", 3, "Failed", "node lost")], NOW)  # retryLimit 1 is used up
    assert not d.actions and d.status["phase"] == "Failed"


def test_oom_policy_fail_stops_the_stage_like_any_failure_without_retries_left():
    sp = VitaTrainingRunSpec.model_validate({**spec(retry=0).model_dump(by_alias=True, exclude_none=True)})
    sp.stages[0].oom_policy = "fail"
    d = decide("run", 1, sp, status(rec("s1", "Running", 1)), [oom_job(1, 8, 1)], NOW)
    assert not d.actions and d.status["phase"] == "Failed" and "oomAdjustments" not in d.status["stages"][0]


def test_a_hung_job_is_deleted_and_the_stage_retried_then_the_condition_clears():
    from vita_operator.core.decision import DeleteJob
    hung = ObservedJob("run-s1-1", "s1", 1, "Running", hung="no training step for 31m00s (step 50)")
    d = decide("run", 1, spec(retry=1), status(rec("s1", "Running", 1)), [hung], NOW)
    assert d.actions == [DeleteJob("run-s1-1"), CreateJob(0, 2, False)]
    assert ("Warning", "Hung") == d.events[0][:2] and "deleted job run-s1-1" in d.events[0][2]
    cond = {c["type"]: c for c in d.status["conditions"]}["Hung"]
    assert cond["status"] == "True" and "no training step" in cond["message"]
    pending = decide("run", 1, spec(retry=1), d.status, [job("s1", 2, "Pending")], NOW)
    assert {c["type"]: c for c in pending.status["conditions"]}["Hung"]["status"] == "True"  # until the retry runs
    running = decide("run", 1, spec(retry=1), d.status, [job("s1", 2, "Running")], NOW)
    assert {c["type"]: c for c in running.status["conditions"]}["Hung"]["status"] == "False"
    again = ObservedJob("run-s1-2", "s1", 2, "Running", hung="no training step for 31m00s (step 50)")
    failed = decide("run", 1, spec(retry=1), running.status, [again], NOW)
    assert failed.actions == [DeleteJob("run-s1-2")] and failed.status["phase"] == "Failed"
    assert {c["type"]: c for c in failed.status["conditions"]}["Failed"]["reason"] == "Hung"


def test_an_invalid_spec_and_a_blocked_run_are_decided_by_the_pure_core():
    from vita_operator.core.state import decide_blocked, decide_invalid
    d = decide_invalid(None, "stages.0.preset: Field required", NOW, 3)
    failed = {c["type"]: c for c in d.status["conditions"]}["Failed"]
    assert d.status["phase"] == "Failed" and failed["reason"] == "InvalidSpec" and failed["observedGeneration"] == 3
    assert [e[:2] for e in d.events] == [("Warning", "RunFailed")] and not d.actions
    assert decide_invalid(d.status, "again", NOW, 4).events == []  # a finished run stays as it is
    b = decide_blocked(None, "BackendNotEnabled", "trainer.backend trainjob is not enabled", NOW, 1)
    ready = {c["type"]: c for c in b.status["conditions"]}["Ready"]
    assert b.status["phase"] == "Blocked" and ready["status"] == "False" and ready["reason"] == "BackendNotEnabled"
    assert [e[1] for e in b.events] == ["BackendNotEnabled"]
    assert decide_blocked(b.status, "BackendNotEnabled", "trainer.backend trainjob is not enabled", NOW, 1).events == []


def test_a_refused_create_blocks_the_run_with_the_apis_message_until_the_job_exists():
    """An admission denial (a policy engine, Trainer's webhook) is on the run, not only in the
    operator's log; the same attempt is tried again, the run stays Blocked without new events, and the job's
    appearance ends it."""
    from vita_operator.core.state import decide_refused
    first = decide("run", 1, spec(), None, [], NOW)
    assert first.actions == [CreateJob(0, 1, False)]
    denial = 'admissionwebhook "policy" denied the request: image "evil.io/x" is not from registry.example.com'
    blocked = decide_refused(first.status, "run-s1-1", "PyTorchJob", denial, NOW, 1)
    assert blocked.status["phase"] == "Blocked"
    ready = {c["type"]: c for c in blocked.status["conditions"]}["Ready"]
    assert ready["status"] == "False" and ready["reason"] == "CreateRefused" and denial in ready["message"]
    assert [r for _, r, _ in blocked.events] == ["RunBlocked"]
    again = decide("run", 1, spec(), blocked.status, [], NOW)
    assert again.actions == [CreateJob(0, 1, False)] and again.status["phase"] == "Blocked" and not again.events
    assert not decide_refused(again.status, "run-s1-1", "PyTorchJob", denial, NOW, 1).events  # same message
    other = decide_refused(again.status, "run-s1-1", "PyTorchJob", "quota exceeded", NOW, 1)
    assert [r for _, r, _ in other.events] == ["CreateRefused"]
    created = decide("run", 1, spec(), other.status, [job("s1", 1, "Pending")], NOW)
    assert created.status["phase"] == "Running" and not created.actions
    assert {c["type"]: c for c in created.status["conditions"]}["Ready"]["status"] == "True"
    done = decide("run", 1, spec(), {**other.status, "phase": "Failed"}, [], NOW)
    assert decide_refused(done.status, "run-s1-1", "PyTorchJob", denial, NOW, 1).status["phase"] == "Failed"


def test_a_stage_renamed_after_its_job_started_does_not_orphan_the_job():
    from vita_operator.core.decision import DeleteJob
    renamed = spec(stages=("s1b", "s2", "s3"))
    d = decide("run", 2, renamed, status(rec("s1", "Running", 1)), [job("s1", 1, "Running")], NOW)
    assert d.actions[:1] == [DeleteJob("run-s1-1")] and CreateJob(0, 1, False) in d.actions
    assert "StageRemoved" in [r for _, r, _ in d.events]
    assert [r["name"] for r in d.status["stages"]] == ["s1b", "s2", "s3"]
    finished = decide("run", 2, renamed, status(rec("s1", "Succeeded", 1)), [job("s1", 1, "Succeeded")], NOW)
    assert not any(isinstance(a, DeleteJob) for a in finished.actions)  # a finished job holds no GPU


def test_a_stage_that_succeeds_deletes_its_failed_attempts():
    """Nothing (a TTL-deleted JobSet that Trainer recreates) can run a stale attempt again."""
    from vita_operator.core.decision import DeleteJob
    d = decide("run", 1, spec(retry=2), status(rec("s1", "Running", 3)),
               [job("s1", 1, "Failed"), job("s1", 2, "Failed"), job("s1", 3, "Succeeded")], NOW)
    assert d.actions == [DeleteJob("run-s1-1"), DeleteJob("run-s1-2"), CreateJob(1, 1, False)]
    done = decide("run", 1, spec(retry=2), d.status, [job("s1", 3, "Succeeded"), job("s2", 1, "Running")], NOW)
    assert not done.actions  # recorded done: not looked at again
