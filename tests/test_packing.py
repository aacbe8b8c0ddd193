"""Sequence packing: the packed loss equals the unpacked loss on the same samples (fp32)."""

import torch

from tests.conftest import conv
from vita_trainer.data.collator import MultimodalCollator, PackedCollator, pack_rows
from vita_trainer.data.processor import MediaSpec, SampleProcessor
from vita_trainer.data.registry import Registry
from vita_trainer.data.sample import parse_sample
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


def test_packed_loss_equals_unpacked_loss(tok, tiny_cfg, media_dir):
    torch.manual_seed(0)
    model = build_model(tiny_cfg).float().eval()
    items = samples(tok, tiny_cfg, media_dir)
    unpacked = MultimodalCollator(tok.pad_token_id)(items)
    longest = max(len(s["input_ids"]) for s in items)
    packed = PackedCollator(tok.pad_token_id, max_length=longest + 40)(items)
    assert packed["input_ids"].shape[0] < unpacked["input_ids"].shape[0]  # really packed
    assert packed["num_tokens"] == unpacked["num_tokens"] == sum(len(s["input_ids"]) for s in items)
    for b in (unpacked, packed):
        b.pop("num_tokens")
    with torch.no_grad():
        a = model(**unpacked).loss
        b = model(**packed).loss
    assert torch.isclose(a, b, atol=1e-4, rtol=0), (a.item(), b.item())
    # attention really stays inside each sample: changing one sample leaves the others' logits alone
    with torch.no_grad():
        logits = model(**packed).logits
        packed2 = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in packed.items()}
        rows = pack_rows([len(s["input_ids"]) for s in items], longest + 40)
        r = next(k for k, row in enumerate(rows) if len(row) > 1)  # a row holding several samples
        first_len = len(items[rows[r][0]]["input_ids"])
        row = packed2["input_ids"][r, :first_len - 1]
        text = (row != tiny_cfg.image_token_id) & (row != tiny_cfg.audio_token_id)
        row[text] = tok.pad_token_id  # scramble the text of that row's first sample, keep its media slots
        logits2 = model(**packed2).logits
    assert torch.allclose(logits[r, first_len:], logits2[r, first_len:], atol=1e-5)
    assert not torch.allclose(logits[r, :first_len], logits2[r, :first_len], atol=1e-5)
