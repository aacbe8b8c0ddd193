"""Which decoder layers recompute their activations in the backward pass (`--activation_checkpointing`).

Checkpointing every layer keeps only each layer's input but runs the forward pass twice (a third more compute);
on a card with memory to spare that is speed thrown away. The policy: `all`, `none`, `every_other`, or a number N
of layers, the first N (Megatron-LM's "block" method; the memory saved is the same wherever they are).
`vita-train new-run` picks the fewest that fit the card by the memory model (model/memory.py).
"""

from __future__ import annotations

from vita_api.errors import ConfigError

POLICIES = ("all", "none", "every_other")
TRUE, FALSE = ("true", "yes", "1"), ("false", "no", "0")


def parse_policy(value) -> str | int:
    """The flag's value: a policy name or a layer count (HF's boolean spellings mean all and none)."""
    text = str(value).strip().lower()
    if text in POLICIES:
        return text
    if text in TRUE:
        return "all"
    if text in FALSE:
        return "none"
    if text.isdigit():
        return int(text)
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


def count(policy: str | int, layers: int) -> int:
    return sum(checkpointed(policy, layers))
