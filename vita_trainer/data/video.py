"""Video frame sampling, as the reference does it: frames at 3 fps, then resampled to 4-16 frames.

Containers (MP4, MKV, WebM, MOV, AVI) are decoded with PyAV, whose wheel carries its own FFmpeg; animated GIF / WebP
/ APNG files and folders of frame images (sorted by name) with Pillow.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageSequence

CONTAINER_EXTS = {".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v"}

MIN_FRAMES, MAX_FRAMES = 4, 16
FRAME_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}


def sample_indices(num_frames: int, fps: float, sample_fps: float = 3.0,
                   min_frames: int = MIN_FRAMES, max_frames: int = MAX_FRAMES) -> list[int]:
    """Sample at `sample_fps`, then resample uniformly to between min and max frames (as the reference)."""
    if num_frames <= 0:
        return []
    step = max(fps / sample_fps, 1.0)
    idx = [int(i * step) for i in range(int(num_frames / step))] or [0]
    target = min(max(len(idx), min_frames), max_frames)
    if len(idx) != target:
        idx = [int(round(i * (num_frames - 1) / max(target - 1, 1))) for i in range(target)]
    return idx


def load_frames(path: str | Path, default_fps: float = 10.0) -> list[Image.Image]:
    p = Path(path)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in FRAME_EXTS)
        frames = [Image.open(f).convert("RGB") for f in files]
        fps = default_fps
    elif p.suffix.lower() in CONTAINER_EXTS:
        return _container_frames(p)
    elif p.suffix.lower() in {".gif", ".webp", ".png", ".apng"}:
        with Image.open(p) as im:
            duration_ms = im.info.get("duration") or (1000.0 / default_fps)
            frames = [f.convert("RGB") for f in ImageSequence.Iterator(im)]
        fps = 1000.0 / duration_ms
    else:
        raise ValueError(f"unsupported video format {p.suffix!r}; supported: {', '.join(sorted(CONTAINER_EXTS))}, "
                         f"animated GIF/WebP/APNG, or a folder of frames")
    return [frames[i] for i in sample_indices(len(frames), fps)]


def _container_frames(path: Path) -> list[Image.Image]:
    """Decode only the sampled frames: a first pass counts frames (container metadata is often missing or wrong),
    the second converts the chosen ones to RGB."""
    import av
    try:
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            fps = float(stream.average_rate or stream.guessed_rate or 0) or 10.0
            count = sum(1 for _ in container.decode(stream))
        wanted = set(sample_indices(count, fps))
        with av.open(str(path)) as container:
            frames = [frame.to_image().convert("RGB")
                      for i, frame in enumerate(container.decode(container.streams.video[0])) if i in wanted]
    except (av.error.FFmpegError, IndexError) as e:  # IndexError: no video stream
        raise ValueError(f"{path.name}: {e if str(e) else 'no video stream'}") from e
    if not frames:
        raise ValueError(f"{path.name}: no decodable frames")
    return frames
