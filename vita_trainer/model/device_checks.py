"""Checks on GPU values without waiting for the GPU.

A check such as "as many image embeddings as image slots" reads a count computed on the device; reading it at once
(`.item()`) stalls the host until the GPU catches up, every micro-batch. On a GPU the check is kept and read once
per optimizer step, before anything is logged or saved (train/trainer.py), or at the end of an evaluation or a
generation; on the CPU, where reading costs nothing, it fails at once.
"""

from __future__ import annotations

from typing import Callable

import torch

from vita_api.errors import VitaError

_pending: list[tuple[torch.Tensor, Callable[[], str]]] = []


def expect(ok: torch.Tensor, message: Callable[[], str]) -> None:
    """`ok` (a bool tensor) must hold; `message()` says what is wrong and how to fix it."""
    if not ok.is_cuda:
        if not bool(ok):
            raise VitaError(message())
        return
    _pending.append((ok, message))


def any_failed(device: torch.device | str) -> torch.Tensor:
    """A 0/1 float flag on `device`: whether a kept check failed (for one all-reduce with the ranks' other flags)."""
    if not _pending:
        return torch.zeros((), device=device)
    return torch.stack([~ok for ok, _ in _pending]).any().float().to(device)


def raise_failed() -> None:
    """Raise the first kept check that failed (one host sync); the kept checks are cleared either way."""
    pending = list(_pending)
    _pending.clear()
    for ok, message in pending:
        if not bool(ok):
            raise VitaError(message())
