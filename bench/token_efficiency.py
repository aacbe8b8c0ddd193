"""Benchmark: fraction of non-pad tokens per batch: packing against length-grouped batches (what the examples
use, `group_by_modality_length`), with random padded batches for reference.

Lengths are drawn per source of LLaVA-1.5's 665k instruction mix (the guide's stage-3 image data), in its
published proportions (LLaVA-1.5 paper, Table 7: LLaVA 158K, ShareGPT 40K, VQAv2 83K, GQA 72K, OKVQA 9K,
OCR-VQA 80K, A-OKVQA 66K, TextCaps 22K, RefCOCO 48K, VG 86K). Image tokens come from this project's tiling
(`tile_count`: 448 px tiles, up to 12 + thumbnail, 256 tokens each) at each source's typical image size; the
questions per image and text tokens per turn follow each source's answer format in that paper (VQA sources merge
all of an image's short answers into one conversation; ShareGPT is long text only). Those per-source text figures
are this script's assumptions, stated in SOURCES below. Batches use the trainer's real sampler (HF's
LengthGroupedSampler) and collator logic (`pack_rows`).

    .venv/bin/python bench/token_efficiency.py
"""

from __future__ import annotations

import argparse
import random

import numpy as np
from transformers.trainer_pt_utils import LengthGroupedSampler

from vita_trainer.data.collator import pack_rows
from vita_trainer.data.geometry import tile_count

# source: (samples in the mix, image size (w, h) or None, turns per sample (low, high), text tokens per turn
# (median), lognormal spread)
SOURCES = {
    "llava_instruct": (158_000, (640, 480), (1, 6), 90, 0.7),   # conversations, detailed descriptions, reasoning
    "sharegpt": (40_000, None, (1, 8), 350, 0.9),                # text-only multi-turn chats
    "vqav2": (83_000, (640, 480), (3, 10), 18, 0.3),             # "Answer ... using a single word or phrase."
    "gqa": (72_000, (500, 375), (3, 12), 22, 0.3),
    "okvqa": (9_000, (640, 480), (1, 3), 18, 0.3),
    "ocrvqa": (80_000, (330, 500), (3, 8), 20, 0.3),            # book covers, portrait
    "aokvqa": (66_000, (640, 480), (1, 3), 45, 0.3),             # multiple choice with options
    "textcaps": (22_000, (1024, 768), (1, 1), 35, 0.4),          # one short caption
    "refcoco": (48_000, (640, 480), (3, 10), 28, 0.3),           # region descriptions with box coordinates
    "vg": (86_000, (500, 375), (3, 10), 28, 0.3),
}
CHAT_OVERHEAD = 40  # system prompt and chat tokens


def sample_shapes(n: int, seed: int) -> list[tuple[str, int, int]]:
    """(source, image tiles, text tokens) per sample, drawn from the mix (bench/gpu_step.py builds samples from
    them)."""
    rng = np.random.default_rng(seed)
    names = list(SOURCES)
    weights = np.array([SOURCES[k][0] for k in names], dtype=float)
    out = []
    for src in rng.choice(names, size=n, p=weights / weights.sum()):
        _, size, (lo, hi), per_turn, spread = SOURCES[src]
        turns = int(rng.integers(lo, hi + 1))
        text = int(sum(rng.lognormal(np.log(per_turn), spread) for _ in range(turns)))
        out.append((str(src), tile_count(*size, 448) if size else 0, text))
    return out


def sample_lengths(n: int, seed: int, max_len: int) -> list[int]:
    return [min(text + tiles * 256 + CHAT_OVERHEAD, max_len) for _, tiles, text in sample_shapes(n, seed)]


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
    grouped_eff = results["length-grouped sampler"]
    print(f"{a.samples} samples drawn from LLaVA-1.5's 665k mix, mean length {np.mean(lengths):.0f} tokens "
          f"(median {np.median(lengths):.0f}), batch {a.batch}, rows <= {a.max_length}")
    for name, eff in results.items():
        print(f"{name:<28} non-pad fraction {eff:.3f}  ({eff / grouped_eff:.3f}x length-grouped)")


if __name__ == "__main__":
    main()
