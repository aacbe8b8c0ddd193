"""Vision projector types: mlp2x_gelu (and any mlpNx_gelu), linear, identity."""

from __future__ import annotations

import re

from torch import nn

from vita_api.errors import ConfigError


def build_projector(projector_type: str, in_dim: int, out_dim: int) -> nn.Module:
    if projector_type == "linear":
        return nn.Linear(in_dim, out_dim)
    if projector_type == "identity":
        if in_dim != out_dim:
            raise ConfigError(f"mm_projector_type identity needs vision dim == LLM dim, got {in_dim} != {out_dim}")
        return nn.Identity()
    m = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if m:
        layers: list[nn.Module] = [nn.Linear(in_dim, out_dim)]
        for _ in range(int(m.group(1)) - 1):
            layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
        return nn.Sequential(*layers)
    raise ConfigError(f"unknown mm_projector_type {projector_type!r}; use linear, identity or mlpNx_gelu "
                      f"(e.g. mlp2x_gelu)")
