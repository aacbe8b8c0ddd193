"""Causal-LM cross-entropy without the batch's full logits.

HF's path computes logits for every position (tokens x 152k vocabulary) and upcasts them to fp32 for the loss:
for a micro-batch of 8 x 6200 tokens that alone is tens of GB. Here only the positions that have a label get
logits, in chunks, each chunk recomputed in the backward pass (activation checkpointing), so at most one chunk of
logits exists at a time. Same value and gradient as the plain path (tests/test_loss_scaling.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from vita_api.constants import IGNORE_INDEX

CHUNK_TOKENS = 4096  # 4096 x 152k fp32 logits: 2.5 GB per chunk in flight


def chunk_slices(count: int, chunk_tokens: int, device: torch.device, calls: int | None = None) -> list[slice]:
    """The chunks of `count` labelled positions. Under ZeRO-3 each lm_head call gathers its sharded weight with a
    collective, so every rank must make as many calls, and DeepSpeed's prefetch replays a recorded module order
    that a changing count would invalidate (it then stops prefetching): with `calls` (the trainer sets it from the
    largest micro-batch a run can have) every micro-batch makes exactly that many, the positions spread evenly over
    them, with no collective and no host sync. Without it, under ZeRO-3 the ranks agree on the most chunks any of
    them needs (an all-reduce); without ZeRO-3 no call is collective, and nothing is exchanged."""
    if calls:
        width = max(-(-count // calls), 1)
        return [slice(i * width, (i + 1) * width) for i in range(calls)]
    from transformers.integrations import is_deepspeed_zero3_enabled
    chunks = -(-count // chunk_tokens)
    if is_deepspeed_zero3_enabled() and torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        most = torch.tensor([chunks], device=device)
        torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
        chunks = int(most.item())
    return [slice(i * chunk_tokens, (i + 1) * chunk_tokens) for i in range(chunks)]


def fixed_calls(max_tokens: int, chunk_tokens: int = CHUNK_TOKENS) -> int:
    """lm_head calls per micro-batch for micro-batches of at most `max_tokens` tokens: no chunk above
    `chunk_tokens` positions."""
    return max(-(-max_tokens // chunk_tokens), 1)


def _labelled(hidden: torch.Tensor, labels: torch.Tensor,
              positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The positions that predict a label (after the causal shift), flattened: their hidden states, their targets
    and the row each came from. `positions` (the collator's label_positions, found on the host) spares the boolean
    indexing, which waits for the GPU to count them."""
    hidden = hidden[:, :-1].reshape(-1, hidden.shape[-1])
    targets = labels[:, 1:].reshape(-1).to(hidden.device)
    if positions is None:
        positions = (targets != IGNORE_INDEX).nonzero().squeeze(1)
    positions = positions.to(hidden.device)
    return hidden.index_select(0, positions), targets.index_select(0, positions), positions // (labels.shape[1] - 1)


def _chunk_loss(lm_head: nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(lm_head(hidden).float(), targets, reduction="sum")


def chunked_causal_lm_loss(hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor,
                           num_items_in_batch=None, chunk_tokens: int | None = None,
                           calls: int | None = None, positions: torch.Tensor | None = None,
                           fused: nn.Module | None = None) -> torch.Tensor:
    """Mean next-token loss over labelled positions (or the sum over `num_items_in_batch`, as HF's loss does).
    `fused` (model/liger.py) computes the summed loss of all labelled positions in one fused call instead."""
    chunk_tokens = chunk_tokens or CHUNK_TOKENS
    hidden, targets, _ = _labelled(hidden, labels, positions)
    if fused is not None:
        total = fused(hidden, targets)
    else:
        total = hidden.new_zeros((), dtype=torch.float32)
        for piece in chunk_slices(targets.numel(), chunk_tokens, hidden.device, calls):
            total = total + checkpoint(_chunk_loss, lm_head, hidden[piece], targets[piece], use_reentrant=False)
    if num_items_in_batch is None:
        return total / max(targets.numel(), 1)
    return total / num_items_in_batch


@torch.no_grad()
def chunked_row_losses(hidden: torch.Tensor, lm_head: nn.Module, labels: torch.Tensor,
                       chunk_tokens: int | None = None, calls: int | None = None,
                       positions: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluation: per row, the summed next-token loss and the number of labelled positions, with the same one
    lm_head call per chunk as training (so ZeRO-3 ranks make the same calls) and never the full logits."""
    chunk_tokens = chunk_tokens or CHUNK_TOKENS
    hidden, targets, rows = _labelled(hidden, labels, positions)
    sums = torch.zeros(labels.shape[0], dtype=torch.float32, device=hidden.device)
    for piece in chunk_slices(targets.numel(), chunk_tokens, hidden.device, calls):
        losses = nn.functional.cross_entropy(lm_head(hidden[piece]).float(), targets[piece], reduction="none")
        sums.index_add_(0, rows[piece], losses)
    counts = torch.zeros_like(sums).index_add_(0, rows, torch.ones_like(rows, dtype=sums.dtype))  # no sync
    return sums, counts
