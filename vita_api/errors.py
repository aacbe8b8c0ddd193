"""Errors that name the file, the sample and the field, and say how to fix it."""

from __future__ import annotations


class VitaError(Exception):
    """Base class for every error this package raises on purpose.

    `retryable`: whether another attempt (a new job, maybe on other nodes) could succeed. Bad configs and bad data
    cannot; the trainer tells the operator so, and the stage fails at once instead of burning its retries."""
    retryable = False


# Every DataError.reason; metrics sum skips per reason across ranks, so the list is fixed and shared.
DATA_ERROR_REASONS = ("invalid", "schema", "placeholder", "missing_file", "corrupt_file", "encoding", "json",
                      "audio_too_short", "audio_too_long", "truncated", "fully_masked", "path_escape",
                      "symlink_loop", "aspect_ratio")


class DataError(VitaError):
    """A problem with one sample or data file."""

    def __init__(self, message: str, *, file: str | None = None, sample_id: str | None = None,
                 field: str | None = None, hint: str | None = None, reason: str = "invalid"):
        assert reason in DATA_ERROR_REASONS, reason
        self.file, self.sample_id, self.field, self.hint, self.reason = file, sample_id, field, hint, reason
        self.detail = message
        where = ", ".join(f"{k}={v}" for k, v in (("file", file), ("sample", sample_id), ("field", field)) if v)
        text = f"[{where}] {message}" if where else message
        if hint:
            text += f" -- fix: {hint}"
        super().__init__(text)


class ConfigError(VitaError):
    """A run spec, registry or stage configuration that cannot work; raised before training starts."""


class NodeError(ConfigError):
    """This node cannot run the stage (e.g. no usable GPU driver); another attempt may land on a good node."""
    retryable = True


class StageFailed(VitaError):
    """A training stage's processes failed (`vita-train local`); the message carries what the trainer reported."""
    retryable = True


class OutOfMemory(VitaError):
    """The GPU ran out of memory at this micro-batch. Retryable: the operator's next attempt halves the micro-batch
    and doubles the accumulation (vita_api/oom.py), so the global batch and the schedule stay the same."""
    retryable = True

    def __init__(self, step: int, per_device_train_batch_size: int, gradient_accumulation_steps: int, detail: str):
        self.step, self.micro_batch, self.accumulation = step, per_device_train_batch_size, gradient_accumulation_steps
        super().__init__(f"out of GPU memory at step {step} with per_device_train_batch_size "
                         f"{per_device_train_batch_size} and gradient_accumulation_steps {gradient_accumulation_steps}"
                         f": {detail.splitlines()[0] if detail else ''}")
