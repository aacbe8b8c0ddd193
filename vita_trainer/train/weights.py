"""Freezing by module group, and saving/loading partial weights ({group}.bin), ZeRO-3 aware."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch
from torch import nn

from vita_api.errors import ConfigError
from vita_api.module_groups import MODULE_GROUPS, group_attr, group_of


def _zero3() -> bool:
    from transformers.integrations import is_deepspeed_zero3_enabled
    return is_deepspeed_zero3_enabled()


def gathered(params, modifier_rank=None):
    """Full parameters inside the block under ZeRO-3; a no-op otherwise."""
    if _zero3():
        import deepspeed
        return deepspeed.zero.GatheredParameters(list(params), modifier_rank=modifier_rank)
    return contextlib.nullcontext()


def apply_trainable(model, groups: frozenset[str]) -> dict[str, int]:
    """requires_grad exactly on the given groups; returns trainable element counts per group."""
    model.requires_grad_(False)
    counts = {}
    for g in MODULE_GROUPS:
        module = model.group_module(g)
        if module is None:
            if g in groups:
                raise ConfigError(f"stage trains {g!r} but the model has none (ctc_head needs ctc_vocab_size > 0)")
            continue
        if g in groups:
            module.requires_grad_(True)
            counts[g] = sum(getattr(p, "ds_numel", p.numel()) for p in module.parameters())
    return counts


def save_groups(model, groups, out_dir: str | Path, is_main: bool) -> list[str]:
    """Write {group}.bin with full (gathered) tensors; every rank must call this under ZeRO-3."""
    written = []
    for g in sorted(groups):
        module = model.group_module(g)
        prefix = group_attr(g)
        with gathered(module.parameters()):
            if is_main:
                state = {f"{prefix}.{k}": v.detach().cpu().clone() for k, v in module.state_dict().items()}
                path = Path(out_dir) / f"{g}.bin"
                tmp = path.with_suffix(".bin.tmp")
                torch.save(state, tmp)
                os.replace(tmp, path)
                written.append(str(path))
    return written


def _project_keys(state: dict) -> dict:
    """Project keys for a partial state dict in either layout: ours ({group}.bin), or the reference's adapter-only
    and checkpoint files (`model.mm_projector.*`, `model.audio_encoder.adpter.{conv1d2,bn2,project}.*`, ...)."""
    from ..model.vita15_keys import CHECKPOINT_RULES, convert
    state = {k.removeprefix("module."): v for k, v in state.items()}
    state = {("model." + k if k.startswith(("audio_encoder.encoder.", "audio_encoder.adpter.",
                                            "vision_tower.vision_tower.")) else k): v for k, v in state.items()}
    mapped, ours = convert(state, CHECKPOINT_RULES, "proj")
    mapped.update((k.removeprefix("model."), state[k]) for k in ours)
    return mapped


def load_partial(model: nn.Module, path: str | Path) -> list[str]:
    """Load a partial state dict; every key must exist in the model with the same shape."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"partial weights {path} do not exist; did the previous stage finish?")
    state = _project_keys(torch.load(path, map_location="cpu", weights_only=True))
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    unknown = [k for k in state if k not in params and k not in buffers]
    if unknown:
        raise ConfigError(f"{path}: {len(unknown)} keys do not exist in the model, e.g. {unknown[:3]}")
    targets = [params[k] for k in state if k in params]
    with gathered(targets, modifier_rank=0):
        with torch.no_grad():
            for k, v in state.items():
                t = params.get(k, buffers.get(k))
                if tuple(t.shape) != tuple(v.shape):
                    raise ConfigError(f"{path}: {k} has shape {tuple(v.shape)}, model has {tuple(t.shape)}")
                t.copy_(v.to(t.dtype))
    return sorted({group_of(k) for k in state})
