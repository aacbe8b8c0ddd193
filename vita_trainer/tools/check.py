"""`vita-data check`: every problem in a data set, per sample, before any GPU hour is spent.

Reads media headers only (Pillow's verify, soundfile's info), so it is fast; the token side uses the same
`SampleProcessor.layout` as training, so "truncated" and "fully masked" mean exactly what training would hit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from PIL import Image

from ..data.audio import SAMPLE_RATE, fbank_frames
from ..data.dataset import read_samples
from ..data.image import tile_count
from ..data.sample import ParsedSample, parse_sample
from ..data.video import load_frames
from ..errors import DataError

MAX_ASPECT_RATIO = 12.0


@dataclass(frozen=True)
class Problem:
    file: str
    sample_id: str
    field: str
    reason: str
    message: str
    hint: str = ""      # how to fix it, when the error knows

    def line(self) -> str:
        text = f"{self.file}: sample {self.sample_id} [{self.field}] {self.reason}: {self.message}"
        return f"{text} -- fix: {self.hint}" if self.hint else text


def _problem(e: DataError, file: str, sample_id: str) -> Problem:
    return Problem(e.file or file, e.sample_id or sample_id, e.field or "", e.reason, e.detail, e.hint or "")


def image_sizes(proc, s, file) -> list[tuple[int, int]]:
    """(width, height) from each image's header, after Pillow's verify; problems for broken or too-wide images."""
    sizes = []
    for i, path in enumerate(proc.image_paths(s, file)):
        try:
            with Image.open(path) as im:
                width, height = im.size
                im.verify()
        except Exception as e:  # Pillow raises many types for broken files
            raise DataError(f"image {path} cannot be decoded: {e}", file=file, sample_id=s.sample_id,
                            field=f"image[{i}]", reason="corrupt_file") from e
        if max(width, height) / max(min(width, height), 1) > MAX_ASPECT_RATIO:
            raise DataError(f"image {path} is {width}x{height}, aspect ratio over {MAX_ASPECT_RATIO:g}:1",
                            file=file, sample_id=s.sample_id, field=f"image[{i}]", reason="aspect_ratio")
        sizes.append((width, height))
    return sizes


def audio_seconds(proc, s, file) -> list[float]:
    """Durations from the file headers; problems for unreadable, empty or out-of-bounds clips."""
    import soundfile as sf
    durations = []
    for i, path in enumerate(proc.audio_paths(s, file)):
        field = f"audio[{i}]"
        try:
            info = sf.info(str(path))
        except Exception as e:
            raise DataError(f"audio {path} cannot be decoded: {e}", file=file, sample_id=s.sample_id, field=field,
                            reason="corrupt_file") from e
        seconds = info.frames / info.samplerate if info.samplerate else 0.0
        if seconds <= 0:
            raise DataError(f"audio {path} has no samples", file=file, sample_id=s.sample_id, field=field,
                            reason="corrupt_file")
        lo, hi = proc.media.min_audio_seconds, proc.media.max_audio_seconds
        if not lo <= seconds <= hi:
            raise DataError(f"audio {path} is {seconds:.2f}s, outside [{lo}, {hi}]s", file=file,
                            sample_id=s.sample_id, field=field,
                            reason="audio_too_short" if seconds < lo else "audio_too_long")
        durations.append(seconds)
    return durations


def video_frames(proc, s, file) -> int:
    path = proc.video_path(s, file)
    if path is None:
        return 0
    try:
        return len(load_frames(path))
    except (ValueError, OSError) as e:
        raise DataError(f"video {path} cannot be decoded: {e}", file=file, sample_id=s.sample_id, field="video",
                        reason="corrupt_file") from e


@dataclass(frozen=True)
class SampleFacts:
    sample: ParsedSample
    image_sizes: list[tuple[int, int]]
    audio_seconds: list[float]
    tokens: int


def inspect_sample(proc, raw, file: str, index: int) -> SampleFacts:
    """Everything check, stats and concat need about one sample, from media headers only. The token count comes
    from the same `layout` training uses, so truncation and full masking are caught exactly as training would."""
    s = parse_sample(raw, file=file, index=index)
    sizes = image_sizes(proc, s, file)
    tiles = [tile_count(w, h, proc.media.tile_size, proc.media.max_tiles, proc.media.use_thumbnail,
                        proc.dynamic_tiling(s, file, i)) for i, (w, h) in enumerate(sizes)]
    seconds = audio_seconds(proc, s, file)
    frames = [fbank_frames(int(sec * SAMPLE_RATE)) for sec in seconds]
    ids, _ = proc.layout(s, file, tiles, video_frames(proc, s, file), frames)
    return SampleFacts(s, sizes, seconds, len(ids))


def check_sample(proc, raw, file: str, index: int) -> list[Problem]:
    sid = str(raw.get("id", f"#{index}")) if isinstance(raw, dict) else f"#{index}"
    try:
        inspect_sample(proc, raw, file, index)
    except DataError as e:
        return [_problem(e, file, sid)]
    return []


def load_chat_files(paths: list[Path]) -> tuple[list[tuple[str, int, object]], list[Problem]]:
    """(file, index, raw) for every sample, plus file-level problems (bad JSON, encoding, missing file)."""
    items, problems = [], []
    for path in paths:
        try:
            raws = read_samples(path)
        except DataError as e:
            problems.append(Problem(str(path), "-", "", e.reason, e.detail, e.hint or ""))
            continue
        if not isinstance(raws, list):
            problems.append(Problem(str(path), "-", "", "json", "top level must be a list of samples"))
            continue
        items.extend((str(path), i, raw) for i, raw in enumerate(raws))
    return items, problems


def summarise(problems: list[Problem], total: int) -> dict:
    by_reason: dict[str, int] = {}
    for p in problems:
        by_reason[p.reason] = by_reason.get(p.reason, 0) + 1
    bad = {(p.file, p.sample_id) for p in problems if p.sample_id != "-"}
    return {"samples": total, "bad_samples": len(bad), "problems_by_reason": dict(sorted(by_reason.items())),
            "problems": [asdict(p) for p in problems]}


def write_clean(items, problems: list[Problem], out_dir: Path) -> list[str]:
    """One cleaned JSON per input file, without the samples that have problems. Inputs are never touched."""
    bad = {(p.file, p.sample_id) for p in problems}
    out_dir.mkdir(parents=True, exist_ok=True)
    by_file: dict[str, list] = {}
    for file, index, raw in items:
        sid = str(raw.get("id", f"#{index}")) if isinstance(raw, dict) else f"#{index}"
        by_file.setdefault(file, [])
        if (file, sid) not in bad:
            by_file[file].append(raw)
    written = []
    for file, raws in by_file.items():
        dst = out_dir / (Path(file).stem + ".json")
        if dst.resolve() == Path(file).resolve():
            raise DataError(f"--write-clean would overwrite the input {file}; choose another folder")
        dst.write_text(json.dumps(raws, ensure_ascii=False, indent=1))
        written.append(str(dst))
    return written
