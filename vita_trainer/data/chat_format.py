"""Chat formats: how a sample's turns become template text. Two, as data:

- `chatml`, this project's: the plain Qwen2.5 ChatML template, one media token per placeholder.
- `vita15`, exactly what VITA-1.5 was trained on (the reference's `--version qwen2p5_instruct`, which is accepted
  as an alias so copied reference scripts get it), for fine-tuning the released model without drifting:
  - every reply starts with a state symbol: ☞ after a human turn that has `<audio>`, ☜ after one without,
    ☟ for the reply at the sample's `inserted_id` (an index into `conversations`);
  - three system prompts, image / video / language (audio-only samples use the language one);
  - no newline after the last `<|im_end|>`;
  - media text as the reference's `preprocess_multimodal` rewrites it, step by step (`rewrite_media_text`); every
    `\\n\\n` of every turn, replies included, becomes `\\n` (one left-to-right `str.replace`);
  - `--image_aspect_ratio square` still tiles, as in the reference's Qwen2.5 scripts.

The rules are pure string functions; docs/vita15-format.md lists them with the reference's deviations.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType

from vita_api.constants import AUDIO_PLACEHOLDER, AUDIO_TOKEN, IMAGE_PLACEHOLDER, IMAGE_TOKEN, VIDEO_PLACEHOLDER
from vita_api.errors import ConfigError

AFTER_TEXT, AFTER_AUDIO, INSERTED = "\u261c", "\u261e", "\u261f"  # ☜ ☞ ☟
MODALITIES = ("image", "video", "language")

_PROJECT_PROMPT = ("You are an AI robot and your name is VITA. You are a multimodal large language model developed by "
                   "the open source community. Your aim is to be helpful, honest and harmless.")
_VITA15_PROMPT = ("You are an AI robot and your name is VITA. \n"
                  "- You are a multimodal large language model developed by the open source community. Your aim is to "
                  "be helpful, honest and harmless. \n"
                  "- You support the ability to communicate fluently and answer user questions in multiple languages "
                  "of the user's choice. \n"
                  "- If the user corrects the wrong answer you generated, you will apologize and discuss the correct "
                  "answer with the user.")


def _vita15_media(kind: str) -> str:
    other = "video" if kind == "image" else "image"
    return (f"{_VITA15_PROMPT} \n- You must answer the question strictly according to the content of the {kind} given "
            f"by the user, and it is strictly forbidden to answer the question without the content of the {kind}. "
            f"Please note that you are seeing the {kind}, not the {other}.")


@dataclass(frozen=True)
class ChatFormat:
    name: str
    system_prompts: MappingProxyType          # modality -> text
    reply_states: bool                        # ☜ / ☞ / ☟ before every reply
    newline_after_last_turn: bool
    reference_media_text: bool                # the reference's placeholder rewriting
    square_still_tiles: bool

    def system_prompt(self, modality: str, overrides: dict[str, str] | None = None) -> str:
        return (overrides or {}).get(modality) or self.system_prompts[modality]

    def user_text(self, text: str, video_frames: int) -> str:
        if not self.reference_media_text:
            text = text.replace(IMAGE_PLACEHOLDER, IMAGE_TOKEN).replace(AUDIO_PLACEHOLDER, AUDIO_TOKEN)
            return text.replace(VIDEO_PLACEHOLDER, IMAGE_TOKEN * video_frames)
        return rewrite_media_text(text, video_frames)

    def reply_text(self, text: str, previous_user: str, inserted: bool) -> str:
        if not self.reply_states:
            return text
        state = INSERTED if inserted else AFTER_AUDIO if AUDIO_PLACEHOLDER in previous_user else AFTER_TEXT
        return state + text.replace("\n\n", "\n")

    def turns(self, turns: list[tuple[str, str]], video_frames: int, inserted_id: int | None) -> list[tuple[str, str]]:
        """(role, raw text) -> (role, template text) with one media token per placeholder (expanded later)."""
        out = []
        for index, (role, text) in enumerate(turns):
            if role == "assistant":
                out.append((role, self.reply_text(text, turns[index - 1][1], index == inserted_id)))
            else:
                out.append((role, self.user_text(text, video_frames)))
        return out


def _front_trailing(text: str, placeholder: str) -> str:
    """A turn ending in a run of k placeholders gets that run at its front instead (then stripped)."""
    k = 0
    while text.endswith(placeholder * (k + 1)):
        k += 1
    if not k:
        return text
    return (placeholder * k + text[: len(text) - k * len(placeholder)].strip()).strip()


def rewrite_media_text(text: str, video_frames: int) -> str:
    """The reference's per-turn rewriting (vita/train/train.py `preprocess_multimodal`), in its order:
    1. in a turn with `<image>` or `<video>`: every `<image>\\n` -> `<image>`, strip; every `\\n<image>` -> `<image>`,
       strip; a trailing run of `<image>`, then of `<video>`, moves to the front (stripped);
    2. each `<image>` -> its tokens + `\\n`; `<video>` -> one token per frame + `\\n`; `<audio>\\n` -> `<audio>`;
    3. every `\\n\\n` -> `\\n` (one pass: three newlines become two, four become two).
    Image tokens stand one per image here; the processor expands each to its own tile count."""
    if IMAGE_PLACEHOLDER in text or VIDEO_PLACEHOLDER in text:
        text = text.replace(IMAGE_PLACEHOLDER + "\n", IMAGE_PLACEHOLDER).strip()
        text = text.replace("\n" + IMAGE_PLACEHOLDER, IMAGE_PLACEHOLDER).strip()
        text = _front_trailing(_front_trailing(text, IMAGE_PLACEHOLDER), VIDEO_PLACEHOLDER)
    text = (text.replace(IMAGE_PLACEHOLDER, IMAGE_TOKEN + "\n")
            .replace(VIDEO_PLACEHOLDER, IMAGE_TOKEN * video_frames + "\n")
            .replace(AUDIO_PLACEHOLDER + "\n", AUDIO_PLACEHOLDER)
            .replace(AUDIO_PLACEHOLDER, AUDIO_TOKEN))
    return text.replace("\n\n", "\n")


FORMATS = {
    "chatml": ChatFormat(
        "chatml", MappingProxyType({
            "image": _PROJECT_PROMPT + " You support the ability to see images and listen to audio.",
            "video": _PROJECT_PROMPT + " You support the ability to watch videos and listen to audio.",
            "language": _PROJECT_PROMPT}),
        reply_states=False, newline_after_last_turn=True, reference_media_text=False, square_still_tiles=False),
    "vita15": ChatFormat(
        "vita15", MappingProxyType({"image": _vita15_media("image"), "video": _vita15_media("video"),
                                    "language": _VITA15_PROMPT}),
        reply_states=True, newline_after_last_turn=False, reference_media_text=True, square_still_tiles=True),
}
DEFAULT_FORMAT = "chatml"
ALIASES = {"qwen2p5_instruct": "vita15"}  # the reference's --version value for the same format


def get_format(name: str) -> ChatFormat:
    name = ALIASES.get(name, name)
    if name not in FORMATS:
        raise ConfigError(f"chat format (--version) {name!r} is unknown; use one of {sorted(FORMATS)} or the "
                          f"reference's qwen2p5_instruct (= vita15, the default for models imported from VITA-1.5)")
    return FORMATS[name]
