"""The `qwen2p5_instruct` chat template and label masking.

Only assistant replies and their closing `<|im_end|>` are trained; the system prompt, user turns,
role headers and media slots are masked with IGNORE_INDEX.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..constants import IGNORE_INDEX, IM_END, IM_START

# Modality-dependent system prompts, as in the reference's qwen2p5_instruct conversation.
SYSTEM_PROMPTS = {
    "image": "You are an AI robot and your name is VITA. You are a multimodal large language model "
             "developed by the open source community. Your aim is to be helpful, honest and harmless. "
             "You support the ability to see images and listen to audio.",
    "video": "You are an AI robot and your name is VITA. You are a multimodal large language model "
             "developed by the open source community. Your aim is to be helpful, honest and harmless. "
             "You support the ability to watch videos and listen to audio.",
    "language": "You are an AI robot and your name is VITA. You are a multimodal large language model "
                "developed by the open source community. Your aim is to be helpful, honest and harmless.",
}

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


def render_segments(turns: list[tuple[str, str]], modality: str, system: str | None = None) -> list[Segment]:
    """Turn (role, text) pairs into template segments, marking which are trained.

    `role` is already normalised to "user" or "assistant".
    """
    system_text = system if system is not None else SYSTEM_PROMPTS[modality]
    segments = [Segment(f"{IM_START}system\n{system_text}{IM_END}\n", False)]
    for role, text in turns:
        if role == "assistant":
            segments.append(Segment(f"{IM_START}assistant\n", False))
            segments.append(Segment(f"{text}{IM_END}", True))
            segments.append(Segment("\n", False))
        else:
            segments.append(Segment(f"{IM_START}user\n{text}{IM_END}\n", False))
    return segments


def render_text(turns: list[tuple[str, str]], modality: str, system: str | None = None) -> str:
    return "".join(s.text for s in render_segments(turns, modality, system))


def tokenize_segments(segments: list[Segment], encode) -> tuple[list[int], list[int]]:
    """Encode segment by segment so that label boundaries are exact.

    `encode(text) -> list[int]` must not add BOS/EOS. Returns (input_ids, labels).
    """
    ids: list[int] = []
    labels: list[int] = []
    for seg in segments:
        piece = encode(seg.text)
        ids.extend(piece)
        labels.extend(piece if seg.trained else [IGNORE_INDEX] * len(piece))
    return ids, labels
