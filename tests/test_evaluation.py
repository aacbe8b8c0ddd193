"""Validation during a stage: the split, the guide's flag names, and the per-modality validation loss against
HF's own loss recomputed sample by sample."""

from __future__ import annotations

import pytest
import torch
from prometheus_client import generate_latest

from vita_api.errors import ConfigError
from vita_trainer.data.audio import GlobalCMVN
from vita_trainer.data.collator import MultimodalCollator
from vita_trainer.data.dataset import LazySupervisedDataset
from vita_trainer.data.processor import MediaSpec, SampleProcessor
from vita_trainer.data.registry import load_registry
from vita_trainer.data.tokenizer import load_tokenizer
from vita_trainer.model.builder import load_model
from vita_trainer.train.arguments import parse
from vita_trainer.train.main import main as train_main


def base_args(data, out, *extra):
    return ["--stage", "multimodal_sft", "--model_name_or_path", str(data / "base_model"),
            "--data_registry", str(data / "registry.yaml"), "--dataset_use", "demo_multimodal",
            "--output_dir", str(out), "--max_steps", "6", "--per_device_train_batch_size", "4",
            "--logging_steps", "1", "--save_strategy", "no", "--learning_rate", "3e-3", "--metrics_port", "0",
            "--model_max_length", "512", "--disable_tqdm", "True", *extra]


def processor_for(model_dir, registry):
    model, tok = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    proc = SampleProcessor(tok, MediaSpec.from_config(model.config), load_registry(registry), 512,
                           cmvn=GlobalCMVN.load(model_dir / "global_cmvn.json"), chat_format=model.config.chat_format)
    return model, tok, proc


def test_holdout_is_seeded_and_never_trained_on(demo_data):
    _, _, proc = processor_for(demo_data / "base_model", demo_data / "registry.yaml")
    reg = load_registry(demo_data / "registry.yaml")

    def split(seed):
        train = LazySupervisedDataset(reg, "demo_multimodal", proc)
        held = train.hold_out(0.25, seed)
        return [s.sample_id for _, s in train.entries], [s.sample_id for _, s in held.entries]
    train, held = split(42)
    everything = [s.sample_id for _, s in LazySupervisedDataset(reg, "demo_multimodal", proc).entries]
    assert not set(train) & set(held) and sorted(train + held) == sorted(everything)
    assert len(held) == round(0.25 * len(everything))
    assert split(42) == (train, held) and split(7)[1] != held


def test_the_guides_flag_names_and_evaluation_without_data(demo_data, tmp_path, caplog):
    argv = base_args(demo_data, tmp_path, "--evaluation_strategy", "steps", "--eval_steps", "100",
                     "--warmup_ratio", "0.1")
    with pytest.raises(ConfigError, match="--eval_dataset_use KEY .* or --eval_holdout FRACTION"):
        parse(argv)
    _, data_args, args, _ = parse([*argv, "--eval_holdout", "0.1"])
    assert args.eval_strategy == "steps" and args.eval_steps == 100 and args.warmup_steps == 0.1
    assert "--evaluation_strategy is --eval_strategy in transformers 5" in caplog.text
    with pytest.raises(ConfigError, match="give one"):
        parse([*argv, "--eval_holdout", "0.1", "--eval_dataset_use", "demo_image"])


@pytest.mark.slow
def test_validation_loss_per_modality_is_hfs_loss_over_the_held_out_samples(demo_data, tmp_path):
    out = tmp_path / "sft"
    summary = train_main(base_args(demo_data, out, "--eval_holdout", "0.25", "--eval_strategy", "steps",
                                   "--eval_steps", "3", "--per_device_eval_batch_size", "3"))
    assert [step for step, _ in summary["eval_losses"]] == [3, 6, 6]  # during the stage, and once at its end
    by_modality = summary["eval_loss_by_modality"]
    assert set(by_modality) == {"image", "audio"} and summary["eval_loss"] > 0
    # Independently: the trained model's plain HF loss (full logits), one held-out sample at a time.
    model, tok, proc = processor_for(out, demo_data / "registry.yaml")
    model.eval()
    held = LazySupervisedDataset(load_registry(demo_data / "registry.yaml"), "demo_multimodal", proc).hold_out(
        0.25, 42)  # the trainer's default --seed
    collate = MultimodalCollator(tok.pad_token_id)
    sums: dict[str, list[float]] = {}
    with torch.no_grad():
        for i in range(len(held)):
            item = held[i]
            batch = {k: v for k, v in collate([item]).items()}
            tokens = int((batch["labels"][:, 1:] != -100).sum())
            loss = model(**batch).loss.item()  # chunked_loss is off outside the trainer: HF's own loss
            acc = sums.setdefault(item["modality"], [0.0, 0.0])
            acc[0] += loss * tokens
            acc[1] += tokens
    for modality, (total, tokens) in sums.items():
        assert by_modality[modality] == pytest.approx(total / tokens, rel=1e-4), modality
    overall = sum(t for t, _ in sums.values()) / sum(n for _, n in sums.values())
    assert min(by_modality.values()) <= overall <= max(by_modality.values())


def test_eval_losses_reach_prometheus():
    from transformers import TrainerState

    from vita_trainer.train.metrics import MetricsCallback, TrainerMetrics
    metrics = TrainerMetrics()
    callback = MetricsCallback(metrics, "sft", "multimodal_sft", 0)
    state = TrainerState(global_step=30, max_steps=100)
    state.is_world_process_zero = True
    callback.on_log(None, state, None, logs={"eval_loss": 1.25, "eval_loss_image": 1.5, "eval_loss_audio": 0.5})
    text = generate_latest(metrics.registry).decode()
    assert 'vita_train_eval_loss{modality="all",stage="sft"} 1.25' in text
    assert 'vita_train_eval_loss{modality="image",stage="sft"} 1.5' in text
    assert 'vita_train_eval_loss{modality="audio",stage="sft"} 0.5' in text


def test_the_operator_reads_the_validation_loss_into_status():
    """The trainer's /metrics text -> status.progress.evalLoss (the wide `kubectl get` column), and the finished
    master pod's termination message -> status.stages[].finalEvalLoss."""
    import sys
    from datetime import datetime, timezone
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "operator"))
    from vita_api.termination import eval_loss_of, final_loss_of, termination_message
    from vita_operator.core.progress import next_progress, read_exposition
    text = ('vita_train_eval_loss{modality="all",stage="sft"} 1.25\n'
            'vita_train_eval_loss{modality="image",stage="sft"} 1.5\n'
            'vita_train_eval_loss{modality="all",stage="other"} 9.0\n'
            'vita_train_global_step{stage="sft"} 30.0\n')
    gauges = read_exposition(text, "sft")
    assert gauges == {"evalLoss": 1.25, "step": 30.0}
    progress = next_progress(None, gauges, stage="sft", job="j", now=datetime(2026, 1, 1, tzinfo=timezone.utc),
                             stage_start=None, gpus=0)
    assert progress["evalLoss"] == 1.25
    message = termination_message({"stage": "sft", "global_step": 30, "final_loss": 0.5, "eval_loss": 1.25})
    assert final_loss_of(message) == 0.5 and eval_loss_of(message) == 1.25
    assert eval_loss_of(termination_message({"stage": "sft", "global_step": 3, "final_loss": 0.5})) is None


def test_a_run_spec_stage_asks_for_validation_data(tmp_path):
    import copy

    import yaml

    from vita_api.plan import PathRoots, stage_args
    from vita_api.spec import VitaTrainingRun
    from vita_trainer.demo.run import RUN_TINY
    run = yaml.safe_load(RUN_TINY.read_text())
    run["spec"]["stages"][-1]["evalHoldout"] = 0.05
    run["spec"]["stages"][-1]["args"].update(eval_strategy="steps", eval_steps=200)
    spec = VitaTrainingRun.model_validate(run).spec
    argv = stage_args(spec, len(spec.stages) - 1, PathRoots("/data", "/ckpt"))
    assert argv[argv.index("--eval_holdout") + 1] == "0.05" and "--eval_dataset_use" not in argv
    _, data_args, args, _ = parse(argv)  # the trainer takes them as the plan wrote them
    assert data_args.eval_holdout == 0.05 and args.eval_strategy == "steps"
    other = copy.deepcopy(run)
    other["spec"]["stages"][-1].pop("evalHoldout")
    other["spec"]["stages"][-1]["evalDatasetUse"] = "demo_image"
    argv = stage_args(VitaTrainingRun.model_validate(other).spec, len(spec.stages) - 1, PathRoots("/d", "/c"))
    assert argv[argv.index("--eval_dataset_use") + 1] == "demo_image"
