"""The VITA-1.5 whale audio encoder and its adapter to the LLM width, as the reference computes them.

Encoder: Conv2d x4 subsampling, an embed layer (Linear, LayerNorm, Dropout, ReLU), x * sqrt(d), then pre-norm
Transformer blocks with the reference's "rel-enc" attention: no position is added to x; every layer scores
`((q + u)·k_j + (q + v)·(W_pos·PE_j)) / sqrt(d_k)` where PE_j is the sinusoid of the absolute *key* position
(the reference comments its rel_shift out). That is one SDPA call with q' = [q+u ; q+v], k' = [k ; W_pos·PE]
and scale 1/sqrt(d_k): PyTorch's attention, not a score matrix built by hand (v keeps head dim d_k, which SDPA
allows; which kernel runs then is PyTorch's choice).

Attention uses plain Linear modules called through forward, so ZeRO-3 parameter hooks see every weight.
Key names differ from the reference (fused qkv, shorter paths); `vita15_keys.py` owns the mapping.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoids(t: int, d: int, device=None) -> torch.Tensor:
    """The reference's PositionalEncoding table rows 0..t-1: sin on even, cos on odd channels. (t, d) fp32."""
    pos = torch.arange(t, device=device, dtype=torch.float32)[:, None]
    div = torch.exp(torch.arange(0, d, 2, device=device, dtype=torch.float32) * (-math.log(10000.0) / d))
    pe = torch.zeros(t, d, device=device)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(pos * div), torch.cos(pos * div)
    return pe


def chunk_mask(t: int, chunk_size: int, left_chunks: int, device=None) -> torch.Tensor:
    """(t, t) bool: query i sees the keys of its own chunk and of `left_chunks` chunks before it (<0: all)."""
    chunk = torch.arange(t, device=device) // chunk_size
    ahead = chunk[None, :] <= chunk[:, None]
    if left_chunks < 0:
        return ahead
    return ahead & (chunk[None, :] >= chunk[:, None] - left_chunks)


def draw_chunking(t: int, generator=None) -> tuple[int, int]:
    """(chunk size, left chunks) as WeNet's `add_optional_chunk_mask` draws them with dynamic chunks and dynamic
    left chunks, which the reference's whale transformer uses: a size in [1, t); above t // 2 full attention,
    else a chunk of size % 25 + 1 frames seeing a random number of chunks before it, in [0, (t - 1) // size)."""
    if t < 2:
        return t, -1
    size = int(torch.randint(1, t, (1,), generator=generator))
    if size > t // 2:
        return t, -1
    size = size % 25 + 1
    max_left = (t - 1) // size
    left = int(torch.randint(0, max_left, (1,), generator=generator)) if max_left > 0 else 0
    return size, left


class Conv2dSubsampling4(nn.Module):
    def __init__(self, idim: int, odim: int):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(1, odim, 3, 2), nn.ReLU(), nn.Conv2d(odim, odim, 3, 2), nn.ReLU())
        self.out = nn.Linear(odim * (((idim - 1) // 2 - 1) // 2), odim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, F) -> (B, T', D)
        x = self.conv(x.unsqueeze(1))
        b, c, t, f = x.shape
        return self.out(x.transpose(1, 2).reshape(b, t, c * f))


class PositionBias(nn.Module):
    """The reference's per-head biases u and v (pos_bias_u / pos_bias_v): (q + u, q + v).

    A leaf module of its own, called through forward, so ZeRO-3 gathers them around the call like any Linear."""

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        self.u = nn.Parameter(torch.empty(heads, head_dim))
        self.v = nn.Parameter(torch.empty(heads, head_dim))
        # Xavier-uniform as the reference, on the parameters themselves (like nn.Linear.reset_parameters): a
        # tensor initialised before it became a Parameter loads as an empty shard under HF's ZeRO-3 loader.
        nn.init.xavier_uniform_(self.u)
        nn.init.xavier_uniform_(self.v)

    def forward(self, q: torch.Tensor) -> torch.Tensor:  # (b, t, h, dk) -> (b, t, h, 2dk)
        return torch.cat([q + self.u, q + self.v], dim=-1)


class EncoderBlock(nn.Module):
    def __init__(self, d: int, heads: int, ffn: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.pos_proj = nn.Linear(d, d, bias=False)
        self.pos_bias = PositionBias(heads, d // heads)
        self.ffn = nn.Sequential(nn.Linear(d, ffn), nn.ReLU(), nn.Dropout(dropout), nn.Linear(ffn, d))
        self.dropout = nn.Dropout(dropout)

    def attention(self, x: torch.Tensor, pe: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h, dk = self.heads, d // self.heads
        q, k, v = self.qkv(x).view(b, t, 3, h, dk).unbind(2)                      # (b, t, h, dk) each
        p = self.pos_proj(pe).view(1, t, h, dk).expand(b, t, h, dk)
        q2 = self.pos_bias(q)                                                     # (b, t, h, 2dk)
        k2 = torch.cat([k, p], dim=-1)
        att = F.scaled_dot_product_attention(q2.transpose(1, 2), k2.transpose(1, 2), v.transpose(1, 2),
                                             attn_mask=mask, scale=1.0 / math.sqrt(dk))
        return self.proj(att.transpose(1, 2).reshape(b, t, d))

    def forward(self, x: torch.Tensor, pe: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attention(self.norm1(x), pe, mask))
        return x + self.dropout(self.ffn(self.norm2(x)))


class WhaleEncoder(nn.Module):
    """`chunk_size` > 0 restricts attention to chunks (streaming); `dynamic_chunks` draws a chunking per forward in
    train mode as the reference does (its whale `train.yaml` default is true). Unlike the reference, dynamic chunks
    never apply in eval mode (the reference draws there too, so its inference is random; its vLLM port uses full
    attention)."""

    def __init__(self, input_dim: int = 80, d_model: int = 1024, num_layers: int = 24, num_heads: int = 16,
                 ffn_dim: int = 4096, dropout: float = 0.1, chunk_size: int = -1, left_chunks: int = -1,
                 dynamic_chunks: bool = False, **_):
        super().__init__()
        self.d_model = d_model
        self.chunk_size, self.left_chunks, self.dynamic_chunks = chunk_size, left_chunks, dynamic_chunks
        self.subsample = Conv2dSubsampling4(input_dim, d_model)
        self.embed = nn.Sequential(nn.Linear(d_model, d_model), nn.LayerNorm(d_model), nn.Dropout(dropout), nn.ReLU())
        self.pos_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(EncoderBlock(d_model, num_heads, ffn_dim, dropout) for _ in range(num_layers))
        self.norm = nn.LayerNorm(d_model)

    def attention_mask(self, lengths: torch.Tensor, t: int) -> torch.Tensor:
        """(B, 1, T, T) or (B, 1, 1, T) bool, True where a query may attend to a key."""
        keep = (torch.arange(t, device=lengths.device)[None, :] < lengths[:, None])[:, None, None, :]
        size, left = self.chunk_size, self.left_chunks
        if self.dynamic_chunks and self.training:
            size, left = draw_chunking(t)
        if 0 < size < t:
            keep = keep & chunk_mask(t, size, left, lengths.device)[None, None]
        return keep

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor):
        """feats (B, T, 80), lengths (B,) -> hidden (B, T', D), lengths (B,)."""
        dtype = self.subsample.out.weight.dtype
        x = self.embed(self.subsample(feats.to(dtype))) * math.sqrt(self.d_model)
        x = self.pos_dropout(x)
        pe = self.pos_dropout(sinusoids(x.shape[1], self.d_model, x.device).to(dtype))
        out_len = ((lengths - 1) // 2 - 1) // 2
        mask = self.attention_mask(out_len, x.shape[1])
        for block in self.blocks:
            x = block(x, pe, mask)
        return self.norm(x), out_len


class AudioAdapter(nn.Module):
    """`subsampling` (stride 2, 12.5 tokens/s overall) or `cnn` (stride 1): Conv1d, LayerNorm, GELU, Linear.

    As the reference: padded encoder frames are zeroed, the input is right-padded by kernel-1 frames (output t
    sees frames s*t .. s*t+kernel-1), and the LayerNorm eps is 1e-3.
    """

    def __init__(self, d_in: int, d_llm: int, stride: int = 2, kernel: int = 5):
        super().__init__()
        self.stride, self.kernel = stride, kernel
        self.conv = nn.Conv1d(d_in, 2 * d_in, kernel, stride)
        self.norm = nn.LayerNorm(2 * d_in, eps=1e-3)
        self.proj = nn.Linear(2 * d_in, d_llm)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor):
        keep = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        x = F.pad((x * keep[..., None]).transpose(1, 2), (0, self.kernel - 1))
        x = self.conv(x).transpose(1, 2)
        x = self.proj(F.gelu(self.norm(x)))
        out_len = torch.where(lengths > 0, (lengths - 1) // self.stride + 1, 0)
        return x, out_len

