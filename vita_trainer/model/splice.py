"""Where each media embedding lands in the sequence (pure tensor functions).

Without host syncs: the slots are numbered by a running count over the sequence and each takes the embedding of its
number, so nothing waits for the GPU to count slots or frames (boolean indexing would); the counts are compared by
model/device_checks.py.
"""

from __future__ import annotations

import torch

from .device_checks import expect


def scatter_media(embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, features: torch.Tensor,
                  kind: str, lengths: torch.Tensor | None = None) -> torch.Tensor:
    """Write `features`, in order, into the positions of `input_ids == token_id`: (N, D) embeddings, or (B, T, D)
    clips of which the first `lengths` frames each are real (the padding frames are skipped).

    Positions are filled row by row, left to right, which matches the order media appear in a batch.
    """
    mask = input_ids == token_id
    number = (mask.reshape(-1).cumsum(0) - 1).clamp(min=0)  # each slot's number, in order
    if lengths is None:
        source, available = features, torch.tensor(features.shape[0], device=mask.device)
        index = number.clamp(max=max(features.shape[0] - 1, 0))
    else:
        frames = features.shape[1]
        ends = lengths.cumsum(0)
        clip = torch.searchsorted(ends, number, right=True).clamp(max=lengths.shape[0] - 1)
        index = (clip * frames + number - (ends[clip] - lengths[clip])).clamp(0, lengths.shape[0] * frames - 1)
        source, available = features.flatten(0, 1), ends[-1]
    slots = mask.sum()
    expect(slots == available, lambda: (
        f"{int(slots)} {kind} token slots in the batch but the {kind} encoder produced {int(available)} embeddings; "
        f"the data's media token counts and the model config disagree (tile size / adapter type changed between "
        f"preprocessing and training?)"))
    placed = source[index].reshape(embeds.shape).to(embeds.dtype)
    return torch.where(mask.unsqueeze(-1), placed, embeds)
