"""The README's cluster quick start, as written, from an empty folder, on the real-API-server tier: the Hub is a
local server (HF_ENDPOINT) serving tiny stand-ins of the guide's three parts and of LLaVA-Pretrain with its images;
the Job controller and kubelet are played, and each Job's own command runs here with its volume paths mapped to
local folders. The run downloads onto the dataset claim, passes preflight, starts its first stage, and its export
Job writes a folder that `vita-model import` reads back bit for bit."""

from __future__ import annotations

import io
import json
import os
import shlex
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from testing.apiserver_cluster import assert_no_forbidden, finish_preflight, preflight_jobs
from testing.control_plane import REPO
from testing.hub_server import HubServer, Repo
from testing.operator_scenarios import NS, claim, wait_for
from tests.test_vita15_interop import write_released_tree, write_tiny_llm

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

AUDIO = "audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning"


def quick_start() -> list[str]:
    """The README's block between its quick-start-cluster markers, one command per entry."""
    text = (REPO / "README.md").read_text()
    block = text.split("<!-- quick-start-cluster -->")[1].split("<!-- /quick-start-cluster -->")[0]
    body = block.split("```bash\n")[1].split("```")[0]
    return [line for line in body.replace("\\\n", " ").splitlines() if line.strip()]


def folder_files(folder: Path, prefix: str = "") -> dict[str, bytes]:
    return {prefix + p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file()}


def llava_pretrain() -> dict[str, bytes]:
    images = io.BytesIO()
    with zipfile.ZipFile(images, "w") as z:
        for name, colour in (("00000/000000010.jpg", "red"), ("00000/000000011.jpg", "blue")):
            jpg = io.BytesIO()
            Image.new("RGB", (64, 48), colour).save(jpg, format="JPEG")
            z.writestr(name, jpg.getvalue())
    chat = [{"id": f"{i:09d}", "image": f"00000/{i:09d}.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A colour."}]} for i in (10, 11)]
    return {"blip_laion_cc_sbu_558k.json": json.dumps(chat).encode(), "images.zip": images.getvalue()}


def run_pod_command(job: dict, local: dict[str, str], env: dict[str, str], log: Path) -> str:
    """The Job's container command and args, volume paths mapped, in its own process; its termination message."""
    c = job["spec"]["template"]["spec"]["containers"][0]
    argv = [sys.executable if a == "python" else a for a in c["command"] + c["args"]]
    for prefix, folder in local.items():
        argv = [a.replace(prefix, folder) for a in argv]
    if argv[0] != sys.executable:  # a console script of this venv
        argv[0] = str(Path(sys.executable).parent / argv[0])
    log.write_text("")
    done = subprocess.run(argv, env={**env, "VITA_TERMINATION_MESSAGE_PATH": str(log)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, (argv, done.stdout[-2000:], done.stderr[-3000:])
    return log.read_text()


def test_the_readmes_cluster_quick_start_from_an_empty_folder(cluster, tmp_path, tok, monkeypatch):
    src = tmp_path / "stand-ins"
    llm = write_tiny_llm(src / "Qwen2.5-7B-Instruct", tok)
    released = write_released_tree(src / "released", tok)
    hub = HubServer({
        "Qwen/Qwen2.5-7B-Instruct": Repo(folder_files(llm), commit="1" * 40),
        "OpenGVLab/InternViT-300M-448px": Repo(folder_files(released["vision"]), commit="2" * 40),
        "VITA-MLLM/VITA-1.5": Repo({**folder_files(released["ckpt"]), **folder_files(released["whale"], AUDIO + "/")},
                                   commit="3" * 40),
        "datasets/liuhaotian/LLaVA-Pretrain": Repo(llava_pretrain(), lfs=("images.zip",), commit="4" * 40)})
    data, ckpt, work = tmp_path / "data", tmp_path / "checkpoints", tmp_path / "work"
    for d in (data, ckpt, work):
        d.mkdir()
    local = {"/checkpoints": str(ckpt), "/data": str(data)}
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="0")
    for c in (claim("vita-data", "ReadWriteMany"), claim("vita-checkpoints", "ReadWriteMany")):
        cluster.apply(c)
    commands = quick_start()
    assert [c.split()[:2] for c in commands] == [["vita-train", "new-run"], ["kubectl", "apply"],
                                                 ["kubectl", "get"], ["kubectl", "get"]]
    monkeypatch.chdir(work)
    from vita_trainer.cli import main as cli_main
    try:
        assert cli_main(shlex.split(commands[0])[1:]) == 0  # new-run, as written
        with cluster.operator("operator-quick-start") as op:
            cluster.cp.kubectl(*shlex.split(commands[1])[1:], "-n", NS)  # kubectl apply -f my-run.yaml, from work/
            # 1. the initializer Job: the three parts and LLaVA-Pretrain with its images onto the dataset claim
            job = wait_for(lambda: preflight_jobs(cluster).get("my-run-init-1"), what="the initializer Job")
            assert cluster.run_status("my-run")["phase"] == "Initializing"
            message = run_pod_command(job, local, env, tmp_path / "init-log")
            finish_preflight(cluster, "my-run-init-1", 0, message, container="initializer")
            init = wait_for(lambda: (cluster.run_status("my-run").get("initializers") or {}).get("phase") ==
                            "Succeeded" and cluster.run_status("my-run")["initializers"], what="initializers done")
            assert init["files"] == len(folder_files(llm)) + len(folder_files(released["vision"])) + \
                len(folder_files(released["whale"])) + 2
            assert (data / "models" / AUDIO / "final.pt").read_bytes() == (released["whale"] / "final.pt").read_bytes()
            assert (data / "llava" / "llava_pretrain" / "images" / "00000" / "000000011.jpg").is_file()
            # 2. preflight on what was downloaded, then the first stage starts
            job = wait_for(lambda: preflight_jobs(cluster).get("my-run-preflight-1"), what="the preflight Job")
            message = run_pod_command(job, local, env, tmp_path / "preflight-log")
            assert json.loads(message)["preflight"]["vision-align"] == {"samples": 2, "badSamples": 0,
                                                                        "fileProblems": 0}
            finish_preflight(cluster, "my-run-preflight-1", 0, message)
            wait_for(lambda: "my-run-vision-align-1" in cluster.jobs(), what="the first stage's PyTorchJob")
            out = cluster.cp.kubectl(*shlex.split(commands[2])[1:-1], "-n", NS).stdout  # kubectl get (without -w)
            assert "my-run" in out and "vision-align" in out
            # 3. the stage's output (stand-in: the base composed from the downloaded parts), then the export Job
            stage_out = ckpt / "my-run" / "vision-align"
            assert cli_main(["init-model", str(stage_out), "--llm", str(data / "models" / "Qwen2.5-7B-Instruct"),
                             "--vision_tower", str(data / "models" / "InternViT-300M-448px"),
                             "--audio_encoder", str(data / "models" / AUDIO)]) == 0
            cluster.set_job("my-run-vision-align-1", "Succeeded")
            job = wait_for(lambda: preflight_jobs(cluster).get("my-run-export-1"), what="the export Job")
            run_pod_command(job, local, env, tmp_path / "export-log")
            finish_preflight(cluster, "my-run-export-1", 0, "", container="export")
            wait_for(lambda: cluster.run_status("my-run").get("phase") == "Succeeded", what="Succeeded")
            path = cluster.cp.kubectl(*shlex.split(commands[3])[1:], "-n", NS).stdout.strip("'")
            assert path == "/checkpoints/my-run/export-vita15"
            assert_no_forbidden(op)
    finally:
        hub.close()
    from vita_trainer.model.vita15 import read_weights
    from vita_trainer.tools.model_cli import main as model_main
    assert model_main(["import", path.replace("/checkpoints", str(ckpt)), str(tmp_path / "reimported")]) == 0
    a, b = read_weights(stage_out), read_weights(tmp_path / "reimported")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
