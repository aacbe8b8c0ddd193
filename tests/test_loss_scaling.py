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


def test_the_chunked_lm_loss_equals_the_plain_one_in_value_and_gradient(tok):
    """The training path without full logits (several chunks here) against HF's plain loss, with and without the
    Trainer's num_items_in_batch, on padded rows with masked prompts."""
    import vita_trainer.model.chunked_loss as chunked
    torch.manual_seed(0)
    model = VitaForCausalLM(tiny_config(tok)).eval()
    ids = torch.randint(10, 200, (3, 17))
    labels = ids.clone()
    labels[:, :5] = -100          # prompts
    labels[2, 12:] = -100         # a shorter row's padding
    mask = torch.ones_like(ids)
    mask[2, 12:] = 0
    params = [p for p in model.parameters()]
    for num_items in (None, 40):
        model.chunked_loss = False
        plain = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=num_items).loss
        plain_grads = torch.autograd.grad(plain, params, allow_unused=True)
        model.train()
        model.chunked_loss = True
        chunked.CHUNK_TOKENS, saved = 7, chunked.CHUNK_TOKENS  # several chunks for 3 short rows
        try:
            out = model(input_ids=ids, attention_mask=mask, labels=labels, num_items_in_batch=num_items)
        finally:
            chunked.CHUNK_TOKENS = saved
            model.eval()
        assert out.logits is None
        torch.testing.assert_close(out.loss, plain, rtol=1e-5, atol=1e-6)
        for a, b in zip(torch.autograd.grad(out.loss, params, allow_unused=True), plain_grads):
            if b is None:
                assert a is None or not a.any()
            else:
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
