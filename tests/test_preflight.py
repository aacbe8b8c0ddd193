"""The preflight data check: the CPU Job the operator creates, and the check it runs (tools/preflight.py)."""

import copy
import json
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from testing.k8s_tools import assert_valid_builtin
from tests.test_operator_builder_crd import FULL
from vita_operator.jobs import preflight as pre
from vita_operator.jobs.batch import job_phase
from vita_api.spec import VitaTrainingRunSpec
from vita_trainer.tools.preflight import PROBLEM_CHARS, clip_middle
from vita_trainer.tools.preflight import main as preflight_main
from vita_api.termination import MAX_BYTES, PATH_ENV, permanent_failure_of, preflight_summary_of

BIN = Path(sys.executable).parent


def test_the_preflight_job_is_a_valid_cpu_job_on_the_run_volumes(tmp_path):
    spec = VitaTrainingRunSpec.model_validate(FULL)
    job = pre.preflight_job("my-run", "ml", spec, 2)
    assert_valid_builtin(job, tmp_path)  # the Job schema, offline
    assert job["metadata"]["name"] == "my-run-preflight-2" and job["spec"]["backoffLimit"] == 0
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["command"] == ["python", "-m", "vita_trainer.tools.preflight"] and c["image"] == "ghcr.io/x/trainer:1"
    assert c["resources"]["limits"] == {"cpu": "4", "memory": "16Gi"}  # no GPU
    # Where the first stage runs (GPU nodes are tainted: without these it never schedules), in its queue
    # (created suspended: Kueue admits it), under a deadline
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue" and job["spec"]["suspend"] is True
    assert "kueue.x-k8s.io/queue-name" not in job["spec"]["template"]["metadata"]["labels"]
    assert job["spec"]["activeDeadlineSeconds"] == 3600
    assert c["args"] == ["--registry", "/data/registry.yaml", "--tokenizer", "qwen2.5",
                         "--report", "/ckpt/runs/full/preflight-report.json",
                         "--stage", "align=img:6200", "--stage", "sft=mm:6200", "--output", "/ckpt/runs/full"]
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["dataset"]["readOnly"] is True and mounts["checkpoints"]["mountPath"] == "/ckpt"
    env = {e["name"] for e in c["env"]}
    assert "WANDB_API_KEY" in env and "VITA_GPUS_PER_NODE" not in env
    tuned = copy.deepcopy(FULL)
    tuned["stages"][1]["args"]["model_max_length"] = 2048
    assert "sft=mm:2048" in pre.preflight_args(VitaTrainingRunSpec.model_validate(tuned))
    assert "--decode" not in c["args"]
    tuned["preflight"] = {"decode": True}  # the full decode (`vita-data check --decode`) when the run asks
    assert pre.preflight_args(VitaTrainingRunSpec.model_validate(tuned))[-1] == "--decode"


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


def test_an_output_folder_the_trainer_cannot_write_fails_the_preflight_naming_owner_and_fix(tmp_path, monkeypatch,
                                                                                          capsys):
    """fsGroup does not chown NFS-style ReadWriteMany shares; the first checkpoint save would fail
    hours in. The check says so before any GPU starts, as the run's own (not retryable) error."""
    from vita_trainer.tools import preflight as tool
    (tmp_path / "ckpt").mkdir()
    real_mkdir = Path.mkdir

    def root_owned(self, *a, **kw):
        if str(self).startswith(str(tmp_path / "ckpt" / "runs")):
            raise PermissionError(13, "Permission denied", str(self))
        return real_mkdir(self, *a, **kw)
    monkeypatch.setattr(Path, "mkdir", root_owned)
    (tmp_path / "termination").write_text("")  # the kubelet's file
    monkeypatch.setenv(PATH_ENV, str(tmp_path / "termination"))
    code = preflight_main(["--registry", "r.yaml", "--stage", "s=d:100", "--report", str(tmp_path / "rep.json"),
                           "--output", str(tmp_path / "ckpt" / "runs" / "r1")])
    assert code == 2
    message = permanent_failure_of((tmp_path / "termination").read_text())
    assert "not writable by uid" in message and f"{tmp_path / 'ckpt'} is owned by uid" in message
    assert "fsGroup" in message and "chown" in message
    assert tool.NotWritable.retryable is False


def test_a_preflight_pod_that_cannot_start_or_waits_in_a_queue_shows_on_the_run():
    from vita_operator.core.decision import ObservedAttempt
    from vita_operator.core.state import decide
    from tests.test_operator_state import NOW, preflight_spec
    first = decide("run", 1, preflight_spec(), None, [], NOW)
    stuck = decide("run", 1, preflight_spec(), first.status, [], NOW, steps={"preflight": [ObservedAttempt(
        "run-preflight-1", 1, "Pending", stuck="pod run-preflight-1-x: Unschedulable: 0/3 nodes: untolerated taint")]})
    ready = {c["type"]: c for c in stuck.status["conditions"]}["PodsReady"]
    assert ready["status"] == "False" and "untolerated taint" in ready["message"]
    assert "untolerated taint" in stuck.status["message"] and stuck.status["phase"] == "Preflight"
    queued = decide("run", 1, preflight_spec(), first.status, [], NOW, steps={"preflight": [ObservedAttempt(
        "run-preflight-1", 1, "Suspended", "the Job is suspended, waiting for admission")]})
    assert queued.status["phase"] == "Queued" and "waits for admission" in queued.status["message"]
    assert job_phase({"spec": {"suspend": True}, "status": {}})[0] == "Suspended"
    deadline = {"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "DeadlineExceeded",
                                           "message": "Job was active longer than specified deadline"}]}}
    assert job_phase(deadline) == ("Failed", "DeadlineExceeded: Job was active longer than specified deadline")
