"""Micro-batches capped by tokens (`--max_tokens_per_batch`), with even work across ranks.

A fixed number of samples per micro-batch makes the worst case (eight 13-tile images of 6200 tokens) the size the
GPU must hold, and leaves most batches far below it. Here every micro-batch holds as many samples as fit the budget:
padded rows cost `samples x longest`, packed rows cost the sum of their lengths. Batches are made once, from samples
sorted by length (similar lengths share a batch, so little padding); each epoch shuffles the batches and deals each
optimizer step's `ranks x accumulation` batches so that the ranks of one micro-batch slot get batches of nearly the
same cost (as transformers' BatchRebalanceSampler does for fixed-size batches). Every sample is used once per
epoch; the count of batches is the same every epoch, so the Trainer's step count and schedule are exact.
"""

from __future__ import annotations

import random

from transformers.trainer_pt_utils import BatchRebalanceSampler

from vita_api.errors import ConfigError

OPEN_BATCHES = 64


def batch_cost(lengths: list[int], packed: bool) -> int:
    """Tokens the model computes for one micro-batch: real tokens when packed, padded rows otherwise."""
    return sum(lengths) if packed else len(lengths) * max(lengths)


def budget_batches(lengths: list[int], max_tokens: int, packed: bool, seed: int) -> list[list[int]]:
    """Sample indices per batch, longest samples first, each batch within `max_tokens` (ties in length are
    broken at random so that equal-length samples do not always share a batch).

    Padded: consecutive samples of the sorted order (a batch costs its longest sample times its size, so
    neighbours in length waste least). Packed: first fit among the last OPEN_BATCHES batches (short samples fill
    the room long ones leave; a window keeps it linear in the number of samples)."""
    longest = max(range(len(lengths)), key=lengths.__getitem__)
    if lengths[longest] > max_tokens:
        raise ConfigError(f"--max_tokens_per_batch {max_tokens} is below sample #{longest}'s {lengths[longest]} "
                          f"tokens; set it to at least --model_max_length")
    rng = random.Random(seed)
    ties = [rng.random() for _ in lengths]
    batches: list[list[int]] = []
    room: list[int] = []  # packed: tokens left in each batch
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], ties[i])):
        if packed:
            first = len(batches) - min(len(batches), OPEN_BATCHES)
            k = next((k for k in range(first, len(batches)) if room[k] >= lengths[i]), None)
            if k is None:
                batches.append([])
                room.append(max_tokens)
                k = len(batches) - 1
            batches[k].append(i)
            room[k] -= lengths[i]
        elif batches and batch_cost([lengths[j] for j in batches[-1]] + [lengths[i]], packed=False) <= max_tokens:
            batches[-1].append(i)
        else:
            batches.append([i])
    return batches


def even_out(batches: list[list[int]], multiple: int) -> list[list[int]]:
    """Make the count a multiple of `multiple` (every rank must run the same number of micro-batches): split the
    batches with the most samples, or, when every batch is down to one sample, repeat the first batches (as
    DistributedSampler pads its tail)."""
    batches = [list(b) for b in batches]
    while len(batches) % multiple:
        biggest = max(range(len(batches)), key=lambda k: len(batches[k]))
        if len(batches[biggest]) < 2:
            batches += batches[: multiple - len(batches) % multiple]
            break
        half = len(batches[biggest]) // 2
        batches[biggest:biggest + 1] = [batches[biggest][:half], batches[biggest][half:]]
    return batches


class TokenBudgetSampler(BatchRebalanceSampler):
    """A batch sampler that is already rank-aware. It subclasses BatchRebalanceSampler because that is how the
    Trainer recognises one: it passes it as `batch_sampler` and keeps accelerate from sharding it again."""

    def __init__(self, lengths: list[int], max_tokens: int, *, packed: bool, dp_size: int, grad_accum: int,
                 rank: int, seed: int):
        self.lengths = list(lengths)
        self.max_tokens = max_tokens
        self.packed = packed
        self.dp_size, self.grad_accum, self.rank = dp_size, grad_accum, rank
        self.seed = seed
        self.epoch = 0
        self.batches = even_out(budget_batches(self.lengths, max_tokens, packed, seed), dp_size * grad_accum)

    def cost(self, batch: list[int]) -> int:
        return batch_cost([self.lengths[i] for i in batch], self.packed)

    def steps(self) -> list[list[list[int]]]:
        """This epoch's optimizer steps, each as rank-major lists: steps()[s][r] is rank r's micro-batches."""
        order = list(self.batches)
        random.Random(self.seed + self.epoch).shuffle(order)
        per_step = self.dp_size * self.grad_accum
        totals = [0] * self.dp_size  # each rank's cost so far this epoch
        out = []
        for at in range(0, len(order), per_step):
            # Slot k gets the k-th most costly group of dp_size batches, so the ranks of a slot (which meet in
            # ZeRO-3's per-layer collectives) finish together; within a slot the costliest batch goes to the rank
            # with the least work so far, so the totals even out as well.
            ranked = sorted(order[at:at + per_step], key=self.cost, reverse=True)
            step: list[list[list[int]]] = [[] for _ in range(self.dp_size)]
            for k in range(self.grad_accum):
                slot = ranked[k * self.dp_size:(k + 1) * self.dp_size]
                for batch, r in zip(slot, sorted(range(self.dp_size), key=totals.__getitem__)):
                    step[r].append(batch)
                    totals[r] += self.cost(batch)
            out.append(step)
        return out

    def __iter__(self):
        for step in self.steps():
            yield from step[self.rank]

    def __len__(self) -> int:
        return len(self.batches) // self.dp_size
