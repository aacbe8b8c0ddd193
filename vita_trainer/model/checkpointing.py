"""Which decoder layers recompute their activations in the backward pass (`--activation_checkpointing`).

Checkpointing every layer keeps only each layer's input but runs the forward pass twice (a third more compute);
on a card with memory to spare that is speed thrown away. The policy: `all`, `none`, `every_other`, or a number N
of layers, the first N (Megatron-LM's "block" method; the memory saved is the same wherever they are).
`vita-train new-run` picks the fewest that fit the card by the memory model (model/memory.py).
"""

from __future__ import annotations

from vita_api.errors import ConfigError
from vita_api.constants import FALSE_WORDS, TRUE_WORDS

POLICIES = ("all", "none", "every_other")


def parse_policy(value) -> str | int:
    """The flag's value: a policy name or a layer count; HF's other boolean words (as it parsed the flag when it
    was a boolean) mean all and none."""
    text = str(value).strip().lower()
    if text in POLICIES:
        return text
    if text.isdigit():  # a layer count before HF's words: "1" is one layer (new-run writes counts), "0" is none
        return int(text) or "none"
    if text in TRUE_WORDS:
        return "all"
    if text in FALSE_WORDS:
        return "none"
    raise ConfigError(f"--activation_checkpointing {value!r}: give all, none, every_other, or a number of layers")


def checkpointed(policy: str | int, layers: int) -> list[bool]:
    """Per decoder layer, whether it is checkpointed."""
    if policy == "all":
        return [True] * layers
    if policy == "none":
        return [False] * layers
    if policy == "every_other":
        return [i % 2 == 0 for i in range(layers)]
    if not 0 <= int(policy) <= layers:
        raise ConfigError(f"--activation_checkpointing {policy}: the model has {layers} decoder layers")
    return [i < int(policy) for i in range(layers)]

