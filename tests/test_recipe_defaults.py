"""The reference recipe's defaults where HF's differ ([gpu-correctness]), and the frozen whale encoder's mode."""

from vita_trainer.model.builder import tiny_config
from vita_trainer.model.modeling import VitaForCausalLM
from vita_trainer.train.main import DDP_TIMEOUT_SECONDS, parse, recipe_defaults
from vita_trainer.train.weights import apply_trainable


def as_flags(argv: list[str]) -> dict[str, str]:
    return dict(zip(argv[::2], argv[1::2]))


def test_gpu_runs_get_the_recipes_data_loading_precision_and_timeout():
    assert as_flags(recipe_defaults(set(), cuda=True, bf16=True, ampere=True)) == {
        "--ddp_timeout": str(DDP_TIMEOUT_SECONDS), "--gradient_checkpointing": "True",
        "--dataloader_num_workers": "4", "--dataloader_persistent_workers": "True",
        "--dataloader_pin_memory": "True", "--dataloader_prefetch_factor": "4", "--bf16": "True", "--tf32": "True"}
    chosen = as_flags(recipe_defaults({"dataloader_num_workers", "tf32"}, cuda=True, bf16=True, ampere=True))
    assert "--dataloader_num_workers" not in chosen and "--tf32" not in chosen  # the command line wins
    assert "--tf32" not in as_flags(recipe_defaults(set(), cuda=True, bf16=False, ampere=False))  # V100, T4
    # CPU runs (tests, the demo) keep in-process loading; the long timeout applies everywhere
    assert recipe_defaults(set(), cuda=False, bf16=False, ampere=False) == ["--ddp_timeout", str(DDP_TIMEOUT_SECONDS)]
    argv = ["--model_name_or_path", "m", "--output_dir", "o", "--data_registry", "r", "--dataset_use", "d"]
    train_args = parse(argv)[2]
    assert train_args.ddp_timeout == DDP_TIMEOUT_SECONDS and train_args.dataloader_num_workers == 0
    assert parse([*argv, "--ddp_timeout", "60"])[2].ddp_timeout == 60


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
