"""`vita-data concat`: greedily pack samples into multi-turn samples of up to N tokens (the reference's
concat_data_patch), deterministic with a seed. Media lists are kept in order; only samples with the same
`set` are packed together (a set names the image folder), and video samples stay alone."""

from __future__ import annotations

import json
import random
from pathlib import Path

from ..data.dataset import read_samples
from vita_api.errors import DataError
from ..data.facts import inspect_sample


def _as_list(value) -> list:
    return [value] if isinstance(value, str) else value or []


def merge(group: list[dict], index: int) -> dict:
    out = {"id": f"concat-{index}-" + "+".join(str(g["id"]) for g in group), "conversations": []}
    for key in ("image", "audio"):
        media = [m for g in group for m in _as_list(g.get(key))]
        if media:
            out[key] = media
    # one set per image (a list-valued set is the reference's multi-image form); a single one stays a string
    sets = [s for g in group for s in (g["set"] if isinstance(g.get("set"), list)
                                       else [g.get("set")] * len(_as_list(g.get("image"))))]
    if len(set(sets)) > 1:
        out["set"] = sets
    elif group[0].get("set") is not None:
        out["set"] = sets[0] if sets else group[0]["set"]
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
        key = tuple(raw["set"]) if isinstance(raw.get("set"), list) else raw.get("set")
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
