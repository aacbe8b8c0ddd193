"""Benchmark: counting the frames of 1,000 short generated MP4s for their token lengths (what `vita-data check`
and `--max_tokens_per_batch` need before step 1), and loading their frames.

Baselines, measured in the same run: counting by decoding every frame (what a plain PyAV loop does), and
loading by two passes (a count, then the chosen frames).

    .venv/bin/python bench/video_lengths.py [--videos 1000]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from vita_trainer.data.video import frame_count, load_frames, sample_indices


def write_clip(path: Path, frames: int, fps: int) -> None:
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            image = np.full((48, 64, 3), (i * 7) % 256, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def count_by_decoding(path: Path) -> int:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        total = sum(1 for _ in container.decode(stream))
    return len(sample_indices(total, fps))


def load_two_passes(path: Path) -> list:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate)
        total = sum(1 for _ in container.decode(stream))
    wanted = set(sample_indices(total, fps))
    with av.open(str(path)) as container:
        return [f.to_image().convert("RGB") for i, f in enumerate(container.decode(container.streams.video[0]))
                if i in wanted]


def timed(fn, paths) -> tuple[float, list]:
    start = time.perf_counter()
    out = [fn(p) for p in paths]
    return time.perf_counter() - start, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.videos):  # 2-8 s at 10, 25 or 30 fps
            fps = (10, 25, 30)[i % 3]
            paths.append(Path(tmp) / f"v{i}.mp4")
            write_clip(paths[-1], frames=fps * (2 + i % 7), fps=fps)
        base_s, base_counts = timed(count_by_decoding, paths)
        meta_s, meta_counts = timed(frame_count, paths)
        assert base_counts == meta_counts, "metadata and decoding disagree"
        sample = paths[: max(1, args.videos // 5)]
        two_s, two = timed(load_two_passes, sample)
        one_s, one = timed(load_frames, sample)
        assert [len(f) for f in two] == [len(f) for f in one]
    print(f"frame counts of {args.videos} MP4s: decoding every frame {base_s:.2f} s, container metadata "
          f"{meta_s:.2f} s: {base_s / meta_s:.1f}x faster")
    print(f"loading the chosen frames of {len(sample)} MP4s: two passes {two_s:.2f} s, one pass {one_s:.2f} s: "
          f"{two_s / one_s:.2f}x faster")


if __name__ == "__main__":
    main()
