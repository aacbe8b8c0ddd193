"""Importing VITA-1.5's released artifacts and exporting back, on tiny folders in the released format.

The folders are written from `fixtures/vita15_weights_layout.json` (every key name of the released artifacts),
with each large dimension replaced by a small one, so the names are the real ones and only the sizes differ.
"""

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from huggingface_hub import save_torch_state_dict
from safetensors.torch import load_file

from vita_api.errors import ConfigError
from vita_trainer.model.vita15 import import_vita15, read_weights

LAYOUT = json.loads((Path(__file__).parent / "fixtures" / "vita15_weights_layout.json").read_text())
GOLDEN_YAML = json.loads((Path(__file__).parent / "fixtures" / "whale_golden" / "config.json").read_text())
# released size -> tiny size (LLM hidden 16 with 2 heads of 8 and 1 KV head; towers 8 wide, 2 heads; 28 px tiles)
SMALL = {3584: 16, 512: 8, 18944: 32, 1024: 8, 4096: 32, 3072: 24, 19456: 8 * 19, 2048: 16, 1025: 5, 16: 2, 64: 4}
KEEP = {1, 3, 5, 14, 80}
VOCAB = 152064


def _shape(shape, vocab):
    return [vocab if d == VOCAB else SMALL.get(d, d) for d in shape]


def _tensors(keys: dict, vocab: int, gen) -> dict:
    return {k: torch.randn(_shape(s, vocab), generator=gen) for k, s in keys.items()}


def write_tiny_llm(folder: Path, tok) -> Path:
    """A tiny Qwen2 causal LM folder (weights and tokenizer), the width the released tree's adapters project to:
    the stand-in for the guide's Qwen2.5-7B-Instruct download."""
    from transformers import AutoConfig, AutoModelForCausalLM
    AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "qwen2", vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_released_tree(root: Path, tok) -> dict:
    """A tiny released VITA-1.5 tree: checkpoint (sharded), InternViT folder, whale folder, adapter-only files."""
    gen = torch.Generator().manual_seed(0)
    vocab = len(tok) + 3  # like 152064 vs the tokenizer's 151665: spare embedding rows
    vision, whale, ckpt = root / "InternViT-300M-448px", root / "audio-encoder", root / "VITA-1.5"
    for d in (vision, whale, ckpt):
        d.mkdir(parents=True)
    (vision / "config.json").write_text(json.dumps({
        "model_type": "intern_vit_6b", "architectures": ["InternVisionModel"], "hidden_size": 8,
        "num_hidden_layers": 24, "num_attention_heads": 2, "intermediate_size": 32, "image_size": 28,
        "patch_size": 14, "qkv_bias": True, "qk_normalization": False, "layer_norm_eps": 1e-6,
        "norm_type": "layer_norm", "hidden_act": "gelu", "drop_path_rate": 0.1}))
    save_torch_state_dict(_tensors(LAYOUT["c_internvit_300m_448px_hf"], vocab, gen), vision)
    train = json.loads(json.dumps(GOLDEN_YAML["train_yaml_equivalent"]))  # the reference's own dict, resized
    t = train["encoder_conf"]["para_conf"]["transformer"]
    t.update({"transformer-input-dim": 8, "transformer-output-dim": 8, "transformer-attention-dim": 8,
              "transformer-attention-heads": 2, "transformer-linear-units": 32, "transformer-num-blocks": 24})
    train["encoder_conf"]["para_conf"]["subsampling"]["subsampling-output-dim"] = 8
    train["encoder_conf"]["overview_conf"]["encoder-output-dim"] = 8
    train["model_conf"].update(enc_out_dim=8, llm_embed_dim=16)
    (whale / "train.yaml").write_text(yaml.safe_dump(train))
    golden = Path(__file__).parent / "fixtures" / "whale_golden"
    (whale / "global_cmvn").write_text((golden / "global_cmvn").read_text())
    final = _tensors(LAYOUT["b_whale_final_pt"], vocab, gen)
    torch.save(final, whale / "final.pt")
    state = _tensors(LAYOUT["a_vita15_full_checkpoint"], vocab, gen)
    save_torch_state_dict(state, ckpt, max_shard_size="200KB")  # several shards and an index, as released
    (ckpt / "config.json").write_text(json.dumps({
        "model_type": "vita-Qwen2", "architectures": ["VITAQwen2ForCausalLM"], "vocab_size": vocab,
        "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
        "num_key_value_heads": 1, "max_position_embeddings": 4096, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False, "torch_dtype": "float32", "mm_vision_tower": str(vision),
        "mm_audio_encoder": str(whale), "mm_projector_type": "mlp2x_gelu", "mm_hidden_size": 32,
        "use_mm_proj": True, "freeze_audio_encoder": True, "tune_mm_mlp_adapter": False,
        "image_aspect_ratio": "square"}))
    tok.save_pretrained(ckpt)
    adapters = {}
    for name in ("d_mm_projector_bin", "d_audio_adpter_bin"):
        file = name.removeprefix("d_").replace("_bin", ".bin")
        adapters[file] = root / file
        torch.save(_tensors(LAYOUT[name], vocab, gen), adapters[file])
    return {"ckpt": ckpt, "vision": vision, "whale": whale, "state": state, "final": final, **adapters}


@pytest.fixture(scope="module")
def released(tmp_path_factory, tok):
    return write_released_tree(tmp_path_factory.mktemp("released"), tok)


@pytest.fixture(scope="module")
def imported(released, tmp_path_factory):
    return import_vita15(released["ckpt"], tmp_path_factory.mktemp("imported") / "model")


def test_the_small_sizes_cover_every_released_dimension():
    dims = {d for name, keys in LAYOUT.items() if name != "_about" for shape in keys.values() for d in shape}
    assert dims <= set(SMALL) | KEEP | {VOCAB}


def test_every_released_key_imports_with_nothing_missing_or_unexpected(released, imported):
    """import_vita15 refuses any unmapped, missing or unexpected key; here it accepts the full released key set
    and the loaded model holds exactly the released numbers."""
    from vita_trainer.model.builder import load_model
    src = released["state"]
    model = load_model(str(imported))
    got = model.state_dict()
    assert torch.equal(got["language_model.model.embed_tokens.weight"], src["model.embed_tokens.weight"])
    assert torch.equal(got["language_model.lm_head.weight"], src["lm_head.weight"])
    assert torch.equal(got["mm_projector.2.bias"], src["model.mm_projector.2.bias"])
    # whale q/k/v: three reference Linears become our fused qkv, rows q | k | v
    q, k, v = (src[f"model.audio_encoder.encoder.enc.1.encoders.23.self_attn.linear_{p}.weight"] for p in "qkv")
    assert torch.equal(got["audio_encoder.blocks.23.qkv.weight"], torch.cat([q, k, v]))
    assert torch.equal(got["audio_encoder.embed.1.weight"], src["model.audio_encoder.encoder.enc.1.embed.1.weight"])
    assert torch.equal(got["audio_adapter.norm.bias"], src["model.audio_encoder.adpter.bn2.bias"])
    # CMVN buffers leave the state dict for global_cmvn.json (fp32 in this checkpoint, so taken as they are)
    cmvn = json.loads((imported / "global_cmvn.json").read_text())
    assert torch.equal(torch.tensor(cmvn["mean"]), src["model.audio_encoder.encoder.global_cmvn.mean"])
    assert model.get_input_embeddings().weight.shape[0] == src["model.embed_tokens.weight"].shape[0]
    assert model.config.chat_format == "vita15"  # fine-tuning keeps the prompt format it was trained with


def test_internvit_qkv_split_by_hand(released, imported):
    """OpenGVLab's fused qkv Linear equals transformers' q/k/v projections after the split."""
    from vita_trainer.model.builder import load_model
    src = released["state"]
    attn = load_model(str(imported)).vision_tower.backbone.encoder.layer[7].attention
    w, b = (src[f"model.vision_tower.vision_tower.encoder.layers.7.attn.qkv.{p}"] for p in ("weight", "bias"))
    assert torch.equal(attn.q_proj.weight, w[:8]) and torch.equal(attn.k_proj.weight, w[8:16])
    assert torch.equal(attn.v_proj.bias, b[16:])
    x = torch.randn(3, 8)
    with torch.no_grad():
        split = torch.cat([attn.q_proj(x), attn.k_proj(x), attn.v_proj(x)], dim=-1)
    assert torch.allclose(split, F.linear(x, w, b), atol=1e-6)


def test_export_then_import_is_bit_exact_both_ways(released, imported, tmp_path, capsys):
    from vita_trainer.tools.model_cli import main as model_cli
    assert model_cli(["export", str(imported), str(tmp_path / "exported"), "--format", "vita15"]) == 0
    out = tmp_path / "exported"
    again = read_weights(out)
    # the released layout, key for key and bit for bit (CMVN buffers included)
    assert set(again) == set(released["state"]) == set(LAYOUT["a_vita15_full_checkpoint"])
    for k, v in released["state"].items():
        assert torch.equal(again[k], v), k
    assert json.loads((out / "config.json").read_text())["model_type"] == "vita-Qwen2"
    whale = torch.load(out / "audio-encoder" / "final.pt", weights_only=True)
    assert set(whale) == set(LAYOUT["b_whale_final_pt"])
    vision = load_file(out / "InternViT-300M-448px" / "model.safetensors")
    assert set(vision) == set(LAYOUT["c_internvit_300m_448px_hf"])
    for k, val in vision.items():
        assert torch.equal(released["state"]["model.vision_tower.vision_tower." + k], val), k
    assert model_cli(["import", str(out), str(tmp_path / "reimported")]) == 0
    back = tmp_path / "reimported"
    a, b = read_weights(imported), read_weights(back)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)


def test_the_tower_folders_compose_a_new_model(released, tok, tmp_path):
    """The guide's downloads: Qwen2.5 (here a tiny Qwen2), OpenGVLab's InternViT folder, the whale folder."""

    from vita_trainer.cli import main as cli
    write_tiny_llm(tmp_path / "llm", tok)
    assert cli(["init-model", str(tmp_path / "vita"), "--llm", str(tmp_path / "llm"), "--vision_tower",
                str(released["vision"]), "--audio_encoder", str(released["whale"])]) == 0
    from vita_trainer.model.builder import load_model
    model = load_model(str(tmp_path / "vita"))
    assert model.config.vision_feature_scale == 0.5 and model.config.vision_config.attention_bias
    state = model.state_dict()
    assert torch.equal(state["audio_encoder.blocks.5.pos_bias.u"],
                       released["final"]["encoder.enc.1.encoders.5.self_attn.pos_bias_u"])
    assert torch.equal(state["audio_adapter.proj.weight"], released["final"]["adpter.project.weight"])
    assert torch.equal(state["vision_tower.backbone.embeddings.cls_token"],
                       load_file(released["vision"] / "model.safetensors")["embeddings.class_embedding"])
    assert (tmp_path / "vita" / "global_cmvn.json").is_file()


def test_reference_adapter_files_load_as_init_weights(released, imported):
    from vita_trainer.model.builder import load_model
    from vita_trainer.train.weights import load_partial
    model = load_model(str(imported))
    assert load_partial(model, released["mm_projector.bin"]) == ["mm_projector"]
    assert load_partial(model, released["audio_adpter.bin"]) == ["audio_adapter"]
    ref = torch.load(released["audio_adpter.bin"], weights_only=True)
    assert torch.equal(model.audio_adapter.conv.weight, ref["model.audio_encoder.adpter.conv1d2.weight"])


def test_bad_released_folders_say_what_is_wrong(released, tmp_path):
    import shutil
    broken = tmp_path / "broken"
    shutil.copytree(released["ckpt"], broken)
    cfg = json.loads((broken / "config.json").read_text())
    with pytest.raises(ConfigError, match="--vision-tower"):
        (broken / "config.json").write_text(json.dumps({**cfg, "mm_vision_tower": "/nowhere/InternViT"}))
        import_vita15(broken, tmp_path / "o1")
    (broken / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConfigError, match="--vision-tower .*no config.json there"):  # a wrong folder is not skipped
        import_vita15(broken, tmp_path / "o1", vision_tower=str(tmp_path))
    index = json.loads((broken / "model.safetensors.index.json").read_text())
    dropped = next(k for k in index["weight_map"] if k.endswith("linear_pos.weight"))
    shard = broken / index["weight_map"][dropped]
    tensors = load_file(shard)
    tensors.pop(dropped)
    tensors["model.audio_encoder.encoder.enc.1.encoders.0.self_attn.rel_extra"] = torch.zeros(1)
    from safetensors.torch import save_file
    save_file(tensors, shard)
    with pytest.raises(ConfigError) as e:
        import_vita15(broken, tmp_path / "o2")
    layer = dropped.split(".encoders.")[1].split(".")[0]
    assert "1 key(s) no mapping rule knows" in str(e.value) and "self_attn.rel_extra" in str(e.value)
    assert f"audio_encoder.blocks.{layer}.pos_proj.weight" in str(e.value)  # listed as missing, never random


@pytest.mark.slow
def test_run_stage3_example_trains_from_a_released_vita15_folder(tmp_path, tok):
    """manifests/examples/run-stage3.yaml, with its three downloads replaced by tiny released-format folders at
    the same paths and the schedule shrunk for a CPU: plan -> trainer -> import once -> training steps."""
    from vita_trainer.demo.run import prepare
    from vita_trainer.data.tokenizer import load_tokenizer
    from vita_api.spec import VitaTrainingRun
    from vita_api.plan import PathRoots, stage_args
    from vita_api.plan import PREPARED_BASE_DIR
    from vita_trainer.train.main import main as train_main
    prepare(tmp_path / "demo", small=True)
    run = yaml.safe_load((Path(__file__).parents[1] / "manifests" / "examples" / "run-stage3.yaml").read_text())
    model = run["spec"]["model"]
    tree = write_released_tree(tmp_path / "tree", load_tokenizer(str(tmp_path / "demo" / "base_model")))
    for key, folder in (("base", tree["ckpt"]), ("visionTower", tree["vision"]), ("audioEncoder", tree["whale"])):
        (tmp_path / model[key]).parent.mkdir(parents=True, exist_ok=True)
        folder.rename(tmp_path / model[key])
    (tmp_path / "demo" / "base_model" / "global_cmvn.json").rename(tmp_path / "unused_cmvn.json")
    run["spec"]["trainer"]["deepspeed"] = "none"
    run["spec"]["data"]["registry"] = str(tmp_path / "demo" / "registry.yaml")
    stage = run["spec"]["stages"][0]
    stage["datasetUse"] = "demo_multimodal"
    stage["args"] = {"max_steps": 2, "per_device_train_batch_size": 2, "model_max_length": 512,
                     "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True}
    spec = VitaTrainingRun.model_validate(run).spec
    argv = stage_args(spec, 0, PathRoots(data=str(tmp_path), checkpoints=str(tmp_path)))
    assert argv[argv.index("--vision_tower") + 1] == str(tmp_path / model["visionTower"])
    # the recorded tower paths point elsewhere (where the tree was written): the spec's folders are used
    summary = train_main([*argv, "--metrics_port", "0", "--tokenizer_name_or_path", str(tmp_path / model["base"])])
    assert summary["global_step"] == 2 and summary["final_loss"] == summary["final_loss"]  # finite, not NaN
    imported = tmp_path / spec.output / PREPARED_BASE_DIR
    assert (imported / "config.json").is_file() and (imported / "global_cmvn.json").is_file()
    assert json.loads((imported / "config.json").read_text())["vision_feature_scale"] == 0.5


@pytest.mark.slow
def test_a_run_composes_its_base_from_the_guides_downloads(tmp_path):
    """model.base = a Hugging Face LLM, model.visionTower / audioEncoder = the tower folders: the first stage
    composes the VITA once (whale and InternViT weights loaded, projector new) and trains from it."""

    from vita_trainer.data.tokenizer import load_tokenizer
    from vita_trainer.demo.run import prepare
    from vita_api.spec import VitaTrainingRun
    from vita_api.plan import PathRoots, stage_args
    from vita_api.plan import PREPARED_BASE_DIR
    from vita_trainer.train.main import main as train_main
    prepare(tmp_path / "demo", small=True)
    tok = load_tokenizer(str(tmp_path / "demo" / "base_model"))
    tree = write_released_tree(tmp_path / "tree", tok)
    write_tiny_llm(tmp_path / "Qwen2.5-7B-Instruct", tok)
    run = {"apiVersion": "vita.training.dev/v1alpha1", "kind": "VitaTrainingRun", "metadata": {"name": "stage1"},
           "spec": {"model": {"base": "Qwen2.5-7B-Instruct", "visionTower": str(tree["vision"]),
                              "audioEncoder": str(tree["whale"]), "tokenizer": "Qwen2.5-7B-Instruct"},
                    "data": {"registry": str(tmp_path / "demo" / "registry.yaml")}, "output": "runs",
                    "trainer": {"deepspeed": "none"},
                    "stages": [{"name": "vision-align", "preset": "vision_align", "datasetUse": "demo_image",
                                "args": {"max_steps": 2, "per_device_train_batch_size": 2, "model_max_length": 512,
                                         "save_strategy": "no", "disable_tqdm": True}}]}}
    spec = VitaTrainingRun.model_validate(run).spec
    summary = train_main([*stage_args(spec, 0, PathRoots(str(tmp_path), str(tmp_path))), "--metrics_port", "0"])
    assert summary["global_step"] == 2 and summary["trainable"] == ["mm_projector"]
    base = tmp_path / "runs" / PREPARED_BASE_DIR
    assert (base / "global_cmvn.json").is_file()
    from safetensors.torch import load_file
    weights = load_file(base / "model.safetensors")
    assert torch.equal(weights["audio_encoder.blocks.3.pos_bias.v"],
                       tree["final"]["encoder.enc.1.encoders.3.self_attn.pos_bias_v"])
    assert (tmp_path / "runs" / "vision-align" / "mm_projector.bin").is_file()


def test_a_bf16_release_imports_as_bf16_with_the_whale_folders_exact_cmvn(released, tmp_path):
    """As released: bf16 tensors, so the CMVN buffers are rounded; the whale folder's statistics are exact."""
    import shutil

    from safetensors.torch import save_file

    from vita_trainer.data.audio import GlobalCMVN
    bf16 = tmp_path / "bf16"
    shutil.copytree(released["ckpt"], bf16)
    for shard in bf16.glob("*.safetensors"):
        save_file({k: v.bfloat16() for k, v in load_file(shard).items()}, shard)
    out = import_vita15(bf16, tmp_path / "imported")
    weights = read_weights(out)
    assert {v.dtype for v in weights.values()} == {torch.bfloat16}
    assert torch.equal(weights["mm_projector.0.weight"], released["state"]["model.mm_projector.0.weight"].bfloat16())
    cmvn = json.loads((out / "global_cmvn.json").read_text())
    exact = GlobalCMVN.load(released["whale"] / "global_cmvn")
    assert torch.equal(torch.tensor(cmvn["istd"]), exact.istd)


def _exported_contract(out: Path, vocab: int) -> None:
    """What the reference's loaders read (its whale `audioEncoder` and InternViT tower; README "Back to VITA's
    inference code"): the checkpoint's config fields, the InternViT folder with its preprocessor_config.json, the
    whale folder whose train.yaml has model_conf.llm_path; key names and (resized) shapes from the released layout;
    no absolute path."""
    config = json.loads((out / "config.json").read_text())
    for field in ("mm_vision_tower", "mm_audio_encoder", "mm_projector_type", "mm_hidden_size", "use_mm_proj"):
        assert field in config, field
    vision, whale = out / config["mm_vision_tower"], out / config["mm_audio_encoder"]
    assert not Path(config["mm_vision_tower"]).is_absolute() and not Path(config["mm_audio_encoder"]).is_absolute()
    # InternViT-300M-448px's own preprocessor_config.json (a CLIP processor: short side 448, centre crop 448)
    assert json.loads((vision / "preprocessor_config.json").read_text()) == {
        "crop_size": 28, "do_center_crop": True, "do_normalize": True, "do_resize": True,
        "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": [0.485, 0.456, 0.406],
        "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 28}  # 28: the tiny tower's 448
    train = yaml.safe_load((whale / "train.yaml").read_text())
    assert train["model_conf"]["llm_path"] == ".."
    assert (whale / train["model_conf"]["llm_path"] / "config.json").is_file()
    for key in ("input_dim", "cmvn_file", "is_json_cmvn", "encoder_conf", "model_conf", "dataset_conf"):
        assert key in train, key
    assert (whale / train["cmvn_file"]).is_file()
    text = (out / "config.json").read_text() + (whale / "train.yaml").read_text()
    assert str(out) not in text and str(out.resolve()) not in text
    weights = read_weights(out)
    expected = {k: _shape(s, vocab) for k, s in LAYOUT["a_vita15_full_checkpoint"].items()}
    assert {k: list(v.shape) for k, v in weights.items()} == expected
    final = torch.load(whale / "final.pt", weights_only=True)
    assert {k: list(v.shape) for k, v in final.items()} == {k: _shape(s, vocab)
                                                             for k, s in LAYOUT["b_whale_final_pt"].items()}


def test_exported_folders_carry_what_the_reference_loaders_read(released, imported, tmp_path):
    from vita_trainer.model.vita15 import export_vita15
    out = export_vita15(imported, tmp_path / "exported")
    vocab = next(iter(v for k, v in released["state"].items() if k == "lm_head.weight")).shape[0]
    _exported_contract(out, vocab)


def test_a_bf16_release_round_trips_bit_for_bit_dtype_included(released, tmp_path):
    """As released, everything bf16 (the CMVN buffers too): import then export gives every tensor back exactly."""
    import shutil

    from safetensors.torch import save_file

    from vita_trainer.model.vita15 import export_vita15
    bf16 = tmp_path / "bf16"
    shutil.copytree(released["ckpt"], bf16)
    for shard in bf16.glob("*.safetensors"):
        save_file({k: v.bfloat16() for k, v in load_file(shard).items()}, shard, metadata={"format": "pt"})
    source = read_weights(bf16)
    out = export_vita15(import_vita15(bf16, tmp_path / "imported"), tmp_path / "exported")
    back = read_weights(out)
    assert set(back) == set(source)
    for k, v in source.items():
        assert back[k].dtype == v.dtype and torch.equal(back[k], v), k
    cmvn = torch.load(out / "audio-encoder" / "final.pt", weights_only=True)["encoder.global_cmvn.istd"]
    assert cmvn.dtype == torch.bfloat16
    assert torch.equal(cmvn, source["model.audio_encoder.encoder.global_cmvn.istd"])
