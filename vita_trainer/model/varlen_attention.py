"""Attention by sample boundaries, never a dense mask: a transformers attention backend (`--attn_implementation
varlen`) that needs no flash-attn build.

Under SDPA, transformers turns packed rows' position ids into a boolean mask per row; SDPA cannot use its flash
kernel with a mask and computes every tile of the row, many times the useful causal work. This backend takes the
boundaries the training collators give for packed and padded rows alike (`cu_seq_lens_q/k`, `max_length_q/k`, see
data/collator.py) and runs PyTorch's own varlen flash kernel (`torch.nn.attention.varlen.varlen_attn`: CUDA, bf16
or fp16, grouped key/value heads) causally inside each segment. Its name is not in transformers' mask table, so no
mask is built and no packed-sequence scan (a host sync) runs. Where that kernel cannot run (CPU, fp32) the same
segments go to one causal SDPA call each, which is what the kernel computes: the CPU tests run this whole path.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface

from vita_api.errors import ConfigError

NAME = "vita_varlen"
HALF = (torch.float16, torch.bfloat16)


def _segments(q, k, v, cu_q, cu_k, scale):
    """One causal SDPA call per segment ((T, H, D) layout): the varlen kernel's result without it."""
    groups = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    bq, bk = cu_q.tolist(), cu_k.tolist()
    return torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[a:z].transpose(0, 1), k[c:e].transpose(0, 1), v[c:e].transpose(0, 1), is_causal=True,
        scale=scale).transpose(0, 1) for a, z, c, e in zip(bq, bq[1:], bk, bk[1:])])


def kernel_for(q: torch.Tensor):
    """PyTorch's varlen flash kernel where it runs, else the per-segment path."""
    if q.is_cuda and q.dtype in HALF:
        from torch.nn.attention.varlen import varlen_attn

        def flash(q, k, v, cu_q, cu_k, max_q, max_k, scale):
            return varlen_attn(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=(-1, 0),
                               enable_gqa=q.shape[1] != k.shape[1])
        return flash
    return lambda q, k, v, cu_q, cu_k, max_q, max_k, scale: _segments(q, k, v, cu_q, cu_k, scale)


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                     cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    """transformers' attention signature: (rows, heads, width, dim) in, (rows, width, heads, dim) out."""
    if cu_seq_lens_q is None:
        raise ConfigError(f"attention backend {NAME!r} needs the sample boundaries (cu_seq_lens_q) that the "
                          f"trainer's collators give; generation and other callers load the model with sdpa or "
                          f"flash_attention_2")
    if dropout:
        raise ConfigError(f"attention backend {NAME!r} has no attention dropout (the model asks {dropout}); "
                          f"use --attn_implementation sdpa")
    rows, heads, width, dim = query.shape
    q, k, v = (x.transpose(1, 2).reshape(rows * width, x.shape[1], dim) for x in (query, key, value))
    cu_k = cu_seq_lens_q if cu_seq_lens_k is None else cu_seq_lens_k
    out = kernel_for(q)(q, k, v, cu_seq_lens_q, cu_k, max_length_q, max_length_k or max_length_q, scaling)
    return out.reshape(rows, width, heads, dim), None


AttentionInterface.register(NAME, varlen_attention)
