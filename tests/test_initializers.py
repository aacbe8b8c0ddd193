"""spec.initializers: the run's models and datasets fetched onto the dataset volume before preflight; the state
machine, the Job, and the initializer's own command against a Hub on 127.0.0.1."""

import json
import os
import subprocess
import sys

import pytest
import yaml

from testing.k8s_tools import assert_valid_builtin
from testing.hub_server import HubServer, Repo
from tests.test_operator_builder_crd import FULL
from vita_api.spec import VitaTrainingRunSpec
from vita_api.termination import initialized_of
from vita_operator.jobs import initializers as ini
from vita_operator.core.decision import CreateJob, CreateStepJob, ObservedAttempt
from vita_operator.core.state import decide

NOW = "2026-12-04T00:00:00Z"


def spec(preflight=True):
    return VitaTrainingRunSpec.model_validate({
        "model": {"base": "models/VITA-1.5"}, "data": {"registry": "registry.yaml"}, "output": "o",
        "preflight": {"enabled": preflight},
        "initializers": {"models": [{"name": "vita-1.5"}], "datasets": ["llava_instruct"]},
        "stages": [{"name": "s1", "preset": "multimodal_sft", "datasetUse": "d"}]})


def init_job(attempt, phase, **kw):
    return ObservedAttempt(f"run-init-{attempt}", attempt, phase, **kw)


RESULT = {"files": 7, "bytes": 1234, "transferred": 1000, "items": []}


def test_the_initializers_run_first_then_preflight_then_the_first_stage():
    first = decide("run", 1, spec(), None, [], NOW)
    assert first.actions == [CreateStepJob("initializers", 1)] and first.status["phase"] == "Initializing"
    waiting = decide("run", 1, spec(), first.status, [], NOW, steps={"initializers": [init_job(1, "Running")]})
    assert not waiting.actions and waiting.status["phase"] == "Initializing"
    done = decide("run", 1, spec(), waiting.status, [], NOW,
                  steps={"initializers": [init_job(1, "Succeeded", report=RESULT)]})
    assert done.actions == [CreateStepJob("preflight", 1)] and done.status["phase"] == "Preflight"
    assert done.status["initializers"] == {"phase": "Succeeded", "attempts": 1, "jobName": "run-init-1",
                                           "completionTime": NOW, "files": 7, "bytes": 1234,
                                           "transferredBytes": 1000, "message": ""}
    no_preflight = decide("run", 1, spec(preflight=False), waiting.status, [], NOW,
                          steps={"initializers": [init_job(1, "Succeeded", report=RESULT)]})
    assert no_preflight.actions == [CreateJob(0, 1, False)]


def test_a_failed_download_is_retried_and_a_bad_name_fails_the_run():
    status = decide("run", 1, spec(), None, [], NOW).status
    retry = decide("run", 1, spec(), status, [], NOW,
                   steps={"initializers": [init_job(1, "Failed", message="BackoffLimitExceeded")]})
    assert retry.actions == [CreateStepJob("initializers", 2)]
    assert "InitializersRetrying" in [e[1] for e in retry.events]
    bad = decide("run", 1, spec(), retry.status, [], NOW, steps={"initializers": [
        init_job(1, "Failed"), init_job(2, "Failed", permanent="ConfigError: unknown model 'vita-9'")]})
    assert bad.status["phase"] == "Failed" and not bad.actions
    assert next(c for c in bad.status["conditions"] if c["type"] == "Failed")["reason"] == "InitializersFailed"


def test_the_initializer_job_writes_the_dataset_volume_with_the_token_from_a_secret(tmp_path):
    s = VitaTrainingRunSpec.model_validate({**FULL, "initializers": {
        "models": [{"name": "qwen2.5-7b-instruct"}, {"name": "org/x", "revision": "v2", "include": ["*.json"]}],
        "datasets": ["coco", "gqa"], "tokenSecret": "hf/token", "manifest": "mirror.yaml"}})
    job = ini.initializer_job("my-run", "ml", s, 1)
    assert_valid_builtin(job, tmp_path)  # the Job schema, offline
    pod = job["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["args"] == ["--models-root", "/data/models", "--datasets-root", "/data", "--model",
                         "qwen2.5-7b-instruct", "--model", "org/x@v2", "--include", "1=*.json", "--source", "coco",
                         "--source", "gqa", "--metrics-port", "9400", "--manifest", "/data/mirror.yaml"]
    assert {"name": "dataset", "mountPath": "/data"} in c["volumeMounts"]  # read-write, for this Job alone
    assert next(v for v in pod["volumes"] if v["name"] == "dataset")["persistentVolumeClaim"] == {
        "claimName": "vita-data"}
    env = {e["name"]: e for e in c["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert env["HF_HUB_OFFLINE"]["value"] == "0" and "nvidia.com/gpu" not in str(c["resources"])


@pytest.mark.subprocess
def test_the_initializer_fetches_once_and_reports_what_it_moved(tmp_path):
    llava = json.dumps([{"id": "1", "conversations": [{"from": "human", "value": "Hi"},
                                                      {"from": "gpt", "value": "Hello."}]}]).encode()
    hub = HubServer({"OpenGVLab/InternViT-300M-448px": Repo({"config.json": b"{}", "model.safetensors": b"w" * 5000},
                                                          lfs=("model.safetensors",)),
                     "datasets/liuhaotian/LLaVA-Instruct-150K": Repo({"llava_v1_5_mix665k.json": llava},
                                                                     lfs=("llava_v1_5_mix665k.json",))})
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    log = tmp_path / "termination-log"
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), VITA_TERMINATION_MESSAGE_PATH=str(log))
    try:
        def run():
            log.write_text("")
            done = subprocess.run([sys.executable, "-m", "vita_trainer.tools.initialize", "--models-root",
                                   str(tmp_path / "data" / "models"), "--model", "internvit-300m-448px",
                                   "--datasets-root", str(tmp_path / "data"), "--source", "llava_instruct"],
                                  env=env, capture_output=True, text=True, timeout=180)
            assert done.returncode == 0, done.stderr[-2000:]
            return initialized_of(log.read_text())
        first = run()
        assert first["files"] == 3 and first["transferred"] == 5002 + len(llava)
        assert (tmp_path / "data" / "models" / "InternViT-300M-448px" / "model.safetensors").is_file()
        reg = yaml.safe_load((tmp_path / "data" / "registry.yaml").read_text())
        assert reg["datasets"]["llava_mix665k"]["chat_path"] == "llava/llava_v1_5_mix665k.json"
        again = run()
        assert again["transferred"] == 0 and again["files"] == 3  # the next run: nothing fetched again
    finally:
        hub.close()


def test_the_initializers_bytes_so_far_are_served_and_read_into_status_progress(tmp_path):
    """The initializer's gauges (prometheus-client) as the operator's progress loop reads them."""
    import urllib.request
    from datetime import datetime, timezone

    from vita_operator.core.progress import download_progress
    from vita_trainer.local import free_port
    from vita_trainer.tools.download import marker_path
    from vita_trainer.tools.initialize import Progress, Target
    from vita_trainer.tools.download import RemoteFile
    done = RemoteFile(name="coco/a.zip", url="http://x/a.zip", approx_bytes=700, unpack="coco")
    (tmp_path / "m" / ".cache").mkdir(parents=True)
    (tmp_path / "m" / ".cache" / "w.incomplete").write_bytes(b"x" * 100)  # the Hub client's partial file
    (tmp_path / "coco").mkdir()
    marker_path(tmp_path, done).parent.mkdir(parents=True)
    marker_path(tmp_path, done).write_text("{}")  # unpacked and removed: its announced size counts
    port = free_port()
    progress = Progress(port, [Target(tmp_path / "m" / "w"), Target(tmp_path / "m" / ".cache"),
                               Target(tmp_path / "coco" / "a.zip", marker_path(tmp_path, done), 700)], 1600)
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    now = datetime(2026, 12, 4, tzinfo=timezone.utc)
    assert download_progress(text, now) == {"bytes": 800, "expectedBytes": 1600, "percent": 50,
                                            "updateTime": "2026-12-04T00:00:00Z"}
    (tmp_path / "m" / "w").write_bytes(b"y" * 800)  # the file in place
    progress.refresh()
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    assert download_progress(text, now)["percent"] == 100
    assert download_progress("vita_train_global_step 3\n", now) is None  # not an initializer
