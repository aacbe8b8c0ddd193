"""Stage presets are data (presets.yaml); this module loads them and resolves overrides. Pure."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field

from .constants import FALSE_WORDS, TRUE_WORDS
from .errors import ConfigError
from .module_groups import Group


class StagePreset(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str
    description: str
    aliases: list[str] = Field(default_factory=list)
    train: list[Group]
    objective: Literal["lm", "ctc"] = "lm"
    consumes: list[str] = Field(default_factory=list)
    module_lr: dict[Group, float] = Field(default_factory=dict)
    training: dict[str, float | int | str | bool] = Field(default_factory=dict)


@lru_cache(maxsize=1)
def all_presets() -> dict[str, StagePreset]:
    raw = yaml.safe_load((Path(__file__).with_name("presets.yaml")).read_text())
    return {name: StagePreset(name=name, **body) for name, body in raw.items()}


def get_preset(name: str) -> StagePreset:
    presets = all_presets()
    if name in presets:
        return presets[name]
    for p in presets.values():
        if name in p.aliases:
            return p
    known = ", ".join(f"{p.name} ({'/'.join(p.aliases)})" if p.aliases else p.name for p in presets.values())
    raise ConfigError(f"unknown stage preset {name!r}; known presets (aliases): {known}")


# Reference freeze flags, in the order resolve_trainable applies them on top of the preset.
FREEZE_FLAGS = ("tune_mm_mlp_adapter", "tune_audio_mlp_adapter", "freeze_backbone", "unfreeze_vision_tower",
                "freeze_mm_mlp_adapter", "freeze_audio_encoder", "freeze_audio_encoder_adapter")


def as_bool(value: object, flag: str = "value") -> bool:
    """A boolean stage arg, read as transformers' HfArgumentParser reads the same flag in the trainer (its
    `string_to_bool` words; tests/test_presets_and_plan.py keeps the two equal), so the plan and the trainer never
    disagree about a freeze flag."""
    if isinstance(value, bool):
        return value
    word = str(value).lower()
    if word in TRUE_WORDS or word in FALSE_WORDS:
        return word in TRUE_WORDS
    raise ConfigError(f"{flag}: {value!r} is not a boolean; use one of {'/'.join(TRUE_WORDS + FALSE_WORDS)}")


def saves_full_weights(trainable: frozenset[str], save_full_model: bool = False, lora: bool = False) -> bool:
    """The one handoff rule: a stage that trains the LLM (fully, or through LoRA adapters that it merges on
    handoff), or is asked to, saves full weights; the others save just their trained groups as {group}.bin. The
    trainer writes by it and the stage plan reads by it."""
    return "llm" in trainable or save_full_model or lora


# None means "not given".
def resolve_trainable(preset: StagePreset, *, tune_mm_mlp_adapter: bool | None = None,
                      tune_audio_mlp_adapter: bool | None = None, freeze_backbone: bool | None = None,
                      unfreeze_vision_tower: bool | None = None, freeze_mm_mlp_adapter: bool | None = None,
                      freeze_audio_encoder: bool | None = None,
                      freeze_audio_encoder_adapter: bool | None = None) -> frozenset[str]:
    groups: set[str] = set(preset.train)
    if tune_mm_mlp_adapter or tune_audio_mlp_adapter:  # the reference's "adapter only" switches
        groups = ({"mm_projector"} if tune_mm_mlp_adapter else set()) | (
            {"audio_adapter"} if tune_audio_mlp_adapter else set())
    for flag, group, trains_when in ((freeze_backbone, "llm", False), (unfreeze_vision_tower, "vision_tower", True),
                                     (freeze_mm_mlp_adapter, "mm_projector", False),
                                     (freeze_audio_encoder, "audio_encoder", False),
                                     (freeze_audio_encoder_adapter, "audio_adapter", False)):
        if flag is not None:
            (groups.add if flag == trains_when else groups.discard)(group)
    if not groups:
        raise ConfigError(f"stage preset {preset.name!r} with these freeze flags trains nothing; "
                          f"remove a freeze flag or pick another preset")
    return frozenset(groups)
