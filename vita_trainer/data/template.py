"""The Qwen2.5 chat template (`<|im_start|>role\ntext<|im_end|>`) and label masking; chat_format.py says what
text goes into it.

Only assistant replies and their closing `<|im_end|>` are trained; the system prompt, user turns,
role headers and media slots are masked with IGNORE_INDEX.
"""

from __future__ import annotations

from dataclasses import dataclass

from vita_api.constants import IGNORE_INDEX, IM_END, IM_START

ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class Segment:
    text: str
    trained: bool


def render_segments(turns: list[tuple[str, str]], system: str, *, newline_after_last_turn: bool = True,
                    end_tag: bool = True) -> list[Segment]:
    """Turn (role, text) pairs into template segments, marking which are trained.

    `role` is already normalised to "user" or "assistant"; `text` is already in the chat format's form.
    `end_tag=False` (a sample field of the reference) leaves `<|im_end|>` off the last reply, so it is not trained.
    """
    segments = [Segment(f"{IM_START}system\n{system}{IM_END}\n", False)]
    for index, (role, text) in enumerate(turns):
        last = index == len(turns) - 1
        if role == "assistant":
            segments.append(Segment(f"{IM_START}assistant\n", False))
            segments.append(Segment(text + (IM_END if end_tag or not last else ""), True))
            if not last or (newline_after_last_turn and end_tag):
                segments.append(Segment("\n", False))
        else:
            segments.append(Segment(f"{IM_START}user\n{text}{IM_END}\n", False))
    return segments


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
