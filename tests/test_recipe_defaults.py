"""The reference recipe's defaults where HF's differ ([gpu-correctness]), and the frozen whale encoder's mode."""

from pathlib import Path

import pytest

from vita_api.errors import ConfigError

from vita_api.presets import get_preset
from vita_trainer.model.builder import tiny_config
from vita_trainer.model.modeling import VitaForCausalLM
from vita_trainer.train.arguments import DDP_TIMEOUT_SECONDS, build_parser, parse, recipe_defaults
from vita_trainer.train.weights import apply_trainable


ARGV = ["--model_name_or_path", "m", "--output_dir", "o", "--data_registry", "r", "--dataset_use", "d"]


def test_gpu_runs_get_the_recipes_data_loading_precision_and_timeout():
    assert recipe_defaults(cuda=True, bf16=True, ampere=True) == {
        "ddp_timeout": DDP_TIMEOUT_SECONDS, "gradient_checkpointing": True, "dataloader_num_workers": 4,
        "dataloader_persistent_workers": True, "dataloader_pin_memory": True, "dataloader_prefetch_factor": 4,
        "bf16": True, "tf32": True}
    assert "tf32" not in recipe_defaults(cuda=True, bf16=False, ampere=False)  # V100, T4
    # CPU runs (tests, the demo) keep in-process loading; the long timeout applies everywhere
    assert recipe_defaults(cuda=False, bf16=False, ampere=False) == {"ddp_timeout": DDP_TIMEOUT_SECONDS,
                                                                     "use_cpu": True}
    train_args = parse(ARGV)[2]
    assert train_args.ddp_timeout == DDP_TIMEOUT_SECONDS and train_args.dataloader_num_workers == 0
    assert train_args.use_cpu and not train_args.remove_unused_columns and train_args.report_to == []
    assert parse([*ARGV, "--ddp_timeout", "60"])[2].ddp_timeout == 60


def test_defaults_are_the_parsers_the_preset_wins_over_the_recipe_and_the_command_line_over_both():
    """Presets and the recipe are parser defaults (no argv edits): `--help` shows them, and a flag given on the
    command line is never overridden, whatever spelling it uses."""
    preset = get_preset("vision_align")
    parser = build_parser(preset, cuda=True, bf16=False, ampere=False)  # a GPU the CPU can stand in for
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=[*ARGV, "--use_cpu", "True"])
    assert args.learning_rate == preset.training["learning_rate"] and args.dataloader_num_workers == 4
    assert args.gradient_checkpointing and args.include_num_input_tokens_seen == "non_padding"
    model_args, data_args, args = parser.parse_args_into_dataclasses(args=[
        *ARGV, "--use_cpu", "True", "--learning_rate=0.5", "--dataloader_num_workers", "1",
        "--gradient_checkpointing", "false", "--include_num_input_tokens_seen", "false"])
    assert (args.learning_rate, args.dataloader_num_workers, args.gradient_checkpointing) == (0.5, 1, False)
    assert args.include_num_input_tokens_seen == "no"
    # the stage preset chosen on the command line sets the defaults, in either spelling
    assert parse([*ARGV, "--stage=1.1"])[2].learning_rate == preset.training["learning_rate"]
    assert parse([*ARGV, "--stage", "3"])[2].learning_rate == get_preset("3").training["learning_rate"]


def test_shipped_deepspeed_names_become_the_packaged_files():
    args = parse([*ARGV, "--deepspeed", "zero2"])[2]
    assert args.deepspeed.endswith("vita_trainer/configs/zero2.json") and Path(args.deepspeed).is_file()


def test_a_frozen_whale_encoder_stays_in_eval_mode_while_training(tok):
    model = VitaForCausalLM(tiny_config(tok))
    apply_trainable(model, frozenset({"audio_adapter", "mm_projector"}))
    model.train()
    assert not model.audio_encoder.training and not any(m.training for m in model.audio_encoder.modules())
    assert model.audio_adapter.training and model.language_model.training
    apply_trainable(model, frozenset({"audio_encoder", "audio_adapter"}))
    model.train()
    assert model.audio_encoder.training
    assert not model.eval().audio_encoder.training


def test_module_learning_rates_come_from_the_preset_and_the_group_flags():
    from vita_trainer.train.main import module_learning_rates
    preset = get_preset("vision_sft")
    assert module_learning_rates(preset, parse([*ARGV, "--stage", "vision_sft"])[2]) == preset.module_lr
    args = parse([*ARGV, "--stage", "vision_sft", "--vision_tower_lr", "1e-7", "--audio_adapter_lr", "3e-4"])[2]
    assert module_learning_rates(preset, args) == {**preset.module_lr, "vision_tower": 1e-7, "audio_adapter": 3e-4}


def test_mm_projector_lr_is_the_vision_towers_rate_as_in_the_reference(caplog):
    """The reference's stage-1.2 command (`--unfreeze_vision_tower True --mm_projector_lr 2e-6`, base rate 2e-5)
    trains the tower at 2e-6 and the projector at the base rate (../shared/docs/vita-reference.md)."""
    from vita_trainer.train.main import module_learning_rates
    preset = get_preset("vision_task_sft")  # no preset rates of its own
    args = parse([*ARGV, "--stage", "vision_task_sft", "--learning_rate", "2e-5", "--mm_projector_lr", "2e-6"])[2]
    with caplog.at_level("INFO", logger="vita_trainer"):
        rates = module_learning_rates(preset, args)
    assert rates.get("vision_tower") == 2e-6 and "mm_projector" not in rates  # the projector: --learning_rate
    assert "sets the vision tower's learning rate" in caplog.text
    args = parse([*ARGV, "--stage", "vision_task_sft", "--projector_lr", "1e-4"])[2]
    assert module_learning_rates(preset, args) == {"mm_projector": 1e-4}
    args = parse([*ARGV, "--mm_projector_lr", "2e-6", "--vision_tower_lr", "1e-6"])[2]
    with pytest.raises(ConfigError, match="both set the vision tower"):
        module_learning_rates(preset, args)
