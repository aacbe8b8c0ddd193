"""Benchmarks after a stage (spec.evaluation): the state machine, the evaluation Job, the termination message
that carries the scores, their Prometheus series, and the reduction of lmms-eval's results to scores."""

import json

from prometheus_client import generate_latest

from testing.k8s_tools import assert_valid_builtin
from tests.test_operator_builder_crd import FULL
from vita_api.spec import VitaTrainingRunSpec
from vita_api.termination import MAX_BYTES, evaluation_message, evaluation_of
from vita_operator.jobs import evaluation as ev
from vita_operator.controller import metrics
from vita_operator.core.decision import CreateEvaluation, CreateJob, ObservedEvaluation, ObservedJob
from vita_operator.core.state import decide, decide_evaluation_refused

NOW = "2026-12-04T00:00:00Z"
SCORES = {"mme": {"mme_perception_score": 1412.5, "mme_cognition_score": 301.0}}


def spec(**evaluation):
    return VitaTrainingRunSpec.model_validate({
        "model": {"base": "b"}, "data": {"registry": "r.yaml"}, "output": "o", "preflight": {"enabled": False},
        "evaluation": {"tasks": ["mme"], **evaluation},
        "stages": [{"name": "s1", "preset": "vision_align", "datasetUse": "d"},
                   {"name": "s2", "preset": "multimodal_sft", "datasetUse": "d"}]})


def done(*names):
    return [ObservedJob(f"run-{n}-1", n, 1, "Succeeded") for n in names]


def evaluation(stage, phase, **kw):
    return ObservedEvaluation(f"run-eval-{stage}-1", stage, phase, **kw)


def test_an_evaluation_starts_beside_the_next_stage():
    s = spec(afterStages=["s1"])
    d = decide("run", 1, s, {"stages": [{"name": "s1", "phase": "Running", "attempts": 1}]},
               done("s1"), NOW)
    assert CreateEvaluation(0) in d.actions and CreateJob(1, 1, False) in d.actions  # the next stage does not wait
    (rec,) = d.status["evaluations"]
    assert rec["stage"] == "s1" and rec["phase"] == "Running" and rec["jobName"] == "run-eval-s1-1"
    assert rec["resultsPath"] == "/checkpoints/o/s1/eval" and d.status["phase"] == "Running"
    assert "EvaluationStarted" in [e[1] for e in d.events]


def test_without_after_stages_the_last_stage_is_evaluated_and_the_run_waits_for_it():
    s = spec()
    first = decide("run", 1, s, None, done("s1", "s2"), NOW)
    assert [a for a in first.actions if isinstance(a, CreateEvaluation)] == [CreateEvaluation(1)]
    assert first.status["phase"] == "Evaluating" and "after stage(s) s2" in first.status["message"]
    # a restart before the Job shows up: asked again (the name is fixed, so a second create is a no-op)
    again = decide("run", 1, s, first.status, done("s1", "s2"), NOW)
    assert CreateEvaluation(1) in again.actions and again.status["phase"] == "Evaluating"
    running = decide("run", 1, s, first.status, done("s1", "s2"), NOW, evaluations=[evaluation("s2", "Running")])
    assert not running.actions and running.status["phase"] == "Evaluating"
    scored = decide("run", 1, s, running.status, done("s1", "s2"), NOW,
                    evaluations=[evaluation("s2", "Succeeded", scores=SCORES, results="/ckpt/o/s2/eval/results.json")])
    assert scored.status["phase"] == "Succeeded"
    (rec,) = scored.status["evaluations"]
    assert rec["phase"] == "Succeeded" and rec["scores"] == SCORES and rec["resultsPath"].endswith("results.json")
    evaluated = next(c for c in scored.status["conditions"] if c["type"] == "Evaluated")
    assert evaluated["status"] == "True"
    assert ("Normal", "EvaluationSucceeded", "stage s2: mme mme_perception_score 1412, mme_cognition_score 301") \
        in scored.events


def test_a_failed_evaluation_is_reported_and_the_run_still_succeeds():
    s = spec()
    start = decide("run", 1, s, None, done("s1", "s2"), NOW)
    failed = decide("run", 1, s, start.status, done("s1", "s2"), NOW, evaluations=[evaluation(
        "s2", "Failed", message="BackoffLimitExceeded", error="ConfigError: unknown lmms-eval task(s): mmee")])
    assert failed.status["phase"] == "Succeeded"
    assert "the evaluation after stage(s) s2 failed" in failed.status["message"]
    (rec,) = failed.status["evaluations"]
    assert rec["phase"] == "Failed" and "unknown lmms-eval task" in rec["message"]
    cond = next(c for c in failed.status["conditions"] if c["type"] == "Evaluated")
    assert cond["status"] == "False" and cond["reason"] == "EvaluationFailed"
    assert any(e[0] == "Warning" and e[1] == "EvaluationFailed" for e in failed.events)
    # a finished pod that left no scores is a failure too, with the Job's own reason
    empty = decide("run", 1, s, start.status, done("s1", "s2"), NOW,
                   evaluations=[evaluation("s2", "Failed", message="DeadlineExceeded: Job was active too long")])
    assert "DeadlineExceeded" in empty.status["evaluations"][0]["message"]


def test_a_refused_evaluation_job_fails_that_evaluation_not_the_run():
    start = decide("run", 1, spec(), None, done("s1", "s2"), NOW)
    refused = decide_evaluation_refused(start.status, "s2", 'exceeded quota: gpu, requested: nvidia.com/gpu=1', NOW)
    assert refused.status["evaluations"][0]["phase"] == "Failed"
    assert "exceeded quota" in refused.status["evaluations"][0]["message"]
    after = decide("run", 1, spec(), refused.status, done("s1", "s2"), NOW)
    assert not after.actions and after.status["phase"] == "Succeeded"  # not created again, the run ends


def test_no_evaluation_asked_none_made():
    s = VitaTrainingRunSpec.model_validate({**spec().model_dump(by_alias=True, exclude_none=True),
                                            "evaluation": None})
    d = decide("run", 1, s, None, done("s1", "s2"), NOW)
    assert d.status["phase"] == "Succeeded" and "evaluations" not in d.status and not d.actions


def test_the_evaluation_job_is_a_valid_gpu_job_on_the_run_volumes(tmp_path):
    s = VitaTrainingRunSpec.model_validate({**FULL, "evaluation": {"tasks": ["mme", "mmbench_en_dev"], "limit": 50,
                                                                   "includePath": "eval_tasks"}})
    job = ev.evaluation_job("my-run", "ml", s, 1)
    assert_valid_builtin(job, tmp_path)  # the Job schema, offline
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert job["metadata"]["name"] == "my-run-eval-sft-1"
    assert job["metadata"]["labels"][ev.LABEL_EVALUATION] == "true"
    assert c["command"] == ["vita-model"] and c["args"] == [
        "eval", "/ckpt/runs/full/sft", "--base", "/data/models/vita-base", "--tasks", "mme,mmbench_en_dev",
        "--output", "/ckpt/runs/full/sft/eval", "--include-path", "/data/eval_tasks", "--limit", "50"]
    assert c["resources"]["limits"] == {"cpu": "8", "memory": "64Gi", "nvidia.com/gpu": "1"}
    env = {e["name"]: e for e in c["env"]}
    # the image's HF_HUB_OFFLINE=1 is turned off (datasets come from the Hub), their cache is on the volume
    assert env["HF_HUB_OFFLINE"]["value"] == "0" and env["HF_HOME"]["value"] == "/ckpt/runs/full/.cache/huggingface"
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "api-key"}
    # placed like the stage it evaluates, in the run's queue
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert {"name": "checkpoints", "mountPath": "/ckpt"} in c["volumeMounts"]


def test_the_scores_message_fits_a_termination_message_and_names_what_it_left_out():
    msg = evaluation_message(SCORES, "/ckpt/o/s2/eval/results.json")
    assert evaluation_of(msg) == {"evaluation": SCORES, "results": "/ckpt/o/s2/eval/results.json"}
    many = {f"task_{i:03d}": {"exact_match": i / 1000, "acc": 0.5} for i in range(200)}
    big = evaluation_message(many, "/r.json")
    parsed = evaluation_of(big)
    assert len(big.encode()) <= MAX_BYTES and 0 < len(parsed["evaluation"]) < 200
    assert len(parsed["evaluation"]) + parsed["omitted"] == 200
    assert evaluation_of("last lines of a log") is None and evaluation_of('{"finalLoss": 1.0}') is None


def test_scores_are_prometheus_series_that_follow_the_status():
    metrics.record_scores("ml", "r9", [{"stage": "s2", "scores": SCORES}, {"stage": "s1", "phase": "Running"}])
    text = generate_latest(metrics.REGISTRY).decode()
    assert 'vita_operator_benchmark_score{metric="mme_perception_score",namespace="ml",run="r9",stage="s2",' \
           'task="mme"} 1412.5' in text
    metrics.record_scores("ml", "r9", [])  # the run is gone
    assert 'run="r9"' not in generate_latest(metrics.REGISTRY).decode()


def test_lmms_eval_results_reduce_to_scores_per_task_and_metric():
    from vita_trainer.evaluation.run import scores_of
    # the shape of lmms-eval's results["results"] (metric,filter keys, their stderr twins, the alias)
    results = {"results": {
        "mme": {"alias": "mme", "mme_perception_score,none": 1412.5, "mme_perception_score_stderr,none": "N/A",
                "mme_cognition_score,none": 301.0},
        "gsm8k": {"exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": 0.01,
                  "exact_match,flexible-extract": 0.5},
        "broken": {"acc,none": float("nan")}}}
    assert scores_of(results) == {"mme": {"mme_perception_score": 1412.5, "mme_cognition_score": 301.0},
                                  "gsm8k": {"exact_match/strict-match": 0.25,
                                            "exact_match/flexible-extract": 0.5}}
    assert json.loads(json.dumps(scores_of(results)))  # plain JSON: what the termination message carries


def test_lmms_eval_finds_the_model_class_by_its_entry_point():
    """`python -m lmms_eval --model vita_folder ...` works: lmms-eval's registry loads our manifest from the
    `lmms_eval.models` entry-point group (pyproject.toml)."""
    from lmms_eval.models import get_model

    from vita_trainer.evaluation.lmms_model import VitaFolder
    assert get_model("vita_folder") is VitaFolder
