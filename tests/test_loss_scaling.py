"""Losses normalised so that the gradient does not depend on how a batch is split into micro-batches and ranks
([gpu-correctness]): what the HF Trainer does with `num_items_in_batch`, replayed on CPU with the real model."""

import torch

from vita_trainer.data.collator import MultimodalCollator
from vita_trainer.model.builder import tiny_config
from vita_trainer.model.modeling import VitaForCausalLM


def ctc_samples(n: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [{"input_ids": torch.tensor([1, 2, 3]), "labels": torch.tensor([-100, 2, 3]),
             "audio_features": [torch.randn(48 + 8 * i, 80, generator=g)], "transcript": "ab" * (i + 1)}
            for i in range(n)]


def grads_of(model, batches: list[dict], num_items, loss_scale: float = 1.0) -> torch.Tensor:
    """Sum of the gradients of each micro-batch's loss, as the Trainer computes it (loss x `loss_scale`: the
    world size under average_tokens_across_devices)."""
    model.zero_grad()
    for batch in batches:
        (model(**batch, num_items_in_batch=num_items).loss * loss_scale).backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()


def test_ctc_gradient_is_the_same_for_1_or_2_ranks_and_1_or_2_accumulation_steps(tok):
    torch.manual_seed(0)
    model = VitaForCausalLM(tiny_config(tok, ctc_vocab_size=257)).eval()  # eval: no dropout, same graph each time
    collate = MultimodalCollator(tok.pad_token_id, ctc=True)
    samples = ctc_samples(4)
    full = collate(samples)
    # the Trainer's count over the window: labels != -100 in every micro-batch (and on every rank), after the
    # causal shift or not (Trainer._get_num_items_in_batch)
    num_items = int((full["labels"][..., 1:] != -100).sum())
    assert num_items == int((full["labels"] != -100).sum()) == len(samples)
    reference = grads_of(model, [full], num_items)
    accumulated = grads_of(model, [collate(samples[:2]), collate(samples[2:])], num_items)
    torch.testing.assert_close(accumulated, reference, rtol=1e-5, atol=1e-7)
    # two ranks: each sees half, the Trainer scales each loss by the world size, DDP averages the gradients
    ranks = [grads_of(model, [collate(half)], num_items, loss_scale=2.0) for half in (samples[:2], samples[2:])]
    torch.testing.assert_close((ranks[0] + ranks[1]) / 2, reference, rtol=1e-5, atol=1e-7)
    # and the loss itself is the per-byte CTC loss averaged over samples, whatever the split
    mean = model(**full).loss
    torch.testing.assert_close(model(**full, num_items_in_batch=num_items).loss, mean)
