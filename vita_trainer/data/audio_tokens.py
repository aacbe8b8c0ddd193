"""How many LLM tokens an audio clip becomes: the whale encoder's x4 subsampling, then the adapter's stride.

The data side counts tokens with it (template lengths, token budgets) and the model side pads by it; it lives
here, in plain integer arithmetic, so both import it and neither reaches into the other.
"""

from __future__ import annotations

# The adapter types the reference ships and the stride each applies to the encoder's frames.
ADAPTER_STRIDES = {"subsampling": 2, "cnn": 1}


def subsampled_frames(frames: int) -> int:
    """Length after two kernel-3 stride-2 convolutions (x4)."""
    return max(((frames - 1) // 2 - 1) // 2, 0)


def adapter_frames(frames: int, stride: int) -> int:
    """Adapter output length: the reference right-pads kernel-1 frames, so ceil(frames / stride)."""
    return (frames - 1) // stride + 1 if frames > 0 else 0


def audio_llm_tokens(fbank_frames: int, adapter_stride: int) -> int:
    """LLM tokens for a clip of `fbank_frames` frames: x4 subsampling, then the adapter's stride."""
    return adapter_frames(subsampled_frames(fbank_frames), adapter_stride)
