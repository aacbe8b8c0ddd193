"""The preflight data check: the CPU Job the operator creates, and the check it runs (tools/preflight.py)."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.test_operator_builder_crd import FULL
from vita_operator import preflight as pre
from vita_api.spec import VitaTrainingRunSpec
from vita_trainer.tools.preflight import PROBLEM_CHARS, clip_middle
from vita_trainer.tools.preflight import main as preflight_main
from vita_api.termination import MAX_BYTES, PATH_ENV, permanent_failure_of, preflight_summary_of

BIN = Path(sys.executable).parent


@pytest.mark.subprocess
def test_the_preflight_job_is_a_valid_cpu_job_on_the_run_volumes(tmp_path):
    spec = VitaTrainingRunSpec.model_validate(FULL)
    job = pre.preflight_job("my-run", "ml", spec, 2)
    out = tmp_path / "job.yaml"
    out.write_text(yaml.safe_dump(job))
    res = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", str(out)], capture_output=True, text=True)
    assert res.returncode == 0 and "ERROR" not in res.stdout, res.stdout + res.stderr  # the Job schema, offline
    assert job["metadata"]["name"] == "my-run-preflight-2" and job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["python", "-m", "vita_trainer.tools.preflight"] and c["image"] == "ghcr.io/x/trainer:1"
    assert c["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}  # no GPU
    assert "nodeSelector" not in pod and "tolerations" not in pod and "priorityClassName" not in pod
    assert "kueue.x-k8s.io/queue-name" not in job["metadata"]["labels"]
    assert c["args"] == ["--registry", "/data/registry.yaml", "--tokenizer", "qwen2.5",
                         "--report", "/ckpt/runs/full/preflight-report.json",
                         "--stage", "align=img:6200", "--stage", "sft=mm:6200"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["dataset"]["readOnly"] is True and mounts["checkpoints"]["mountPath"] == "/ckpt"
    env = {e["name"] for e in c["env"]}
    assert "WANDB_API_KEY" in env and "VITA_GPUS_PER_NODE" not in env
    tuned = copy.deepcopy(FULL)
    tuned["stages"][1]["args"]["model_max_length"] = 2048
    assert "sft=mm:2048" in pre.preflight_args(VitaTrainingRunSpec.model_validate(tuned))


@pytest.fixture
def data(tmp_path):
    img = tmp_path / "images"
    img.mkdir()
    Image.new("RGB", (64, 48), "red").save(img / "ok.jpg")

    def sample(i, image):
        return {"id": f"x{i}", "image": image, "conversations": [
            {"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "Red."}]}
    (tmp_path / "good.json").write_text(json.dumps([sample(i, "ok.jpg") for i in range(3)]))
    (tmp_path / "bad.json").write_text(json.dumps([sample(0, "ok.jpg")] + [sample(i, f"gone-{i}-{'x' * 80}.jpg")
                                                                           for i in range(1, 301)]))
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump({"datasets": {
        "good": {"chat_path": "good.json", "image_folder": "images"},
        "bad": {"chat_path": "bad.json", "image_folder": "images"}}}))
    return tmp_path


def run_preflight(tmp_path, monkeypatch, *stages):
    message = tmp_path / "termination-log"
    message.write_text("")  # the kubelet creates it in a pod
    monkeypatch.setenv(PATH_ENV, str(message))
    code = preflight_main(["--registry", str(tmp_path / "registry.yaml"), "--report", str(tmp_path / "out" / "r.json"),
                           "--workers", "1", *[a for s in stages for a in ("--stage", s)]])
    return code, message.read_text()


def test_the_check_runs_per_stage_and_its_summary_fits_a_termination_message(data, monkeypatch):
    code, message = run_preflight(data, monkeypatch, "s1=good:6200", "s2=bad:6200")
    assert code == 0 and len(message.encode()) <= MAX_BYTES
    summary = preflight_summary_of(message)
    assert summary["preflight"] == {"s1": {"samples": 3, "badSamples": 0, "fileProblems": 0},
                                    "s2": {"samples": 301, "badSamples": 300, "fileProblems": 0}}
    assert summary["problemsByReason"] == {"missing_file": 300}
    assert 5 <= len(summary["problems"]) <= 20 and "sample x1 [image[0]] missing_file" in summary["problems"][0]
    assert "-- fix:" in summary["problems"][0]
    report = json.loads((data / "out" / "r.json").read_text())
    assert len(report["stages"]["s2"]["problems"]) == 300 and summary["report"] == str(data / "out" / "r.json")


def test_a_registry_that_cannot_work_is_a_permanent_error(data, monkeypatch):
    (data / "registry.yaml").unlink()
    code, message = run_preflight(data, monkeypatch, "s1=good:6200")
    assert code == 2 and "registry.yaml does not exist" in permanent_failure_of(message)
    (data / "registry.yaml").write_text(yaml.safe_dump({"datasets": {"good": {"chat_path": "good.json"}}}))
    code, message = run_preflight(data, monkeypatch, "s1=nope:6200")
    assert code == 2 and "--dataset_use 'nope'" in permanent_failure_of(message)


def test_a_long_problem_line_keeps_its_sample_and_its_fix():
    line = f"/data/{'deep/' * 80}bad.json: sample x1 [image[0]] missing_file: file gone.jpg -- fix: restore it"
    clipped = clip_middle(line, PROBLEM_CHARS)
    assert len(clipped) <= PROBLEM_CHARS and clipped.startswith("/data/deep/") and clipped.endswith("restore it")
    assert clip_middle("short", PROBLEM_CHARS) == "short"
