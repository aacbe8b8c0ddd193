"""Benchmark: fraction of non-pad tokens per batch for padding vs length-grouping vs packing.

Lengths follow a LLaVA/ShareGPT4V-like mix: 60% image (1-13 tiles x 256 + text), 20% audio (3-15 s at 12.5
tokens/s + text), 10% image+audio, 10% long text. Batches use the trainer's real sampler (HF's
LengthGroupedSampler) and collator logic (`pack_rows`). Padding is the baseline, measured in the same run.

    .venv/bin/python bench/token_efficiency.py
"""

from __future__ import annotations

import argparse
import random

import numpy as np
from transformers.trainer_pt_utils import LengthGroupedSampler

from vita_trainer.data.collator import pack_rows

TILES = [1, 3, 5, 7, 13]
TILE_P = [0.3, 0.2, 0.2, 0.15, 0.15]


def sample_lengths(n: int, seed: int, max_len: int) -> list[int]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        kind = rng.choice(["image", "audio", "both", "text"], p=[0.6, 0.2, 0.1, 0.1])
        text = int(rng.lognormal(np.log(400 if kind == "text" else 120), 0.8))
        media = 0
        if kind in ("image", "both"):
            media += int(rng.choice(TILES, p=TILE_P)) * 256
        if kind in ("audio", "both"):
            media += int(rng.uniform(3, 15) * 12.5)
        out.append(min(text + media + 40, max_len))  # +40: system prompt and chat tokens
    return out


def efficiency(batches: list[list[int]], lengths: list[int], pack: int | None) -> float:
    real = padded = 0
    for b in batches:
        ls = [lengths[i] for i in b]
        real += sum(ls)
        if pack:
            rows = pack_rows(ls, pack)
            padded += len(rows) * max(sum(ls[i] for i in r) for r in rows)
        else:
            padded += len(ls) * max(ls)
    return real / padded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=20000)
    ap.add_argument("--batch", type=int, default=8, help="per-device batch size")
    ap.add_argument("--max-length", type=int, default=6200)
    a = ap.parse_args()
    lengths = sample_lengths(a.samples, 0, a.max_length)
    order = list(range(a.samples))
    random.Random(0).shuffle(order)
    random_batches = [order[i:i + a.batch] for i in range(0, len(order), a.batch)]
    grouped = list(LengthGroupedSampler(a.batch, lengths=lengths))
    grouped_batches = [grouped[i:i + a.batch] for i in range(0, len(grouped), a.batch)]
    results = {
        "padding (random batches)": efficiency(random_batches, lengths, None),
        "length-grouped sampler": efficiency(grouped_batches, lengths, None),
        "packing (random batches)": efficiency(random_batches, lengths, a.max_length),
        "packing + length-grouped": efficiency(grouped_batches, lengths, a.max_length),
    }
    base = results["padding (random batches)"]
    print(f"{a.samples} samples, mean length {np.mean(lengths):.0f} tokens, batch {a.batch}, rows <= {a.max_length}")
    for name, eff in results.items():
        print(f"{name:<28} non-pad fraction {eff:.3f}  ({eff / base:.2f}x padding)")


if __name__ == "__main__":
    main()
