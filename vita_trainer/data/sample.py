"""Structural checks of one raw VITA/LLaVA sample; no media I/O here."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

from vita_api.constants import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, VIDEO_PLACEHOLDER
from vita_api.errors import DataError
from .template import ROLES

MEDIA_KINDS = ("image", "video", "audio")
# Every value of ParsedSample.media_label: "text", then each combination of media kinds joined by "+".
MEDIA_LABELS = ("text", *("+".join(c) for n in range(1, len(MEDIA_KINDS) + 1)
                          for c in itertools.combinations(MEDIA_KINDS, n)))


@dataclass
class ParsedSample:
    sample_id: str
    set_name: str | list[str] | None      # one set for all images, or one per image (multi-image samples)
    turns: list[tuple[str, str]]          # (user|assistant, text)
    images: list[str] = field(default_factory=list)
    audios: list[str] = field(default_factory=list)
    video: str | None = None
    end_tag: bool = True                  # False: the last reply has no <|im_end|> (reference field)
    inserted_id: int | None = None        # conversations index of the reply marked ☟ (reference field, vita15)

    @property
    def media(self) -> tuple[str, ...]:
        """The kinds of media the sample holds, in MEDIA_KINDS order; () for text only. The one definition of a
        sample's modality: `vita-data stats` counts by it, --group_by_modality_length groups by it, and the system
        prompt is chosen from it (`modality`)."""
        return tuple(kind for kind, held in zip(MEDIA_KINDS, (self.images, self.video, self.audios)) if held)

    @property
    def media_label(self) -> str:
        """The media kinds as one label ("image", "image+audio", ...; "text" for none): what `vita-data stats` counts
        by and the validation loss is reported per."""
        return "+".join(self.media) or "text"

    @property
    def modality(self) -> str:
        """Which system prompt (chat_format.MODALITIES): audio-only samples are "language", as in the reference."""
        return "video" if "video" in self.media else "image" if "image" in self.media else "language"

    def image_set(self, index: int) -> str | None:
        return self.set_name[index] if isinstance(self.set_name, list) else self.set_name

    @property
    def image_sets(self) -> list[str | None]:
        return [self.image_set(i) for i in range(len(self.images))]


def _as_list(value, *, name, file, sample_id) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise DataError(f"`{name}` must be a string or a list of strings, got {type(value).__name__}",
                    file=file, sample_id=sample_id, field=name)


def parse_sample(raw, *, file: str, index: int) -> ParsedSample:
    """Validate the schema and placeholder counts; raise DataError naming file, id and field."""
    if not isinstance(raw, dict):
        raise DataError(f"sample #{index} is a {type(raw).__name__}, not an object", file=file,
                        sample_id=f"#{index}", reason="schema")
    sid = str(raw.get("id", f"#{index}"))
    if "id" not in raw:
        raise DataError("sample has no `id`", file=file, sample_id=sid, field="id", reason="schema",
                        hint="give every sample a unique string id")
    convs = raw.get("conversations")
    if not isinstance(convs, list) or not convs:
        raise DataError("`conversations` must be a non-empty list", file=file, sample_id=sid,
                        field="conversations", reason="schema")
    turns: list[tuple[str, str]] = []
    for t, turn in enumerate(convs):
        where = f"conversations[{t}]"
        if not isinstance(turn, dict) or not isinstance(turn.get("value"), str):
            raise DataError("each turn needs a string `value`", file=file, sample_id=sid, field=where,
                            reason="schema")
        role = ROLES.get(turn.get("from"))
        if role is None:
            raise DataError(f"unknown speaker {turn.get('from')!r}", file=file, sample_id=sid,
                            field=f"{where}.from", reason="schema", hint="use 'human' or 'gpt'")
        expected = "user" if t % 2 == 0 else "assistant"
        if role != expected:
            raise DataError(f"turn {t} is from {turn.get('from')!r} but turns must alternate human/gpt "
                            f"starting with human", file=file, sample_id=sid, field=f"{where}.from",
                            reason="schema")
        if role == "assistant" and any(p in turn["value"] for p in
                                       (IMAGE_PLACEHOLDER, AUDIO_PLACEHOLDER, VIDEO_PLACEHOLDER)):
            raise DataError("media placeholder inside an assistant reply", file=file, sample_id=sid,
                            field=f"{where}.value", reason="placeholder")
        turns.append((role, turn["value"]))
    if turns[-1][0] != "assistant":
        raise DataError("the last turn must be an assistant ('gpt') reply; nothing would be trained",
                        file=file, sample_id=sid, field="conversations", reason="schema")

    images = _as_list(raw.get("image"), name="image", file=file, sample_id=sid)
    audios = _as_list(raw.get("audio"), name="audio", file=file, sample_id=sid)
    video = raw.get("video")
    if video is not None and not isinstance(video, str):
        raise DataError("`video` must be a string path", file=file, sample_id=sid, field="video", reason="schema")

    text = "".join(v for _, v in turns)
    for placeholder, media, name in ((IMAGE_PLACEHOLDER, images, "image"), (AUDIO_PLACEHOLDER, audios, "audio"),
                                     (VIDEO_PLACEHOLDER, [video] if video else [], "video")):
        n = text.count(placeholder)
        if n != len(media):
            raise DataError(f"{n} {placeholder} placeholder(s) in the conversation but {len(media)} {name} file(s)",
                            file=file, sample_id=sid, field=name, reason="placeholder",
                            hint=f"put exactly one {placeholder} in a human turn for each entry of `{name}`")
    set_name = raw.get("set")
    if isinstance(set_name, list):
        if not all(isinstance(v, str) for v in set_name) or len(set_name) != len(images):
            raise DataError(f"`set` is a list of {len(set_name)} but the sample has {len(images)} image(s)",
                            file=file, sample_id=sid, field="set", reason="schema",
                            hint="give one set name per image, or a single string for all of them")
    elif set_name is not None and not isinstance(set_name, str):
        raise DataError(f"`set` must be a string or a list of strings, got {type(set_name).__name__}",
                        file=file, sample_id=sid, field="set", reason="schema")
    end_tag = raw.get("end_tag", True)
    if not isinstance(end_tag, bool):
        raise DataError(f"`end_tag` must be true or false, got {end_tag!r}", file=file, sample_id=sid,
                        field="end_tag", reason="schema")
    inserted_id = raw.get("inserted_id")
    if inserted_id is not None and (isinstance(inserted_id, bool) or not isinstance(inserted_id, int)
                                    or not 0 <= inserted_id < len(turns) or turns[inserted_id][0] != "assistant"):
        raise DataError(f"`inserted_id` {inserted_id!r} is not the index of a gpt turn in `conversations`",
                        file=file, sample_id=sid, field="inserted_id", reason="schema",
                        hint=f"use an odd index below {len(turns)} (turns alternate human, gpt)")
    return ParsedSample(sid, set_name, turns, images, audios, video, end_tag, inserted_id)
