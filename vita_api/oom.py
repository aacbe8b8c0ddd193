"""What the next attempt of a stage runs with after the GPU ran out of memory. Pure; the operator and the local
runner both use it.

Half the micro-batch and twice the accumulation: the global batch, the number of optimizer steps and the
learning-rate schedule stay the same, and the resumed attempt sees the same samples in each step.
"""

from __future__ import annotations

MICRO_BATCH = "per_device_train_batch_size"
ACCUMULATION = "gradient_accumulation_steps"


def after_oom(micro_batch: int, accumulation: int) -> dict[str, int] | None:
    """The stage args for the next attempt, or None when the micro-batch is already 1 (nothing left to halve)."""
    if micro_batch <= 1:
        return None
    half = micro_batch // 2
    # An odd micro-batch cannot halve exactly; keep the global batch at least as large as it was.
    return {MICRO_BATCH: half, ACCUMULATION: accumulation * -(-micro_batch // half)}
