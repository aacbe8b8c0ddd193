"""Benchmark: `vita-data check` throughput, header checks and `--decode`, on N text+image samples.

Images are photo-like JPEGs (quality 90) at the sizes of the guide's image sources: 640x480 and 480x640 (COCO),
500x375 (Visual Genome / GQA), 330x500 (OCR-VQA book covers), 1024x768 (TextVQA / TextCaps). As in LLaVA's mix,
where the same COCO image serves several sources, each file is referenced by several samples (--images distinct
files); every fifth sample is text only. Baseline, measured in the same run: a reference-style pass
(data_tools/check_image_lost: one process, every image opened with Pillow, existence checked) that checks far less.
Prints samples/s and the ratio to the baseline for each mode and worker count.

    .venv/bin/python bench/data_check.py
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from vita_trainer.tools.check import load_chat_files
from vita_trainer.tools.context import ToolOptions
from vita_trainer.tools.data_cli import _check_chunk, _decode_chunk, parallel_map

SIZES = [(640, 480), (480, 640), (500, 375), (330, 500), (1024, 768)]


def photo(size: tuple[int, int], seed: int) -> Image.Image:
    """Smooth gradients plus fine noise: JPEG sizes like a photograph's (tens of kB), not a flat colour's."""
    w, h = size
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    base = np.stack([x / w * 255, y / h * 255, np.full((h, w), rng.uniform(0, 255))], axis=-1)
    return Image.fromarray(np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8))


def make_dataset(root: Path, n: int, images: int) -> Path:
    img = root / "images"
    img.mkdir(parents=True)
    for k in range(images):
        photo(SIZES[k % len(SIZES)], k).save(img / f"{k:06d}.jpg", quality=90)
    samples = []
    for i in range(n):
        name = f"{i % images:06d}.jpg"
        samples.append({"id": f"s{i}", "set": "bench", "image": name,
                        "conversations": [{"from": "human", "value": "<image>\nWhat color is the shape?"},
                                          {"from": "gpt", "value": "The shape is a blue square in the middle."}]})
        if i % 5 == 4:  # every fifth sample is text only
            samples[-1] = {"id": f"s{i}", "conversations": [
                {"from": "human", "value": "Describe a sunny day in two sentences."},
                {"from": "gpt", "value": "The sky is clear and bright. People walk outside in the warm light."}]}
    (root / "chat.json").write_text(json.dumps(samples))
    (root / "registry.yaml").write_text("image_folders: {bench: images}\ndatasets: {d: {chat_path: chat.json}}\n")
    return root / "registry.yaml"


def baseline(chat: Path, folder: Path) -> float:
    start = time.perf_counter()
    samples = json.loads(chat.read_text())
    for s in samples:
        if "image" in s:
            path = folder / s["image"]
            if path.exists():
                with Image.open(path) as im:
                    _ = im.size
    return len(samples) / (time.perf_counter() - start)


def ours(registry: Path, workers: int, decode: bool) -> tuple[float, int]:
    opts = ToolOptions(registry=str(registry))
    start = time.perf_counter()
    items, problems = load_chat_files([registry.parent / "chat.json"])
    fn = _decode_chunk if decode else _check_chunk
    for res in parallel_map(fn, items, opts, workers, f"{'decode' if decode else 'check'} x{workers}"):
        problems.extend(res)
    return len(items) / (time.perf_counter() - start), len(problems)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--images", type=int, default=4_000, help="distinct image files the samples share")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        registry = make_dataset(Path(tmp), a.samples, a.images)
        mb = sum(f.stat().st_size for f in (Path(tmp) / "images").iterdir()) / 1e6
        print(f"generated {a.samples} samples ({a.images} JPEGs, {mb / a.images * 1000:.0f} kB each on average) in "
              f"{time.perf_counter() - t0:.1f}s")
        base = baseline(Path(tmp) / "chat.json", Path(tmp) / "images")
        results = {(mode, w): ours(registry, w, mode == "--decode") for mode in ("headers", "--decode")
                   for w in (1, 2)}
    print(f"baseline (reference-style exists + open, 1 process): {base:,.0f} samples/s")
    for (mode, w), (rate, problems) in results.items():
        print(f"vita-data check ({mode}), {w} worker(s): {rate:,.0f} samples/s ({rate / base:.2f}x baseline), "
              f"{problems} problems")


if __name__ == "__main__":
    main()
