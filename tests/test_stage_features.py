"""LoRA train + merge, the audio-encoder CTC stage, the non-finite-loss guard and the local runner's preflight."""

import io
import json
import shlex
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from vita_trainer.demo.run import build_run
from vita_api.errors import ConfigError, VitaError
from vita_trainer.train.main import main as train_main

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(demo_data):
    return demo_data


def args(data, out, stage, mixture, *extra):
    return ["--stage", stage, "--model_name_or_path", str(data / "base_model"),
            "--data_registry", str(data / "registry.yaml"), "--dataset_use", mixture, "--output_dir", str(out),
            "--max_steps", "6", "--per_device_train_batch_size", "4", "--logging_steps", "1",
            "--save_strategy", "no", "--learning_rate", "3e-3", "--metrics_port", "0", "--model_max_length", "512",
            "--disable_tqdm", "True", *extra]


def test_lora_trains_and_merges_to_the_same_logits(data, tmp_path):
    from peft import PeftModel

    from vita_trainer.model.builder import load_model
    from vita_trainer.train.lora import merge_lora
    summary = train_main(args(data, tmp_path / "lora", "multimodal_sft", "demo_multimodal", "--lora_enable", "True",
                              "--lora_r", "4", "--lora_alpha", "8"))
    assert "lora" in summary["trainable"] and "llm" not in summary["trainable"]
    assert (tmp_path / "lora" / "lora" / "adapter_config.json").is_file()
    extra = torch.load(tmp_path / "lora" / "non_lora_trainables.bin", weights_only=True)
    assert any(k.startswith("mm_projector.") for k in extra) and any(k.startswith("audio_adapter.") for k in extra)

    merged = merge_lora(str(data / "base_model"), str(tmp_path / "lora"), str(tmp_path / "merged"))
    base = load_model(str(data / "base_model"))
    base.language_model = PeftModel.from_pretrained(base.language_model, str(tmp_path / "lora" / "lora"))
    from vita_trainer.train.weights import load_partial
    load_partial(base, tmp_path / "lora" / "non_lora_trainables.bin")
    m = load_model(merged)
    base.eval(), m.eval()
    ids = torch.tensor([[5, 17, 42, 7, 99, 3]])
    with torch.no_grad():
        a = base(input_ids=ids).logits
        b = m(input_ids=ids).logits
    assert torch.allclose(a, b, atol=1e-4)
    ref = load_model(str(data / "base_model")).eval()
    with torch.no_grad():
        assert not torch.allclose(ref(input_ids=ids).logits, b, atol=1e-4)  # LoRA changed the model
        # merged on handoff: the stage's own folder holds the same full weights
        handoff = load_model(str(tmp_path / "lora")).eval()
        assert torch.allclose(handoff(input_ids=ids).logits, b, atol=1e-4)
    assert summary["full_model"] and str(tmp_path / "lora" / "model.safetensors") in summary["outputs"]
    # and a full stage trains from it, as the plan hands it on (before: no weights in the folder)
    nxt = train_main(args(data, tmp_path / "next", "multimodal_sft", "demo_multimodal", "--model_name_or_path",
                          str(tmp_path / "lora"), "--max_steps", "2"))
    assert nxt["global_step"] == 2 and (tmp_path / "next" / "model.safetensors").is_file()


def test_audio_ctc_stage_trains_only_the_encoder_and_head(data, tmp_path, monkeypatch):
    term = tmp_path / "termination-log"
    term.touch()  # the kubelet provides this file in a pod
    monkeypatch.setenv("VITA_TERMINATION_MESSAGE_PATH", str(term))
    summary = train_main(args(data, tmp_path / "ctc", "audio_ctc", "demo_audio", "--save_full_model", "True"))
    assert set(summary["trainable"]) == {"audio_encoder", "ctc_head"}
    # the operator reads this from the pod status as status.stages[].finalLoss
    assert json.loads(term.read_text()) == {"stage": "audio_ctc", "globalStep": 6, "finalLoss": summary["final_loss"]}
    losses = [loss for _, loss in summary["losses"]]
    assert losses[-1] < losses[0]
    before = load_file(data / "base_model" / "model.safetensors")
    after = load_file(tmp_path / "ctc" / "model.safetensors")
    assert any(k.startswith("ctc_head.") for k in after)
    for k, v in before.items():
        if k in after:
            changed = not torch.equal(v, after[k])
            assert changed == k.startswith("audio_encoder.") or not changed, k
    assert any(not torch.equal(v, after[k]) for k, v in before.items() if k.startswith("audio_encoder."))


def test_no_termination_message_outside_a_pod(tmp_path, monkeypatch):
    from vita_api.termination import write_termination_message
    monkeypatch.setenv("VITA_TERMINATION_MESSAGE_PATH", str(tmp_path / "absent"))
    assert write_termination_message({"final_loss": 1.0}) is False and not (tmp_path / "absent").exists()


def test_device_image_pipeline_with_token_budget_batches_learns(data, tmp_path):
    """In-process training with uint8 images tiled by the model and token-budget batches: the loss falls."""
    summary = train_main(args(data, tmp_path / "device", "vision_align", "demo_image", "--image_pipeline", "device",
                              "--max_tokens_per_batch", "1024"))
    losses = [loss for _, loss in summary["losses"]]
    assert len(losses) == 6 and min(losses[-2:]) < losses[0], losses


def test_non_finite_loss_stops_with_a_clear_error(data, tmp_path):
    with pytest.raises(VitaError, match="non-finite loss"):
        train_main(args(data, tmp_path / "nan", "vision_align", "demo_image", "--learning_rate", "1e30",
                        "--max_grad_norm", "0", "--lr_scheduler_type", "constant", "--warmup_steps", "0"))


def test_a_projector_type_the_base_was_not_built_with_stops_before_training(data, tmp_path):
    """spec.model.mmProjectorType reaches the first stage as --mm_projector_type; a VITA base must match it."""
    with pytest.raises(ConfigError, match="--mm_projector_type linear but .* was built with mlp2x_gelu"):
        train_main(args(data, tmp_path / "proj", "vision_align", "demo_image", "--mm_projector_type", "linear"))


def test_preflight_reports_every_problem_before_training(data, tmp_path):
    from vita_trainer.local import run_local
    run = build_run("bad", 0.01, "none", 1)
    run["spec"]["model"]["base"] = "no_such_model"
    run["spec"]["stages"][1]["datasetUse"] = "Pretrain_video0"
    run["spec"]["stages"][2]["args"]["freeze_audio_encoder_adapter"] = True  # audio_align would train nothing
    path = data / "bad.yaml"
    path.write_text(yaml.safe_dump(run))
    with pytest.raises(ConfigError) as e:
        run_local(path, nproc=1)
    msg = str(e.value)
    assert "no_such_model" in msg and "Pretrain_video0" in msg and "trains nothing" in msg
    assert not (data / "runs").exists()  # nothing started


@pytest.mark.slow
def test_the_demo_as_the_readme_runs_it_learns_above_chance(tmp_path, capsys, monkeypatch):
    """`vita-train demo` (its main(), every stage through `vita-train local`) on the small data set with a fifth of
    the steps. Chance is 1/6 for a colour, 1/3 for a shape or a pitch, 1/4 for a count (the README's demo data):
    about 0.25 per modality over both questions; the trained model must do far better on held-out samples."""
    from vita_trainer.demo.run import main as demo_main
    out = tmp_path / "demo"
    assert demo_main(["--out", str(out), "--small", "--steps-scale", "0.2"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((out / "demo_summary.json").read_text())
    assert [s["preset"] for s in report["stages"]] == ["text_sft", "vision_align", "audio_align", "multimodal_sft"]
    assert all(s["final_loss"] < s["first_loss"] for s in report["stages"]), report["stages"]
    chance = {"color": 1 / 6, "shape": 1 / 3, "pitch": 1 / 3, "count": 1 / 4}
    for kind in ("image", "audio"):
        accuracy = report["answer_check"][kind]["accuracy"]
        assert accuracy["all"] >= 0.6, (kind, accuracy)
        for question, acc in accuracy.items():
            if question != "all":
                assert acc > chance[question], (kind, question, accuracy)
    # The README's laptop quick start, as written, in a folder where demo_out is this demo's output
    from vita_trainer.cli import main as cli_main
    from vita_trainer.tools.model_cli import main as model_main
    sample = json.loads((out / "chats" / "image_eval.json").read_text())[0]
    assert sample["image"] == "eval_00000.png"  # the image the README's chat command names
    answers = {t["value"]: r["value"] for t, r in zip(sample["conversations"][::2], sample["conversations"][1::2])}
    colour, shape = answers["What color is the shape?"], answers["<image>\nWhat shape is it?"]
    (tmp_path / "demo_out").symlink_to(out)
    (tmp_path / "manifests").symlink_to(ROOT / "manifests")
    monkeypatch.chdir(tmp_path)
    block = (ROOT / "README.md").read_text().split("<!-- quick-start-laptop -->")[1].split("<!-- /quick-start")[0]
    commands = [shlex.split(line.split("  #")[0]) for line in block.split("```bash\n")[1].split("```")[0].splitlines()]
    mains = {".venv/bin/vita-model": model_main, ".venv/bin/vita-train": cli_main}
    printed_by = {}
    for argv in commands:
        assert mains[argv[0]](argv[1:]) == 0, argv
        printed_by[argv[1]] = capsys.readouterr().out
    # (the demo's stages train with the system prompt "You are VITA.": the model folder records it for chat)
    assert printed_by["chat"].strip() == colour
    assert "vita_demo_color         exact_match          1.0000" in printed_by["eval"]
    assert printed_by["local"].count("already done") == 4  # every stage is found finished
    chat = ["chat", str(out / "runs" / "multimodal"), "--image", str(out / "images" / sample["image"])]
    monkeypatch.setattr("sys.stdin", io.StringIO("What shape is it?\nWhat color is the shape?\n/exit\n"))
    assert model_main(chat) == 0
    assert capsys.readouterr().out.split() == [shape, colour]
    # lmms-eval on the demo's held-out questions, with the command the demo prints: the model that learned the
    # colours and pitches answers every one (free answer and multiple choice); the untrained base does not
    command = next(line.split(": ", 1)[1] for line in printed.splitlines() if line.startswith("benchmark it"))
    assert command.startswith("vita-model eval ")
    scores = {}
    for name, folder in (("trained", str(out / "runs" / "multimodal")), ("untrained", str(out / "base_model"))):
        argv = command.split()[1:]
        argv[1] = folder
        assert model_main([*argv, "--output", str(tmp_path / name)]) == 0
        scores[name] = json.loads((tmp_path / name / "scores.json").read_text())
    assert scores["trained"] == {"vita_demo_color": {"exact_match": 1.0}, "vita_demo_color_choice": {"acc": 1.0},
                                 "vita_demo_pitch": {"exact_match": 1.0}}, scores
    assert all(v < 1.0 for row in scores["untrained"].values() for v in row.values()), scores
    # spec.evaluation under `vita-train local`: the stages are found done, the benchmarks run after the last one
    run = yaml.safe_load((ROOT / "manifests" / "examples" / "run-tiny.yaml").read_text())
    run["spec"]["evaluation"] = {"tasks": ["vita_demo"], "includePath": "lmms_tasks"}
    (out / "run-evaluated.yaml").write_text(yaml.safe_dump(run))
    assert cli_main(["local", str(out / "run-evaluated.yaml")]) == 0
    assert json.loads((out / "runs" / "multimodal" / "eval" / "scores.json").read_text()) == scores["trained"]


@pytest.mark.parametrize("argv,kind", [
    (["--model_name_or_path", "/nonexistent", "--data_registry", "/r.yaml", "--dataset_use", "x"], "ConfigError"),
    (["--no_such_flag", "1"], "UsageError"),
])
def test_a_bad_config_tells_the_operator_not_to_retry(tmp_path, argv, kind):
    """What torchrun runs in a pod: a VitaError or a usage error exits 2 and says `retryable: false` in the
    termination message, so the operator fails the stage instead of retrying it."""
    import os
    import subprocess
    import sys
    from vita_api.termination import permanent_failure_of
    term = tmp_path / "termination-log"
    term.write_text("")  # the kubelet creates it
    done = subprocess.run([sys.executable, "-m", "vita_trainer.train", "--output_dir", str(tmp_path / "o"), *argv],
                          env={**os.environ, "VITA_TERMINATION_MESSAGE_PATH": str(term)}, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2, done.stderr[-2000:]
    assert permanent_failure_of(term.read_text()).startswith(f"{kind}: "), term.read_text()


def test_a_pod_without_a_gpu_driver_may_be_retried_elsewhere(monkeypatch):
    from vita_api.errors import NodeError
    from vita_trainer.train.arguments import require_gpus_if_expected
    monkeypatch.setenv("VITA_EXPECTED_GPUS", "8")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(NodeError) as e:
        require_gpus_if_expected()
    assert e.value.retryable


def test_a_partial_ctc_stage_hands_its_encoder_to_the_next_stage(data, tmp_path):
    """audio_ctc without save_full_model writes audio_encoder.bin and ctc_head.bin; the next stage (no CTC head)
    starts from the base plus what the plan hands on, and its encoder is the one the CTC stage trained."""
    from vita_api.spec import VitaTrainingRunSpec
    from vita_api.plan import PathRoots, stage_inputs
    train_main(args(data, tmp_path / "run" / "ctc", "audio_ctc", "demo_audio"))
    assert {p.name for p in (tmp_path / "run" / "ctc").glob("*.bin")} == {"audio_encoder.bin", "ctc_head.bin"}
    spec = VitaTrainingRunSpec.model_validate({
        "model": {"base": "base_model"}, "data": {"registry": "registry.yaml"}, "output": "run",
        "stages": [{"name": "ctc", "preset": "audio_ctc", "datasetUse": "demo_audio"},
                   {"name": "align", "preset": "audio_align", "datasetUse": "demo_audio"}]})
    _, files = stage_inputs(spec, 1, PathRoots(data=str(data), checkpoints=str(tmp_path)))
    summary = train_main(args(data, tmp_path / "run" / "align", "audio_align", "demo_audio", "--save_full_model",
                              "True", "--init_weights", *files))
    assert summary["losses"]
    trained = torch.load(tmp_path / "run" / "ctc" / "audio_encoder.bin", weights_only=True)
    after = load_file(tmp_path / "run" / "align" / "model.safetensors")
    shared = [k for k in trained if k in after]
    assert shared and all(torch.equal(trained[k], after[k]) for k in shared)  # frozen in align: kept as handed
