"""Losses normalised so that an optimizer step does not depend on how its batch is split into micro-batches and
ranks: real HF Trainer runs (one step of plain SGD), in one process and as 2-process torchrun jobs, must move every
weight by the same amount. Mathematically the step is -lr x the gradient of the mean loss over the window's
tokens (LM) or samples (CTC), whatever the split; the chunked LM loss is checked against HF's plain one."""

import json
import os
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vita_trainer.local import free_port
from vita_trainer.model.builder import tiny_config
from vita_trainer.model.modeling import VitaForCausalLM
from vita_trainer.train.main import main as train_main

# Replies of very different lengths: a per-micro-batch mean (the bug this guards) would weight them differently.
REPLIES = ["red", "a red triangle on a white background, drawn with a thick border and a small shadow below it",
           "two", "the beeps are at a middle pitch, and there are exactly two of them, evenly spaced in time"]


@pytest.fixture(scope="module")
def four_samples(demo_data, tmp_path_factory):
    """A registry whose two datasets hold four samples each: one optimizer step of global batch 4 sees all of
    them in every split."""
    d = tmp_path_factory.mktemp("four")
    text = [{"id": f"t{i}", "conversations": [{"from": "human", "value": "Describe it."},
                                              {"from": "gpt", "value": reply}]} for i, reply in enumerate(REPLIES)]
    audio = json.loads((demo_data / "chats" / "audio_train.json").read_text())[:4]
    for sample, reply in zip(audio, REPLIES):  # CTC targets: the last reply's bytes
        sample["conversations"][-1]["value"] = reply
    (d / "text.json").write_text(json.dumps(text))
    (d / "audio.json").write_text(json.dumps(audio))
    (d / "registry.yaml").write_text(yaml.safe_dump({
        "audio_root": str(demo_data / "audio"),
        "datasets": {"text4": {"chat_path": str(d / "text.json")}, "audio4": {"chat_path": str(d / "audio.json")}},
        "mixtures": {"text4": ["text4"], "audio4": ["audio4"]}}))
    return demo_data, d


def one_sgd_step(data, registry_dir, out, preset, mixture, per_device, accumulation, nproc):
    argv = ["--stage", preset, "--model_name_or_path", str(data / "base_model"),
            "--data_registry", str(registry_dir / "registry.yaml"), "--dataset_use", mixture,
            "--output_dir", str(out), "--max_steps", "1", "--per_device_train_batch_size", str(per_device),
            "--gradient_accumulation_steps", str(accumulation), "--optim", "sgd", "--learning_rate", "1.0",
            "--lr_scheduler_type", "constant", "--warmup_steps", "0", "--max_grad_norm", "0", "--weight_decay", "0",
            "--save_strategy", "no", "--save_full_model", "True", "--metrics_port", "0",
            "--model_max_length", "512", "--disable_tqdm", "True", "--report_to", "none"]
    if nproc == 1:
        train_main(argv)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_addr",
               "127.0.0.1", "--master_port", str(free_port()), "-m", "vita_trainer.train", *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
    before = load_file(data / "base_model" / "model.safetensors")
    after = load_file(out / "model.safetensors")
    return {k: after[k] - before[k] for k in before if k in after and not torch.equal(after[k], before[k])}


@pytest.mark.slow
@pytest.mark.parametrize("preset,mixture,splits", [
    # (per-device batch, accumulation steps, processes): all global batch 4
    ("text_sft", "text4", [(4, 1, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2)]),
    ("audio_ctc", "audio4", [(4, 1, 1), (1, 2, 2)]),
])
def test_one_step_moves_the_weights_the_same_for_every_split(four_samples, tmp_path, preset, mixture, splits):
    data, registry_dir = four_samples
    steps = [one_sgd_step(data, registry_dir, tmp_path / f"{b}x{a}x{n}", preset, mixture, b, a, n)
             for b, a, n in splits]
    reference = steps[0]
    assert reference and any(v.abs().max() > 1e-4 for v in reference.values())  # the step moved weights
    for (b, a, n), step in zip(splits[1:], steps[1:]):
        assert step.keys() == reference.keys(), (b, a, n)
        for k, v in reference.items():
            where = f"{b}x{a}x{n} {k}"
            torch.testing.assert_close(step[k], v, rtol=2e-4, atol=2e-6, msg=lambda m, where=where: f"{where}: {m}")


def test_the_chunked_lm_loss_equals_the_plain_one_in_value_and_gradient(tok):
    """The training path without full logits (several chunks here) against HF's plain loss, with and without the
    Trainer's num_items_in_batch, on padded rows with masked prompts."""
    import vita_trainer.model.chunked_loss as chunked
    torch.manual_seed(0)
    model = VitaForCausalLM(tiny_config(tok)).eval()
    ids = torch.randint(10, 200, (3, 17))
    labels = ids.clone()
    labels[:, :5] = -100          # prompts
    labels[2, 12:] = -100         # a shorter row's padding
    mask = torch.ones_like(ids)
    mask[2, 12:] = 0
    params = [p for p in model.parameters()]
    for num_items in (None, 40):
        model.chunked_loss = False
        plain = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=num_items).loss
        plain_grads = torch.autograd.grad(plain, params, allow_unused=True)
        model.train()
        model.chunked_loss = True
        chunked.CHUNK_TOKENS, saved = 7, chunked.CHUNK_TOKENS  # several chunks for 3 short rows
        try:
            out = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=num_items)
        finally:
            chunked.CHUNK_TOKENS = saved
            model.eval()
        assert out.logits is None
        torch.testing.assert_close(out.loss, plain, rtol=1e-5, atol=1e-6)
        for a, b in zip(torch.autograd.grad(out.loss, params, allow_unused=True), plain_grads):
            if b is None:
                assert a is None or not a.any()
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_a_fixed_lm_head_call_count_under_zero3_keeps_deepspeeds_trace_and_the_update(four_samples, tmp_path, tok):
    """Two ZeRO-3 ranks whose micro-batches hold different numbers of labelled tokens: every micro-batch calls the
    (untied, sharded) lm_head the same number of times (from the largest micro-batch the run can have, without a
    collective), so the ranks' gathers stay in step (no hang), DeepSpeed's recorded module trace is never
    invalidated over several steps (its trace-cache warnings on), and one step gives the same update with many
    small chunks as with one."""
    data, registry_dir = four_samples
    from vita_trainer.data.tokenizer import load_tokenizer
    demo_tok = load_tokenizer(str(data / "base_model"))
    config = tiny_config(demo_tok)
    config.text_config.tie_word_embeddings = False
    base = tmp_path / "untied"
    torch.manual_seed(0)
    VitaForCausalLM(config).save_pretrained(base)
    demo_tok.save_pretrained(base)
    from importlib import resources
    ds = json.loads((resources.files("vita_trainer") / "configs" / "zero3.json").read_text())
    ds["zero_optimization"]["log_trace_cache_warnings"] = True
    (tmp_path / "zero3-traced.json").write_text(json.dumps(ds))

    def train(chunk: int, steps: int) -> tuple:
        out = tmp_path / f"chunk{chunk}-{steps}"
        argv = ["--stage", "text_sft", "--model_name_or_path", str(base), "--data_registry",
                str(registry_dir / "registry.yaml"), "--dataset_use", "text4", "--output_dir", str(out),
                "--max_steps", str(steps), "--per_device_train_batch_size", "2", "--optim", "sgd",
                "--learning_rate", "1.0", "--lr_scheduler_type", "constant", "--max_grad_norm", "0",
                "--save_strategy", "no", "--metrics_port", "0", "--model_max_length", "512", "--disable_tqdm", "True",
                "--deepspeed", str(tmp_path / "zero3-traced.json"), "--lm_head_chunk_tokens", str(chunk)]
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
               "--master_port", str(free_port()), "-m", "vita_trainer.train", *argv]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        assert done.returncode == 0, done.stderr[-3000:]
        return out, done.stdout + done.stderr
    steps = []
    for chunk in (4096, 5):  # 1 call per micro-batch; ceil(2 x 512 / 5) = 205 calls, most of them a few positions
        out, _ = train(chunk, 1)
        before, after = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
        steps.append({k: after[k] - before[k] for k in before if k in after})
    assert steps[0]["language_model.lm_head.weight"].abs().max() > 0 and steps[0].keys() == steps[1].keys()
    for k, v in steps[0].items():
        torch.testing.assert_close(steps[1][k], v, rtol=2e-4, atol=2e-6)
    _, log = train(5, 4)
    assert "Invalidate trace cache" not in log, [line for line in log.splitlines() if "Invalidate" in line][:3]
