"""spec.export: after the last stage, the export Job (vita-model export) writes the asked format to a folder on the
checkpoint volume; the state machine, the Job and the spec's checks."""



from testing.k8s_tools import assert_valid_builtin
from tests.test_operator_builder_crd import FULL
from vita_api.plan import check_spec
from vita_api.spec import VitaTrainingRunSpec
from vita_operator.jobs import export as exp
from vita_operator.core.decision import CreateStepJob, ObservedAttempt, ObservedEvaluation, ObservedJob
from vita_operator.core.state import decide

NOW = "2026-12-04T00:00:00Z"


def spec(**extra):
    return VitaTrainingRunSpec.model_validate({
        "model": {"base": "b"}, "data": {"registry": "r.yaml"}, "output": "runs/r", "preflight": {"enabled": False},
        "export": {}, **extra,
        "stages": [{"name": "s1", "preset": "vision_align", "datasetUse": "d"},
                   {"name": "s2", "preset": "multimodal_sft", "datasetUse": "d"}]})


DONE = [ObservedJob(f"run-{n}-1", n, 1, "Succeeded") for n in ("s1", "s2")]


def export_job(attempt, phase, message=""):
    return ObservedAttempt(f"run-export-{attempt}", attempt, phase, message)


def test_the_export_runs_after_the_last_stage_and_the_run_succeeds_with_its_folder():
    first = decide("run", 1, spec(), None, DONE, NOW)
    assert first.actions == [CreateStepJob("export", 1)] and first.status["phase"] == "Exporting"
    assert first.status["export"] == {"phase": "Running", "attempts": 1, "jobName": "run-export-1",
                                      "path": "/checkpoints/runs/r/export-vita15"}
    running = decide("run", 1, spec(), first.status, DONE, NOW, steps={"export": [export_job(1, "Running")]})
    assert not running.actions and running.status["phase"] == "Exporting"
    done = decide("run", 1, spec(), running.status, DONE, NOW, steps={"export": [export_job(1, "Succeeded")]})
    assert done.status["phase"] == "Succeeded" and done.status["export"]["phase"] == "Succeeded"
    assert ("Normal", "ExportSucceeded", "vita15 folder: /checkpoints/runs/r/export-vita15") in done.events


def test_a_failing_export_is_retried_then_fails_the_run_saying_how_to_export_by_hand():
    status = decide("run", 1, spec(), None, DONE, NOW).status
    seen = [export_job(1, "Failed", "exit code 1: MemoryError")]
    for attempt in (1, 2):
        d = decide("run", 1, spec(), status, DONE, NOW, steps={"export": seen})
        assert d.actions == [CreateStepJob("export", attempt + 1)] and d.status["phase"] == "Exporting"
        assert "ExportRetrying" in [e[1] for e in d.events]
        status, seen = d.status, seen + [export_job(attempt + 1, "Failed", "exit code 1: MemoryError")]
    failed = decide("run", 1, spec(), status, DONE, NOW, steps={"export": seen})
    assert failed.status["phase"] == "Failed" and not failed.actions
    cond = next(c for c in failed.status["conditions"] if c["type"] == "Failed")
    assert cond["reason"] == "ExportFailed" and "MemoryError" in cond["message"]
    assert "vita-model export /checkpoints/runs/r/s2 /checkpoints/runs/r/export-vita15 --format vita15" in \
        cond["message"]
    assert [s["phase"] for s in failed.status["stages"]] == ["Succeeded", "Succeeded"]  # the training stands


def test_export_then_benchmarks_then_succeeded():
    s = spec(evaluation={"tasks": ["mme"]})
    first = decide("run", 1, s, None, DONE, NOW)
    assert first.status["phase"] == "Exporting" and len(first.actions) == 2  # export and benchmarks, side by side
    exported = decide("run", 1, s, first.status, DONE, NOW, steps={"export": [export_job(1, "Succeeded")]},
                      evaluations=[ObservedEvaluation("run-eval-s2-1", "s2", "Running")])
    assert exported.status["phase"] == "Evaluating"
    done = decide("run", 1, s, exported.status, DONE, NOW,
                  evaluations=[ObservedEvaluation("run-eval-s2-1", "s2", "Succeeded", scores={"mme": {"x": 1.0}})])
    assert done.status["phase"] == "Succeeded"


def test_no_stage_may_take_the_export_jobs_name():
    bad = spec().model_copy(update={"stages": [spec().stages[0].model_copy(update={"name": "export"})]})
    assert any("no stage may be named 'export'" in p for p in check_spec(bad))


def test_the_export_job_is_a_valid_cpu_job_where_the_last_stage_ran(tmp_path):
    s = VitaTrainingRunSpec.model_validate({**FULL, "export": {"path": "/ckpt/releases/v1"}})
    job = exp.export_job("my-run", "ml", s, 2)
    assert_valid_builtin(job, tmp_path)  # the Job schema, offline
    (c,) = job["spec"]["template"]["spec"]["containers"]
    assert job["metadata"]["name"] == "my-run-export-2" and job["metadata"]["labels"][exp.LABEL_EXPORT] == "true"
    assert c["command"] == ["vita-model"]
    assert c["args"] == ["export", "/ckpt/runs/full/sft", "/ckpt/releases/v1", "--format", "vita15"]
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "64Gi"}  # no GPU
    assert {"name": "checkpoints", "mountPath": "/ckpt"} in c["volumeMounts"]


def test_an_export_after_an_adapter_only_stage_says_what_to_change():
    s = spec().model_copy(update={"stages": spec().stages[:1]})  # vision_align saves mm_projector.bin only
    assert any("spec.export needs a model: the last stage (s1) saves only the groups it trains" in p
               for p in check_spec(s))
    full = s.model_copy(update={"stages": [s.stages[0].model_copy(update={"args": {"save_full_model": True}})]})
    assert check_spec(full) == []
