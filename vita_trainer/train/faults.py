"""The trainer's fault-injection hooks, in one place: environment variables that make a test's training process
fail the way a cluster does (a NaN loss on one rank, out of GPU memory, a kill after a step, a crash while saving).
Unset, none of them does anything."""

from __future__ import annotations

import os

import torch
from transformers import TrainerCallback

FAULT_NONFINITE_ENV = "VITA_FAULT_NONFINITE_LOSS"  # test hook: "STEP:RANK" makes that rank's loss NaN
# Test hook: "STEP:FITS" raises CUDA's out-of-memory error at STEP on every rank while the micro-batch is larger than
# FITS, as a card that holds FITS samples would.
FAULT_OOM_ENV = "VITA_FAULT_OOM"
FAULT_EXIT_ENV = "VITA_FAULT_EXIT_AT_STEP"      # "N": the process dies after step N's checkpoint
FAULT_CRASH_IN_SAVE_ENV = "VITA_FAULT_CRASH_IN_SAVE"  # "N": dies after step N's shards, before the commit


def fault_oom(step: int, micro_batch: int) -> None:
    at, _, fits = os.environ.get(FAULT_OOM_ENV, "").partition(":")
    if at and step == int(at) and micro_batch > int(fits or 0):
        raise torch.OutOfMemoryError(f"CUDA out of memory (injected by {FAULT_OOM_ENV} at step {step} with "
                                     f"micro-batch {micro_batch})")


def fault_nonfinite(step: int) -> bool:
    spec = os.environ.get(FAULT_NONFINITE_ENV)
    if not spec:
        return False
    at, _, rank = spec.partition(":")
    return step == int(at) and os.environ.get("RANK", "0") == (rank or "0")


class FaultInjection(TrainerCallback):
    """Test hook: VITA_FAULT_EXIT_AT_STEP=N kills the process after step N (and its checkpoint, if any)."""

    def on_step_end(self, args, state, control, **kw):
        if os.environ.get(FAULT_EXIT_ENV) == str(state.global_step):
            control.should_save = True  # let the step's save happen first, then die in on_save

    def on_save(self, args, state, control, **kw):
        if os.environ.get(FAULT_EXIT_ENV) == str(state.global_step):
            barrier()
            os._exit(18)


def crash_in_save(step: int) -> None:
    if os.environ.get(FAULT_CRASH_IN_SAVE_ENV) == str(step):
        os._exit(17)  # after the shards are written, before the commit



def barrier() -> None:
    """Every rank saved before one dies (the test then sees a complete checkpoint)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
