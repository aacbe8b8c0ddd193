"""Lazy supervised dataset over a registry mixture: sample metadata up front, media only in __getitem__."""

from __future__ import annotations

import copy
import json
import logging
import random
from collections import Counter
from pathlib import Path

from torch.utils.data import Dataset

from vita_api.errors import DataError
from .processor import SampleProcessor
from .registry import Registry
from .sample import parse_sample

log = logging.getLogger(__name__)


def read_samples(path: Path) -> list:
    """A JSON list or JSONL file. Errors name the file and the line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as e:
        raise DataError(f"chat file {path} does not exist", file=str(path), reason="missing_file") from e
    except UnicodeDecodeError as e:
        raise DataError(f"chat file is not UTF-8 (byte {e.start})", file=str(path), reason="encoding") from e
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise DataError(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}", file=str(path),
                            reason="json") from e
        return data
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"invalid JSONL at line {lineno}: {e.msg}", file=str(path), reason="json") from e
    return out


class LazySupervisedDataset(Dataset):
    def __init__(self, registry: Registry, dataset_use: str, processor: SampleProcessor, *,
                 skip_bad_samples: bool = False, seed: int = 0, cache: bool = False):
        self.processor, self.skip_bad_samples = processor, skip_bad_samples
        self.cache: dict[int, dict] | None = {} if cache else None
        self.entries: list[tuple[str, object]] = []  # (file, parsed sample)
        self.skipped: Counter = Counter()
        rng = random.Random(seed)
        for _, ds in registry.mixture(dataset_use):
            path = registry.resolve(ds.chat_path)
            raws = read_samples(path)
            if ds.data_ratio < 1.0:
                raws = rng.sample(raws, max(1, int(len(raws) * ds.data_ratio)))
            for i, raw in enumerate(raws):
                try:
                    sample = parse_sample(raw, file=str(path), index=i)
                    for set_name in dict.fromkeys(sample.image_sets):  # a set missing fails now, not at step 10k
                        registry.image_folder(set_name, file=str(path), sample_id=sample.sample_id)
                    self.entries.append((str(path), sample))
                except DataError as e:
                    self._skip_or_raise(e)
        if not self.entries:
            raise DataError(f"--dataset_use {dataset_use!r} yields no usable samples")

    def hold_out(self, fraction: float, seed: int) -> "LazySupervisedDataset":
        """Move a seeded `fraction` of the samples into a new dataset (validation); this one keeps the rest, so no
        sample is in both. The same seed and data give the same split on every rank and every resume."""
        n = len(self.entries)
        k = round(n * fraction)
        if not 1 <= k < n:
            raise DataError(f"--eval_holdout {fraction} of {n} samples leaves {k} for validation and {n - k} for "
                            f"training; both need at least one")
        picked = set(random.Random(seed).sample(range(n), k))
        held = copy.copy(self)
        held.entries = [e for i, e in enumerate(self.entries) if i in picked]
        held.cache = {} if self.cache is not None else None
        held.skipped = Counter()
        self.entries = [e for i, e in enumerate(self.entries) if i not in picked]
        if self.cache is not None:
            self.cache.clear()
        return held

    def _skip_or_raise(self, err: DataError):
        if not self.skip_bad_samples:
            raise err
        self.skipped[err.reason] += 1
        log.warning("skipping sample: %s", err)

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def modality_lengths(self) -> list[int]:
        """Cheap length estimates, positive for samples with media and negative for text-only (LLaVA's
        convention for --group_by_modality_length); no media is read."""
        tpt = self.processor.media.tokens_per_tile
        out = []
        for _, s in self.entries:
            n = sum(len(v) for _, v in s.turns) // 3 + len(s.images) * tpt + len(s.audios) * 100
            out.append(n if s.media else -n)
        return out

    def token_lengths(self, shard: int = 0, shards: int = 1) -> list[int]:
        """The exact token count of samples shard, shard + shards, ... from their media headers (data/facts.py; a
        video's frames from its container metadata), for token-budget batches. A sample whose headers cannot be
        read counts as --model_max_length: it is skipped or fails when loaded."""
        from .facts import inspect_parsed
        out = []
        for file, s in self.entries[shard::shards]:
            try:
                out.append(inspect_parsed(self.processor, s, file).tokens)
            except DataError:
                out.append(self.processor.max_len)
        return out

    def __getitem__(self, i: int) -> dict:
        if self.cache is not None:
            if i not in self.cache:
                self.cache[i] = self._load(i)
            return self.cache[i]
        return self._load(i)

    def _load(self, i: int) -> dict:
        reasons = []  # carried in the sample so counts survive DataLoader worker processes
        for attempt in range(len(self.entries)):
            file, s = self.entries[(i + attempt) % len(self.entries)]
            try:
                out = self.processor(s, file)
                out["skipped_reasons"] = reasons
                out["modality"] = s.media_label
                return out
            except DataError as e:
                self._skip_or_raise(e)
                reasons.append(e.reason)
        raise DataError("every sample failed to load")
