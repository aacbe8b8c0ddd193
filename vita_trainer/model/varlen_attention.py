"""Attention by sample boundaries, never a dense mask: a transformers attention backend (`--attn_implementation
varlen`) that needs no flash-attn build.

Under SDPA, transformers turns packed rows' position ids into a boolean mask per row; SDPA cannot use its flash
kernel with a mask and computes every tile of the row, many times the useful causal work. This backend takes the
boundaries the training collators give for packed and padded rows alike (`cu_seq_lens_q/k`, `max_length_q/k`, see
data/collator.py) and runs PyTorch's own varlen flash kernel (`torch.nn.attention.varlen.varlen_attn`: CUDA, bf16
or fp16, grouped key/value heads) causally inside each segment. Its name is not in transformers' mask table, so no
mask is built and no packed-sequence scan (a host sync) runs. Where that kernel cannot run (CPU, fp32) the same
boundaries go to the plain-torch reference (model/varlen_reference.py: one causal SDPA call per segment), which is
what the kernel computes.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface

from vita_api.errors import ConfigError
from . import varlen_reference

NAME = "vita_varlen"
HALF = (torch.float16, torch.bfloat16)


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
    if not (query.is_cuda and query.dtype in HALF):  # no kernel here: the plain-torch reference computes the same
        return varlen_reference.varlen_attention(module, query, key, value, None, scaling=scaling,
                                                 cu_seq_lens_q=cu_seq_lens_q)
    from torch.nn.attention.varlen import varlen_attn
    rows, heads, width, dim = query.shape
    q, k, v = (x.transpose(1, 2).reshape(rows * width, x.shape[1], dim) for x in (query, key, value))
    out = varlen_attn(q, k, v, cu_seq_lens_q, cu_seq_lens_q if cu_seq_lens_k is None else cu_seq_lens_k,
                      max_length_q, max_length_k or max_length_q, scale=scaling, window_size=(-1, 0),
                      enable_gqa=q.shape[1] != k.shape[1])
    return out.reshape(rows, width, heads, dim), None


AttentionInterface.register(NAME, varlen_attention)
