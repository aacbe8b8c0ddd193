"""Whale-style audio encoder: Conv2d x4 subsampling, pre-norm Transformer, and an adapter to the LLM width.

Differences from the reference (documented on purpose): positions are absolute sinusoidal rather than
relative, and attention uses plain Linear modules called through forward (so ZeRO-3 parameter hooks
see every weight; nn.MultiheadAttention reads out_proj.weight without calling out_proj).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def subsampled_frames(frames: int) -> int:
    """Length after two kernel-3 stride-2 convolutions (x4)."""
    return max(((frames - 1) // 2 - 1) // 2, 0)


def adapter_frames(frames: int, stride: int, kernel: int = 5) -> int:
    return (frames + 2 * (kernel // 2) - kernel) // stride + 1 if frames > 0 else 0


def audio_llm_tokens(fbank_frames: int, adapter_stride: int) -> int:
    """LLM tokens for a clip of `fbank_frames` frames: x4 subsampling, then the adapter's stride."""
    return adapter_frames(subsampled_frames(fbank_frames), adapter_stride)


class Conv2dSubsampling4(nn.Module):
    def __init__(self, idim: int, odim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, odim, 3, 2), nn.ReLU(), nn.Conv2d(odim, odim, 3, 2), nn.ReLU())
        self.out = nn.Linear(odim * (((idim - 1) // 2 - 1) // 2), odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, F) -> (B, T', D)
        x = self.conv(x.unsqueeze(1))
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        att = F.scaled_dot_product_attention(q, k, v, attn_mask=keep[:, None, None, :])
        x = x + self.dropout(self.proj(att.transpose(1, 2).reshape(b, t, d)))
        return x + self.dropout(self.ffn(self.norm2(x)))


class WhaleEncoder(nn.Module):
    def __init__(self, input_dim: int = 80, d_model: int = 1024, num_layers: int = 24, num_heads: int = 16,
                 ffn_dim: int = 4096, dropout: float = 0.1, **_):
        super().__init__()
        self.d_model = d_model
        self.subsample = Conv2dSubsampling4(input_dim, d_model)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def positions(self, t: int, device, dtype) -> torch.Tensor:
        pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
        div = torch.exp(torch.arange(0, self.d_model, 2, device=device, dtype=torch.float32)
                        * (-math.log(10000.0) / self.d_model))
        pe = torch.zeros(t, self.d_model, device=device)
        pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
        return pe.to(dtype)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor):
        """feats (B, T, 80), lengths (B,) -> hidden (B, T', D), lengths (B,)."""
        dtype = self.subsample.out.weight.dtype
        x = self.subsample(feats.to(dtype))
        x = x * math.sqrt(self.d_model) + self.positions(x.shape[1], x.device, x.dtype)
        out_len = ((lengths - 1) // 2 - 1) // 2
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < out_len[:, None]
        for block in self.blocks:
            x = block(x, keep)
        return self.norm(x), out_len


class AudioAdapter(nn.Module):
    """`subsampling` (stride 2, 12.5 tokens/s overall) or `cnn` (stride 1): Conv1d, LayerNorm, GELU, Linear."""

    def __init__(self, d_in: int, d_llm: int, stride: int = 2, kernel: int = 5):
        super().__init__()
        self.stride, self.kernel = stride, kernel
        self.conv = nn.Conv1d(d_in, 2 * d_in, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(2 * d_in)
        self.proj = nn.Linear(2 * d_in, d_llm)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        x = self.conv(x.transpose(1, 2)).transpose(1, 2)
        x = self.proj(F.gelu(self.norm(x)))
        out_len = (lengths + 2 * (self.kernel // 2) - self.kernel) // self.stride + 1
        return x, out_len.clamp_min(0)


ADAPTER_STRIDES = {"subsampling": 2, "cnn": 1}
