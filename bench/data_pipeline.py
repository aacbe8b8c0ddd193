"""Benchmark: host samples/s of the full data path (JSON -> template -> tokens/labels -> images -> fbank ->
collate) for a 60% image / 20% audio / 10% image+audio / 10% text mix with 640x480 JPEGs and 3-15 s clips,
VITA-1.5 media settings (448 px tiles, up to 12 + thumbnail) and the real Qwen2.5 tokenizer.

Two image pipelines, alternating in one run at 1 torch thread: the host-PIL path (the baseline: float tiles on
the host, the reference's per-tile processing) and the device path (the host decodes to uint8; resize, tiling and
normalisation run on the model's device). Prints the host CPU time per sample of each, what the device step
costs per sample on this CPU and the device path's end-to-end time on a CPU (host + device step), collate time per
batch, DataLoader samples/s with 1 and 2 workers, and the share of each step of the path.

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
    saved = {name: getattr(proc, name) for name in ("host_tiles", "device_image", "_load_audios", "layout")}
    proc.host_tiles = wrap("image decode + tiles", proc.host_tiles)
    proc.device_image = wrap("image decode (uint8)", proc.device_image)
    proc._load_audios = wrap("audio load + fbank", proc._load_audios)
    proc.layout = wrap("template + tokens + labels", proc.layout)
    import vita_trainer.data.processor as P
    original = P.tiles_to_tensor
    P.tiles_to_tensor = wrap("tiles to tensor", original)
    start = time.perf_counter()
    for i in range(0, len(dataset), batch):
        items = [dataset[j] for j in range(i, min(i + batch, len(dataset)))]
        wrap("collate", collate)(items)
    P.tiles_to_tensor = original
    for name, fn in saved.items():
        setattr(proc, name, fn)
    total = time.perf_counter() - start
    # JSON parsing and schema checks happen once, when the dataset is built (measured separately)
    return {k: v / total for k, v in sorted(spent.items(), key=lambda kv: -kv[1])}


def in_process(dataset, collate, batch: int, keep: bool) -> tuple[float, float, list]:
    """(samples/s, collate ms per batch, the batches if `keep`) for the whole data set in this process."""
    start, collate_s, batches, count = time.perf_counter(), 0.0, [], 0
    for i in range(0, len(dataset), batch):
        items = [dataset[j] for j in range(i, min(i + batch, len(dataset)))]
        t = time.perf_counter()
        out = collate(items)
        collate_s += time.perf_counter() - t
        count += 1
        if keep:  # host batches are ~30 MB of float tiles per image: never kept
            batches.append(out)
    return len(dataset) / (time.perf_counter() - start), 1e3 * collate_s / count, batches


def device_step_ms(batches: list, config) -> tuple[float, int]:
    """What the device step (resize, tile, normalise) costs per batch here, and the tiles it made."""
    from vita_trainer.model.image_tiles import tiles_from_images
    start, tiles = time.perf_counter(), 0
    with_images = [b for b in batches if "images" in b]
    for b in with_images:
        tiles += len(tiles_from_images(b["images"], b["image_sizes"], b["image_grids"], config.tile_size,
                                       config.image_mean, config.image_std))
    return 1e3 * (time.perf_counter() - start) / max(len(with_images), 1), tiles


def loader_rate(dataset, collate, batch: int, workers: int) -> float:
    loader = DataLoader(dataset, batch_size=batch, num_workers=workers, collate_fn=collate, persistent_workers=False)
    start = time.perf_counter()
    n = sum(len(b["input_ids"]) for b in loader)
    return n / (time.perf_counter() - start)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=240)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="alternating host/device rounds; the best of each")
    a = ap.parse_args()
    import torch

    from vita_trainer.model.builder import vita_1p5_config
    torch.set_num_threads(1)
    pipelines = ("host", "device")
    with tempfile.TemporaryDirectory() as tmp:
        registry = make_data(Path(tmp), a.samples)
        procs = {p: build_processor(ToolOptions(registry=str(registry), image_pipeline=p)) for p in pipelines}
        t = time.perf_counter()
        datasets = {p: LazySupervisedDataset(load_registry(registry), "d", procs[p]) for p in pipelines}
        parse_s = (time.perf_counter() - t) / len(pipelines)
        collate = MultimodalCollator(procs["host"].tok.pad_token_id)
        rate, collate_ms, batches = {p: 0.0 for p in pipelines}, {p: float("inf") for p in pipelines}, {}
        for _ in range(a.rounds):
            for p in pipelines:
                r, c, batches[p] = in_process(datasets[p], collate, a.batch, keep=p == "device")
                rate[p], collate_ms[p] = max(rate[p], r), min(collate_ms[p], c)
        step_ms, tiles = device_step_ms(batches["device"], vita_1p5_config())
        workers = {w: loader_rate(datasets["device"], collate, a.batch, w) for w in (1, 2)}
        shares = {p: timed_shares(procs[p], datasets[p], collate, a.batch) for p in pipelines}
    print(f"{a.samples} samples (60% image, 20% audio, 10% both, 10% text; 640x480 JPEG, 3-15 s audio), "
          f"1 torch thread, in-process, best of {a.rounds} alternating rounds")
    print(f"JSON load + schema checks: {a.samples / parse_s:,.0f} samples/s (once, at dataset build)")
    for p in pipelines:
        print(f"{p} path: {rate[p]:.1f} samples/s; collate {collate_ms[p]:.1f} ms per batch of {a.batch}")
    host_ms = {p: 1000 / rate[p] for p in pipelines}
    step_per_sample = step_ms / a.batch
    end_to_end = host_ms["device"] + step_per_sample
    print(f"host CPU per sample: host-PIL path {host_ms['host']:.2f} ms, device path {host_ms['device']:.2f} ms "
          f"({host_ms['host'] / host_ms['device']:.2f}x less host work)")
    print(f"device step on this CPU (resize + tile + normalise, 1 thread): {step_ms:.1f} ms per batch of {a.batch} "
          f"({tiles} tiles in all), {step_per_sample:.2f} ms per sample")
    print(f"device path end to end on this CPU (host + device step): {end_to_end:.2f} ms per sample, "
          f"{host_ms['host'] / end_to_end:.2f}x the host-PIL path's speed (on a GPU the step is timed by "
          f"bench/gpu_check.sh)")
    for w, r in workers.items():
        print(f"device pipeline, DataLoader with {w} worker(s): {r:.1f} samples/s ({r / w:.1f} per worker)")
    for p in pipelines:
        print(f"share of time per step, {p} pipeline (in-process):")
        for k, v in shares[p].items():
            print(f"  {k:<28}{100 * v:5.1f}%")


if __name__ == "__main__":
    main()
