"""ZeRO-3 sized for the model, instead of HF's "auto" values, and the frozen encoders gathered whole.

HF fills "auto" from the hidden size alone: a prefetch bucket of 0.9·h² parameters (11.6M for 7B) and a reduce
bucket of h², both smaller than one of Qwen2.5-7B's MLP weights (67.9M), so the next layer is never fetched ahead
while this one computes. Here both hold one decoder layer (233M for 7B). Values a config file sets explicitly are
kept.

A frozen InternViT or whale encoder is hundreds of small modules; ZeRO-3 gathers each one's parameters in turn, a
collective per module on every step. As a ZeRO-3 leaf module the encoder's parameters are gathered together when
it starts.
"""

from __future__ import annotations

import logging

from torch import nn

log = logging.getLogger("vita_trainer")
PERSISTENCE_HIDDEN_MULTIPLE = 10  # HF's own rule: norms and biases below 10·h stay whole on every rank


def sized_values(model) -> dict[str, int]:
    """The ZeRO-3 sizes for this VITA: buckets of one decoder layer's parameters."""
    layers = model.language_model.get_decoder().layers
    layer = max(sum(getattr(p, "ds_numel", p.numel()) for p in layer.parameters()) for layer in layers)
    hidden = model.config.text_config.hidden_size
    return {"stage3_prefetch_bucket_size": layer, "reduce_bucket_size": layer,
            "stage3_param_persistence_threshold": PERSISTENCE_HIDDEN_MULTIPLE * hidden}


def size_zero3(ds_config: dict, model) -> dict[str, int]:
    """Replaces the "auto" ZeRO-3 sizes of `ds_config` (HF's parsed config, before the Trainer fills them);
    returns what it set."""
    zero = ds_config.get("zero_optimization") or {}
    if zero.get("stage") != 3:
        return {}
    chosen = {k: v for k, v in sized_values(model).items() if zero.get(k, "auto") == "auto"}
    zero.update(chosen)
    return chosen


def frozen_encoders_as_leaves(model) -> list[str]:
    """Marks each frozen encoder (vision tower, whale encoder) a ZeRO-3 leaf module; returns their names."""
    from deepspeed.utils.z3_leaf_module import set_z3_leaf_module
    marked = []
    for name in ("vision_tower", "audio_encoder"):
        module: nn.Module | None = getattr(model, name, None)
        if module is not None and not any(p.requires_grad for p in module.parameters()):
            set_z3_leaf_module(module, True)
            marked.append(name)
    return marked


def prepare_zero3(args, model) -> None:
    """Under ZeRO-3 (args.hf_deepspeed_config), before the Trainer builds its engine."""
    from transformers.integrations import is_deepspeed_zero3_enabled
    config = getattr(args, "hf_deepspeed_config", None)
    if config is None or not is_deepspeed_zero3_enabled():
        return
    chosen = size_zero3(config.config, model)
    leaves = frozen_encoders_as_leaves(model)
    log.info("ZeRO-3: %s; gathered whole (frozen): %s", chosen or "sizes from the config file", leaves or "none")
