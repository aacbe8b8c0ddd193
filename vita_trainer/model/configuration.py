"""VitaConfig: one config for the LLM, the vision tower + projector and the audio encoder + adapter."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig

from vita_api.errors import ConfigError
from ..data.audio_tokens import ADAPTER_STRIDES
from .vision import side, tokens_per_tile
from .vision_families import family_of

DEFAULT_AUDIO = dict(input_dim=80, d_model=1024, num_layers=24, num_heads=16, ffn_dim=4096, dropout=0.1,
                     adapter_type="subsampling", adapter_kernel=5, chunk_size=-1, left_chunks=-1,
                     dynamic_chunks=False)


def _sub_config(value, default_type):
    if value is None:
        return AutoConfig.for_model(default_type)
    if isinstance(value, dict):
        value = dict(value)
        return AutoConfig.for_model(value.pop("model_type", default_type), **value)
    return value


def vision_preset(model_type: str) -> dict:
    """How VITA feeds a tower of this type (vision_families.py: feature scale, pixel shuffle, normalisation)."""
    return family_of(model_type).preset()


class VitaConfig(PretrainedConfig):
    model_type = "vita"
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    def __init__(self, text_config=None, vision_config=None, audio_config=None, mm_projector_type="mlp2x_gelu",
                 downsample_ratio=1.0, vision_feature_scale=1.0, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
                 max_tiles=12,
                 image_token_id=None, audio_token_id=None, ctc_vocab_size=0, chat_format="chatml",
                 **kwargs):
        self.text_config = _sub_config(text_config, "qwen2")
        self.vision_config = _sub_config(vision_config, "siglip_vision_model")
        audio = {**DEFAULT_AUDIO, **(audio_config or {})}
        if audio["adapter_type"] not in ADAPTER_STRIDES:
            raise ConfigError(f"audio adapter_type {audio['adapter_type']!r} unknown; use one of "
                              f"{sorted(ADAPTER_STRIDES)}")
        audio["adapter_stride"] = ADAPTER_STRIDES[audio["adapter_type"]]
        self.audio_config = audio
        self.mm_projector_type = mm_projector_type
        self.downsample_ratio = downsample_ratio
        self.vision_feature_scale = vision_feature_scale
        self.image_mean, self.image_std = list(image_mean), list(image_std)
        self.max_tiles = max_tiles
        self.image_token_id, self.audio_token_id = image_token_id, audio_token_id
        self.ctc_vocab_size = ctc_vocab_size
        # The prompt format the weights were trained with (data/chat_format.py): the trainer's --version default.
        self.chat_format = chat_format
        # DeepSpeed "auto" bucket sizes read hidden_size from the top-level config.
        self.hidden_size = self.text_config.hidden_size
        super().__init__(**kwargs)

    @property
    def tile_size(self) -> int:
        return side(self.vision_config.image_size)

    @property
    def tokens_per_tile(self) -> int:
        return tokens_per_tile(self.vision_config, self.downsample_ratio)
