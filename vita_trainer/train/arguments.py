"""Command-line arguments: the reference's flags with their meaning, plus every HF TrainingArguments flag; and
their defaults, which come from the stage preset and the recipe, not from HF alone."""

from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

import torch
from transformers import HfArgumentParser, TrainingArguments

from vita_api.constants import (DEEPSPEED_PRESETS, IMAGE_ASPECT_RATIOS, MAX_AUDIO_SECONDS, MIN_AUDIO_SECONDS,
                                MODEL_MAX_LENGTH)
from vita_api.errors import ConfigError, NodeError
from vita_api.plan import GPUS_ENV
from vita_api.presets import StagePreset, as_bool, get_preset

log = logging.getLogger("vita_trainer")


@dataclass
class ModelArguments:
    model_name_or_path: str = field(metadata={"help": "VITA folder to start from (see `vita-train init-model`)"})
    tokenizer_name_or_path: str | None = field(default=None, metadata={
        "help": "'qwen2.5' (real vocabulary, offline) or a tokenizer folder; default: the model folder"})
    model_type: str = field(default="qwen2p5_instruct", metadata={"help": "Reference compatibility; LLM family"})
    version: str | None = field(default=None, metadata={
        "help": "Chat format: vita15 (VITA-1.5's own; the reference's name qwen2p5_instruct is an alias) or chatml "
                "(plain Qwen2.5 ChatML); default: the model's (vita15 for models imported from VITA-1.5)"})
    vision_tower: str | None = field(default=None, metadata={"help": "InternViT folder: of a released VITA-1.5 "
                                     "--model_name_or_path (default: the path its config records), or to compose a "
                                     "VITA with a plain LLM --model_name_or_path (once per run, in "
                                     "<output>/base-model)"})
    audio_encoder: str | None = field(default=None, metadata={"help": "Whale folder (final.pt, train.yaml, "
                                      "global_cmvn), in the same two cases as --vision_tower"})
    mm_projector_type: str | None = field(default=None, metadata={"help": "Must match the model folder if given"})
    init_weights: list[str] = field(default_factory=list, metadata={
        "help": "Partial state dicts ({group}.bin) loaded on top of the model, in order"})
    pretrain_mm_mlp_adapter: str | None = field(default=None, metadata={"help": "Reference flag: mm_projector.bin"})
    pretrain_audio_mlp_adapter: str | None = field(default=None, metadata={"help": "Reference flag: audio adapter"})
    # The whale's chunked attention (reference transformer-chunk_size / -left_chunks / -dynamic-chunks); None keeps
    # the model folder's setting. Training-only for dynamic chunks: eval always uses the fixed setting.
    audio_chunk_size: int | None = None
    audio_left_chunks: int | None = None
    audio_dynamic_chunks: bool | None = None
    # Reference freeze flags; None means "as the stage preset says".
    tune_mm_mlp_adapter: bool | None = None
    tune_audio_mlp_adapter: bool | None = None
    freeze_backbone: bool | None = None
    unfreeze_vision_tower: bool | None = None
    freeze_mm_mlp_adapter: bool | None = None
    freeze_audio_encoder: bool | None = None
    freeze_audio_encoder_adapter: bool | None = None
    attn_implementation: str = field(default="auto", metadata={
        "choices": ["auto", "sdpa", "eager", "flash_attention_2", "varlen"],
        "help": "The language model's attention while training: varlen attends by sample boundaries with "
                "PyTorch's own flash kernel (GPU, no flash-attn build); auto: flash_attention_2 where flash-attn is "
                "installed, varlen on other GPUs, sdpa on CPU"})
    lora_enable: bool = field(default=False, metadata={"help": "Train LoRA adapters on the LLM (peft)"})
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05


@dataclass
class DataArguments:
    data_registry: str = field(metadata={"help": "Dataset registry YAML"})
    dataset_use: str = field(metadata={"help": "Mixture or dataset key in the registry"})
    image_aspect_ratio: str = field(default="dynamic", metadata={
        "choices": list(IMAGE_ASPECT_RATIOS),
        "help": "dynamic (InternVL tiling) | square (one centre-cropped tile; still tiles under vita15) | pad "
                "(pasted on a square of the mean colour first, then tiled, as the reference)"})
    max_tiles: int | None = field(default=None, metadata={"help": "Maximum tiles per image; default from config"})
    lazy_preprocess: bool = field(default=True, metadata={"help": "Always lazy; accepted for compatibility"})
    is_multimodal: bool = field(default=True, metadata={"help": "Accepted for compatibility"})
    group_by_modality_length: bool = field(default=False, metadata={"help": "Group batches by length and modality"})
    image_pipeline: str = field(default="auto", metadata={
        "choices": ["auto", "device", "host"],
        "help": "device: DataLoader workers only decode images (uint8), the model resizes, tiles and normalises "
                "them on its device; host: PIL tiles as float on the host (the reference's exact pixels); "
                "auto: host under the vita15 format and on CPU, device on GPUs otherwise"})
    max_tokens_per_batch: int | None = field(default=None, metadata={
        "help": "Cap each micro-batch by tokens instead of a sample count (replaces --per_device_train_batch_size): "
                "as many samples as fit, padded rows counted as samples x longest, packed rows by their sum; "
                "ranks get batches of even cost. At least --model_max_length"})
    pack_sequences: bool | None = field(default=None, metadata={
        "help": "Pack several samples per row up to --model_max_length (attention stays inside each sample); "
                "default: on GPUs, with --max_tokens_per_batch rows x --model_max_length, except the CTC stage"})
    skip_bad_samples: bool = field(default=False, metadata={
        "help": "Count and skip unreadable samples instead of failing"})
    cache_processed_samples: bool = field(default=False, metadata={
        "help": "Keep each processed sample in memory after its first use (small data sets; still lazy)"})
    audio_cmvn: str | None = field(default=None, metadata={
        "help": "global_cmvn stats file; default: <model>/global_cmvn.json"})
    system_prompt: str | None = field(default=None, metadata={
        "help": "Replace the chat format's three modality-dependent system prompts with this one text"})
    system_prompt_image: str | None = field(default=None, metadata={"help": "System prompt for samples with images"})
    system_prompt_video: str | None = field(default=None, metadata={"help": "System prompt for samples with a video"})
    system_prompt_language: str | None = field(default=None, metadata={
        "help": "System prompt for text-only and audio-only samples"})
    min_audio_seconds: float = MIN_AUDIO_SECONDS
    max_audio_seconds: float = MAX_AUDIO_SECONDS
    eval_dataset_use: str | None = field(default=None, metadata={
        "help": "Validation data: a dataset or mixture key of the registry (evaluated with --eval_strategy, and "
                "once when the stage ends)"})
    eval_holdout: float = field(default=0.0, metadata={
        "help": "Validation data held out of --dataset_use: this fraction of its samples, chosen with --seed, "
                "never trained on (instead of --eval_dataset_use)"})


@dataclass
class VitaTrainingArguments(TrainingArguments):
    stage: str = field(default="multimodal_sft", metadata={"help": "Stage preset name or alias (see presets.yaml)"})
    stage_name: str | None = field(default=None, metadata={"help": "Label for metrics and logs; default: the preset"})
    model_max_length: int = field(default=MODEL_MAX_LENGTH, metadata={
        "help": "Maximum sequence length after media expansion"})
    metrics_port: int = field(default=9400, metadata={"help": "Rank 0 serves Prometheus /metrics here; 0 disables"})
    fabric_probe: str = field(default="auto", metadata={
        "choices": ["auto", "on", "off"],
        "help": "An all-reduce probe before training reports the collectives' transport and bus bandwidth: auto "
                "probes multi-node stages only"})
    min_bus_bandwidth_gbps: float = field(default=0.0, metadata={
        "help": "Stop at once when the probe measures less (GB/s; 0: no floor)"})
    fabric_probe_megabytes: int = field(default=256, metadata={"help": "The probe's all-reduce size"})
    save_full_model: bool = field(default=False, metadata={"help": "Partial stages: also save full weights"})
    frozen_audio_encoder_eval: bool = field(default=False, metadata={
        "help": "Keep a frozen whale encoder in eval mode (no dropout, no dynamic chunks); the reference trains "
                "with it in train mode"})
    lm_head_chunk_tokens: int = field(default=4096, metadata={
        "help": "--chunked_loss: labelled positions per lm_head call at most (4096 x 152k fp32 logits: 2.5 GB)"})
    chunked_loss: bool = field(default=True, metadata={
        "help": "LM loss from the labelled positions' logits only, in checkpointed chunks, never the batch's "
                "full fp32 logits (HF's path needs tens of GB at 8 x 6200 tokens)"})
    # HF's flag, widened from a boolean to a policy (model/checkpointing.py); HF itself gets on or off.
    activation_checkpointing: str | None = field(default=None, metadata={
        "nargs": "?", "const": "all",
        "help": "Recompute activations in the backward pass for: all decoder layers, none, every_other, or the "
                "first N layers (true/false as in HF); the GPU default is all, `vita-train new-run` writes the "
                "fewest that fit the card"})
    # Per module group (train/main.py LR_FLAGS). --mm_projector_lr keeps the reference's meaning: the vision
    # tower's rate (its stage-1.2 command relies on it); the projector's own rate is --projector_lr.
    vision_tower_lr: float | None = None
    mm_projector_lr: float | None = field(default=None, metadata={
        "help": "As in the VITA reference: the learning rate of the vision tower's parameters (= --vision_tower_lr; "
                "the projector keeps --learning_rate unless --projector_lr is given)"})
    projector_lr: float | None = field(default=None, metadata={"help": "The vision projector's learning rate"})
    audio_encoder_lr: float | None = None
    audio_adapter_lr: float | None = None
    # HF's default is "no". Real tokens seen, kept in checkpoints: the stage summary reports it, and a resumed
    # attempt (say, with a smaller micro-batch after running out of memory) continues the count.
    include_num_input_tokens_seen: str = field(default="non_padding", metadata={
        "help": "Count input tokens seen: non_padding, all, or no (also true/false, as in HF)"})

    def __post_init__(self) -> None:
        self.deepspeed = resolve_deepspeed(self.deepspeed)  # before HF reads the file
        # Non-reentrant checkpointing, pinned (under either flag name): transformers' default is changing inside
        # 5.x, and under reentrant checkpointing a LoRA run with frozen towers gets no LLM gradients.
        given = self.activation_checkpointing_kwargs or self.gradient_checkpointing_kwargs
        if isinstance(given, str) and given.strip().startswith("{"):
            given = json.loads(given)
        if given is None or isinstance(given, dict):
            self.activation_checkpointing_kwargs = {"use_reentrant": False, **(given or {})}
            self.gradient_checkpointing_kwargs = None
        # The policy for the model (train/main.py); HF's own field must be a boolean (or unset: its deprecated
        # alias gradient_checkpointing may still turn it on, which means all layers).
        from ..model.checkpointing import parse_policy
        self.checkpoint_policy = "all" if self.activation_checkpointing is None else parse_policy(
            self.activation_checkpointing)
        if self.activation_checkpointing is not None:
            self.activation_checkpointing = self.checkpoint_policy != "none"
        if self.include_num_input_tokens_seen not in ("no", "all", "non_padding"):
            self.include_num_input_tokens_seen = "all" if as_bool(
                self.include_num_input_tokens_seen, "--include_num_input_tokens_seen") else "no"
        super().__post_init__()


def resolve_deepspeed(value: str | dict | None) -> str | dict | None:
    """Shipped config names (zero2, zero3, zero3_offload, zero3_hpz) become file paths; anything else is a path.
    zero3_hpz becomes the config itself, its secondary partition sized to this node's GPUs (LOCAL_WORLD_SIZE): the
    forward and backward all-gathers then stay inside the node, over NVLink, and only gradients cross the fabric."""
    if isinstance(value, str) and value in DEEPSPEED_PRESETS:
        path = resources.files("vita_trainer") / "configs" / f"{value}.json"
        if value != "zero3_hpz":
            return str(path)
        config = json.loads(path.read_text())
        config["zero_optimization"]["zero_hpz_partition_size"] = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
        return config
    return value


# A ZeRO-3 checkpoint of a 7B model with its optimizer states can take longer than HF's 30-minute default to
# write to network storage; every other rank waits for it in a collective meanwhile.
DDP_TIMEOUT_SECONDS = 7200
# Every run: our collator needs fields that forward() does not take (HF would strip them); no tracker unless asked.
# Evaluation computes the loss only (chunked, as in training): never the batch's logits. HF's NaN filter reads
# every micro-batch's loss on the host (a GPU sync each time) to hide a non-finite one in the logged average; the
# trainer stops on one instead (train/trainer.py).
RUN_DEFAULTS = {"remove_unused_columns": False, "report_to": "none", "prediction_loss_only": True,
                "logging_nan_inf_filter": False}

# Flags of the guide's command that transformers 5 renamed: accepted with their meaning, and a notice.
RENAMED_FLAGS = {"--evaluation_strategy": "--eval_strategy",
                 "--warmup_ratio": "--warmup_steps"}  # a float below 1 is a fraction of the total steps


def recipe_defaults(*, cuda: bool, bf16: bool, ampere: bool) -> dict[str, Any]:
    """The reference recipe's settings where HF's defaults differ. GPU only where they only make sense there: CPU
    runs (tests, the demo, `local` on a laptop) keep HF's in-process data loading, and say use_cpu."""
    defaults: dict[str, Any] = {"ddp_timeout": DDP_TIMEOUT_SECONDS}
    if cuda:
        # 4 workers as the reference; the device image pipeline's uint8 batches are small, so 4 batches ahead per
        # worker cost little pinned memory (samples/s per worker: docs/benchmarks.md).
        defaults.update(gradient_checkpointing=True, dataloader_num_workers=4, dataloader_persistent_workers=True,
                        dataloader_pin_memory=True, dataloader_prefetch_factor=4)
    else:
        defaults["use_cpu"] = True
    if bf16:
        defaults["bf16"] = True
    if ampere:
        defaults["tf32"] = True
    return defaults


def build_parser(preset: StagePreset, *, cuda: bool, bf16: bool, ampere: bool) -> HfArgumentParser:
    """The trainer's parser with its defaults: the recipe's, then the stage preset's (a preset is more specific);
    the command line wins over both."""
    parser = HfArgumentParser((ModelArguments, DataArguments, VitaTrainingArguments))
    defaults = {**recipe_defaults(cuda=cuda, bf16=bf16, ampere=ampere), **RUN_DEFAULTS, **preset.training}
    unknown = sorted(set(defaults) - {a.dest for a in parser._actions})
    if unknown:
        raise ConfigError(f"stage preset {preset.name!r} sets {unknown}, which are not trainer flags; fix "
                          f"presets.yaml")
    parser.set_defaults(**defaults)
    return parser


def require_gpus_if_expected() -> None:
    """A pod that requested GPUs must not fall back to CPU (a bad driver would otherwise train a 7B on CPU)."""
    expected = int(os.environ.get(GPUS_ENV, "0") or 0)
    if expected and not torch.cuda.is_available():
        raise NodeError(f"this pod requested {expected} GPU(s) ({GPUS_ENV}) but CUDA is unavailable: torch "
                        f"{torch.__version__} built for CUDA {torch.version.cuda}, {torch.cuda.device_count()} "
                        f"device(s) visible. Check the node's NVIDIA driver (it must support CUDA "
                        f"{torch.version.cuda}) and the device plugin; refusing to train on CPU")


def renamed(argv: list[str]) -> list[str]:
    """The guide's old flag names under their transformers 5 names (`--flag value` and `--flag=value`)."""
    out = []
    for arg in argv:
        name, eq, value = arg.partition("=")
        if name in RENAMED_FLAGS:
            log.warning("%s is %s in transformers 5: read as %s", name, RENAMED_FLAGS[name], RENAMED_FLAGS[name])
            arg = RENAMED_FLAGS[name] + eq + value
        out.append(arg)
    return out


def default_packing(data_args: DataArguments, args: VitaTrainingArguments, preset: StagePreset, cuda: bool) -> None:
    """Packed rows under a token budget by default on GPUs (every stage but CTC, which trains on whole clips):
    a budget of --per_device_train_batch_size rows of --model_max_length tokens, as many samples as fit."""
    if data_args.pack_sequences is None:
        data_args.pack_sequences = cuda and preset.objective != "ctc"
        if data_args.pack_sequences and data_args.max_tokens_per_batch is None \
                and not data_args.group_by_modality_length:
            data_args.max_tokens_per_batch = args.per_device_train_batch_size * args.model_max_length


def check_evaluation(data_args: DataArguments, args: VitaTrainingArguments) -> None:
    if data_args.eval_dataset_use and data_args.eval_holdout:
        raise ConfigError("--eval_dataset_use and --eval_holdout both name validation data; give one")
    if not 0 <= data_args.eval_holdout < 1:
        raise ConfigError(f"--eval_holdout {data_args.eval_holdout} must be a fraction in [0, 1)")
    if args.eval_strategy != "no" and not (data_args.eval_dataset_use or data_args.eval_holdout):
        raise ConfigError(f"--eval_strategy {args.eval_strategy.value} needs validation data: --eval_dataset_use "
                          f"KEY (a dataset or mixture of the registry) or --eval_holdout FRACTION (held out of "
                          f"--dataset_use)")


def parse(argv: list[str]) -> tuple[ModelArguments, DataArguments, VitaTrainingArguments, StagePreset]:
    """The three argument groups and the stage preset they were defaulted from."""
    argv = renamed(argv)
    stage, _ = _STAGE_ONLY.parse_known_args(argv)
    preset = get_preset(stage.stage)
    require_gpus_if_expected()
    cuda = torch.cuda.is_available()
    parser = build_parser(preset, cuda=cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
                          ampere=cuda and torch.cuda.get_device_capability()[0] >= 8)
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv)
    check_evaluation(data_args, train_args)
    default_packing(data_args, train_args, preset, cuda)
    return model_args, data_args, train_args, preset


# The preset decides the other defaults, so --stage is read first.
_STAGE_ONLY = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
_STAGE_ONLY.add_argument("--stage", default=VitaTrainingArguments.stage)
