"""vita-model convert (ZeRO-3 shards and HF folders), inspect."""

import json
import os
import subprocess
import sys

import pytest
import torch

from vita_trainer.local import free_port
from vita_trainer.tools.model_cli import main as model_main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def zero3_stage(tmp_path_factory, demo_data):
    d = demo_data
    out = tmp_path_factory.mktemp("mt") / "stage"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "vita_trainer.train", "--deepspeed", "zero3",
           "--stage", "multimodal_sft", "--model_name_or_path", str(d / "base_model"),
           "--data_registry", str(d / "registry.yaml"), "--dataset_use", "demo_multimodal", "--output_dir", str(out),
           "--max_steps", "2", "--save_steps", "2", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2",
           "--metrics_port", "0", "--model_max_length", "512", "--disable_tqdm", "True"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
    assert r.returncode == 0, r.stderr[-3000:]
    return d, out


def logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_convert_zero3_checkpoint_gives_the_training_model_logits(zero3_stage, tmp_path):
    from transformers import AutoModelForCausalLM

    import vita_trainer.model.builder  # noqa: F401  (registers the vita model type with the Auto classes)
    d, out = zero3_stage
    ckpt = out / "checkpoint-2"
    assert (ckpt / "global_step2" / "zero_pp_rank_1_mp_rank_00_optim_states.pt").is_file()
    assert model_main(["convert", str(ckpt), str(tmp_path / "infer")]) == 0
    infer = tmp_path / "infer"
    for f in ("model.safetensors", "config.json", "tokenizer.json", "processor_config.json", "global_cmvn.json"):
        assert (infer / f).is_file(), f
    proc = json.loads((infer / "processor_config.json").read_text())
    assert proc["tokens_per_tile"] == 64 and proc["sample_rate"] == 16000
    loaded = AutoModelForCausalLM.from_pretrained(infer)  # one call
    trained = AutoModelForCausalLM.from_pretrained(out)   # the stage's own gathered 16-bit save
    base = AutoModelForCausalLM.from_pretrained(d / "base_model")
    ids = torch.tensor([[5, 17, 42, 7, 99, 3, 11]])
    assert torch.allclose(logits(loaded, ids), logits(trained, ids), atol=1e-5)
    assert not torch.allclose(logits(base, ids), logits(trained, ids), atol=1e-4)  # training changed it
    assert model_main(["convert", str(out), str(tmp_path / "infer2")]) == 0  # an HF folder converts too
    assert torch.allclose(logits(AutoModelForCausalLM.from_pretrained(tmp_path / "infer2"), ids),
                          logits(trained, ids), atol=1e-5)


def test_inspect_counts_and_memory(zero3_stage, capsys):
    d, _ = zero3_stage
    from vita_trainer.model.builder import load_model
    model = load_model(str(d / "base_model"))
    assert model_main(["inspect", str(d / "base_model"), "--stage", "vision_align", "--gpus", "2", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["total"] == sum(p.numel() for p in model.parameters())
    assert r["trainable"] == sum(p.numel() for p in model.mm_projector.parameters())
    assert r["trainable_groups"] == ["mm_projector"]
    assert model_main(["inspect", "vita-1.5-7b", "--stage", "multimodal_sft", "--gpus", "32", "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert 8.0e9 < r["total"] < 9.0e9
    expected = (r["total"] * 2 + r["trainable"] * 14) / 32 / 2 ** 30
    assert r["zero3_model_states_gib_per_gpu"] == pytest.approx(expected, abs=0.01)


def test_inspect_says_whether_the_reference_micro_batch_fits(capsys):
    """8 x 6200 tokens on an 80 GiB card: HF's full fp32 logits alone are ~70 GiB and do not fit; the chunked loss
    does. The largest micro-batch it names fits and one more token would not."""
    from vita_trainer.model.memory import GIB, LayerShape, estimate
    from vita_trainer.model.builder import vita_1p5_config
    args = ["inspect", "vita-1.5-7b", "--stage", "multimodal_sft", "--gpus", "32", "--tokens", "49600"]
    assert model_main(args + ["--json", "--no-chunked-loss"]) == 0
    plain = json.loads(capsys.readouterr().out)["memory"]
    assert not plain["fits"] and 60 < plain["logits_gib"] < 80
    assert model_main(args + ["--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    chunked = r["memory"]
    assert chunked["fits"] and chunked["logits_gib"] < 8 and chunked["activations_gib"] == plain["activations_gib"]
    assert chunked["total_gib"] == pytest.approx(
        chunked["model_states_gib"] + chunked["activations_gib"] + chunked["logits_gib"], abs=0.02)
    shape = LayerShape.of(vita_1p5_config().text_config)
    common = dict(total=r["total"], trainable=r["trainable"], gpus=32, gpu_memory_gib=80.0)
    at_max = estimate(shape, tokens=chunked["max_tokens"], **common)
    assert at_max["fits"] and not estimate(shape, tokens=chunked["max_tokens"] + 1, **common)["fits"]
    assert at_max["total_gib"] * GIB <= 80 * GIB
    assert model_main(["inspect", "vita-1.5-7b", "--stage", "multimodal_sft", "--gpus", "32"]) == 0
    assert "fits a 80 GiB GPU" in capsys.readouterr().out
    assert model_main(["inspect", "vita-1.5-7b", "--stage", "audio_ctc", "--gpus", "8", "--json"]) == 0
    ctc = json.loads(capsys.readouterr().out)["memory"]
    assert ctc["activations_gib"] == ctc["logits_gib"] == 0  # the CTC stage never runs the LLM
