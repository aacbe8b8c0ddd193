"""Progress, ETA, GPU hours and the hang rule: pure functions over the trainer's exposition."""

from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import generate_latest

from vita_operator.core.progress import (eta_seconds, format_duration, hang_reason, next_progress, read_exposition,
                                    stale_progress)
from vita_trainer.train.metrics import TrainerMetrics

T0 = datetime(2026, 11, 27, 8, 0, tzinfo=timezone.utc)


def exposition(stage="mm", step=120, total=1000, sps=12.5, tps=40000.0, other_stage_step=None) -> str:
    """What the trainer's own registry serves (the real metric names and labels)."""
    m = TrainerMetrics()
    m.step.labels(stage).set(step)
    m.max_steps.labels(stage).set(total)
    m.samples_per_second.labels(stage).set(sps)
    m.tokens_per_second.labels(stage).set(tps)
    if other_stage_step is not None:
        m.step.labels("other").set(other_stage_step)
    return generate_latest(m.registry).decode()


def test_the_trainers_exposition_reads_into_the_stages_gauges():
    g = read_exposition(exposition(other_stage_step=999), "mm")
    assert g == {"step": 120, "totalSteps": 1000, "samplesPerSecond": 12.5, "tokensPerSecond": 40000.0}
    assert read_exposition(exposition(), "not-this-stage") == {}


@pytest.mark.parametrize("seconds,text", [(0, "0s"), (44.6, "45s"), (61, "1m01s"), (3599, "59m59s"),
                                          (3600 * 3 + 5 * 60, "3h05m"), (86400 * 2 + 3600 * 4 + 59, "2d4h"),
                                          (-3, "0s")])
def test_durations_print_as_kubectl_does(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("step,total,first_step,elapsed,expected", [
    (100, 1000, 0, 1000, 9000.0),     # 10 s/step, 900 steps left
    (150, 1000, 100, 100, 1700.0),    # pace since the job was first seen (a resumed attempt starts at 100)
    (1000, 1000, 0, 500, 0.0),        # done
    (100, 100, 100, 10, None),        # no step since first seen: no pace yet
    (5, 0, 0, 10, None),              # total unknown
])
def test_eta_is_the_remaining_steps_at_the_observed_pace(step, total, first_step, elapsed, expected):
    assert eta_seconds(step, total, first_step, T0, T0 + timedelta(seconds=elapsed)) == expected


def test_progress_carries_the_pace_window_and_gpu_hours_within_one_job():
    first = next_progress(None, read_exposition(exposition(step=100), "mm"), stage="mm", job="r-mm-1", now=T0,
                          stage_start=T0 - timedelta(hours=1), gpus=16)
    assert first["summary"] == "100/1000 (10%)" and "eta" not in first and first["gpuHoursSoFar"] == 16.0
    later = next_progress(first, read_exposition(exposition(step=130), "mm"), stage="mm", job="r-mm-1",
                          now=T0 + timedelta(seconds=300), stage_start=T0 - timedelta(hours=1), gpus=16)
    assert later["etaSeconds"] == 870 * 10 and later["eta"] == "2h25m"  # 30 steps in 300 s
    assert later["gpuHoursSoFar"] == pytest.approx(16 * (1 + 300 / 3600), abs=0.01)
    assert later["gpuHoursEstimate"] == pytest.approx(later["gpuHoursSoFar"] + 16 * 8700 / 3600, abs=0.01)
    retry = next_progress(later, read_exposition(exposition(step=130), "mm"), stage="mm", job="r-mm-2",
                          now=T0 + timedelta(seconds=400), stage_start=T0, gpus=16)
    assert retry["firstSeen"] == {"step": 130, "time": "2026-11-27T08:06:40Z"} and "eta" not in retry


def test_an_unreachable_endpoint_marks_progress_stale_and_keeps_the_rest():
    known = next_progress(None, {"step": 7, "totalSteps": 10}, stage="mm", job="j", now=T0, stage_start=None, gpus=0)
    stale = stale_progress(known, "j", T0 + timedelta(seconds=30), "connection refused")
    assert stale["stale"] and stale["step"] == 7 and stale["lastStepTime"] == known["lastStepTime"]
    assert stale_progress(known, "other-job", T0, "x") == {"job": "other-job", "stale": True, "staleReason": "x",
                                                          "updateTime": "2026-11-27T08:00:00Z"}


def test_a_job_is_hung_when_its_step_has_not_moved_for_the_timeout():
    p = next_progress(None, {"step": 50, "totalSteps": 100}, stage="mm", job="j", now=T0, stage_start=None, gpus=0)
    same = next_progress(p, {"step": 50, "totalSteps": 100}, stage="mm", job="j", now=T0 + timedelta(seconds=600),
                         stage_start=None, gpus=0)
    assert same["lastStepTime"] == p["lastStepTime"]
    assert hang_reason(same, "j", T0 + timedelta(seconds=599), 600) == ""
    assert "no training step for 10m00s (step 50" in hang_reason(same, "j", T0 + timedelta(seconds=600), 600)
    assert hang_reason(same, "j", T0 + timedelta(hours=9), None) == ""          # off
    assert hang_reason(same, "another-job", T0 + timedelta(hours=9), 600) == ""  # progress of an older job
    moved = next_progress(same, {"step": 51, "totalSteps": 100}, stage="mm", job="j",
                          now=T0 + timedelta(seconds=700), stage_start=None, gpus=0)
    assert hang_reason(moved, "j", T0 + timedelta(seconds=900), 600) == ""


def test_progress_is_written_as_a_merge_patch_that_drops_what_the_new_reading_lacks():
    from vita_operator.core.progress import as_merge_patch
    old = {"job": "j-1", "step": 9, "eta": "5m", "etaSeconds": 300, "firstSeen": {"step": 1, "time": "t0"}}
    new = {"job": "j-2", "stale": True, "firstSeen": {"step": 9}}
    assert as_merge_patch(old, new) == {"step": None, "eta": None, "etaSeconds": None, "job": "j-2", "stale": True,
                                        "firstSeen": {"step": 9, "time": None}}
    assert as_merge_patch(None, new) == new


def test_a_readmitted_job_restarts_the_hang_clock():
    """Kueue suspends a job (preemption) and re-admits it an hour later: the last step read before
    the suspension is old, but the job has only just started again, so it is not hung."""
    from datetime import datetime, timezone

    from vita_operator.jobs.pods import active_since
    from vita_operator.core.progress import hang_reason
    progress = {"job": "r-s1-1", "step": 40, "lastStepTime": "2026-12-01T10:00:00Z",
                "updateTime": "2026-12-01T11:10:00Z"}
    now = datetime(2026, 12, 1, 11, 10, tzinfo=timezone.utc)
    job = {"metadata": {"creationTimestamp": "2026-12-01T09:00:00Z"},
           "status": {"conditions": [
               {"type": "Suspended", "status": "False", "lastTransitionTime": "2026-12-01T11:05:00Z"},
               {"type": "Running", "status": "True", "lastTransitionTime": "2026-12-01T11:06:00Z"}]}}
    assert active_since(job) == "2026-12-01T11:06:00Z"
    assert hang_reason(progress, "r-s1-1", now, 1800) != ""                        # the old rule: hung at once
    assert hang_reason(progress, "r-s1-1", now, 1800, active_since(job)) == ""   # 4 minutes since re-admission
    later = datetime(2026, 12, 1, 11, 40, tzinfo=timezone.utc)
    progress["updateTime"] = "2026-12-01T11:40:00Z"  # read again then, the step still 40
    assert "no training step for" in hang_reason(progress, "r-s1-1", later, 1800, active_since(job))
    assert active_since({"metadata": {"creationTimestamp": "2026-12-01T09:00:00Z"}}) == "2026-12-01T09:00:00Z"


def test_hang_detection_is_on_by_default():
    from vita_api.spec import VitaTrainingRunSpec
    spec = VitaTrainingRunSpec.model_validate({"model": {"base": "b"}, "data": {"registry": "r"}, "output": "o",
                                               "stages": [{"name": "s", "preset": "text_sft", "datasetUse": "d"}]})
    assert spec.hang_timeout_seconds == 3600


def test_only_successful_reads_since_the_operator_started_make_a_hang():
    """A trainer whose /metrics stops answering (a tenant's default-deny NetworkPolicy, a CNI
    fault) is stale, never hung; an operator that was down longer than the timeout counts from its own start."""
    p = next_progress(None, {"step": 50, "totalSteps": 100}, stage="mm", job="j", now=T0, stage_start=None, gpus=0)
    unanswered = stale_progress(p, "j", T0 + timedelta(hours=3), "connection refused")
    assert hang_reason(unanswered, "j", T0 + timedelta(hours=3), 600) == ""
    # the last good read was at T0: silence since then is not evidence
    assert hang_reason(p, "j", T0 + timedelta(hours=3), 600) == ""
    restarted = T0 + timedelta(hours=2)  # the operator was down two hours
    first_read = next_progress(p, {"step": 50, "totalSteps": 100}, stage="mm", job="j",
                               now=restarted + timedelta(seconds=30), stage_start=None, gpus=0)
    assert hang_reason(first_read, "j", restarted + timedelta(seconds=30), 600, not_before=restarted) == ""
    assert hang_reason(first_read, "j", restarted + timedelta(seconds=30), 600) != ""  # without the restart clock
    later = next_progress(first_read, {"step": 50, "totalSteps": 100}, stage="mm", job="j",
                          now=restarted + timedelta(seconds=601), stage_start=None, gpus=0)
    assert "no training step for 10m01s" in hang_reason(later, "j", restarted + timedelta(seconds=601), 600,
                                                          not_before=restarted)


def test_a_reading_is_written_only_when_it_says_something_new(monkeypatch):
    """A healthy trainer's step moves and each reading is written; a reading that differs only in what follows the
    clock (the read time, the ETA, GPU hours) is not; stale is written once; a hang is written, since the reconcile
    that acts on it reads status."""
    from vita_operator.controller import kube
    from vita_operator.controller import progress_loop as loop
    from vita_operator.core.progress import format_time, worth_writing
    now = datetime.now(timezone.utc)
    run = {"metadata": {"namespace": "ns", "name": "r"},
           "spec": {"model": {"base": "b"}, "data": {"registry": "r"}, "output": "o", "hangTimeoutSeconds": 600,
                    "stages": [{"name": "s1", "preset": "text_sft", "datasetUse": "d"}]},
           "status": {"phase": "Running", "currentStage": "s1", "currentJob": "r-s1-1"}}
    writes = []

    def patch_status(namespace, name, body, *_):
        writes.append(body["progress"])
        run["status"]["progress"] = {k: v for k, v in {**run["status"].get("progress", {}),
                                                       **body["progress"]}.items() if v is not None}
    monkeypatch.setattr(kube, "patch_status", patch_status)
    monkeypatch.setattr(kube, "get_run", lambda namespace, name: run)

    def reading(step, at, **extra):
        return {"job": "r-s1-1", "stage": "s1", "step": step, "totalSteps": 100, "stale": False,
                "updateTime": format_time(at), "lastStepTime": format_time(at - timedelta(seconds=30)),
                "eta": f"{step}m", **extra}
    earlier = now - timedelta(minutes=5)  # status says when it was read: long enough ago to be due again
    stale = {"job": "r-s1-1", "step": 12, "stale": True, "staleReason": "connection refused",
             "updateTime": format_time(earlier)}
    hung = {**reading(12, earlier), "lastStepTime": format_time(now - timedelta(hours=2))}
    readings = [reading(10, earlier), reading(10, earlier, eta="9m"), reading(12, earlier), stale, stale, hung, hung]
    monkeypatch.setattr(loop, "read_progress", lambda *a: readings.pop(0))
    monkeypatch.setattr(loop, "STARTED", now - timedelta(hours=3))
    written = []
    while readings:
        loop._last_read.clear()  # due at once (the interval is the loop's business)
        before = len(writes)
        assert loop._progress_one(run, lambda r: None, lambda r: None)
        written.append(len(writes) > before)
    assert written == [True, False, True, True, False, True, True]
    assert not worth_writing({"step": 1, "eta": "1m", "updateTime": "a"}, {"step": 1, "eta": "2m", "updateTime": "b"})
    assert worth_writing({"step": 1}, {"step": 1, "stale": True})
