"""Token-budget batches (--max_tokens_per_batch): within the budget, every sample once per epoch, even cost across
ranks, exact lengths from headers, and the Trainer's DataLoader really uses the sampler."""

import random

import pytest
import torch
from transformers import TrainingArguments

from tests.conftest import conv
from tests.test_data_errors import write_registry
from vita_trainer.data.collator import MultimodalCollator, PackedCollator
from vita_trainer.data.dataset import LazySupervisedDataset
from vita_trainer.data.processor import MediaSpec, SampleProcessor
from vita_trainer.data.token_budget import TokenBudgetSampler, batch_cost, budget_batches, even_out
from vita_api.errors import ConfigError
from vita_trainer.model.builder import build_model
from vita_trainer.train.trainer import BATCH_COUNTS, VitaTrainer

_rng = random.Random(1)
LENGTHS = [min(6200, _rng.choice([40, 300, 900, 3400, 6200]) + _rng.randrange(60)) for _ in range(400)]


@pytest.mark.parametrize("packed", [False, True])
def test_batches_stay_within_the_budget_and_cover_every_sample(packed):
    batches = budget_batches(LENGTHS, 16384, packed, seed=0)
    assert sorted(i for b in batches for i in b) == list(range(len(LENGTHS)))
    assert all(batch_cost([LENGTHS[i] for i in b], packed) <= 16384 for b in batches)
    fill = sum(LENGTHS) / (16384 * len(batches))
    assert fill > (0.85 if packed else 0.6), fill  # full batches, not one sample each
    with pytest.raises(ConfigError, match="at least --model_max_length"):
        budget_batches(LENGTHS, 4096, packed, seed=0)


def test_even_out_splits_before_it_repeats():
    assert even_out([[0, 1, 2], [3]], 4) == [[0], [1], [2], [3]]
    split = even_out([[0, 1, 2, 3], [4]], 3)
    assert len(split) == 3 and sorted(i for b in split for i in b) == [0, 1, 2, 3, 4]
    padded = even_out([[0], [1], [2]], 2)
    assert len(padded) == 4 and padded[3] == [0]


def test_ranks_get_the_same_count_and_even_cost_and_each_sample_once():
    ranks, accum = 4, 2
    samplers = [TokenBudgetSampler(LENGTHS, 16384, packed=False, dp_size=ranks, grad_accum=accum, rank=r, seed=3)
                for r in range(ranks)]
    epochs = []
    for epoch in range(2):
        for s in samplers:
            s.set_epoch(epoch)
        per_rank = [list(s) for s in samplers]
        assert {len(p) for p in per_rank} == {len(samplers[0])}
        seen = sorted(i for p in per_rank for b in p for i in b)
        assert seen == list(range(len(LENGTHS)))  # nothing lost, nothing repeated: the splits sufficed
        costs = [[samplers[0].cost(b) for b in p] for p in per_rank]
        slots = list(zip(*costs))  # the ranks' k-th micro-batches run side by side
        balance = sum(min(slot) / max(slot) for slot in slots) / len(slots)
        assert balance > 0.85, balance
        totals = [sum(c) for c in costs]
        assert min(totals) >= 0.95 * max(totals), totals
        epochs.append(per_rank[0])
    assert epochs[0] != epochs[1]  # shuffled per epoch, same batches overall


def test_token_lengths_are_the_real_lengths(tok, tiny_cfg, media_dir):
    samples = [{"id": "img", "set": "s", "image": "wide.png", "conversations": conv(("<image>\nq", "a blue one"))},
               {"id": "aud", "audio": ["one.wav"], "conversations": conv(("<audio>\nq", "a tone"))},
               {"id": "txt", "conversations": conv(("hello", "world"), ("again", "more words"))},
               {"id": "bad", "set": "s", "image": "corrupt.png", "conversations": conv(("<image>\nq", "a"))}]
    reg = write_registry(media_dir, samples)
    proc = SampleProcessor(tok, MediaSpec.from_config(tiny_cfg), reg, 512)
    ds = LazySupervisedDataset(reg, "mix", proc, skip_bad_samples=True)
    lengths = ds.token_lengths()
    by_id = {s.sample_id: n for (_, s), n in zip(ds.entries, lengths)}
    real = {ds[k]["id"]: len(ds[k]["input_ids"]) for k in range(3) if ds.entries[k][1].sample_id != "bad"}
    assert {k: by_id[k] for k in real} == real
    assert by_id["bad"] == 512  # unreadable headers: counted as the longest allowed


@pytest.mark.parametrize("packed", [False, True])
def test_the_trainer_batches_by_the_budget(tok, tiny_cfg, media_dir, tmp_path, packed):
    samples = [{"id": f"t{i}", "conversations": conv(("hello " * (1 + i % 7), "world " * (1 + i % 5)))}
               for i in range(24)]
    reg = write_registry(media_dir, samples)
    proc = SampleProcessor(tok, MediaSpec.from_config(tiny_cfg), reg, 512, system_prompt="S")
    ds = LazySupervisedDataset(reg, "mix", proc)
    lengths = ds.token_lengths()
    budget = 4 * max(lengths)
    sampler = TokenBudgetSampler(lengths, budget, packed=packed, dp_size=1, grad_accum=1, rank=0, seed=0)
    collator = PackedCollator(tok.pad_token_id, 512) if packed else MultimodalCollator(tok.pad_token_id)
    args = TrainingArguments(str(tmp_path), use_cpu=True, per_device_train_batch_size=2, report_to="none",
                             remove_unused_columns=False)
    trainer = VitaTrainer(model=build_model(tiny_cfg), args=args, train_dataset=ds, data_collator=collator,
                          train_sampler=sampler)
    batches = list(trainer.get_train_dataloader())
    assert len(batches) == len(sampler) < len(ds) / 2  # more than per_device_train_batch_size samples per batch
    # the trainer's collator counts each batch's real tokens for the metrics, beside the model inputs
    counts = [b.pop(BATCH_COUNTS) for b in batches]
    assert sum(c["tokens"] for c in counts) == sum(lengths)
    for b, c in zip(batches, counts):
        real = int((b["labels"] != -100).sum()) if packed else int(b["attention_mask"].sum())
        assert real > 0 and (c["tokens"] if packed else b["input_ids"].numel()) <= budget
        assert not packed or b["input_ids"].shape[1] <= 512
    assert torch.is_tensor(batches[0]["input_ids"])


class _Lengths:
    """A dataset whose token lengths are its indices times 10; records which ones each rank read."""

    def __init__(self, n: int):
        self.n = n
        self.read: list[int] = []

    def __len__(self) -> int:
        return self.n

    def token_lengths(self, shard: int = 0, shards: int = 1) -> list[int]:
        mine = list(range(self.n))[shard::shards]
        self.read += mine
        return [10 * (i + 1) for i in mine]


def _rank(rank: int, port: int, out) -> None:
    from types import SimpleNamespace

    from vita_trainer.train.trainer import token_budget_sampler
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    dataset = _Lengths(9)
    args = SimpleNamespace(process_index=rank, world_size=2, gradient_accumulation_steps=1, seed=0)
    sampler = token_budget_sampler(dataset, args, 100, packed=True)
    out.put((rank, dataset.read, sampler.lengths))
    torch.distributed.destroy_process_group()


@pytest.mark.subprocess
def test_token_lengths_are_read_sharded_across_ranks_and_gathered_whole():
    """No rank reads the whole mixture alone while the others wait in a collective (a video corpus took hours)."""
    import torch.multiprocessing as mp

    from vita_trainer.local import free_port
    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), free_port()
    procs = [ctx.Process(target=_rank, args=(r, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    results = sorted(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
    assert [read for _, read, _ in results] == [[0, 2, 4, 6, 8], [1, 3, 5, 7]]
    assert all(lengths == [10 * (i + 1) for i in range(9)] for _, _, lengths in results)
