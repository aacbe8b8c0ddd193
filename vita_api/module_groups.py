"""The module groups that stage presets freeze or train, and how they map to model attributes.

Kept free of torch so the operator (which plans stages but never builds a model) stays slim.
"""

from __future__ import annotations

from typing import Literal, get_args

# One name per trainable part of the model: the type presets validate against, and the tuple code loops over.
Group = Literal["llm", "vision_tower", "mm_projector", "audio_encoder", "audio_adapter", "ctc_head"]
MODULE_GROUPS: tuple[str, ...] = get_args(Group)
GROUP_ATTRS = {"llm": "language_model"}


def group_attr(group: str) -> str:
    """The model attribute (and state-dict prefix) of a module group."""
    return GROUP_ATTRS.get(group, group)


def group_of(param_name: str) -> str:
    """The module group a parameter or state-dict key belongs to."""
    head = param_name.split(".", 1)[0]
    return next((g for g, attr in GROUP_ATTRS.items() if attr == head), head)
