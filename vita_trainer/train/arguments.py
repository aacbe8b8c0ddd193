"""Command-line arguments: the reference's flags with their meaning, plus every HF TrainingArguments flag."""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources

from transformers import TrainingArguments

from vita_api.constants import DEEPSPEED_PRESETS, MAX_AUDIO_SECONDS, MIN_AUDIO_SECONDS, MODEL_MAX_LENGTH


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
    lora_enable: bool = field(default=False, metadata={"help": "Train LoRA adapters on the LLM (peft)"})
    lora_r: int = 64
    lora_alpha: int = 16
    lora_dropout: float = 0.05


@dataclass
class DataArguments:
    data_registry: str = field(metadata={"help": "Dataset registry YAML"})
    dataset_use: str = field(metadata={"help": "Mixture or dataset key in the registry"})
    image_aspect_ratio: str = field(default="dynamic", metadata={"help": "dynamic (InternVL tiling) | square | pad"})
    max_tiles: int | None = field(default=None, metadata={"help": "Maximum tiles per image; default from config"})
    lazy_preprocess: bool = field(default=True, metadata={"help": "Always lazy; accepted for compatibility"})
    is_multimodal: bool = field(default=True, metadata={"help": "Accepted for compatibility"})
    group_by_modality_length: bool = field(default=False, metadata={"help": "Group batches by length and modality"})
    image_pipeline: str = field(default="auto", metadata={
        "choices": ["auto", "device", "host"],
        "help": "device: DataLoader workers only decode images (uint8), the model resizes, tiles and normalises "
                "them on its device; host: PIL tiles as float on the host (the reference's exact pixels); "
                "auto: device on GPUs, host on CPU"})
    max_tokens_per_batch: int | None = field(default=None, metadata={
        "help": "Cap each micro-batch by tokens instead of a sample count (replaces --per_device_train_batch_size): "
                "as many samples as fit, padded rows counted as samples x longest, packed rows by their sum; "
                "ranks get batches of even cost. At least --model_max_length"})
    pack_sequences: bool = field(default=False, metadata={
        "help": "Pack several samples per row up to --model_max_length (attention stays inside each sample)"})
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


@dataclass
class VitaTrainingArguments(TrainingArguments):
    stage: str = field(default="multimodal_sft", metadata={"help": "Stage preset name or alias (see presets.yaml)"})
    stage_name: str | None = field(default=None, metadata={"help": "Label for metrics and logs; default: the preset"})
    model_max_length: int = field(default=MODEL_MAX_LENGTH, metadata={
        "help": "Maximum sequence length after media expansion"})
    metrics_port: int = field(default=9400, metadata={"help": "Rank 0 serves Prometheus /metrics here; 0 disables"})
    save_full_model: bool = field(default=False, metadata={"help": "Partial stages: also save full weights"})
    chunked_loss: bool = field(default=True, metadata={
        "help": "LM loss from the labelled positions' logits only, in checkpointed chunks, never the batch's "
                "full fp32 logits (HF's path needs tens of GB at 8 x 6200 tokens)"})
    vision_tower_lr: float | None = None
    mm_projector_lr: float | None = None
    audio_encoder_lr: float | None = None
    audio_adapter_lr: float | None = None


def resolve_deepspeed(value: str | None) -> str | None:
    """Shipped config names (zero2, zero3, zero3_offload) become file paths; anything else is a path."""
    if value in DEEPSPEED_PRESETS:
        return str(resources.files("vita_trainer") / "configs" / f"{value}.json")
    return value
