"""What one sample is, from media headers only: image sizes, clip durations, video frames and its exact token
count (through the same `SampleProcessor.layout` training uses). `vita-data check`/`stats`/`concat` and the
token-budget sampler share it. `decode_media` is the slow, complete check (`vita-data check --decode`): every
pixel, audio sample and chosen video frame decoded as training will."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image

from vita_api.errors import DataError
from .audio import SAMPLE_RATE, fbank_frames
from .image import tile_count
from .sample import ParsedSample, parse_sample
from .video import frame_count, load_frames

MAX_ASPECT_RATIO = 12.0


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
        return frame_count(path)  # container metadata: nothing is decoded
    except (ValueError, OSError) as e:
        raise DataError(f"video {path} cannot be decoded: {e}", file=file, sample_id=s.sample_id, field="video",
                        reason="corrupt_file") from e


def _wav_header_frames(path) -> int | None:
    """The sample count a PCM WAV's header gives (its data chunk's size). libsndfile quietly reads a cut file to its
    end, so the header is read on its own (stdlib `wave`); None for other formats, which libsndfile's decode
    covers."""
    import wave
    try:
        with wave.open(str(path)) as w:
            return w.getnframes()
    except (wave.Error, EOFError, OSError):
        return None


def decode_media(proc, s: ParsedSample, file: str) -> None:
    """Decode everything the sample uses; a file whose header is fine but whose data is not (a truncated JPEG, a
    WAV cut short of the length its header gives, an MP4 whose frames do not decode) raises a DataError naming it."""
    import soundfile as sf

    def broken(path, field: str, why) -> DataError:
        return DataError(f"{path} does not decode completely: {why}", file=file, sample_id=s.sample_id, field=field,
                         reason="corrupt_file", hint="re-download or re-encode the file, or drop the sample "
                                                      "(`vita-data check --decode --write-clean DIR`)")
    for i, path in enumerate(proc.image_paths(s, file)):
        try:
            with Image.open(path) as im:
                im.load()  # every pixel; Pillow raises on truncated data (LOAD_TRUNCATED_IMAGES stays off)
        except Exception as e:
            raise broken(path, f"image[{i}]", e) from e
    for i, path in enumerate(proc.audio_paths(s, file)):
        try:
            with sf.SoundFile(str(path)) as f:
                got = len(f.read(dtype="float32"))
        except Exception as e:
            raise broken(path, f"audio[{i}]", e) from e
        promised = _wav_header_frames(path)
        if promised is not None and got < promised:
            raise broken(path, f"audio[{i}]", f"its header gives {promised} samples, the file holds {got}")
    path = proc.video_path(s, file)
    if path is not None:
        try:
            expected, frames = frame_count(path), len(load_frames(path))
        except (ValueError, OSError) as e:
            raise broken(path, "video", e) from e
        if frames != expected:
            raise broken(path, "video", f"its metadata gives {expected} sampled frames, {frames} decode")


@dataclass(frozen=True)
class SampleFacts:
    sample: ParsedSample
    image_sizes: list[tuple[int, int]]
    audio_seconds: list[float]
    audio_tokens: list[int]     # LLM tokens per clip (what the template spends on it)
    tokens: int


def inspect_sample(proc, raw, file: str, index: int, decode: bool = False) -> SampleFacts:
    """Everything check, stats and concat need about one sample, from media headers only (and, with `decode`,
    every media file decoded in full). The token count comes from the same `layout` training uses, so truncation
    and full masking are caught exactly as training would."""
    facts = inspect_parsed(proc, parse_sample(raw, file=file, index=index), file)
    if decode:
        decode_media(proc, facts.sample, file)
    return facts


def inspect_parsed(proc, s: ParsedSample, file: str) -> SampleFacts:
    sizes = image_sizes(proc, s, file)
    tiled = [(max(w, h),) * 2 if proc.pad else (w, h) for w, h in sizes]  # `pad` tiles the padded square
    tiles = [tile_count(w, h, proc.media.tile_size, proc.media.max_tiles, proc.media.use_thumbnail,
                        proc.dynamic_tiling(s, file, i)) for i, (w, h) in enumerate(tiled)]
    seconds = audio_seconds(proc, s, file)
    frames = [fbank_frames(int(sec * SAMPLE_RATE)) for sec in seconds]
    ids, _ = proc.layout(s, file, tiles, video_frames(proc, s, file), frames)
    return SampleFacts(s, sizes, seconds, [proc.media.audio_tokens_fn(f) for f in frames], len(ids))
