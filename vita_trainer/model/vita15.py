"""Import and export VITA-1.5's released artifacts: the full checkpoint, the whale folder, the InternViT folder.

Nothing is materialised as a model: tensors are renamed (`vita15_keys`), checked against a meta-device model
(every key, every shape), and written as they came, so a 7B import needs no more memory than its largest
shard and `export` then `import` is bit-exact.

- Full checkpoint: `VITAQwen2ForCausalLM.save_pretrained` output, config `model_type: vita-Qwen2` with the
  paths of an InternViT folder (`mm_vision_tower`) and a whale folder (`mm_audio_encoder`), which the
  reference needs to know the towers' sizes, and so do we.
- Whale folder: `final.pt` (`audioEncoder.state_dict()`), `train.yaml`, `global_cmvn` (WeNet JSON or Kaldi text).
- InternViT folder: OpenGVLab's `InternViT-300M-448px` (`model_type: intern_vit_6b`, remote code upstream).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import yaml
# Tower shapes without memory; see VitaForCausalLM.empty for why not `with torch.device("meta")`.
from accelerate import init_empty_weights

from vita_api.errors import ConfigError
from .vita15_keys import (CHECKPOINT_RULES, INTERNVIT_RULES, WHALE_CMVN_KEYS, WHALE_RULES, check_keys,
                          convert, convert_all)

log = logging.getLogger(__name__)

MODEL_TYPE = "vita-Qwen2"
INTERNVIT_TYPE = "intern_vit_6b"
WHALE_FILES = ("final.pt", "train.yaml", "global_cmvn")
VISION_DIR, AUDIO_DIR = "InternViT-300M-448px", "audio-encoder"
# Attributes the reference sets on its config besides Qwen2's (vita_arch.py, train.py); not Qwen2 fields.
_NOT_QWEN2 = {"architectures", "auto_map", "model_type", "transformers_version"}


# --- reading ------------------------------------------------------------------------------------------------
def read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path} does not exist") from None
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not valid JSON: {e}") from None


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Tensors of an HF folder: sharded safetensors (with index), one model.safetensors, or pytorch_model.bin."""
    from safetensors.torch import load_file
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(read_json(index)["weight_map"].values()))
        return {k: v for f in files for k, v in load_file(folder / f).items()}
    if (folder / "model.safetensors").is_file():
        return load_file(folder / "model.safetensors")
    if (folder / "pytorch_model.bin").is_file():
        return torch.load(folder / "pytorch_model.bin", map_location="cpu", weights_only=True)
    hint = (" (a training checkpoint with ZeRO shards: run `vita-model convert` on it first)"
            if (folder / "latest").is_file() else "")
    raise ConfigError(f"{folder} has no model.safetensors(.index.json) or pytorch_model.bin{hint}")


def is_internvit_folder(path: str | Path) -> bool:
    config = Path(path) / "config.json"
    return config.is_file() and json.loads(config.read_text()).get("model_type") == INTERNVIT_TYPE


# --- configs ------------------------------------------------------------------------------------------------
def internvit_to_hf_config(c: dict) -> dict:
    """OpenGVLab InternVisionConfig -> transformers' internvl_vision (what VisionTower builds)."""
    if c.get("qk_normalization"):
        raise ConfigError("InternViT with qk_normalization (the 6B tower) is not supported; VITA-1.5 uses the 300M one")
    size, patch = c.get("image_size", 448), c.get("patch_size", 14)
    return dict(model_type="internvl_vision", hidden_size=c["hidden_size"], num_hidden_layers=c["num_hidden_layers"],
                num_attention_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
                image_size=[size, size] if isinstance(size, int) else list(size),
                patch_size=[patch, patch] if isinstance(patch, int) else list(patch),
                attention_bias=bool(c.get("qkv_bias", False)), layer_norm_eps=c.get("layer_norm_eps", 1e-6),
                norm_type=c.get("norm_type", "layer_norm"), hidden_act=c.get("hidden_act", "gelu"),
                num_channels=c.get("num_channels", 3))


def hf_to_internvit_config(v) -> dict:
    return {"architectures": ["InternVisionModel"], "model_type": INTERNVIT_TYPE, "hidden_size": v.hidden_size,
            "num_hidden_layers": v.num_hidden_layers, "num_attention_heads": v.num_attention_heads,
            "intermediate_size": v.intermediate_size, "image_size": v.image_size[0], "patch_size": v.patch_size[0],
            "qkv_bias": v.attention_bias, "qk_normalization": False, "layer_norm_eps": v.layer_norm_eps,
            "norm_type": v.norm_type, "hidden_act": v.hidden_act, "num_channels": v.num_channels,
            "drop_path_rate": 0.0, "use_flash_attn": False}


# The reference's train.yaml values the project's encoder implements; anything else is refused by name.
_WHALE_FIXED = {("encoder_conf", "overview_conf", "encoder-layer-config"): "subsampling-transformer",
                ("encoder_conf", "para_conf", "subsampling", "subsampling-rate"): 4,
                ("encoder_conf", "para_conf", "transformer", "transformer-input-layer"): "linear",
                ("encoder_conf", "para_conf", "transformer", "transformer-pos-enc-class"): "rel-enc",
                ("encoder_conf", "para_conf", "transformer", "transformer-normalize-before"): True,
                ("encoder_conf", "para_conf", "transformer", "transformer-concat-after"): False,
                ("encoder_conf", "para_conf", "transformer", "transformer-positionwise-layer-type"): "linear",
                ("model_conf", "activation_func"): "gelu",
                ("model_conf", "norm"): "layer"}


def _get(d: dict, path: tuple, source: str):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            raise ConfigError(f"{source}: missing {'.'.join(path)}")
        d = d[k]
    return d


def whale_yaml_to_audio_config(train: dict, source: str = "train.yaml") -> tuple[dict, int]:
    """The whale `train.yaml` dict -> (VitaConfig.audio_config, the LLM width its adapter projects to)."""
    for path, want in _WHALE_FIXED.items():
        got = _get(train, path, source)
        if got != want:
            raise ConfigError(f"{source}: {'.'.join(path)} is {got!r}; only {want!r} (VITA-1.5's encoder) is "
                              f"supported")
    t = _get(train, ("encoder_conf", "para_conf", "transformer"), source)
    model = train["model_conf"]
    input_dim = _get(train, ("encoder_conf", "para_conf", "subsampling", "subsampling-input-dim"), source)
    audio = dict(input_dim=int(input_dim), d_model=int(t["transformer-attention-dim"]),
                 num_layers=int(t["transformer-num-blocks"]), num_heads=int(t["transformer-attention-heads"]),
                 ffn_dim=int(t["transformer-linear-units"]), dropout=float(t.get("transformer-dropout-rate", 0.1)),
                 adapter_type=model.get("adpter_type", "subsampling"),
                 adapter_kernel=int(model.get("kernel_size", 3)),  # the reference's default is 3, VITA-1.5's 5
                 chunk_size=int(t.get("transformer-chunk_size", -1)),
                 left_chunks=int(t.get("transformer-left_chunks", -1)),
                 dynamic_chunks=bool(t.get("transformer-dynamic-chunks", True)))  # the reference's default
    return audio, int(_get(train, ("model_conf", "llm_embed_dim"), source))


def _set(d: dict, path: tuple, value) -> None:
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = value


def audio_config_to_whale_yaml(a: dict, llm_dim: int) -> dict:
    """VitaConfig.audio_config -> the whale `train.yaml` dict; the settings the encoder fixes come from _WHALE_FIXED."""
    d = a["d_model"]
    transformer = {"transformer-input-dim": d, "transformer-output-dim": d, "transformer-attention-dim": d,
                   "transformer-attention-heads": a["num_heads"], "transformer-linear-units": a["ffn_dim"],
                   "transformer-num-blocks": a["num_layers"], "transformer-dropout-rate": a["dropout"],
                   "transformer-attention-dropout-rate": 0.0, "transformer-positional-dropout-rate": a["dropout"],
                   "transformer-chunk_size": a["chunk_size"], "transformer-left_chunks": a["left_chunks"],
                   "transformer-dynamic-chunks": a["dynamic_chunks"]}
    subsampling = {"subsampling-input-dim": a["input_dim"], "subsampling-output-dim": d,
                   "subsampling-dropout-rate": a["dropout"]}
    train = {"input_dim": a["input_dim"], "cmvn_file": "global_cmvn", "is_json_cmvn": True,
             "encoder_conf": {"overview_conf": {"encoder-input-dim": a["input_dim"], "encoder-output-dim": d},
                              "para_conf": {"subsampling": subsampling, "transformer": transformer}},
             # llm_path: a required argument of the reference's audioEncoder; the export's root holds the LLM
             "model_conf": {"enc_out_dim": d, "llm_embed_dim": llm_dim, "llm_path": "..",
                            "kernel_size": a["adapter_kernel"],
                            "adpter_type": a["adapter_type"], "freeze_encoder": False, "freeze_adpter": False,
                            "audio_prompt_finetune": False, "audio_prompt_num": 0},
             "dataset_conf": {"resample_conf": {"resample_rate": 16000},
                              "fbank_conf": {"num_mel_bins": 80, "frame_length": 25, "frame_shift": 10, "dither": 0.0}}}
    for path, value in _WHALE_FIXED.items():
        _set(train, path, value)
    return train


# --- the two tower folders ----------------------------------------------------------------------------------
def load_internvit_folder(folder: str | Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """OpenGVLab InternViT folder -> (internvl_vision config dict, state dict in VisionTower.backbone keys)."""
    folder = Path(folder)
    hf = internvit_to_hf_config(read_json(folder / "config.json"))
    state, unmatched = convert(read_weights(folder), INTERNVIT_RULES, "proj")
    from transformers import AutoConfig, AutoModel
    with init_empty_weights():
        expected = AutoModel.from_config(AutoConfig.for_model(**hf)).state_dict()
    check_keys(state, expected, unmatched, str(folder))
    return hf, state


def load_whale_folder(folder: str | Path):
    """Whale folder -> (audio_config, adapter LLM width, state in audio_encoder./audio_adapter. keys, GlobalCMVN)."""
    from ..data.audio import GlobalCMVN
    folder = Path(folder)
    missing = [f for f in WHALE_FILES if not (folder / f).is_file()]
    if missing:
        raise ConfigError(f"{folder}: missing {missing}; a whale audio-encoder folder holds {list(WHALE_FILES)}")
    audio, llm_dim = whale_yaml_to_audio_config(yaml.safe_load((folder / "train.yaml").read_text()),
                                                str(folder / "train.yaml"))
    raw = torch.load(folder / "final.pt", map_location="cpu", weights_only=True)
    for k in WHALE_CMVN_KEYS:
        raw.pop(k, None)  # the reference, too, takes the statistics from the global_cmvn file
    state, unmatched = convert(raw, WHALE_RULES, "proj")
    from ..data.audio_tokens import ADAPTER_STRIDES
    from .audio_encoder import AudioAdapter, WhaleEncoder
    with init_empty_weights():
        expected = {"audio_encoder." + k: v for k, v in WhaleEncoder(**audio).state_dict().items()}
        if any(k.startswith("audio_adapter.") for k in state):  # the adapter is optional: stage 2 trains it
            adapter = AudioAdapter(audio["d_model"], llm_dim, ADAPTER_STRIDES[audio["adapter_type"]],
                                   audio["adapter_kernel"])
            expected.update(("audio_adapter." + k, v) for k, v in adapter.state_dict().items())
    check_keys(state, expected, unmatched, str(folder / "final.pt"))
    return audio, llm_dim, state, GlobalCMVN.load(folder / "global_cmvn")


def clip_preprocessor_config(tile_size: int, mean, std) -> dict:
    """InternViT-300M-448px's `preprocessor_config.json`, which the reference's InternViTVisionTower reads: the
    CLIP image processor with a short-side resize and centre crop to the tile size, bicubic."""
    return {"crop_size": tile_size, "do_center_crop": True, "do_normalize": True, "do_resize": True,
            "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": list(mean), "image_std": list(std),
            "resample": 3, "size": tile_size}


def write_internvit_folder(out: Path, vision_config, backbone_state: dict, config) -> None:
    from safetensors.torch import save_file
    out.mkdir(parents=True, exist_ok=True)
    state = convert_all(backbone_state, INTERNVIT_RULES, "ref", "vision tower")
    (out / "config.json").write_text(json.dumps(hf_to_internvit_config(vision_config), indent=2))
    (out / "preprocessor_config.json").write_text(json.dumps(
        clip_preprocessor_config(config.tile_size, config.image_mean, config.image_std), indent=2))
    save_file({k: v.contiguous() for k, v in state.items()}, out / "model.safetensors", metadata={"format": "pt"})


def write_whale_folder(out: Path, audio_config: dict, llm_dim: int, audio_state: dict, cmvn) -> None:
    out.mkdir(parents=True, exist_ok=True)
    state = convert_all(audio_state, WHALE_RULES, "ref", "audio encoder")
    state.update(zip(WHALE_CMVN_KEYS, cmvn.buffers()))
    torch.save(state, out / "final.pt")
    (out / "train.yaml").write_text(yaml.safe_dump(audio_config_to_whale_yaml(audio_config, llm_dim), sort_keys=False))
    cmvn.save_wenet(out / "global_cmvn")


# --- the full checkpoint ------------------------------------------------------------------------------------
def _without_tied_head(state: dict, config) -> dict:
    """A tied lm_head is the embedding: neither layout stores it twice."""
    if config.text_config.tie_word_embeddings:
        state.pop("language_model.lm_head.weight", None)
    return state


def _expected_state(config) -> dict:
    from .modeling import VitaForCausalLM
    return _without_tied_head(VitaForCausalLM.empty(config).state_dict(), config)


def _dtype_name(state: dict) -> str:
    """The weights' dtype as configs name it ("bfloat16"): import and export keep it, so the round trip is exact."""
    return str(next(iter(state.values())).dtype).removeprefix("torch.")


def _write_hf_weights(state: dict, out: Path) -> None:
    from huggingface_hub import save_torch_state_dict
    save_torch_state_dict({k: v.contiguous() for k, v in state.items()}, out, max_shard_size="5GB")


def _tower_folder(given: str | None, recorded: str | None, base: Path, flag: str, marker: str, what: str) -> Path:
    """The tower folder (holding `marker`): as given, and then it must be one; else where the config records it;
    else a folder of that name inside the checkpoint."""
    if given:
        if not (Path(given) / marker).is_file():
            raise ConfigError(f"{flag} {given}: no {marker} there; it must be the {what} folder")
        return Path(given)
    # a relative path (what export writes) is inside the checkpoint folder first
    inside = recorded and not Path(recorded).is_absolute() and base / recorded
    for candidate in (inside, recorded, recorded and base / Path(recorded).name):
        if candidate and (Path(candidate) / marker).is_file():
            return Path(candidate)
    raise ConfigError(f"{base}: the {what} folder is needed for its sizes (the reference rebuilds it from files "
                      f"too); the config records {recorded!r}, which is not here. Pass {flag} DIR")


def import_vita15(src: str | Path, out: str | Path, vision_tower: str | None = None,
                  audio_encoder: str | None = None, tokenizer: str | None = None) -> Path:
    """A released VITA-1.5 folder -> a project VITA folder (config, same-dtype safetensors, tokenizer, CMVN)."""
    from vita_api.constants import AUDIO_TOKEN, IMAGE_TOKEN
    from ..data.audio import GlobalCMVN
    from ..data.tokenizer import load_tokenizer
    from .configuration import VitaConfig, vision_preset
    src, out = Path(src), Path(out)
    cfg = read_json(src / "config.json")
    if cfg.get("model_type") != MODEL_TYPE:
        raise ConfigError(f"{src}/config.json has model_type {cfg.get('model_type')!r}, not {MODEL_TYPE!r}: "
                          f"not a released VITA-1.5 folder")
    vision_dir = _tower_folder(vision_tower, cfg.get("mm_vision_tower"), src, "--vision-tower", "config.json",
                               "InternViT")
    audio_dir = _tower_folder(audio_encoder, cfg.get("mm_audio_encoder"), src, "--audio-encoder", "train.yaml",
                              "whale audio encoder")
    audio, llm_dim = whale_yaml_to_audio_config(yaml.safe_load((audio_dir / "train.yaml").read_text()),
                                                str(audio_dir / "train.yaml"))
    if llm_dim != cfg["hidden_size"]:
        raise ConfigError(f"{audio_dir}/train.yaml: llm_embed_dim {llm_dim} != the LLM's hidden_size "
                          f"{cfg['hidden_size']}")
    tok = load_tokenizer(tokenizer or (str(src) if (src / "tokenizer_config.json").is_file() else "qwen2.5"))
    from transformers import AutoConfig
    qwen2_fields = set(AutoConfig.for_model("qwen2").to_dict()) | {"rope_theta", "rope_scaling"}
    text = {k: v for k, v in cfg.items() if k in qwen2_fields and k not in _NOT_QWEN2}
    vision_hf = internvit_to_hf_config(read_json(vision_dir / "config.json"))
    config = VitaConfig(text_config={**text, "model_type": "qwen2"}, vision_config=vision_hf, audio_config=audio,
                        mm_projector_type=cfg.get("mm_projector_type", "mlp2x_gelu"),
                        **vision_preset("internvl_vision"),
                        image_token_id=tok.convert_tokens_to_ids(IMAGE_TOKEN),
                        audio_token_id=tok.convert_tokens_to_ids(AUDIO_TOKEN), chat_format="vita15")
    if len(tok) > config.text_config.vocab_size:
        raise ConfigError(f"{src}: the tokenizer has {len(tok)} tokens, the checkpoint "
                          f"{config.text_config.vocab_size} rows")
    weights = read_weights(src)
    buffers = [weights.pop(k, None) for k in ("model.audio_encoder." + k for k in WHALE_CMVN_KEYS)]
    state, unmatched = convert(weights, CHECKPOINT_RULES, "proj")
    _without_tied_head(state, config)
    check_keys(state, _expected_state(config), unmatched, str(src),
               hint="Is this a VITA-1.5 checkpoint with the sizes its InternViT and whale folders state?")
    if all(b is not None and b.dtype == torch.float32 for b in buffers):
        cmvn = GlobalCMVN(*buffers)
    else:  # a bf16 checkpoint rounds the statistics; the whale folder keeps them exactly
        cmvn = GlobalCMVN.load(audio_dir / "global_cmvn")
    if all(b is not None for b in buffers):  # written back as they came, dtype included
        cmvn.checkpoint_buffers = (buffers[0], buffers[1])
    out.mkdir(parents=True, exist_ok=True)
    config.dtype = _dtype_name(state)
    config.save_pretrained(out)
    _write_hf_weights(state, out)
    tok.save_pretrained(out)
    cmvn.save(out / "global_cmvn.json")
    return out


def export_vita15(model_dir: str | Path, out: str | Path) -> Path:
    """A project VITA folder -> the reference layout: vita-Qwen2 config, sharded safetensors with the reference's
    key names (same dtype), and the InternViT and whale folders the reference rebuilds its towers from."""
    from ..data.audio import GlobalCMVN
    from ..data.tokenizer import load_tokenizer
    from .configuration import VitaConfig
    model_dir, out = Path(model_dir), Path(out)
    config = VitaConfig.from_pretrained(model_dir)
    if config.vision_config.model_type != "internvl_vision" or config.vision_feature_scale != 0.5:
        raise ConfigError(f"{model_dir}: VITA-1.5 has an InternViT tower with the 0.5 feature scale; this model has "
                          f"{config.vision_config.model_type} (scale {config.vision_feature_scale}), which VITA's code "
                          f"cannot load")
    state = read_weights(model_dir)
    dropped = sorted(k for k in state if k.startswith("ctc_head."))
    if dropped:
        log.warning("not exported (training-only CTC head, not part of VITA-1.5): %s", dropped)
    state = _without_tied_head({k: v for k, v in state.items() if k not in dropped}, config)
    check_keys(state, {k: v for k, v in _expected_state(config).items() if not k.startswith("ctc_head.")}, [],
               str(model_dir))
    cmvn_file = model_dir / "global_cmvn.json"
    cmvn = GlobalCMVN.load(cmvn_file) if cmvn_file.is_file() else GlobalCMVN.identity(config.audio_config["input_dim"])
    llm_dim = config.text_config.hidden_size
    out.mkdir(parents=True, exist_ok=True)
    vision_dir, audio_dir = out / VISION_DIR, out / AUDIO_DIR
    backbone = {k.removeprefix("vision_tower.backbone."): v for k, v in state.items() if k.startswith("vision_tower.")}
    write_internvit_folder(vision_dir, config.vision_config, backbone, config)
    write_whale_folder(audio_dir, config.audio_config, llm_dim,
                       {k: v for k, v in state.items() if k.startswith(("audio_encoder.", "audio_adapter."))}, cmvn)
    ref = convert_all(state, CHECKPOINT_RULES, "ref", str(model_dir))
    ref.update(("model.audio_encoder." + k, t) for k, t in zip(WHALE_CMVN_KEYS, cmvn.buffers()))
    text = config.text_config.to_dict()
    vita = {**{k: v for k, v in text.items() if k not in _NOT_QWEN2}, "model_type": MODEL_TYPE,
            # relative: the export moves as one folder; the reference resolves these from its working directory
            "architectures": ["VITAQwen2ForCausalLM"], "mm_vision_tower": VISION_DIR,
            "mm_audio_encoder": AUDIO_DIR, "mm_projector_type": config.mm_projector_type,
            "mm_hidden_size": int(config.vision_config.hidden_size / config.downsample_ratio ** 2),
            "rope_theta": (text.get("rope_parameters") or {}).get("rope_theta", text.get("rope_theta")),
            "use_mm_proj": True, "torch_dtype": _dtype_name(state)}
    (out / "config.json").write_text(json.dumps(vita, indent=2))
    _write_hf_weights(ref, out)
    load_tokenizer(str(model_dir)).save_pretrained(out)
    return out
