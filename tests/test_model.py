import pytest
import torch

from tests.conftest import conv
from vita_trainer.data.collator import MultimodalCollator
from vita_trainer.data.processor import MediaSpec, SampleProcessor
from vita_trainer.data.registry import Registry
from vita_trainer.data.sample import parse_sample
from vita_trainer.model.builder import build_model, tiny_config, vita_1p5_config
from vita_trainer.model.projector import build_projector
from vita_trainer.model.splice import scatter_media
from vita_api.presets import get_preset, resolve_trainable
from vita_trainer.train.weights import apply_trainable


def mixed_batch(tok, cfg, media_dir):
    reg = Registry(image_folders={"s": str(media_dir)}, audio_root=str(media_dir), base_dir=str(media_dir))
    proc = SampleProcessor(tok, MediaSpec.from_config(cfg), reg, 1024)
    raws = [{"id": "img", "set": "s", "image": "red.png", "conversations": conv(("<image>\nWhat color?", "red"))},
            {"id": "aud", "audio": ["one.wav"], "conversations": conv(("<audio>\nWhat?", "a tone"))},
            {"id": "both", "set": "s", "image": "red.png", "audio": ["one.wav"],
             "conversations": conv(("<image><audio>\nq", "red tone"))},
            {"id": "txt", "conversations": conv(("hello", "world"))}]
    items = [proc(parse_sample(r, file="x", index=i), "x") for i, r in enumerate(raws)]
    return MultimodalCollator(tok.pad_token_id)(items)


def test_splice_layout_puts_each_embedding_in_its_slot():
    ids = torch.tensor([[5, 9, 9, 6, 7], [9, 8, 9, 0, 0]])
    embeds = torch.zeros(2, 5, 1)
    feats = torch.tensor([[1.0], [2.0], [3.0], [4.0]])
    out = scatter_media(embeds, ids, 9, feats, "image")
    assert out[..., 0].tolist() == [[0, 1, 2, 0, 0], [3, 0, 4, 0, 0]]
    with pytest.raises(Exception, match="4 image token slots in the batch but the image encoder produced 3"):
        scatter_media(embeds, ids, 9, feats[:3], "image")
    # clips (B, T, D) with their real lengths: padding frames are skipped, in order
    clips = torch.tensor([[[1.0], [2.0], [3.0]], [[4.0], [5.0], [-1.0]]])
    ids = torch.tensor([[7, 3, 3, 3, 8], [3, 3, 0, 0, 0]])
    out = scatter_media(torch.zeros(2, 5, 1), ids, 3, clips, "audio", torch.tensor([3, 2]))
    assert out[..., 0].tolist() == [[0, 1, 2, 3, 0], [4, 5, 0, 0, 0]]
    with pytest.raises(Exception, match="5 audio token slots in the batch but the audio encoder produced 6"):
        scatter_media(torch.zeros(2, 5, 1), ids, 3, clips, "audio", torch.tensor([3, 3]))


def test_projector_types():
    assert build_projector("mlp2x_gelu", 8, 4)[2].in_features == 4
    assert len(build_projector("mlp3x_gelu", 8, 4)) == 5
    assert isinstance(build_projector("linear", 8, 4), torch.nn.Linear)
    with pytest.raises(Exception, match="unknown mm_projector_type"):
        build_projector("spp", 8, 4)


def test_internvit_tower_pixel_shuffle(tok):
    cfg = tiny_config(tok, vision="internvit", image_size=32, patch_size=8)
    m = build_model(cfg)
    feats = m.vision_tower(torch.zeros(2, 3, 32, 32))
    # 4x4 patches (CLS dropped) -> 0.5 pixel shuffle -> 2x2 tokens with 4x channels
    assert cfg.tokens_per_tile == 4 and feats.shape == (2, 4, 32 * 4)


def test_real_7b_layout_from_config():
    cfg = vita_1p5_config()
    assert cfg.tokens_per_tile == 256 and cfg.hidden_size == 3584
    from vita_trainer.model.modeling import VitaForCausalLM
    m = VitaForCausalLM.empty(cfg)
    assert m.mm_projector[0].in_features == 4096 and m.mm_projector[0].out_features == 3584
    assert m.audio_adapter.conv.out_channels == 2048 and m.audio_adapter.proj.out_features == 3584
    n_audio = sum(p.numel() for p in m.audio_encoder.parameters())
    assert 300e6 < n_audio < 380e6  # ~340M whale encoder


@pytest.mark.parametrize("preset", ["vision_align", "audio_align", "multimodal_sft", "vision_sft"])
def test_gradients_reach_exactly_the_trained_modules(tok, tiny_cfg, media_dir, preset):
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    batch = mixed_batch(tok, tiny_cfg, media_dir)
    assert batch["pixel_values"].shape[0] == 2 and batch["audio_features"].shape[0] == 2
    groups = resolve_trainable(get_preset(preset))
    apply_trainable(model, groups)
    model(**batch).loss.backward()
    for g in ("llm", "vision_tower", "mm_projector", "audio_encoder", "audio_adapter"):
        grads = [p.grad for p in model.group_module(g).parameters()]
        got = any(gr is not None and gr.abs().sum() > 0 for gr in grads)
        assert got == (g in groups), (preset, g)


def test_text_only_batch_still_runs_every_encoder(tok, tiny_cfg):
    model = build_model(tiny_cfg)
    calls = []
    for name in ("vision_tower", "mm_projector", "audio_encoder", "audio_adapter"):
        getattr(model, name).register_forward_hook(lambda *a, n=name: calls.append(n))
    ids = torch.tensor([tok("hello world")["input_ids"]])
    model(input_ids=ids, labels=ids, attention_mask=torch.ones_like(ids)).loss.backward()
    assert sorted(calls) == ["audio_adapter", "audio_encoder", "mm_projector", "vision_tower"]
    # and they are in the autograd graph (zero-valued gradients, not None) as ZeRO-3 needs
    assert model.mm_projector[0].weight.grad is not None


def test_tiny_model_learns_a_mixed_batch(tok, tiny_cfg, media_dir):
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    batch = mixed_batch(tok, tiny_cfg, media_dir)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_gradient_checkpointing_gives_the_same_gradients(tok, tiny_cfg, media_dir):
    torch.manual_seed(0)
    model = build_model(tiny_cfg)
    batch = mixed_batch(tok, tiny_cfg, media_dir)
    model.train()
    model(**batch).loss.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.language_model.model.gradient_checkpointing
    model(**batch).loss.backward()
    for n, p in model.named_parameters():
        if n in ref:
            assert torch.allclose(ref[n], p.grad, atol=1e-5), n


def test_image_selftest_runs():
    from vita_trainer.selftest import main
    assert main() == 0


@pytest.mark.parametrize("vision", ["siglip", "internvit"])
def test_compose_from_pretrained_parts(tok, tmp_path, vision):
    from transformers import AutoModel, AutoModelForCausalLM

    from vita_trainer.model.builder import compose_model
    cfg = tiny_config(tok, vision=vision)
    llm = AutoModelForCausalLM.from_config(cfg.text_config)
    llm.save_pretrained(tmp_path / "llm")
    tower = AutoModel.from_config(cfg.vision_config)
    tower.save_pretrained(tmp_path / "vision")
    model, cmvn = compose_model(str(tmp_path / "llm"), str(tmp_path / "vision"), tok)
    assert cmvn is None
    for k, v in llm.state_dict().items():
        assert torch.equal(model.language_model.state_dict()[k], v), k
    for k, v in tower.state_dict().items():
        assert torch.equal(model.vision_tower.backbone.state_dict()[k], v), k
    assert model.config.downsample_ratio == (0.5 if vision == "internvit" else 1.0)
    ids = torch.tensor([tok("hello world")["input_ids"]])
    assert torch.isfinite(model(input_ids=ids, labels=ids).loss)


def test_per_module_learning_rates(tok, tiny_cfg, tmp_path):
    from transformers import TrainingArguments

    from vita_trainer.train.trainer import VitaTrainer
    model = build_model(tiny_cfg)
    apply_trainable(model, frozenset({"llm", "vision_tower", "mm_projector"}))
    args = TrainingArguments(output_dir=str(tmp_path), use_cpu=True, report_to="none", learning_rate=1e-5,
                             weight_decay=0.1)
    trainer = VitaTrainer(model=model, args=args, module_lr={"vision_tower": 2e-6})
    opt = trainer.create_optimizer()
    by_lr = {}
    for group in opt.param_groups:
        by_lr.setdefault(group["lr"], set()).update(id(p) for p in group["params"])
    vision = {id(p) for p in model.vision_tower.parameters()}
    assert by_lr[2e-6] == vision
    assert by_lr[1e-5] == {id(p) for p in model.parameters() if p.requires_grad} - vision
    assert any(g["weight_decay"] == 0.0 for g in opt.param_groups)  # biases and norms


def test_each_vision_family_is_one_registry_entry(tok):
    """InternViT and SigLIP: the block ZeRO-3/FSDP keep whole is a module of the built model, CLS is dropped only
    where the tower has one, and the tile's token count follows the family's pixel shuffle."""
    import torch

    from vita_api.errors import ConfigError
    from vita_trainer.model.builder import build_model, tiny_config
    from vita_trainer.model.vision_families import FAMILIES, family_of
    for family in FAMILIES:
        cfg = tiny_config(tok, vision=family.name)
        model = build_model(cfg)
        classes = {type(m).__name__ for m in model.modules()}
        assert family.layer_class in classes and family.layer_class in model._no_split_modules
        assert not {f.layer_class for f in FAMILIES if f is not family} & set(model._no_split_modules)
        pixels = torch.zeros(2, 3, cfg.tile_size, cfg.tile_size)
        raw = model.vision_tower.backbone(pixel_values=pixels).last_hidden_state
        out = model.vision_tower(pixels)
        assert raw.shape[1] == (cfg.tile_size // 8) ** 2 + (1 if family.has_cls else 0)
        assert out.shape[1] == cfg.tokens_per_tile
    with pytest.raises(ConfigError, match="vision_families.py"):
        family_of("clip_vision_model")
