"""Benchmark: `vita-data check` throughput on N synthetic text+image samples (small images, files present).

Baseline, measured in the same run: a reference-style pass (data_tools/check_image_lost: one process, every
image opened with Pillow, existence checked) that checks far less. Prints samples/s and the ratio.

    .venv/bin/python bench/data_check.py --samples 100000
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from PIL import Image

from vita_trainer.tools.check import load_chat_files
from vita_trainer.tools.context import ToolOptions
from vita_trainer.tools.data_cli import _check_chunk, parallel_map


def make_dataset(root: Path, n: int) -> Path:
    img = root / "images"
    img.mkdir(parents=True)
    samples = []
    for i in range(n):
        name = f"{i:06d}.png"
        Image.new("RGB", (48 + i % 17, 48), (i % 251, 80, 160)).save(img / name)
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


def ours(registry: Path, workers: int) -> tuple[float, int]:
    opts = ToolOptions(registry=str(registry))
    start = time.perf_counter()
    items, problems = load_chat_files([registry.parent / "chat.json"])
    for res in parallel_map(_check_chunk, items, opts, workers, f"check x{workers}"):
        problems.extend(res)
    return len(items) / (time.perf_counter() - start), len(problems)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=100_000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        registry = make_dataset(Path(tmp), a.samples)
        print(f"generated {a.samples} samples in {time.perf_counter() - t0:.1f}s")
        base = baseline(Path(tmp) / "chat.json", Path(tmp) / "images")
        results = {w: ours(registry, w) for w in (1, 2)}
    print(f"baseline (reference-style exists + open, 1 process): {base:,.0f} samples/s")
    for w, (rate, problems) in results.items():
        print(f"vita-data check, {w} worker(s): {rate:,.0f} samples/s ({rate / base:.2f}x baseline), "
              f"{problems} problems")


if __name__ == "__main__":
    main()
