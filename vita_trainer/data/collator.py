"""Collate mixed text / image / audio samples: padded rows, or packed rows (several samples per row).

Packed rows carry position ids that restart at 0 for every sample and no attention mask, plus the sample
boundaries over the flattened rows (`cu_seq_lens_q/k`, `max_length_q/k`); padded rows carry their mask and the same
boundaries (each row's tokens, then its padding). SDPA and eager build a block-diagonal mask from the position ids;
the varlen backend (model/varlen_attention.py) attends by the boundaries alone; flash-attention-2 needs them for
packed rows, because transformers infers them from position ids only for a single row (`_is_packed_sequence`):
with two or more rows it would run one causal call per row and let the samples in a row attend to each other.
The model passes the boundaries on only to those two (model/modeling.py: _attention_inputs).

Batches hold model inputs only; the trainer counts tokens and skipped samples around the collator
(train/trainer.py: CountingCollator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.nn.utils.rnn import pad_sequence

from vita_api.constants import IGNORE_INDEX


def stack_images(images: list[torch.Tensor], grids: list[tuple[int, int, int, int]]) -> dict:
    """Decoded (H, W, 3) uint8 images of any size as one (N, Hmax, Wmax, 3) tensor, with each one's size and tile
    grid (the device pipeline). The padding is never read (the device step crops each image to its size), so it is
    left uninitialised. Sizes and grids stay Python lists: the trainer moves tensors to the GPU, and the device step
    would then wait for the GPU to read them back."""
    height, width = max(im.shape[0] for im in images), max(im.shape[1] for im in images)
    out = torch.empty((len(images), height, width, 3), dtype=torch.uint8)
    for k, im in enumerate(images):
        out[k, :im.shape[0], :im.shape[1]] = im
    return {"images": out, "image_sizes": [[im.shape[0], im.shape[1]] for im in images],
            "image_grids": [list(g) for g in grids]}


def _media(samples: list[dict], batch: dict, ctc: bool) -> dict:
    """Media in the order the samples' tokens appear (row-major), which is the order the model fills slots."""
    pixels = [s["pixel_values"] for s in samples if s.get("pixel_values") is not None]
    if pixels:
        batch["pixel_values"] = torch.cat(pixels)
    images = [im for s in samples for im in s.get("images", [])]
    if images:
        batch.update(stack_images(images, [g for s in samples for g in s["image_grids"]]))
    feats = [f for s in samples for f in s.get("audio_features", [])]
    if feats:
        batch["audio_features"] = pad_sequence(feats, batch_first=True)
        batch["audio_feature_lengths"] = torch.tensor([f.shape[0] for f in feats])
    if ctc:
        targets = [torch.tensor(list(s["transcript"].encode("utf-8"))) + 1 for s in samples]
        batch["ctc_targets"] = pad_sequence(targets, batch_first=True)
        batch["ctc_target_lengths"] = torch.tensor([len(t) for t in targets])
        # One label per sample: the Trainer counts labels != -100 (after the causal shift, so from column 1) over
        # the accumulation window and all ranks into num_items_in_batch, which the CTC loss divides by.
        batch["labels"] = torch.tensor([[IGNORE_INDEX, 0]] * len(samples))
    return batch


def label_positions(labels: torch.Tensor) -> torch.Tensor:
    """The flat positions (over rows x (width - 1), after the causal shift) that predict a label, found here on the
    host so the chunked loss (model/chunked_loss.py) indexes them on the GPU without a sync."""
    return (labels[:, 1:] != IGNORE_INDEX).reshape(-1).nonzero().squeeze(1)


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
        if not self.ctc:  # the rows' boundaries too, for the varlen attention backend
            batch.update(varlen_boundaries([[len(s["input_ids"])] for s in samples], ids.shape[1]),
                         label_positions=label_positions(labels))
        return _media(samples, batch, self.ctc)


def pack_rows(lengths: list[int], max_length: int) -> list[list[int]]:
    """Sample indices per row: the fewest rows of at most max_length tokens, balanced so that rows end up
    nearly equal (longest sample first into the emptiest row) and little padding is left. Indices in a row
    keep their batch order."""
    n = len(lengths)
    rows_needed = max(1, -(-sum(lengths) // max_length))
    while True:
        rows: list[list[int]] = [[] for _ in range(rows_needed)]
        totals = [0] * rows_needed
        for i in sorted(range(n), key=lambda i: -lengths[i]):
            k = totals.index(min(totals))
            rows[k].append(i)
            totals[k] += lengths[i]
        if max(totals) <= max_length or rows_needed >= n:
            return [sorted(r) for r in rows if r]
        rows_needed += 1


def varlen_boundaries(row_lengths: list[list[int]], width: int) -> dict:
    """flash-attention's varlen arguments for rows of `width` tokens laid end to end: every sample is a segment,
    and so is each row's padding tail (it attends only to itself, as its position ids say)."""
    segments = []
    for lengths in row_lengths:
        segments += lengths
        if width > sum(lengths):
            segments.append(width - sum(lengths))
    cu = torch.zeros(len(segments) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(segments), 0)
    longest = max(segments)
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu.clone(), "max_length_q": longest, "max_length_k": longest}


@dataclass
class PackedCollator:
    pad_token_id: int
    max_length: int

    def __call__(self, samples: list[dict]) -> dict:
        rows = pack_rows([len(s["input_ids"]) for s in samples], self.max_length)
        ordered = [samples[i] for row in rows for i in row]
        width = max(sum(len(samples[i]["input_ids"]) for i in row) for row in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
        pos = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = len(samples[i]["input_ids"])
                ids[r, at:at + n] = samples[i]["input_ids"]
                labels[r, at:at + n] = samples[i]["labels"]
                pos[r, at:at + n] = torch.arange(n)
                at += n
            pos[r, at:] = torch.arange(width - at)  # padding is its own sequence, never attended by samples
        batch = {"input_ids": ids, "labels": labels, "position_ids": pos, "label_positions": label_positions(labels),
                 **varlen_boundaries([[len(samples[i]["input_ids"]) for i in row] for row in rows], width)}
        return _media(ordered, batch, ctc=False)
