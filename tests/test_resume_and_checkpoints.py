"""Resume after an interruption matches an uninterrupted run; a crash mid-save leaves the last checkpoint loadable."""

import json
import os
import subprocess
import sys

import pytest

from vita_trainer.local import free_port
from vita_trainer.train.trainer import last_complete_checkpoint

pytestmark = pytest.mark.slow


def train_cmd(out, data, steps=8):
    # 2 processes, DeepSpeed ZeRO-3: the path real runs take.
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
            "--master_port", str(free_port()), "-m", "vita_trainer.train", "--deepspeed", "zero3",
            "--stage", "multimodal_sft",
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
def data(demo_data):
    return demo_data


def test_resume_matches_uninterrupted_run(data, tmp_path):
    ref = tmp_path / "ref"
    r = run(train_cmd(ref, data))
    assert r.returncode == 0, r.stderr[-3000:]
    cut = tmp_path / "cut"
    r = run(train_cmd(cut, data), VITA_FAULT_EXIT_AT_STEP="4")
    assert r.returncode != 0 and not (cut / "vita_stage.json").exists()
    assert last_complete_checkpoint(cut).endswith("checkpoint-4")
    r = run(train_cmd(cut, data))  # same command: resumes automatically
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint-4" in r.stderr[r.stderr.index("resuming from"):][:300]
    # ZeRO-3 checkpoints hold the shards and no gathered 16-bit model; the stage's final output has it
    assert (ref / "checkpoint-8" / "latest").is_file() and (ref / "checkpoint-8" / "config.json").is_file()
    assert not list((ref / "checkpoint-8").glob("model*.safetensors")) and (ref / "model.safetensors").is_file()
    # ZeRO-3 sized for the model: one decoder layer per bucket (written out from the config), encoders whole
    text = json.loads((data / "base_model" / "config.json").read_text())["text_config"]
    h, ffn = text["hidden_size"], text["intermediate_size"]
    kv = text["num_key_value_heads"] * h // text["num_attention_heads"]
    layer = (h * h + h) + 2 * (h * kv + kv) + h * h + 3 * h * ffn + 2 * h
    assert (f"ZeRO-3: {{'stage3_prefetch_bucket_size': {layer}, 'reduce_bucket_size': {layer}, "
            f"'stage3_param_persistence_threshold': {10 * h}}}; gathered whole (frozen): "
            f"['vision_tower', 'audio_encoder']") in r.stderr, r.stderr[-3000:]
    ref_l, cut_l = dict(losses(ref)), dict(losses(cut))
    assert sorted(cut_l) == list(range(1, 9))
    for step in (1, 2, 3, 4):  # restored from the checkpoint's trainer state
        assert cut_l[step] == ref_l[step]
    for step in (5, 6, 7, 8):  # trained after the resume
        assert cut_l[step] == pytest.approx(ref_l[step], rel=1e-3, abs=1e-4)


def test_crash_during_save_keeps_previous_checkpoint(data, tmp_path):
    out = tmp_path / "crash"
    r = run(train_cmd(out, data), VITA_FAULT_CRASH_IN_SAVE="8")
    assert r.returncode != 0
    assert last_complete_checkpoint(out).endswith("checkpoint-4")
    assert not (out / "checkpoint-8").exists() and (out / ".staging" / "checkpoint-8").exists()
    r = run(train_cmd(out, data))  # the surviving checkpoint loads and the run completes
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint-4" in r.stderr[r.stderr.index("resuming from"):][:300]
    assert json.loads((out / "vita_stage.json").read_text())["global_step"] == 8


def test_a_nonfinite_loss_on_one_rank_stops_every_rank_at_once(data, tmp_path):
    """Rank 1's loss turns NaN at step 2; rank 0's stays finite. Both stop there with the error, instead of rank 0
    waiting in the next collective until the process-group timeout (30 minutes)."""
    from vita_trainer.train.faults import FAULT_NONFINITE_ENV
    r = subprocess.run(train_cmd(tmp_path / "nan", data), env={**os.environ, FAULT_NONFINITE_ENV: "2:1"},
                       capture_output=True, text=True, timeout=300)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "non-finite loss (nan) at step 2" in out and "non-finite loss on another rank at step 2" in out, out[-3000:]


def test_lora_under_zero3_saves_full_adapter_tensors(data, tmp_path):
    """Under ZeRO-3 every trainable parameter is partitioned over the ranks: the adapter and the non-LoRA weights
    must be gathered (by every rank) before rank 0 writes them, or they are saved as empty tensors."""
    import torch
    from safetensors.torch import load_file
    out = tmp_path / "lora"
    r = run([*train_cmd(out, data, steps=2), "--lora_enable", "True", "--lora_r", "4", "--lora_alpha", "8"])
    assert r.returncode == 0, r.stderr[-3000:]
    adapter = load_file(out / "lora" / "adapter_model.safetensors")
    assert adapter and all(t.numel() > 0 for t in adapter.values()), {k: t.shape for k, t in adapter.items()}
    assert all(4 in t.shape for k, t in adapter.items() if "lora_A" in k or "lora_B" in k)
    extra = torch.load(out / "non_lora_trainables.bin", weights_only=True)
    assert extra and all(t.numel() > 0 for t in extra.values())


def test_a_world_size_change_stops_with_what_to_do_and_stale_staging_is_cleared(data, tmp_path):
    """checkpoint-4 written by 2 ranks, resumed on 1: a clear, not-retryable error before DeepSpeed's load; the
    staging folder an earlier crashed attempt left is removed first."""
    out = tmp_path / "ws"
    r = run(train_cmd(out, data, steps=4))
    assert r.returncode == 0, r.stderr[-3000:]
    stale = out / ".staging" / "checkpoint-99"
    stale.mkdir(parents=True)
    (stale / "zero_pp_rank_3_mp_rank_00_model_states.pt").write_bytes(b"from another world size")
    one_rank = train_cmd(out, data, steps=8)
    one_rank[one_rank.index("--nproc_per_node") + 1] = "1"
    r = run(one_rank)
    assert r.returncode != 0 and "exitcode: 2" in r.stderr, r.stderr[-3000:]  # the trainer's not-retryable exit
    assert "checkpoint-4 was written by 2 ranks but this run has 1" in r.stderr and "vita-model convert" in r.stderr
    assert not stale.exists()


def test_zero3_offload_trains_with_deepspeeds_cpu_adam_and_the_module_learning_rates(data, tmp_path):
    """zero3_offload: DeepSpeed refuses a torch optimizer with an offloaded optimizer (zero_force_ds_cpu_optimizer);
    the trainer builds DeepSpeedCPUAdam with the per-module learning-rate groups instead."""
    cmd = train_cmd(tmp_path / "offload", data, steps=3)
    cmd[cmd.index("--deepspeed") + 1] = "zero3_offload"
    r = run([*cmd, "--projector_lr", "1e-3"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "optimizer DeepSpeedCPUAdam, 2 parameter groups, learning rates [0.001, 0.003]" in r.stderr, r.stderr[-3000:]
    assert len(losses(tmp_path / "offload")) == 3


def test_out_of_memory_retries_with_half_the_micro_batch_and_sees_the_same_samples(data, tmp_path):
    """A 2-process ZeRO-3 stage runs out of memory at step 5 with micro-batch 4 (the fault hook acts
    as a card that holds 2): the local runner, with the operator's policy, retries from checkpoint-4 with micro-batch
    2 and accumulation 2, reaches step 8, and the tokens seen and the losses match an uninterrupted run."""
    import yaml

    from vita_trainer.demo.run import build_run
    from vita_trainer.local import run_local

    def one_stage_run(name):
        run = build_run(name, 1.0, "zero3", 2)
        stage = run["spec"]["stages"][3]
        stage["args"] = {**stage["args"], "max_steps": 8, "per_device_train_batch_size": 4, "save_steps": 4,
                         "logging_steps": 1, "learning_rate": 3e-3, "seed": 0}
        run["spec"]["stages"] = [stage]
        run["spec"]["trainer"]["metricsPort"] = free_port()
        run["spec"]["output"] = name
        path = data / f"{name}.yaml"
        path.write_text(yaml.safe_dump(run, sort_keys=False))
        return path

    ref = run_local(one_stage_run("oom-ref"), nproc=2)[0]
    os.environ["VITA_FAULT_OOM"] = "4:2"
    try:
        healed = run_local(one_stage_run("oom-healed"), nproc=2)[0]
    finally:
        del os.environ["VITA_FAULT_OOM"]
    assert healed["global_step"] == ref["global_step"] == 8
    assert healed["tokens_seen"] == ref["tokens_seen"] > 0
    ref_l, healed_l = dict(ref["losses"]), dict(healed["losses"])
    assert sorted(healed_l) == list(range(1, 9))
    for step in range(1, 9):
        assert healed_l[step] == pytest.approx(ref_l[step], rel=1e-3, abs=1e-4), step


def test_a_failed_local_stage_says_what_the_trainer_reported(data, tmp_path):
    """`vita-train local` names the trainer's own failure (from its termination message), not a config error."""
    import yaml

    from vita_api.errors import ConfigError, StageFailed
    from vita_trainer.demo.run import build_run
    from vita_trainer.local import run_local
    run = build_run("fails", 1.0, "none", 1)
    stage = run["spec"]["stages"][1]
    stage.update(oomPolicy="fail", args={**stage["args"], "max_steps": 2})
    run["spec"]["stages"], run["spec"]["output"] = [stage], "fails"
    run["spec"]["trainer"]["metricsPort"] = free_port()
    path = data / "fails.yaml"
    path.write_text(yaml.safe_dump(run, sort_keys=False))
    os.environ["VITA_FAULT_OOM"] = "0:0"
    try:
        with pytest.raises(StageFailed, match=r"stage .* failed \(exit 1\): OutOfMemory: out of GPU memory at step 0"
                           ) as e:
            run_local(path, nproc=1)
    finally:
        del os.environ["VITA_FAULT_OOM"]
    assert not isinstance(e.value, ConfigError)


def test_an_adapter_only_stage_checkpoints_only_what_trains_and_resumes_exactly(data, tmp_path):
    """vision_align trains the projector alone: its checkpoints hold mm_projector.bin and DeepSpeed's state for
    it (no gathered model.safetensors, no frozen weights), as the reference's trainer saves only the adapter;
    a run cut after checkpoint-2 resumes from it to the same losses and the same projector."""
    import torch

    def cmd(out):
        c = train_cmd(out, data, steps=4)
        c[c.index("--stage") + 1] = "vision_align"
        c[c.index("--dataset_use") + 1] = "demo_image"
        c[c.index("--save_steps") + 1] = "2"
        return c
    ref, cut = tmp_path / "ref", tmp_path / "cut"
    assert run(cmd(ref)).returncode == 0
    assert run(cmd(cut), VITA_FAULT_EXIT_AT_STEP="2").returncode != 0
    ckpt = cut / "checkpoint-2"
    assert (ckpt / "mm_projector.bin").is_file() and not list(ckpt.glob("*.safetensors"))
    projector = sum(v.numel() * v.element_size() for v in torch.load(ckpt / "mm_projector.bin").values())
    states = sum(p.stat().st_size for p in ckpt.glob("global_step2/*model_states.pt"))
    assert states < projector  # the frozen LLM and towers are not in DeepSpeed's module state either
    r = run(cmd(cut))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "checkpoint-2" in r.stderr[r.stderr.index("resuming from"):][:300]
    assert losses(cut) == losses(ref)
    a, b = torch.load(ref / "mm_projector.bin"), torch.load(cut / "mm_projector.bin")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
