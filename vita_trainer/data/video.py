"""Video frame sampling, as the reference does it (decord, `video_framerate` 3, 4 to 16 frames), with one decode.

Containers (MP4, MKV, WebM, MOV, AVI) are decoded with PyAV, whose wheel carries its own FFmpeg; animated GIF / WebP
/ APNG files and folders of frame images (sorted by name) with Pillow.

The frame count comes from the container's metadata (`nb_frames`, else duration × rate): counting a sample's frames
for its token length (`vita-data check`, `--max_tokens_per_batch`) decodes nothing, and loading decodes each video
once, up to its last chosen frame. Only a container whose metadata is missing or overstates its frames is read a
second time, with the count the first pass found.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageSequence

CONTAINER_EXTS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"}
ANIMATED_EXTS = {".gif", ".webp", ".png", ".apng"}

MIN_FRAMES, MAX_FRAMES = 4, 16
SAMPLE_FPS = 3  # the reference's video_framerate
FRAME_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
DEFAULT_FPS = 10.0  # a folder of frames has no rate of its own


def sample_indices(num_frames: int, fps: float, sample_fps: float = SAMPLE_FPS,
                   min_frames: int = MIN_FRAMES, max_frames: int = MAX_FRAMES) -> list[int]:
    """The reference's rule: every `round(fps / 3)`-th frame from 0 to the last; more than `max_frames` (or fewer
    than `min_frames`, indices then repeat) resampled at `numpy.linspace(0, n - 1, k, dtype=int)` positions.
    (The reference's stride is 0 below 1.5 fps, a crash; here it is at least 1.)"""
    if num_frames <= 0:
        return []
    stride = max(1, round(fps / sample_fps))
    chosen = list(range(0, num_frames, stride))
    target = max_frames if len(chosen) > max_frames else min_frames if len(chosen) < min_frames else 0
    if not target:
        return chosen
    return [chosen[i] for i in np.linspace(0, len(chosen) - 1, target, dtype=int)]


def frame_count(path: str | Path, default_fps: float = DEFAULT_FPS) -> int:
    """How many frames `load_frames` returns, from metadata only (no frame is decoded)."""
    total, fps = _probe(Path(path), default_fps)
    return len(sample_indices(total, fps))


def load_frames(path: str | Path, default_fps: float = DEFAULT_FPS) -> list[Image.Image]:
    p = Path(path)
    if p.suffix.lower() in CONTAINER_EXTS and not p.is_dir():
        return _container_frames(p)
    total, fps = _probe(p, default_fps)
    wanted = sample_indices(total, fps)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in FRAME_EXTS)
        return [Image.open(files[i]).convert("RGB") for i in wanted]
    with Image.open(p) as im:
        keep = set(wanted)
        frames = {i: f.convert("RGB") for i, f in enumerate(ImageSequence.Iterator(im)) if i in keep}
    return [frames[i] for i in wanted]


def _probe(p: Path, default_fps: float) -> tuple[int, float]:
    """(frames, fps) without decoding."""
    if p.is_dir():
        return sum(1 for f in p.iterdir() if f.suffix.lower() in FRAME_EXTS), default_fps
    if p.suffix.lower() in CONTAINER_EXTS:
        total, fps = _container_metadata(p)
        if not total:  # no usable metadata: count by decoding, once
            total = _decode(p, None)[1]
        return total, fps
    if p.suffix.lower() in ANIMATED_EXTS:
        with Image.open(p) as im:
            duration_ms = im.info.get("duration") or (1000.0 / default_fps)
            return getattr(im, "n_frames", 1), 1000.0 / duration_ms
    raise ValueError(f"unsupported video format {p.suffix!r}; supported: {', '.join(sorted(CONTAINER_EXTS))}, "
                     f"animated GIF/WebP/APNG, or a folder of frames")


@contextmanager
def _video_stream(path: Path) -> Iterator[tuple[Any, Any]]:
    """(container, its first video stream), opened with PyAV; any decoding error a ValueError naming the file."""
    import av
    try:
        with av.open(str(path)) as container:
            yield container, container.streams.video[0]
    except (av.error.FFmpegError, IndexError) as e:  # IndexError: no video stream
        raise ValueError(f"{path.name}: {e if str(e) else 'no video stream'}") from e


def _container_metadata(path: Path) -> tuple[int, float]:
    """(frames from metadata, 0 if unknown; fps)."""
    with _video_stream(path) as (container, stream):
        fps = _rate(stream)
        return _metadata_frames(container, stream, fps), fps


def _rate(stream) -> float:
    return float(stream.average_rate or stream.guessed_rate or 0) or DEFAULT_FPS


def _metadata_frames(container, stream, fps: float) -> int:
    if stream.frames:
        return int(stream.frames)
    if stream.duration and stream.time_base:
        return int(round(float(stream.duration * stream.time_base) * fps))
    if container.duration:
        return int(round(container.duration / 1_000_000 * fps))
    return 0


def _decode(path: Path, wanted: list[int] | None) -> tuple[dict[int, Image.Image], int, float]:
    """One pass: ({index: RGB frame} for the wanted indices, frames decoded, fps); stops after the last wanted
    frame. `wanted=None` decodes to the end and keeps nothing (a count)."""
    keep = set(wanted or ())
    last = max(keep) if keep else None
    frames: dict[int, Image.Image] = {}
    decoded = 0
    with _video_stream(path) as (container, stream):
        fps = _rate(stream)
        for i, frame in enumerate(container.decode(stream)):
            decoded = i + 1
            if i in keep:
                frames[i] = frame.to_image().convert("RGB")
            if last is not None and i >= last:
                break
    return frames, decoded, fps


def _container_frames(path: Path) -> list[Image.Image]:
    total, fps = _container_metadata(path)
    wanted = sample_indices(total, fps)
    frames, decoded, fps = _decode(path, wanted)
    if not wanted or decoded <= max(wanted):  # metadata missing or too high: the true count is known now
        if decoded == 0:
            raise ValueError(f"{path.name}: no decodable frames")
        wanted = sample_indices(decoded, fps)
        if not set(wanted) <= frames.keys():
            frames = _decode(path, wanted)[0]
    return [frames[i] for i in wanted]
