"""Collate mixed text / image / audio samples into one padded batch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from ..constants import IGNORE_INDEX


@dataclass
class MultimodalCollator:
    pad_token_id: int
    ctc: bool = False   # audio-encoder CTC stage: targets are the transcript's UTF-8 bytes (+1; 0 is blank)

    def __call__(self, samples: list[dict]) -> dict:
        ids = pad_sequence([s["input_ids"] for s in samples], batch_first=True, padding_value=self.pad_token_id)
        labels = pad_sequence([s["labels"] for s in samples], batch_first=True, padding_value=IGNORE_INDEX)
        mask = torch.zeros_like(ids, dtype=torch.long)
        for row, s in enumerate(samples):
            mask[row, : len(s["input_ids"])] = 1
        batch = {"input_ids": ids, "labels": labels, "attention_mask": mask}
        pixels = [s["pixel_values"] for s in samples if s.get("pixel_values") is not None]
        if pixels:
            batch["pixel_values"] = torch.cat(pixels)
        feats = [f for s in samples for f in s.get("audio_features", [])]
        if feats:
            batch["audio_features"] = pad_sequence(feats, batch_first=True)
            batch["audio_feature_lengths"] = torch.tensor([f.shape[0] for f in feats])
        if self.ctc:
            targets = [torch.tensor(list(s["transcript"].encode("utf-8"))) + 1 for s in samples]
            batch["ctc_targets"] = pad_sequence(targets, batch_first=True)
            batch["ctc_target_lengths"] = torch.tensor([len(t) for t in targets])
        skipped = [r for s in samples for r in s.get("skipped_reasons", [])]
        if skipped:
            batch["skipped_reasons"] = skipped
        return batch
