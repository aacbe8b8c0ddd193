"""`vita-data concat`: greedily pack samples into multi-turn samples of up to N tokens (the reference's
concat_data_patch), deterministic with a seed. Media lists are kept in order; only samples with the same
`set` are packed together (a set names the image folder), and video samples stay alone."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..data.dataset import read_samples
from ..errors import DataError
from .check import inspect_sample


def merge(group: list[dict], index: int) -> dict:
    out = {"id": f"concat-{index}-" + "+".join(str(g["id"]) for g in group), "conversations": []}
    if group[0].get("set") is not None:
        out["set"] = group[0]["set"]
    for key in ("image", "audio"):
        media = [m for g in group for m in ([g[key]] if isinstance(g.get(key), str) else g.get(key) or [])]
        if media:
            out[key] = media
    for g in group:
        out["conversations"].extend(g["conversations"])
    return out


def pack(samples: list[tuple[dict, int]], max_tokens: int, seed: int) -> list[dict]:
    """samples: (raw, tokens). Greedy in a seeded shuffled order, one open pack per set."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    open_packs: dict[object, tuple[list[dict], int]] = {}
    done: list[list[dict]] = []
    for i in order:
        raw, n = samples[i]
        if raw.get("video"):
            done.append([raw])
            continue
        key = raw.get("set")
        group, total = open_packs.get(key, ([], 0))
        # the system prompt is counted once per sample, so a packed sample is a little shorter than the sum
        if group and total + n > max_tokens:
            done.append(group)
            group, total = [], 0
        open_packs[key] = (group + [raw], total + n)
    done.extend(g for g, _ in open_packs.values() if g)
    return [merge(g, k) for k, g in enumerate(done)]


def concat_file(src: Path, dst: Path, proc, max_tokens: int, seed: int) -> tuple[int, int]:
    if dst.resolve() == src.resolve():
        raise DataError(f"concat would overwrite its input {src}; choose another --output")
    raws = read_samples(src)
    counted = []
    for i, raw in enumerate(raws):
        counted.append((raw, inspect_sample(proc, raw, str(src), i).tokens))
    packed = pack(counted, max_tokens, seed)
    dst.write_text(json.dumps(packed, ensure_ascii=False, indent=1))
    return len(raws), len(packed)
