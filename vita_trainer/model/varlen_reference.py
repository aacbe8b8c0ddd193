"""flash-attention-2's semantics in plain torch, registered as a transformers attention backend.

For checks where the flash_attn kernels are missing (CPU, or a GPU image without them), and the trainer's varlen
backend where PyTorch's varlen kernel cannot run (model/varlen_attention.py): like FA2 it gets no mask;
with `cu_seq_lens_q` it attends causally inside each segment of the flattened rows (flash_varlen_fn), without
them one causal call per row (flash_fn), which is what transformers runs for packed rows when a batch has two or
more. Its name contains "flash", so the model treats it as flash attention and passes the boundaries on.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface
from transformers.models.qwen2.modeling_qwen2 import repeat_kv

NAME = "flash_attention_varlen_reference"


def varlen_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, cu_seq_lens_q=None,
                     cu_seq_lens_k=None, max_length_q=None, max_length_k=None, **kwargs):
    rows, heads, width, dim = query.shape
    groups = module.num_key_value_groups
    flat = [x.transpose(0, 1).reshape(heads, rows * width, dim)
            for x in (query, repeat_kv(key, groups), repeat_kv(value, groups))]
    bounds = cu_seq_lens_q.tolist() if cu_seq_lens_q is not None else list(range(0, rows * width + 1, width))
    out = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        *(x[:, a:z] for x in flat), is_causal=True, scale=scaling) for a, z in zip(bounds, bounds[1:])], dim=1)
    return out.reshape(heads, rows, width, dim).permute(1, 2, 0, 3), None


def register(fn=varlen_attention, name: str = NAME) -> str:
    """Register `fn` under `name` (a wrapper may record its calls first); returns the name to set as the language
    model's `config._attn_implementation` (set_attn_implementation would look for a flash kernel by that name)."""
    AttentionInterface.register(name, fn)
    return name
