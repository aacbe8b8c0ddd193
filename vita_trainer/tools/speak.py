"""`vita-data speak`: a share of an image/text dataset's questions read aloud by a text-to-speech model, for stage
2.2 (VITA-1.5 replaces about half of the text questions of its caption and QA data by synthesized speech).

A sample is chosen by a seeded draw on its id (`--share` of them), so the choice does not depend on the file's order.
Its first human turn's text becomes a clip (transformers' `text-to-speech` pipeline, with the model you name: an MMS
VITS, SpeechT5 with its vocoder, Bark...); the turn keeps its `<image>`/`<video>` placeholders and gets `<audio>` for
the words. Every other sample is copied as it is. Clips are written once (a rerun skips the clips on disk, so an
interrupted run resumes), each synthesized under a seed drawn from the sample id. A question with no words, a sample
that already has audio, and a clip longer than --max-audio-seconds keep their text question and are counted.
"""

from __future__ import annotations

import copy
import io
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from vita_api.constants import AUDIO_PLACEHOLDER, IMAGE_PLACEHOLDER, MAX_AUDIO_SECONDS, VIDEO_PLACEHOLDER
from vita_api.errors import ConfigError

from ..data.dataset import read_samples
from ..data.registry import load_registry
from .audio_chat import _relative, _write_atomic, register_datasets

_PLACEHOLDERS = re.compile(f"({re.escape(IMAGE_PLACEHOLDER)}|{re.escape(VIDEO_PLACEHOLDER)})")


@dataclass(frozen=True)
class SpeakOptions:
    src: str                      # a chat file, or a dataset name in --registry
    model: str                    # the text-to-speech model (folder or Hub id)
    out: Path
    share: float = 0.5
    seed: int = 0
    audio_dir: Path | None = None
    max_seconds: float = MAX_AUDIO_SECONDS
    registry: Path | None = None
    name: str | None = None
    device: str | None = None


def chosen(sample_id: str, share: float, seed: int) -> bool:
    return random.Random(f"{seed}/speak/{sample_id}").random() < share


def spoken_turn(value: str) -> tuple[str, str]:
    """(the words to speak, the turn with them replaced by <audio>, its placeholders kept in front)."""
    placeholders = _PLACEHOLDERS.findall(value)
    words = " ".join(_PLACEHOLDERS.sub(" ", value).split())
    return words, "".join(p + "\n" for p in placeholders) + AUDIO_PLACEHOLDER


def _source(opts: SpeakOptions) -> tuple[Path, dict]:
    """The chat file, and the dataset entry whose image/video settings the spoken copy keeps ({} for a file)."""
    if opts.registry is not None:
        reg = load_registry(opts.registry)
        if opts.src in reg.datasets:
            entry = reg.datasets[opts.src]
            keep = {k: v for k, v in entry.model_dump(by_alias=True, exclude_none=True).items()
                    if k in ("set", "image_folder", "video_root")}
            for k in ("image_folder", "video_root"):
                if k in keep:
                    keep[k] = str(reg.resolve(keep[k]))
            return reg.resolve(entry.chat_path), keep
    path = Path(opts.src)
    if not path.is_file():
        raise ConfigError(f"{opts.src}: neither a chat file nor a dataset of the registry "
                          f"{opts.registry or '(none given: --registry)'}")
    return path, {}


def _synthesizer(model: str, device: str | None):
    from transformers import pipeline
    try:
        return pipeline("text-to-speech", model=model, device=device)
    except (OSError, ValueError) as e:
        raise ConfigError(f"--model {model}: not a text-to-speech model transformers can load ({e}); name a folder "
                          f"or Hub id of one (e.g. facebook/mms-tts-eng)") from e


def speak(opts: SpeakOptions, log=sys.stderr) -> dict:
    import numpy as np
    import soundfile as sf
    from transformers import set_seed
    if not 0 < opts.share <= 1:
        raise ConfigError(f"--share {opts.share}: a fraction in (0, 1]")
    src, keep = _source(opts)
    samples = read_samples(src)
    name = opts.name or opts.out.name.removesuffix(".json")
    audio_dir = opts.audio_dir or opts.out.parent / f"{name}_speech"
    tts = None
    counts = {"spoken": 0, "kept_text": 0, "no_words": 0, "had_audio": 0, "too_long": 0}
    out = []
    for index, raw in enumerate(tqdm(samples, desc="speak", unit="sample", disable=None, file=log)):
        sid = str(raw.get("id", f"#{index}"))
        if not chosen(sid, opts.share, opts.seed):
            counts["kept_text"] += 1
            out.append(raw)
            continue
        turn = next((i for i, t in enumerate(raw.get("conversations") or []) if t.get("from") == "human"), None)
        if raw.get("audio"):
            counts["had_audio"] += 1
            out.append(raw)
            continue
        words, value = spoken_turn(raw["conversations"][turn]["value"]) if turn is not None else ("", "")
        if not words:
            counts["no_words"] += 1
            out.append(raw)
            continue
        rel = f"{re.sub(r'[^A-Za-z0-9_.-]', '_', sid)}.wav"
        path = audio_dir / rel
        if not path.is_file():
            tts = tts or _synthesizer(opts.model, opts.device)
            set_seed(random.Random(f"{opts.seed}/tts/{sid}").randrange(2 ** 31))
            speech = tts(words)
            buf = io.BytesIO()
            sf.write(buf, np.asarray(speech["audio"], dtype="float32").reshape(-1), speech["sampling_rate"],
                     format="WAV")
            _write_atomic(path, buf.getvalue())
        info = sf.info(str(path))
        if info.frames / info.samplerate > opts.max_seconds:
            counts["too_long"] += 1
            out.append(raw)
            continue
        spoken = copy.deepcopy(raw)
        spoken["conversations"][turn]["value"] = value
        spoken["audio"] = [rel]
        out.append(spoken)
        counts["spoken"] += 1
    body = "[\n" + ",\n".join(json.dumps(s, ensure_ascii=False) for s in out) + "\n]\n"
    _write_atomic(opts.out, body.encode("utf-8"))
    summary = {"samples": len(out), **counts, "out": str(opts.out), "audio_dir": str(audio_dir)}
    if opts.registry is not None:
        base = opts.registry.resolve().parent
        entry = {"chat_path": _relative(opts.out, base), "audio_root": _relative(audio_dir, base), "task": "qa",
                 **{k: (v if k == "set" else _relative(Path(v), base)) for k, v in keep.items()}}
        register_datasets(opts.registry, {name: entry}, {})
        summary["registry"] = str(opts.registry)
    return summary
