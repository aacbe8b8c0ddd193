"""What every data tool needs: the registry, a tokenizer and the model's media costs, built once per process."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vita_api.constants import MAX_AUDIO_SECONDS, MIN_AUDIO_SECONDS, MODEL_MAX_LENGTH


@dataclass(frozen=True)
class ToolOptions:
    registry: str
    model: str | None = None            # VITA folder: its config and tokenizer; default: the VITA-1.5 layout
    tokenizer: str = "qwen2.5"
    model_max_length: int = MODEL_MAX_LENGTH
    min_audio_seconds: float = MIN_AUDIO_SECONDS
    max_audio_seconds: float = MAX_AUDIO_SECONDS
    image_aspect_ratio: str = "dynamic"
    chat_format: str | None = None      # default: the model's (VITA-1.5 layout without --model: this project's)
    image_pipeline: str = "host"        # "device": decoded uint8 images, tiled by the model (benchmarks)


def build_processor(opts: ToolOptions):
    from ..data.processor import MediaSpec, SampleProcessor
    from ..data.registry import load_registry
    from ..data.tokenizer import load_tokenizer
    if opts.model:
        from ..model.configuration import VitaConfig
        config = VitaConfig.from_pretrained(opts.model)
        tokenizer = load_tokenizer(opts.model)
    else:
        from ..model.builder import vita_1p5_config
        config, tokenizer = vita_1p5_config(), load_tokenizer(opts.tokenizer)
    media = MediaSpec.from_config(config, min_audio_seconds=opts.min_audio_seconds,
                                  max_audio_seconds=opts.max_audio_seconds)
    return SampleProcessor(tokenizer, media, load_registry(opts.registry), opts.model_max_length,
                           image_aspect_ratio=opts.image_aspect_ratio,
                           chat_format=opts.chat_format or config.chat_format, image_pipeline=opts.image_pipeline)


_WORKER_PROCESSOR = None  # one SampleProcessor per worker process of a parallel tool


def init_worker(opts: ToolOptions) -> None:
    """The Pool initializer of parallel tools (check, stats): build this process's processor once."""
    global _WORKER_PROCESSOR
    _WORKER_PROCESSOR = build_processor(opts)


def worker_processor():
    return _WORKER_PROCESSOR


def chat_files(opts: ToolOptions, dataset_use: str | None, chats: list[str] | None) -> list[Path]:
    from ..data.registry import load_registry
    if chats:
        return [Path(c) for c in chats]
    registry = load_registry(opts.registry)
    keys = [dataset_use] if dataset_use else list(registry.datasets)
    return list(dict.fromkeys(registry.resolve(ds.chat_path) for key in keys for _, ds in registry.mixture(key)))
