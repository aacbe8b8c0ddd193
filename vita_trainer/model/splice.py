"""Where each media embedding lands in the sequence (pure tensor functions)."""

from __future__ import annotations

import torch

from vita_api.errors import VitaError


def scatter_media(embeds: torch.Tensor, input_ids: torch.Tensor, token_id: int, features: torch.Tensor,
                  kind: str) -> torch.Tensor:
    """Write `features` (N, D), in order, into the positions of `input_ids == token_id`.

    Positions are filled row by row, left to right, which matches the order media appear in a batch.
    """
    mask = input_ids == token_id
    slots = int(mask.sum())
    if slots != features.shape[0]:
        raise VitaError(f"{slots} {kind} token slots in the batch but the {kind} encoder produced "
                        f"{features.shape[0]} embeddings; the data's media token counts and the model config "
                        f"disagree (tile size / adapter type changed between preprocessing and training?)")
    return embeds.masked_scatter(mask.unsqueeze(-1), features.to(embeds.dtype))


def valid_frames(hidden: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Concatenate each clip's frames cut to its true length: (B, T, D), (B,) -> (sum(lengths), D)."""
    keep = torch.arange(hidden.shape[1], device=hidden.device)[None, :] < lengths[:, None]
    return hidden[keep]
