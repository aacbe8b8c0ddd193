"""Benchmark: samples/s of the full data path (JSON -> template -> tokens/labels -> image tiles -> fbank ->
collate) for a 60% image / 20% audio / 10% image+audio / 10% text mix with 640x480 JPEGs and 3-15 s clips,
VITA-1.5 media settings (448 px tiles, up to 12 + thumbnail) and the real Qwen2.5 tokenizer.

Runs the DataLoader with 1 and 2 worker processes (1 worker is the baseline, same run) and, in-process, the
share of time spent in each step of the path.

    .venv/bin/python bench/data_pipeline.py
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image
from torch.utils.data import DataLoader

from vita_trainer.data.collator import MultimodalCollator
from vita_trainer.data.dataset import LazySupervisedDataset
from vita_trainer.data.processor import SampleProcessor
from vita_trainer.data.registry import load_registry
from vita_trainer.tools.context import ToolOptions, build_processor


def make_data(root: Path, n: int, seed: int = 0) -> Path:
    rng = random.Random(seed)
    (root / "img").mkdir()
    (root / "aud").mkdir()
    for i in range(40):
        arr = (np.random.default_rng(i).random((480, 640, 3)) * 255).astype("uint8")
        Image.fromarray(arr).save(root / "img" / f"{i}.jpg", quality=90)
    for i in range(20):
        secs = 3 + 12 * i / 19
        sf.write(root / "aud" / f"{i}.wav", (0.1 * np.random.default_rng(i).standard_normal(int(secs * 16000)))
                 .astype("float32"), 16000)
    q = "Describe what you see and hear in detail, please."
    a = "There is a photo of a busy street with cars and people, and the audio is someone speaking about the weather."
    samples = []
    for i in range(n):
        kind = rng.choices(["image", "audio", "both", "text"], [6, 2, 1, 1])[0]
        s = {"id": f"s{i}", "conversations": [{"from": "human", "value": q}, {"from": "gpt", "value": a}]}
        if kind in ("image", "both"):
            s.update(set="bench", image=f"{rng.randrange(40)}.jpg")
            s["conversations"][0]["value"] = "<image>\n" + s["conversations"][0]["value"]
        if kind in ("audio", "both"):
            s["audio"] = [f"{rng.randrange(20)}.wav"]
            s["conversations"][0]["value"] = "<audio>\n" + s["conversations"][0]["value"]
        samples.append(s)
    (root / "chat.json").write_text(json.dumps(samples))
    (root / "registry.yaml").write_text("image_folders: {bench: img}\naudio_root: aud\n"
                                        "datasets: {d: {chat_path: chat.json}}\n")
    return root / "registry.yaml"


def timed_shares(proc: SampleProcessor, dataset: LazySupervisedDataset, collate, batch: int) -> dict:
    """Wrap each step of the path with a timer and run it in-process."""
    spent = defaultdict(float)

    def wrap(name, fn):
        def inner(*args, **kw):
            t = time.perf_counter()
            try:
                return fn(*args, **kw)
            finally:
                spent[name] += time.perf_counter() - t
        return inner
    proc._load_images = wrap("image decode + tiles", proc._load_images)
    proc._load_audios = wrap("audio load + fbank", proc._load_audios)
    proc._load_video = wrap("video", proc._load_video)
    proc.layout = wrap("template + tokens + labels", proc.layout)
    import vita_trainer.data.processor as P
    original = P.tiles_to_tensor
    P.tiles_to_tensor = wrap("tiles to tensor", original)
    start = time.perf_counter()
    for i in range(0, len(dataset), batch):
        items = [dataset[j] for j in range(i, min(i + batch, len(dataset)))]
        wrap("collate", collate)(items)
    P.tiles_to_tensor = original
    total = time.perf_counter() - start
    # JSON parsing and schema checks happen once, when the dataset is built (measured separately)
    return {k: v / total for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--batch", type=int, default=8)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        registry = make_data(Path(tmp), a.samples)
        opts = ToolOptions(registry=str(registry))
        proc = build_processor(opts)
        t = time.perf_counter()
        dataset = LazySupervisedDataset(load_registry(registry), "d", proc)
        parse_s = time.perf_counter() - t
        collate = MultimodalCollator(proc.tok.pad_token_id)
        rates = {}
        for workers in (1, 2):
            loader = DataLoader(dataset, batch_size=a.batch, num_workers=workers, collate_fn=collate,
                                persistent_workers=False)
            start = time.perf_counter()
            n = sum(len(b["input_ids"]) for b in loader)
            rates[workers] = n / (time.perf_counter() - start)
        shares = timed_shares(proc, dataset, collate, a.batch)
    print(f"{a.samples} samples (60% image, 20% audio, 10% both, 10% text; 640x480 JPEG, 3-15 s audio)")
    print(f"JSON load + schema checks: {a.samples / parse_s:,.0f} samples/s (once, at dataset build)")
    for w, r in rates.items():
        print(f"DataLoader, {w} worker(s): {r:.1f} samples/s ({r / rates[1]:.2f}x the 1-worker baseline)")
    print("share of time per step of the path (in-process):")
    for k, v in shares.items():
        print(f"  {k:<28}{100 * v:5.1f}%")


if __name__ == "__main__":
    main()
