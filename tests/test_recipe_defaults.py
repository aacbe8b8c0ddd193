"""The reference recipe's defaults where HF's differ, and the frozen whale encoder's mode."""

from pathlib import Path

import pytest
import torch

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
    # --activation_checkpointing takes a policy (model/checkpointing.py); HF gets on or off
    for given, on, policy in (("every_other", True, "every_other"), ("12", True, 12), ("none", False, "none"),
                              ("true", True, "all")):
        args = parser.parse_args_into_dataclasses(args=[*ARGV, "--use_cpu", "True", "--activation_checkpointing",
                                                        given])[2]
        assert (args.activation_checkpointing, args.gradient_checkpointing, args.checkpoint_policy) == (on, on, policy)
    assert parser.parse_args_into_dataclasses(args=[*ARGV, "--activation_checkpointing"])[2].checkpoint_policy == "all"
    with pytest.raises(ConfigError, match="give all, none, every_other, or a number of layers"):
        parse([*ARGV, "--activation_checkpointing", "some"])
    # the stage preset chosen on the command line sets the defaults, in either spelling
    assert parse([*ARGV, "--stage=1.1"])[2].learning_rate == preset.training["learning_rate"]
    assert parse([*ARGV, "--stage", "3"])[2].learning_rate == get_preset("3").training["learning_rate"]


def test_shipped_deepspeed_names_become_the_packaged_files():
    args = parse([*ARGV, "--deepspeed", "zero2"])[2]
    assert args.deepspeed.endswith("vita_trainer/configs/zero2.json") and Path(args.deepspeed).is_file()


def test_a_frozen_whale_encoder_trains_in_train_mode_as_the_reference_unless_asked(tok):
    """The reference's Trainer calls model.train() each step: a frozen encoder's dropout is active
    (the README's "Training a stage"). --frozen_audio_encoder_eval keeps it in eval mode."""
    model = VitaForCausalLM(tiny_config(tok))
    apply_trainable(model, frozenset({"audio_adapter", "mm_projector"}))
    model.train()
    assert model.audio_encoder.training and all(m.training for m in model.audio_encoder.modules())
    for m in model.audio_encoder.modules():  # the tiny config has no dropout; VITA-1.5's is 0.1
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.1
    feats, lengths = torch.randn(1, 64, 80), torch.tensor([64])
    with torch.no_grad():
        a, b = model.audio_encoder(feats, lengths)[0], model.audio_encoder(feats, lengths)[0]
    assert not torch.equal(a, b)  # dropout is on
    model.frozen_audio_encoder_eval = True
    model.train()
    assert not model.audio_encoder.training and model.audio_adapter.training and model.language_model.training
    apply_trainable(model, frozenset({"audio_encoder", "audio_adapter"}))
    assert model.train().audio_encoder.training  # a trained encoder is never held in eval mode
    assert not parse(ARGV)[2].frozen_audio_encoder_eval
    assert parse([*ARGV, "--frozen_audio_encoder_eval", "true"])[2].frozen_audio_encoder_eval


def test_gradient_checkpointing_is_pinned_non_reentrant_and_lora_gets_gradients(tok):
    """Under reentrant checkpointing, a LoRA run whose inputs carry no gradient (frozen towers, frozen
    embeddings) would silently train nothing in the LLM."""
    from types import SimpleNamespace

    from vita_trainer.train.lora import add_lora, unfreeze_lora
    args = parse(ARGV)[2]
    assert args.activation_checkpointing_kwargs == {"use_reentrant": False}
    assert parse([*ARGV, "--gradient_checkpointing_kwargs", '{"every_n_layers": 2}'])[2] \
        .activation_checkpointing_kwargs == {"use_reentrant": False, "every_n_layers": 2}
    torch.manual_seed(0)
    model = add_lora(VitaForCausalLM(tiny_config(tok)), SimpleNamespace(lora_r=4, lora_alpha=8, lora_dropout=0.0))
    apply_trainable(model, frozenset())
    unfreeze_lora(model)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.activation_checkpointing_kwargs)
    model.train()
    ids = torch.randint(0, 200, (2, 12))
    model(input_ids=ids, labels=ids).loss.backward()
    grads = [p.grad for n, p in model.named_parameters() if "lora_B" in n]
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads)


def test_module_learning_rates_come_from_the_preset_and_the_group_flags():
    from vita_trainer.train.main import module_learning_rates
    preset = get_preset("vision_sft")
    assert module_learning_rates(preset, parse([*ARGV, "--stage", "vision_sft"])[2]) == preset.module_lr
    args = parse([*ARGV, "--stage", "vision_sft", "--vision_tower_lr", "1e-7", "--audio_adapter_lr", "3e-4"])[2]
    assert module_learning_rates(preset, args) == {**preset.module_lr, "vision_tower": 1e-7, "audio_adapter": 3e-4}


def test_mm_projector_lr_is_the_vision_towers_rate_as_in_the_reference(caplog):
    """The reference's stage-1.2 command (`--unfreeze_vision_tower True --mm_projector_lr 2e-6`, base rate 2e-5)
    trains the tower at 2e-6 and the projector at the base rate (the reference's optimizer grouping)."""
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


def test_gpu_stages_pack_rows_under_a_token_budget_by_default():
    """On GPUs every stage but CTC packs rows, with a budget of micro-batch rows x model_max_length; CPU runs and an
    explicit choice keep what they say."""
    from vita_trainer.train.arguments import default_packing
    for preset, cuda, argv, expect in (
            ("multimodal_sft", True, [], (True, 8 * 1024)),
            ("audio_ctc", True, [], (False, None)),
            ("multimodal_sft", False, [], (False, None)),
            ("multimodal_sft", True, ["--pack_sequences", "false"], (False, None)),
            ("multimodal_sft", True, ["--max_tokens_per_batch", "4096"], (True, 4096))):
        parser = build_parser(get_preset(preset), cuda=cuda, bf16=False, ampere=False)
        _, data_args, args = parser.parse_args_into_dataclasses(args=[
            *ARGV, "--use_cpu", "True", "--per_device_train_batch_size", "8", "--model_max_length", "1024", *argv])
        default_packing(data_args, args, get_preset(preset), cuda)
        assert (data_args.pack_sequences, data_args.max_tokens_per_batch) == expect, (preset, cuda, argv)
