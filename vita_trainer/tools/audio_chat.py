"""`vita-data audio-chat`: an audio dataset as VITA conversation JSON, for stage 2.

One sample per clip (ASR: the transcript; QA: the spoken question's answer) or per caption (a Clotho clip's five
captions are five samples: as turns of one sample, later answers could lean on the earlier ones). The human turn is
`<audio>` then an instruction drawn from `audio_prompts.yaml` (none for a spoken question). Clips outside
[--min-audio-seconds, --max-audio-seconds] (whale's 30 s by default) are skipped and counted, as are missing,
unreadable and textless ones: a transcript cannot be cut with its audio without an alignment, so nothing is split.

Output is sharded by clip position (`--shard-size` clips a shard): a shard is written whole (under a temporary name,
then renamed) and a rerun skips the shards that are done, so an interrupted conversion resumes. The same input and
options give the same bytes: clips are read in sorted order and each instruction is a seeded choice on the sample id.
With `--registry`, the shards are registered as datasets (with their task) and the audio mixtures are rebuilt.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml
from tqdm import tqdm

from vita_api.constants import AUDIO_PLACEHOLDER, MAX_AUDIO_SECONDS, MIN_AUDIO_SECONDS
from vita_api.errors import ConfigError

from ..data.audio_corpora import Clip, open_corpus
from ..data.registry import with_audio_mixtures
from ..data.shared_files import update_text

PROMPTS_FILE = Path(__file__).with_name("audio_prompts.yaml")
DEFAULT_TASK = {"librispeech": "asr", "clotho": "caption"}
SKIP_REASONS = ("missing", "unreadable", "too_short", "too_long", "no_text")
_CJK = re.compile(r"[\u3400-\u9fff]")
# LibriSpeech's transcripts are upper case without punctuation: sentence case, with the pronoun "I" kept upper.
_PRONOUN_I = re.compile(r"\bi\b(?=('(m|ll|ve|d)\b)|\s|$)")


@dataclass(frozen=True)
class AudioChatOptions:
    fmt: str
    src: Path
    out: Path
    task: str | None = None
    audio_dir: Path | None = None
    name: str | None = None
    language: str = "auto"          # en | zh | auto (from the target text)
    normalize: str | None = None    # sentence | none (default: sentence for LibriSpeech, none otherwise)
    seed: int = 0
    shard_size: int = 100_000
    min_seconds: float = MIN_AUDIO_SECONDS
    max_seconds: float = MAX_AUDIO_SECONDS
    prompts: Path = PROMPTS_FILE
    text_column: str | None = None
    audio_column: str | None = None
    registry: Path | None = None

    @property
    def resolved_task(self) -> str:
        task = self.task or DEFAULT_TASK.get(self.fmt)
        if task not in ("asr", "caption", "qa"):
            raise ConfigError(f"--format {self.fmt} needs --task asr, caption or qa")
        return task

    @property
    def dataset_name(self) -> str:
        return self.name or self.out.name.removesuffix(".json").removesuffix(".jsonl")


def normalise(text: str, how: str) -> str:
    text = " ".join(text.split())
    if how == "sentence" and text:
        text = _PRONOUN_I.sub("I", text.lower())
        text = text[0].upper() + text[1:]
    return text


def language_of(text: str, wanted: str) -> str:
    return wanted if wanted in ("en", "zh") else ("zh" if _CJK.search(text) else "en")


def load_prompts(path: Path) -> dict:
    try:
        prompts = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"--prompts {path}: {e}") from e
    for task in ("asr", "caption"):
        for lang in ("en", "zh"):
            if not (prompts.get(task) or {}).get(lang):
                raise ConfigError(f"--prompts {path}: no {task}.{lang} instructions (a list under {task}: {lang}:)")
    return prompts


def instruction(prompts: dict, task: str, lang: str, seed: int, sample_id: str) -> str:
    return random.Random(f"{seed}/{sample_id}").choice(prompts[task][lang])


def clip_seconds(path: Path) -> float | None:
    """Duration from the header (soundfile); None when the file cannot be read."""
    import soundfile as sf
    try:
        info = sf.info(str(path))
    except (RuntimeError, sf.LibsndfileError):
        return None
    return info.frames / info.samplerate if info.samplerate else None


def samples_of(clip: Clip, opts: AudioChatOptions, task: str, prompts: dict, how: str) -> list[dict]:
    base = f"{opts.dataset_name}-{clip.key}"
    texts = [normalise(t, how) for t in clip.texts]
    out = []
    for k, text in enumerate(texts):
        sid = base if len(texts) == 1 else f"{base}#{k + 1}"
        human = AUDIO_PLACEHOLDER if task == "qa" else \
            f"{AUDIO_PLACEHOLDER}\n{instruction(prompts, task, language_of(text, opts.language), opts.seed, sid)}"
        out.append({"id": sid, "audio": [clip.audio],
                    "conversations": [{"from": "human", "value": human}, {"from": "gpt", "value": text}]})
    return out


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def shard_paths(out: Path, shards: int) -> list[Path]:
    if shards <= 1:
        return [out]
    suffix = out.suffix or ".json"
    stem = out.name.removesuffix(suffix)
    return [out.with_name(f"{stem}-{k:05d}-of-{shards:05d}{suffix}") for k in range(shards)]


@dataclass
class ShardResult:
    samples: int = 0
    clips: int = 0
    seconds: float = 0.0
    skipped: dict = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))


def convert_shard(clips: list[Clip], root: Path, opts: AudioChatOptions, task: str, prompts: dict,
                  how: str) -> tuple[list[dict], ShardResult]:
    samples, result = [], ShardResult()
    for clip in clips:
        path = root / clip.audio
        if clip.data is not None and not path.is_file():
            _write_atomic(path, clip.data)
        if not any(clip.texts):
            result.skipped["no_text"] += 1
            continue
        if not path.is_file():
            result.skipped["missing"] += 1
            continue
        seconds = clip_seconds(path)
        if seconds is None:
            result.skipped["unreadable"] += 1
        elif seconds < opts.min_seconds:
            result.skipped["too_short"] += 1
        elif seconds > opts.max_seconds:
            result.skipped["too_long"] += 1
        else:
            made = samples_of(clip, opts, task, prompts, how)
            samples += made
            result.clips += 1
            result.samples += len(made)
            result.seconds += seconds
    return samples, result


def _fingerprint(opts: AudioChatOptions, task: str, how: str, prompts: dict) -> str:
    fields = {k: str(v) for k, v in asdict(opts).items() if k not in ("registry", "prompts")}
    fields.update(task=task, normalize=how, prompts=json.dumps(prompts, sort_keys=True, ensure_ascii=False))
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def convert(opts: AudioChatOptions, log=sys.stderr) -> dict:
    """Write the shards that are not done yet; returns the summary (also kept in `<out>.stats.json`)."""
    task = opts.resolved_task
    how = opts.normalize or ("sentence" if opts.fmt == "librispeech" else "none")
    if opts.shard_size < 1:
        raise ConfigError(f"--shard-size {opts.shard_size}: give a positive number of clips per shard")
    prompts = load_prompts(opts.prompts)
    decoded = opts.out.parent / f"{opts.dataset_name}_audio"
    corpus = open_corpus(opts.fmt, opts.src, task, audio_dir=opts.audio_dir, decoded_dir=decoded,
                         text_column=opts.text_column, audio_column=opts.audio_column)
    if corpus.count == 0:
        raise ConfigError(f"{opts.src}: no clips to convert")
    shards = shard_paths(opts.out, -(-corpus.count // opts.shard_size))
    stats_path = opts.out.with_name(opts.out.name + ".stats.json")
    fingerprint = _fingerprint(opts, task, how, prompts)
    stats = json.loads(stats_path.read_text()) if stats_path.is_file() else {"fingerprint": fingerprint, "shards": {}}
    if stats.get("fingerprint") != fingerprint:
        raise ConfigError(f"{opts.out}: its shards were written with other input or options ({stats_path}); remove "
                          f"them and {stats_path}, or choose another --out")
    done = {name for name in stats["shards"] if (opts.out.parent / name).is_file()}
    bar = tqdm(total=corpus.count, desc="audio-chat", unit="clip", disable=None, file=log)
    batch: list[Clip] = []
    for index, clip in enumerate(corpus.clips):
        shard = shards[index // opts.shard_size]
        if shard.name not in done:
            batch.append(clip)
        last = index + 1 == corpus.count or (index + 1) % opts.shard_size == 0
        if last and shard.name not in done:
            samples, result = convert_shard(batch, corpus.audio_root, opts, task, prompts, how)
            body = "[\n" + ",\n".join(json.dumps(s, ensure_ascii=False) for s in samples) + "\n]\n"
            _write_atomic(shard, body.encode("utf-8"))
            stats["shards"][shard.name] = asdict(result)
            _write_atomic(stats_path, json.dumps(stats, indent=1).encode())
        if last:
            batch = []
        bar.update(1)
    bar.close()
    summary = {"task": task, "format": opts.fmt, "audio_root": str(corpus.audio_root),
               "shards": [str(s) for s in shards], "clips": corpus.count,
               "samples": sum(r["samples"] for r in stats["shards"].values()),
               "audio_hours": round(sum(r["seconds"] for r in stats["shards"].values()) / 3600, 3),
               "skipped": {k: sum(r["skipped"][k] for r in stats["shards"].values()) for k in SKIP_REASONS}}
    if opts.registry is not None:
        summary["registry"] = str(register(opts.registry, opts.dataset_name, shards, corpus.audio_root, task))
    return summary


def _relative(path: Path, base: Path) -> str:
    path, base = path.resolve(), base.resolve()
    return path.relative_to(base).as_posix() if path.is_relative_to(base) else str(path)


def register(registry: Path, name: str, shards: list[Path], audio_root: Path, task: str) -> Path:
    """Each shard a dataset (`name`, or `name-00000`... with a mixture `name` over them)."""
    base = registry.resolve().parent
    names = [name] if len(shards) == 1 else [f"{name}-{k:05d}" for k in range(len(shards))]
    entries = {n: {"chat_path": _relative(shard, base), "audio_root": _relative(audio_root, base), "task": task}
               for n, shard in zip(names, shards)}
    return register_datasets(registry, entries, {name: names} if len(names) > 1 else {})


def register_datasets(registry: Path, entries: dict[str, dict], mixtures: dict[str, list[str]]) -> Path:
    """Add (or replace) these datasets and mixtures, then rebuild the audio mixtures; other entries are kept. Under
    the registry's lock: another conversion or download may register beside it."""
    def merged(text: str | None) -> str:
        reg = (yaml.safe_load(text) if text else {}) or {}
        reg.setdefault("datasets", {}).update(entries)
        if mixtures:
            reg.setdefault("mixtures", {}).update(mixtures)
        return yaml.safe_dump(with_audio_mixtures(reg), sort_keys=True)
    registry.parent.mkdir(parents=True, exist_ok=True)
    update_text(registry, merged)
    return registry
