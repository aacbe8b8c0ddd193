"""`vita-model download` against a Hub on 127.0.0.1 (HF_ENDPOINT, set before the process starts as a user would):
the guide's three parts by name into the README's layout, a dropped transfer resumed with a Range request, the
Hub's sha256 checked, a private repo's token, a second download of the same commit fetching nothing, and
--include/--revision on any repo id. Nothing here reaches the internet."""

import hashlib
import json
import os
import random
import subprocess
import sys

import pytest

from testing.hub_server import HubServer, Repo

pytestmark = pytest.mark.subprocess

AUDIO = "audio-encoder-Qwen2-7B-1107-weight-base-11wh-tunning"
# Larger than two of the Hub client's 10 MiB read chunks: a transfer dropped halfway leaves a whole chunk on disk
WEIGHTS = random.Random(0).randbytes(24 << 20)


def hub_repos() -> dict[str, Repo]:
    return {
        "Qwen/Qwen2.5-7B-Instruct": Repo({"config.json": b'{"model_type": "qwen2"}', "tokenizer.json": b"{}",
                                          "model-00001-of-00001.safetensors": WEIGHTS},
                                         lfs=("model-00001-of-00001.safetensors",), commit="1" * 40),
        "OpenGVLab/InternViT-300M-448px": Repo({"config.json": b"{}", "model.safetensors": WEIGHTS[:1000]},
                                               lfs=("model.safetensors",), commit="2" * 40),
        "VITA-MLLM/VITA-1.5": Repo({"config.json": b'{"model_type": "vita-Qwen2"}',
                                    f"{AUDIO}/final.pt": WEIGHTS[:5000], f"{AUDIO}/train.yaml": b"encoder: x\n",
                                    f"{AUDIO}/global_cmvn": b"cmvn"},
                                   lfs=(f"{AUDIO}/final.pt",), commit="3" * 40, token="hf_secret"),
    }


@pytest.fixture
def hub():
    server = HubServer(hub_repos())
    yield server
    server.close()


def vita_model(hub, tmp_path, *args, token=None):
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN")}
    env.update(HF_ENDPOINT=hub.url, HF_HOME=str(tmp_path / "hf-home"), HF_HUB_DISABLE_TELEMETRY="1")
    if token:
        env["HF_TOKEN"] = token
    return subprocess.run([sys.executable, "-m", "vita_trainer.tools.model_cli", "download", *args], env=env,
                          capture_output=True, text=True, timeout=180, cwd=tmp_path)


def test_the_guides_three_parts_land_where_the_readme_expects_and_a_drop_resumes(hub, tmp_path):
    hub.drop_once.add("model-00001-of-00001.safetensors")
    done = vita_model(hub, tmp_path, "qwen2.5-7b-instruct", "internvit-300m-448px", "vita-1.5-audio-encoder",
                      token="hf_secret")
    assert done.returncode == 0, done.stderr[-3000:]
    models = tmp_path / "models"
    assert (models / "Qwen2.5-7B-Instruct" / "model-00001-of-00001.safetensors").read_bytes() == WEIGHTS
    assert (models / "InternViT-300M-448px" / "model.safetensors").read_bytes() == WEIGHTS[:1000]
    assert (models / AUDIO / "final.pt").read_bytes() == WEIGHTS[:5000]
    assert sorted(p.name for p in (models / AUDIO).iterdir()) == ["final.pt", "global_cmvn", "train.yaml"]
    assert not (models / "config.json").exists()  # only the encoder's folder of the VITA-1.5 repo
    # the dropped transfer went on from where it stopped
    resumed = [r for m, p, r in hub.requests if m == "GET" and p.endswith("model-00001-of-00001.safetensors") and r]
    assert resumed and int(resumed[0].split("=")[1].split("-")[0]) > 0, hub.requests
    # again: the same commits are there, nothing is transferred
    before = len(hub.requests)
    again = vita_model(hub, tmp_path, "qwen2.5-7b-instruct", "vita-1.5-audio-encoder", token="hf_secret")
    assert again.returncode == 0 and again.stdout.count("already there") == 2, again.stdout
    assert not [r for r in hub.requests[before:] if "/resolve/" in r[1]]


def test_a_private_repo_without_a_token_says_what_to_set(hub, tmp_path):
    done = vita_model(hub, tmp_path, "vita-1.5-audio-encoder")
    assert done.returncode == 2 and "set HF_TOKEN" in done.stderr, done.stderr[-2000:]


def test_dry_run_lists_files_sizes_and_licence_and_fetches_nothing(hub, tmp_path):
    done = vita_model(hub, tmp_path, "qwen2.5-7b-instruct", "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "licence Apache-2.0" in done.stdout and "model-00001-of-00001.safetensors" in done.stdout
    assert "3 files, 25.2 MB" in done.stdout, done.stdout  # 24 MiB + 23 B + 2 B, in decimal units
    assert not [r for r in hub.requests if "/resolve/" in r[1]] and not (tmp_path / "models").exists()


def test_a_file_that_differs_from_the_hubs_sha256_is_removed_and_named(hub, tmp_path):
    hub.repos["OpenGVLab/InternViT-300M-448px"].served["model.safetensors"] = bytes(1000)  # same size, other bytes
    done = vita_model(hub, tmp_path, "internvit-300m-448px")
    assert done.returncode == 2 and "sha256 differs from the Hub's" in done.stderr, done.stderr[-2000:]
    assert not (tmp_path / "models" / "InternViT-300M-448px" / "model.safetensors").exists()


def test_any_repo_id_with_include_and_revision(hub, tmp_path):
    done = vita_model(hub, tmp_path, "Qwen/Qwen2.5-7B-Instruct", "--include", "*.json", "--revision", "1" * 40,
                      "--root", "elsewhere")
    assert done.returncode == 0, done.stderr[-2000:]
    folder = tmp_path / "elsewhere" / "Qwen2.5-7B-Instruct"
    assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["config.json", "tokenizer.json"]
    marker = json.loads(next((tmp_path / "elsewhere" / ".vita-download" / "models").glob("*.json")).read_text())
    assert marker["commit"] == "1" * 40 and marker["include"] == ["*.json"]
    assert hashlib.sha256((folder / "config.json").read_bytes()).hexdigest()  # a plain file, there in full
