"""Sequence packing: the packed loss equals the unpacked loss on the same samples (fp32)."""

import pytest
import torch
from transformers import AttentionInterface

from tests.conftest import conv
from vita_trainer.data.collator import MultimodalCollator, PackedCollator, pack_rows, varlen_boundaries
from vita_trainer.data.processor import MediaSpec, SampleProcessor
from vita_trainer.data.registry import Registry
from vita_trainer.data.sample import parse_sample
from vita_trainer.model import varlen_reference
from vita_trainer.model.builder import build_model


def test_pack_rows_is_balanced_within_the_limit():
    lengths = [5, 3, 4, 2, 6, 1]
    rows = pack_rows(lengths, 8)
    assert sorted(i for r in rows for i in r) == list(range(6)) and all(r == sorted(r) for r in rows)
    assert len(rows) == 3 and [sum(lengths[i] for i in r) for r in rows] == [7, 7, 7]
    assert pack_rows([9], 8) == [[0]]  # a sample longer than the row still gets a row of its own


def samples(tok, cfg, media_dir):
    reg = Registry(image_folders={"s": str(media_dir)}, audio_root=str(media_dir), base_dir=str(media_dir))
    proc = SampleProcessor(tok, MediaSpec.from_config(cfg), reg, 1024, system_prompt="S")
    raws = [{"id": "img", "set": "s", "image": "red.png", "conversations": conv(("<image>\nWhat color?", "red"))},
            {"id": "aud", "audio": ["one.wav"], "conversations": conv(("<audio>\nWhat?", "a tone"))},
            {"id": "txt", "conversations": conv(("hello", "world"), ("again", "more words here"))},
            {"id": "both", "set": "s", "image": "red.png", "audio": ["one.wav"],
             "conversations": conv(("<image><audio>\nq", "red tone"))},
            {"id": "txt2", "conversations": conv(("hi", "there"))}]
    return [proc(parse_sample(r, file="x", index=i), "x") for i, r in enumerate(raws)]


def model_and_batches(tok, cfg, media_dir):
    """A tiny fp32 model, the samples, and their padded and packed batches (rows of longest + 40 tokens)."""
    torch.manual_seed(0)
    model = build_model(cfg).float().eval()
    items = samples(tok, cfg, media_dir)
    longest = max(len(s["input_ids"]) for s in items)
    return (model, items, MultimodalCollator(tok.pad_token_id)(items),
            PackedCollator(tok.pad_token_id, max_length=longest + 40)(items), longest + 40)


def test_packed_loss_equals_unpacked_loss(tok, tiny_cfg, media_dir):
    model, items, unpacked, packed, width = model_and_batches(tok, tiny_cfg, media_dir)
    assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]  # really packed
    assert int((packed["labels"] != -100).sum()) == int((unpacked["labels"] != -100).sum())  # every target, once
    with torch.no_grad():
        a = model(**unpacked).loss
        b = model(**packed).loss
    assert torch.isclose(a, b, atol=1e-4, rtol=0), (a.item(), b.item())
    # attention really stays inside each sample: changing one sample leaves the others' logits alone
    with torch.no_grad():
        logits = model(**packed).logits
        packed2 = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in packed.items()}
        rows = pack_rows([len(s["input_ids"]) for s in items], width)
        r = next(k for k, row in enumerate(rows) if len(row) > 1)  # a row holding several samples
        first_len = len(items[rows[r][0]]["input_ids"])
        row = packed2["input_ids"][r, :first_len - 1]
        text = (row != tiny_cfg.image_token_id) & (row != tiny_cfg.audio_token_id)
        row[text] = tok.pad_token_id  # scramble the text of that row's first sample, keep its media slots
        logits2 = model(**packed2).logits
    assert torch.allclose(logits[r, first_len:], logits2[r, first_len:], atol=1e-5)
    assert not torch.allclose(logits[r, :first_len], logits2[r, :first_len], atol=1e-5)


def test_varlen_boundaries_cover_every_sample_and_padding_tail():
    b = varlen_boundaries([[3, 2], [4]], width=6)
    assert b["cu_seq_lens_q"].tolist() == [0, 3, 5, 6, 10, 12] and b["cu_seq_lens_q"].dtype == torch.int32
    assert b["cu_seq_lens_k"].tolist() == b["cu_seq_lens_q"].tolist()
    assert b["max_length_q"] == b["max_length_k"] == 4
    assert varlen_boundaries([[2, 4]], width=6)["cu_seq_lens_q"].tolist() == [0, 2, 6]  # a full row: no tail


@pytest.fixture
def varlen_attention():
    """The plain-torch flash-attention reference (model/varlen_reference.py), recording the boundaries each call
    received."""
    calls = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        cu = kwargs.get("cu_seq_lens_q")
        calls.append(None if cu is None else (cu.tolist(), kwargs.get("max_length_q")))
        return varlen_reference.varlen_attention(module, query, key, value, attention_mask, **kwargs)

    varlen_reference.register(recording)
    yield calls
    del AttentionInterface._global_mapping[varlen_reference.NAME]


def test_packed_rows_stay_apart_under_flash_attention(tok, tiny_cfg, media_dir, varlen_attention):
    """Two or more packed rows under a flash-attention backend: the boundaries reach every attention call and the
    loss equals the unpacked loss; without them (the old collator) samples in a row attend to each other."""
    model, items, unpacked, packed, width = model_and_batches(tok, tiny_cfg, media_dir)
    rows = pack_rows([len(s["input_ids"]) for s in items], width)
    assert len(rows) >= 2 and any(len(r) > 1 for r in rows)
    with torch.no_grad():
        reference = model(**unpacked).loss  # SDPA, padded rows
        model.language_model.config._attn_implementation = varlen_reference.NAME
        exact = model(**packed).loss
        leaky = model(**{k: v for k, v in packed.items() if not k.startswith(("cu_seq_lens", "max_length"))}).loss
    width = packed["input_ids"].shape[1]
    expected = varlen_boundaries([[len(items[i]["input_ids"]) for i in row] for row in rows], width)
    layers = tiny_cfg.text_config.num_hidden_layers
    assert varlen_attention[:layers] == [(expected["cu_seq_lens_q"].tolist(), expected["max_length_q"])] * layers
    assert torch.isclose(exact, reference, atol=1e-4, rtol=0), (exact.item(), reference.item())
    assert not torch.isclose(leaky, reference, atol=1e-3, rtol=0)


def test_sdpa_gets_no_varlen_arguments(tok, tiny_cfg, media_dir, monkeypatch):
    """SDPA keeps its block-diagonal mask from the position ids; the varlen arguments are not passed to it."""
    seen = []
    real = AttentionInterface._global_mapping["sdpa"]

    def recording(*args, **kwargs):
        seen.append(sorted(k for k in kwargs if k.startswith(("cu_seq_lens", "max_length"))))
        return real(*args, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, "sdpa", recording)
    model = build_model(tiny_cfg).float().eval()
    assert model.language_model.config._attn_implementation == "sdpa"
    packed = PackedCollator(tok.pad_token_id, max_length=4096)(samples(tok, tiny_cfg, media_dir))
    with torch.no_grad():
        model(**packed)
    assert seen and all(s == [] for s in seen)


def _loss_and_grads(model, batch):
    model.zero_grad()
    loss = model(**batch).loss
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_varlen_backend_packed_equals_unpacked_in_loss_and_gradients(tok, tiny_cfg, media_dir, monkeypatch):
    """The varlen backend (model/varlen_attention.py), which never builds a mask: packed rows and padded rows give
    SDPA's padded loss and the same gradients, and each attention call gets the collator's boundaries."""
    from vita_trainer.model import varlen_attention
    calls = []

    def recording(module, query, key, value, attention_mask, **kwargs):
        calls.append((attention_mask, kwargs["cu_seq_lens_q"].tolist()))
        return varlen_attention.varlen_attention(module, query, key, value, attention_mask, **kwargs)

    monkeypatch.setitem(AttentionInterface._global_mapping, varlen_attention.NAME, recording)
    model, items, unpacked, packed, _ = model_and_batches(tok, tiny_cfg, media_dir)
    model.train()  # gradients; the tiny model has no dropout
    reference, reference_grads = _loss_and_grads(model, unpacked)  # SDPA, padded rows
    model.language_model.config._attn_implementation = varlen_attention.NAME
    layers = tiny_cfg.text_config.num_hidden_layers
    for batch in (packed, unpacked):
        calls.clear()
        loss, grads = _loss_and_grads(model, batch)
        assert torch.isclose(loss, reference, atol=1e-5, rtol=0), (loss.item(), reference.item())
        assert grads.keys() == reference_grads.keys()
        for name, grad in grads.items():
            assert torch.allclose(grad, reference_grads[name], atol=1e-5, rtol=1e-4), name
        assert [c[1] for c in calls] == [batch["cu_seq_lens_q"].tolist()] * layers and all(
            c[0] is None for c in calls)  # no mask at all
    # padded rows: each row's tokens, then its padding, are the segments
    width = unpacked["input_ids"].shape[1]
    lengths = [len(s["input_ids"]) for s in items]
    expected = varlen_boundaries([[n] for n in lengths], width)["cu_seq_lens_q"]
    assert unpacked["cu_seq_lens_q"].tolist() == expected.tolist()


def test_varlen_backend_refuses_calls_without_boundaries(tok, tiny_cfg):
    from vita_api.errors import ConfigError
    from vita_trainer.model import varlen_attention
    model = build_model(tiny_cfg).float().eval()
    model.language_model.config._attn_implementation = varlen_attention.NAME
    ids = torch.tensor([[tok.pad_token_id + 1] * 4])
    with pytest.raises(ConfigError, match="cu_seq_lens_q.*sdpa or flash_attention_2"), torch.no_grad():
        model.language_model(input_ids=ids)


def test_training_attention_choice_and_what_is_saved(tok, tiny_cfg, tmp_path):
    from vita_trainer.model.builder import training_attention
    from vita_trainer.model.varlen_attention import NAME
    from vita_trainer.train.main import use_attention
    assert training_attention("auto", cuda=False) == "sdpa"  # no flash-attn in the test environment
    assert training_attention("auto", cuda=True) == NAME
    assert training_attention("varlen", cuda=False) == NAME and training_attention("eager", cuda=True) == "eager"
    with pytest.raises(ValueError, match="choose one of auto, sdpa"):
        training_attention("flex", cuda=True)
    model = build_model(tiny_cfg)
    use_attention(model, "varlen")
    assert model.language_model.config._attn_implementation == NAME
    assert model.language_model.model.layers[0].self_attn.config._attn_implementation == NAME
    model.save_pretrained(tmp_path)  # a saved model loads with the default backend, not the training one
    assert NAME not in (tmp_path / "config.json").read_text()


def test_selective_activation_checkpointing_keeps_the_gradients(tok, tiny_cfg, media_dir):
    """--activation_checkpointing every_other / N layers: the chosen decoder layers recompute in the backward pass,
    the gradients equal those without checkpointing (fp32)."""
    from vita_trainer.model.checkpointing import checkpointed, parse_policy
    assert checkpointed("every_other", 4) == [True, False, True, False]
    assert checkpointed(3, 4) == [True, True, True, False] and checkpointed("none", 2) == [False, False]
    assert parse_policy("true") == "all" and parse_policy("False") == "none" and parse_policy("7") == 7
    assert parse_policy("1") == 1 and parse_policy("0") == "none"  # counts, as new-run writes them
    from vita_trainer.model.builder import tiny_config
    cfg = tiny_config(tok, layers=4)
    torch.manual_seed(0)
    model = build_model(cfg).float().train()
    batch = PackedCollator(tok.pad_token_id, max_length=4096)(samples(tok, cfg, media_dir))
    plain_loss, plain = _loss_and_grads(model, batch)
    layers = model.language_model.model.layers
    recomputed = []
    for policy, expect in (("every_other", [True, False, True, False]), (1, [True, False, False, False]),
                           ("all", [True] * 4)):
        model.checkpoint_policy = policy
        model.activation_checkpointing_enable()
        assert [layer.gradient_checkpointing for layer in layers] == expect
        forward_calls: list[int] = []
        hooks = [layer.input_layernorm.register_forward_pre_hook(lambda m, i, k=k, seen=forward_calls: seen.append(k))
                 for k, layer in enumerate(layers)]
        loss, grads = _loss_and_grads(model, batch)
        for h in hooks:
            h.remove()
        recomputed.append(sorted(k for k in set(forward_calls) if forward_calls.count(k) == 2))
        assert torch.isclose(loss, plain_loss, atol=1e-6, rtol=0)
        for name, grad in plain.items():
            assert torch.allclose(grads[name], grad, atol=1e-6, rtol=1e-5), (policy, name)
        model.activation_checkpointing_disable()
    assert recomputed == [[0, 2], [0], [0, 1, 2, 3]]  # the backward pass really ran those layers again
