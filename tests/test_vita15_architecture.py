"""The VITA-1.5 architecture, numerically: the whale encoder and adapter against the reference's own outputs
(tests/fixtures/whale_golden, made by running the reference code), the vision feature scale, the 7B layout."""

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from vita_trainer.data.audio import GlobalCMVN
from vita_trainer.model.audio_encoder import AudioAdapter, WhaleEncoder, chunk_mask
from vita_trainer.model.vita15_keys import WHALE_CMVN_KEYS, WHALE_RULES, convert

GOLDEN = Path(__file__).parent / "fixtures" / "whale_golden"
ATOL = 1e-5  # the golden's README: a faithful float32 re-implementation matches to about 1e-5


@pytest.fixture(scope="module")
def golden():
    torch.set_num_threads(1)
    state = load_file(GOLDEN / "state_dict.safetensors")
    cmvn_buffers = {k: state.pop(k) for k in WHALE_CMVN_KEYS}
    mapped, unmatched = convert(state, WHALE_RULES, "proj")
    assert unmatched == []
    enc, ada = WhaleEncoder(80, 64, 2, 4, 256, dropout=0.1).eval(), AudioAdapter(64, 96, stride=2, kernel=5).eval()
    for module, prefix in ((enc, "audio_encoder."), (ada, "audio_adapter.")):
        module.load_state_dict({k.removeprefix(prefix): v for k, v in mapped.items() if k.startswith(prefix)},
                               strict=True)
    return enc, ada, load_file(GOLDEN / "io.safetensors"), cmvn_buffers


def _valid(out, ref, lengths):
    return max((out[b, :n] - ref[b, :n]).abs().max().item() for b, n in enumerate(lengths.tolist()))


def test_whale_golden_every_intermediate_and_output(golden):
    enc, ada, io, buffers = golden
    cmvn = GlobalCMVN.load(GOLDEN / "global_cmvn")  # WeNet JSON stats -> the same buffers the reference made
    assert torch.equal(cmvn.mean, buffers["encoder.global_cmvn.mean"])
    assert torch.equal(cmvn.istd, buffers["encoder.global_cmvn.istd"])
    feats = cmvn(io["input_fbank"])
    assert (feats - io["cmvn_applied_input"]).abs().max() < 1e-5
    seen = {}
    hooks = [enc.subsample.register_forward_hook(lambda m, a, o: seen.setdefault("subsampling_out", o)),
             enc.embed.register_forward_hook(lambda m, a, o: seen.setdefault("embed_out", o))]
    hooks += [b.register_forward_hook(lambda m, a, o, i=i: seen.setdefault(f"block{i}_out", o))
              for i, b in enumerate(enc.blocks)]
    with torch.no_grad():
        hidden, lens = enc(feats, io["input_lengths"])
        adapted, ad_lens = ada(hidden.clone(), lens)
    for h in hooks:
        h.remove()
    assert lens.tolist() == io["encoder_lengths"].tolist() == [50, 36, 16]
    assert ad_lens.tolist() == io["adapter_lengths"].tolist() == [25, 18, 8]
    for name in ("subsampling_out", "embed_out", "block0_out", "block1_out"):
        # the residual stream before after_norm grows to |x| ~ 30 (x * sqrt(d)): 1e-5 relative to its scale
        scale = max(1.0, io[name].abs().max().item())
        assert _valid(seen[name], io[name], lens) < ATOL * scale, name
    assert _valid(hidden, io["encoder_out"], lens) < ATOL
    assert _valid(adapted, io["adapter_out"], ad_lens) < ATOL


def test_adapter_matches_the_reference_formula_on_a_padded_batch():
    """Zero the padded frames, right-pad kernel-1, Conv1d stride 2, LayerNorm eps 1e-3, GELU, Linear: written out
    by hand here; a short clip's last output sees its own last frames and zeros, never the padding's values."""
    torch.manual_seed(0)
    ada = AudioAdapter(8, 6, stride=2, kernel=5).eval()
    x, lengths = torch.randn(2, 11, 8), torch.tensor([11, 7])
    with torch.no_grad():
        out, out_len = ada(x, lengths)
        for b, n in enumerate(lengths.tolist()):
            clip = torch.cat([x[b, :n], torch.zeros(4, 8)])  # valid frames, then the right padding
            assert out_len[b] == math.ceil(n / 2)
            for t in range(math.ceil(n / 2)):
                window = clip[2 * t:2 * t + 5].T                    # frames 2t .. 2t+4
                conv = (ada.conv.weight * window).sum((1, 2)) + ada.conv.bias
                ref = ada.proj(F.gelu(F.layer_norm(conv, (16,), ada.norm.weight, ada.norm.bias, 1e-3)))
                assert torch.allclose(out[b, t], ref, atol=1e-5), (b, t)
    assert ada.norm.eps == 1e-3


def test_chunk_masks_are_an_option_and_off_by_default():
    enc = WhaleEncoder(80, 16, 1, 2, 32, dropout=0.0)
    full = enc.attention_mask(torch.tensor([12]), 12)
    assert full.shape == (1, 1, 1, 12) and full.all()
    enc.chunk_size, enc.left_chunks = 4, 1
    m = enc.attention_mask(torch.tensor([12]), 12)[0, 0]
    assert m[0].tolist() == [True] * 4 + [False] * 8          # chunk 0 sees itself only
    assert m[11].tolist() == [False] * 4 + [True] * 8         # chunk 2 sees chunk 1 and itself
    assert torch.equal(chunk_mask(6, 2, -1), torch.tensor([[j // 2 <= i // 2 for j in range(6)] for i in range(6)]))
    enc.chunk_size, enc.dynamic_chunks = -1, True
    assert enc.eval().attention_mask(torch.tensor([12]), 12).all()  # never drawn in eval, unlike the reference


def test_dynamic_chunks_draw_sizes_and_left_chunks_as_wenet():
    """WeNet's add_optional_chunk_mask with dynamic chunks and dynamic left chunks (what the reference's whale
    transformer calls): a draw in [1, t); above t // 2 full attention, else size % 25 + 1 frames and a number of
    left chunks in [0, (t - 1) // size)."""
    from vita_trainer.model.audio_encoder import draw_chunking
    g = torch.Generator().manual_seed(0)
    draws = [draw_chunking(100, generator=g) for _ in range(2000)]
    full = [d for d in draws if d == (100, -1)]
    chunked = [d for d in draws if d != (100, -1)]
    assert 0.42 < len(full) / len(draws) < 0.57  # 49 of the 99 values above 50
    assert all(1 <= size <= 25 and 0 <= left < 99 // size for size, left in chunked)
    assert len({left for _, left in chunked}) > 10  # the left chunks are drawn, not fixed
    enc = WhaleEncoder(80, 16, 1, 2, 32, dropout=0.0, dynamic_chunks=True).train()
    torch.manual_seed(1)
    masks = [enc.attention_mask(torch.tensor([40]), 40) for _ in range(20)]
    assert any(m.shape[-2] == 40 and not m.all() for m in masks)  # chunked masks in train mode


def test_vision_features_are_scaled_by_half_before_the_shuffle(tok):
    from vita_trainer.model.builder import build_model, tiny_config
    from vita_trainer.model.vision import pixel_shuffle
    cfg = tiny_config(tok, vision="internvit", image_size=32, patch_size=8)
    assert cfg.vision_feature_scale == 0.5 and cfg.vision_config.attention_bias
    tower = build_model(cfg).vision_tower.eval()
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        raw = tower.backbone(pixel_values=pixels).last_hidden_state[:, 1:]
        expected = pixel_shuffle(0.5 * raw.reshape(2, 4, 4, -1), 0.5).reshape(2, 4, -1)
        assert torch.equal(tower(pixels), expected)
    assert tower.backbone.encoder.layer[0].attention.q_proj.bias is not None


def test_vita15_7b_layout_matches_the_released_shapes():
    from vita_trainer.model.builder import vita_1p5_config
    from vita_trainer.model.modeling import VitaForCausalLM
    m = VitaForCausalLM.empty(vita_1p5_config())
    assert m.get_input_embeddings().weight.shape == (152064, 3584)
    n_whale = sum(p.numel() for p in m.audio_encoder.parameters())
    n_adapter = sum(p.numel() for p in m.audio_adapter.parameters())
    n_vision = sum(p.numel() for p in m.vision_tower.parameters())
    # The reference's parameter counts (weights_layout.md §1(a)).
    assert (n_whale, n_adapter, n_vision) == (357_950_464, 17_835_520, 304_012_288)
