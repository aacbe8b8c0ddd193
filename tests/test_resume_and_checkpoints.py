"""Resume after an interruption matches an uninterrupted run; a crash mid-save leaves the last checkpoint loadable."""

import json
import os
import subprocess
import sys

import pytest

from vita_trainer.demo.run import prepare
from vita_trainer.train.trainer import last_complete_checkpoint

pytestmark = pytest.mark.slow


def train_cmd(out, data, steps=8):
    return [sys.executable, "-m", "vita_trainer.train", "--stage", "multimodal_sft",
            "--model_name_or_path", str(data / "base_model"), "--data_registry", str(data / "registry.yaml"),
            "--dataset_use", "demo_multimodal", "--output_dir", str(out), "--max_steps", str(steps),
            "--per_device_train_batch_size", "4", "--logging_steps", "1", "--save_steps", "4",
            "--learning_rate", "3e-3", "--metrics_port", "0", "--model_max_length", "512", "--seed", "0",
            "--disable_tqdm", "True"]


def run(cmd, **env):
    return subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)


def losses(out):
    return json.loads((out / "vita_stage.json").read_text())["losses"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    prepare(d, small=True)
    return d


def test_resume_matches_uninterrupted_run(data, tmp_path):
    ref = tmp_path / "ref"
    r = run(train_cmd(ref, data))
    assert r.returncode == 0, r.stderr[-3000:]
    cut = tmp_path / "cut"
    r = run(train_cmd(cut, data), VITA_FAULT_EXIT_AT_STEP="4")
    assert r.returncode == 18 and not (cut / "vita_stage.json").exists()
    assert last_complete_checkpoint(cut).endswith("checkpoint-4")
    r = run(train_cmd(cut, data))  # same command: resumes automatically
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stderr
    ref_l, cut_l = dict(losses(ref)), dict(losses(cut))
    assert sorted(cut_l) == [5, 6, 7, 8]  # only the remaining steps ran
    for step in (5, 6, 7, 8):
        assert cut_l[step] == pytest.approx(ref_l[step], rel=1e-3, abs=1e-4)


def test_crash_during_save_keeps_previous_checkpoint(data, tmp_path):
    out = tmp_path / "crash"
    r = run(train_cmd(out, data), VITA_FAULT_CRASH_IN_SAVE="8")
    assert r.returncode == 17
    assert last_complete_checkpoint(out).endswith("checkpoint-4")
    assert not (out / "checkpoint-8").exists() and (out / ".staging" / "checkpoint-8").exists()
    r = run(train_cmd(out, data))  # the surviving checkpoint loads and the run completes
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint-4" in r.stderr and sorted(dict(losses(out))) == [5, 6, 7, 8]
