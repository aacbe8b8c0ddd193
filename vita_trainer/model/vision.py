"""Vision tower: any family of vision_families.py (SigLIP, InternViT), built from config, plus pixel shuffle."""

from __future__ import annotations

import math

import torch
from torch import nn

from .vision_families import family_of


def build_vision_backbone(vision_config) -> nn.Module:
    from transformers import AutoModel
    return AutoModel.from_config(vision_config)


def pixel_shuffle(x: torch.Tensor, ratio: float) -> torch.Tensor:
    """(N, h, w, C) -> (N, h*r, w*r, C/r^2): trades spatial tokens for channels (InternVL)."""
    n, h, w, c = x.shape
    x = x.reshape(n, h, int(w * ratio), int(c / ratio))
    x = x.permute(0, 2, 1, 3).reshape(n, int(w * ratio), int(h * ratio), int(c / (ratio * ratio)))
    return x.permute(0, 2, 1, 3).contiguous()


class VisionTower(nn.Module):
    """Last hidden state without CLS, optionally pixel-shuffled: (tiles, tokens_per_tile, out_dim)."""

    def __init__(self, vision_config, downsample_ratio: float = 1.0, feature_scale: float = 1.0):
        super().__init__()
        self.backbone = build_vision_backbone(vision_config)
        self.drop_cls = family_of(vision_config.model_type).has_cls
        self.downsample_ratio = downsample_ratio
        # VITA-1.5 multiplies InternViT features by 0.5 before the pixel shuffle; its projector expects that.
        self.feature_scale = feature_scale
        self.out_dim = int(vision_config.hidden_size / (downsample_ratio ** 2))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = next(self.backbone.parameters()).dtype
        feats = self.backbone(pixel_values=pixel_values.to(dtype)).last_hidden_state
        if self.drop_cls:
            feats = feats[:, 1:]
        side = math.isqrt(feats.shape[1])
        if self.feature_scale != 1.0:
            feats = feats * self.feature_scale
        if self.downsample_ratio != 1.0:
            feats = pixel_shuffle(feats.reshape(feats.shape[0], side, side, -1), self.downsample_ratio)
            feats = feats.reshape(feats.shape[0], -1, feats.shape[-1])
        return feats


def side(size) -> int:
    """SigLIP configs give sizes as ints, InternViT (internvl_vision) as [h, w] lists; tiles are square."""
    return size if isinstance(size, int) else size[0]


def tokens_per_tile(vision_config, downsample_ratio: float) -> int:
    return int((side(vision_config.image_size) // side(vision_config.patch_size)) ** 2 * downsample_ratio ** 2)
