"""Build VITA configs and models: a tiny random one for tests and the demo, and the real 7B layout."""

from __future__ import annotations

import logging

from transformers import AutoConfig, AutoModelForCausalLM

from .configuration import VitaConfig, vision_preset
from .vision_families import family_named, family_of
from .modeling import VitaForCausalLM

log = logging.getLogger(__name__)

AutoConfig.register("vita", VitaConfig, exist_ok=True)
AutoModelForCausalLM.register(VitaConfig, VitaForCausalLM, exist_ok=True)


def attn_implementation() -> str:
    """flash_attention_2 where flash-attn is installed (GPU images), SDPA otherwise."""
    from transformers.utils import is_flash_attn_2_available
    return "flash_attention_2" if is_flash_attn_2_available() else "sdpa"


TRAINING_ATTENTION = ("auto", "sdpa", "eager", "flash_attention_2", "varlen")


def training_attention(choice: str, cuda: bool) -> str:
    """The language model's attention backend while training (--attn_implementation): auto takes flash-attn where
    it is installed, else PyTorch's varlen kernel on GPUs (model/varlen_attention.py; SDPA would attend packed rows
    through a dense mask), else SDPA (CPU). The backend is set on the training model only: what is saved and what
    generates keep attn_implementation()."""
    from .varlen_attention import NAME
    if choice not in TRAINING_ATTENTION:
        raise ValueError(f"--attn_implementation {choice!r}: choose one of {', '.join(TRAINING_ATTENTION)}")
    if choice == "auto":
        choice = attn_implementation()
        if choice == "sdpa" and cuda:
            choice = "varlen"
    return NAME if choice == "varlen" else choice


def tiny_config(tokenizer, *, hidden: int = 64, layers: int = 2, heads: int = 4, ffn: int = 256,
                vision: str = "siglip", image_size: int = 32, patch_size: int = 8, vision_hidden: int = 32,
                vision_layers: int = 1, audio_d_model: int = 32, audio_layers: int = 1,
                projector: str = "mlp2x_gelu", adapter_type: str = "subsampling", ctc_vocab_size: int = 0,
                downsample_ratio: float | None = None) -> VitaConfig:
    """A VITA with the same structure as the real one, small enough for a CPU test."""
    from vita_api.constants import AUDIO_TOKEN, IMAGE_TOKEN
    text = dict(model_type="qwen2", vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1), intermediate_size=ffn,
                max_position_embeddings=4096, tie_word_embeddings=True,
                pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    family = family_named(vision)
    vis = family.tiny(vision_hidden, vision_layers, image_size, patch_size)
    preset = family.preset()
    if downsample_ratio is not None:
        preset["downsample_ratio"] = downsample_ratio
    audio = dict(d_model=audio_d_model, num_layers=audio_layers, num_heads=2, ffn_dim=audio_d_model * 4,
                 dropout=0.0, adapter_type=adapter_type)
    return VitaConfig(text_config=text, vision_config=vis, audio_config=audio, mm_projector_type=projector,
                      **preset, image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                      audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN), ctc_vocab_size=ctc_vocab_size)


# Qwen2.5-7B's embedding rows (the tokenizer has fewer entries; the released VITA-1.5 keeps all 152064).
QWEN25_7B_VOCAB = 152064


def vita_1p5_config(image_token_id: int = 151665, audio_token_id: int = 151666,
                    vocab_size: int = QWEN25_7B_VOCAB) -> VitaConfig:
    """The VITA-1.5 7B layout: Qwen2.5-7B-Instruct, InternViT-300M-448px with 0.5 pixel shuffle, 24-layer whale."""
    text = dict(model_type="qwen2", vocab_size=vocab_size, hidden_size=3584, intermediate_size=18944,
                num_hidden_layers=28, num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=32768,
                rope_theta=1000000.0, rms_norm_eps=1e-6, tie_word_embeddings=False, eos_token_id=151645,
                pad_token_id=151643)
    vis = dict(model_type="internvl_vision", hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
               intermediate_size=4096, image_size=[448, 448], patch_size=[14, 14], attention_bias=True,
               layer_norm_eps=1e-6)
    return VitaConfig(text_config=text, vision_config=vis, audio_config={}, mm_projector_type="mlp2x_gelu",
                      **vision_preset("internvl_vision"), image_token_id=image_token_id, audio_token_id=audio_token_id)


def compose_model(llm_path: str, vision_path: str, tokenizer, audio_encoder: str | None = None,
                  audio_config: dict | None = None, mm_projector_type: str = "mlp2x_gelu"):
    """A new VITA from pretrained parts, as the retraining guide downloads them: an HF causal LM folder
    (Qwen2.5-7B-Instruct), a vision folder (a family of vision_families.py: OpenGVLab's InternViT-300M-448px,
    transformers' internvl_vision, SigLIP) and optionally a whale audio-encoder folder (final.pt, train.yaml,
    global_cmvn).

    The projector starts random (stage 1 trains it); so does the audio adapter unless final.pt carries one for
    this LLM width. Returns (model, GlobalCMVN or None)."""
    from transformers import AutoConfig, AutoModel

    from vita_api.constants import AUDIO_TOKEN, IMAGE_TOKEN
    from vita_api.errors import ConfigError
    from .vita15 import is_internvit_folder, load_internvit_folder, load_whale_folder
    llm = AutoModelForCausalLM.from_pretrained(llm_path)
    if is_internvit_folder(vision_path):
        vision_dict, vision_state = load_internvit_folder(vision_path)
    else:
        vision = AutoModel.from_pretrained(vision_path)
        vcfg = vision.config if not hasattr(vision.config, "vision_config") else vision.config.vision_config
        family = family_of(vcfg.model_type)
        # a multi-tower checkpoint (SigLIP's text + vision) keeps the vision tower under one attribute
        tower = vision if vision.config.model_type == vcfg.model_type else \
            getattr(vision, family.full_checkpoint_tower or "vision_model")
        vision_dict, vision_state = vcfg.to_dict(), tower.state_dict()
    audio_state, cmvn = {}, None
    if audio_encoder:
        audio_config, llm_dim, audio_state, cmvn = load_whale_folder(audio_encoder)
        if llm_dim != llm.config.hidden_size and any(k.startswith("audio_adapter.") for k in audio_state):
            raise ConfigError(f"{audio_encoder}/train.yaml: its adapter projects to {llm_dim}, the LLM {llm_path} "
                              f"is {llm.config.hidden_size} wide; use the whale folder made for this LLM")
    text = llm.config.to_dict()
    text["vocab_size"] = max(llm.config.vocab_size, len(tokenizer))
    config = VitaConfig(text_config=text, vision_config=vision_dict, audio_config=audio_config or {},
                        mm_projector_type=mm_projector_type,
                        **vision_preset(AutoConfig.for_model(**vision_dict).model_type),
                        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                        audio_token_id=tokenizer.convert_tokens_to_ids(AUDIO_TOKEN))
    model = build_model(config)
    if len(tokenizer) > llm.config.vocab_size:
        llm.resize_token_embeddings(len(tokenizer))
    model.language_model.load_state_dict(llm.state_dict())
    model.vision_tower.backbone.load_state_dict(vision_state)
    if audio_state:
        missing, unexpected = model.load_state_dict(audio_state, strict=False)
        assert not unexpected, unexpected  # load_whale_folder checked every key against the encoder's layout
        if not any(k.startswith("audio_adapter.") for k in audio_state):
            log.warning("%s/final.pt has no adpter.* weights: the audio adapter starts random (stage 2 trains it)",
                        audio_encoder)
    return model, cmvn


def write_composed(out, llm_path: str, vision_path: str, tokenizer, audio_encoder: str | None = None,
                   mm_projector_type: str = "mlp2x_gelu"):
    """compose_model, saved as a VITA folder: weights, tokenizer, and the whale's CMVN statistics if any."""
    from pathlib import Path
    model, cmvn = compose_model(llm_path, vision_path, tokenizer, audio_encoder=audio_encoder,
                                mm_projector_type=mm_projector_type)
    out = Path(out)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    if cmvn is not None:
        cmvn.save(out / "global_cmvn.json")
    return out


def build_model(config: VitaConfig) -> VitaForCausalLM:
    config.text_config._attn_implementation = attn_implementation()
    return VitaForCausalLM(config)


def load_model(path: str, **kwargs) -> VitaForCausalLM:
    """Load a VITA folder (save_pretrained output); under ZeRO-3 HF partitions it while loading."""
    return VitaForCausalLM.from_pretrained(path, attn_implementation=attn_implementation(), **kwargs)
