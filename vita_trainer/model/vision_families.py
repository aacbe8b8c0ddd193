"""The vision tower families VITA can feed, one entry each: what transformers calls the tower, the layer that
ZeRO-3/FSDP must keep whole, whether its output starts with a CLS token, and how VITA preprocesses for it. Adding a
family is one entry here (as transformers keeps a config plus an auto-mapping per model)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vita_api.constants import IMAGENET_MEAN, IMAGENET_STD
from vita_api.errors import ConfigError

TinyConfig = Callable[[int, int, int, int], dict[str, Any]]  # (hidden, layers, image size, patch size) -> config


@dataclass(frozen=True)
class VisionFamily:
    name: str                  # what `tiny_config(vision=...)` and the docs call it
    model_type: str            # transformers' config model_type
    layer_class: str           # its transformer block: kept whole by ZeRO-3 / FSDP (_no_split_modules)
    has_cls: bool              # last_hidden_state starts with a CLS token, which VITA drops
    downsample_ratio: float    # pixel shuffle (0.5: a quarter of the tokens, four times the width)
    feature_scale: float       # features are multiplied by this before the shuffle (VITA-1.5's InternViT: 0.5)
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    tiny: TinyConfig           # a small random config of this family, for tests and the demo
    full_checkpoint_tower: str | None = None  # where a multi-tower checkpoint (SigLIP text + vision) keeps it
    description: str = ""

    def preset(self) -> dict[str, Any]:
        """The VitaConfig fields this family sets."""
        return dict(downsample_ratio=self.downsample_ratio, vision_feature_scale=self.feature_scale,
                    image_mean=self.image_mean, image_std=self.image_std)


INTERNVIT = VisionFamily(
    name="internvit", model_type="internvl_vision", layer_class="InternVLVisionLayer", has_cls=True,
    downsample_ratio=0.5, feature_scale=0.5, image_mean=IMAGENET_MEAN, image_std=IMAGENET_STD,
    tiny=lambda hidden, layers, image, patch: dict(
        model_type="internvl_vision", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=hidden * 2, image_size=[image] * 2, patch_size=[patch] * 2, attention_bias=True),
    description="InternViT (VITA-1.5's InternViT-300M-448px, OpenGVLab's or transformers' internvl_vision)")

SIGLIP = VisionFamily(
    name="siglip", model_type="siglip_vision_model", layer_class="SiglipEncoderLayer", has_cls=False,
    downsample_ratio=1.0, feature_scale=1.0, image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5),
    tiny=lambda hidden, layers, image, patch: dict(
        model_type="siglip_vision_model", hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=2,
        intermediate_size=hidden * 2, image_size=image, patch_size=patch),
    full_checkpoint_tower="vision_model", description="SigLIP (a vision or a full text + vision checkpoint)")

FAMILIES: tuple[VisionFamily, ...] = (INTERNVIT, SIGLIP)


def family_of(model_type: str) -> VisionFamily:
    """The family of a vision config's model_type; a clear error for one VITA does not know."""
    found = next((f for f in FAMILIES if f.model_type == model_type), None)
    if found is None:
        raise ConfigError(f"vision tower model_type {model_type!r} is not a family VITA knows "
                          f"({', '.join(f.model_type for f in FAMILIES)}); add it to "
                          f"vita_trainer/model/vision_families.py")
    return found


def family_named(name: str) -> VisionFamily:
    found = next((f for f in FAMILIES if f.name == name), None)
    if found is None:
        raise ConfigError(f"vision family {name!r} unknown; use one of {', '.join(f.name for f in FAMILIES)}")
    return found


def families_help() -> str:
    """For help strings: the families a vision folder may hold."""
    return "; ".join(f.description for f in FAMILIES)
