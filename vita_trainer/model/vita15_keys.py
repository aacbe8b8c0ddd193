"""The key mapping between VITA-1.5's released layout and this project's model, in both directions.

One table serves import and export. Each rule pairs a reference key pattern with a project key pattern;
`{i}` is a layer index, `{p}` a parameter name, `{rest}` any dotted tail. A rule with `parts` maps several
tensors on one side (the side whose pattern has `{part}`) to their concatenation along dim 0 on the other:
the whale's linear_q/k/v become our fused `qkv`, InternViT's fused `qkv` becomes transformers' q/k/v_proj.

Pure functions over {key: tensor} dicts; nothing here reads files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from vita_api.errors import ConfigError

QKV = ("q", "k", "v")


@dataclass(frozen=True)
class Rule:
    ref: str
    proj: str
    parts: tuple[str, ...] = ()

    def prefixed(self, ref_prefix: str, proj_prefix: str) -> "Rule":
        return Rule(ref_prefix + self.ref, proj_prefix + self.proj, self.parts)


# OpenGVLab's InternVisionModel (no prefix) <-> transformers' InternVLVisionModel.
INTERNVIT_RULES = (
    Rule("embeddings.class_embedding", "embeddings.cls_token"),
    Rule("embeddings.position_embedding", "embeddings.position_embeddings"),
    Rule("embeddings.patch_embedding.{p}", "embeddings.patch_embeddings.projection.{p}"),
    Rule("encoder.layers.{i}.attn.qkv.{p}", "encoder.layer.{i}.attention.{part}_proj.{p}", QKV),
    Rule("encoder.layers.{i}.attn.proj.{p}", "encoder.layer.{i}.attention.projection_layer.{p}"),
    Rule("encoder.layers.{i}.mlp.{rest}", "encoder.layer.{i}.mlp.{rest}"),
    Rule("encoder.layers.{i}.norm1.{p}", "encoder.layer.{i}.layernorm_before.{p}"),
    Rule("encoder.layers.{i}.norm2.{p}", "encoder.layer.{i}.layernorm_after.{p}"),
    Rule("encoder.layers.{i}.ls1", "encoder.layer.{i}.lambda_1"),
    Rule("encoder.layers.{i}.ls2", "encoder.layer.{i}.lambda_2"),
)

# The reference `audioEncoder.state_dict()` (whale `final.pt`) <-> our audio_encoder + audio_adapter.
_E = "encoder.enc.1.encoders.{i}."
WHALE_RULES = (
    Rule("encoder.enc.0.core.conv.{rest}", "audio_encoder.subsample.conv.{rest}"),
    Rule("encoder.enc.0.core.out.0.{p}", "audio_encoder.subsample.out.{p}"),
    Rule("encoder.enc.1.embed.{rest}", "audio_encoder.embed.{rest}"),
    Rule(_E + "self_attn.linear_{part}.{p}", "audio_encoder.blocks.{i}.qkv.{p}", QKV),
    Rule(_E + "self_attn.linear_out.{p}", "audio_encoder.blocks.{i}.proj.{p}"),
    Rule(_E + "self_attn.linear_pos.weight", "audio_encoder.blocks.{i}.pos_proj.weight"),
    Rule(_E + "self_attn.pos_bias_u", "audio_encoder.blocks.{i}.pos_bias.u"),
    Rule(_E + "self_attn.pos_bias_v", "audio_encoder.blocks.{i}.pos_bias.v"),
    Rule(_E + "feed_forward.w_1.{p}", "audio_encoder.blocks.{i}.ffn.0.{p}"),
    Rule(_E + "feed_forward.w_2.{p}", "audio_encoder.blocks.{i}.ffn.3.{p}"),
    Rule(_E + "norm1.{p}", "audio_encoder.blocks.{i}.norm1.{p}"),
    Rule(_E + "norm2.{p}", "audio_encoder.blocks.{i}.norm2.{p}"),
    Rule("encoder.enc.1.after_norm.{p}", "audio_encoder.norm.{p}"),
    Rule("adpter.conv1d2.{p}", "audio_adapter.conv.{p}"),
    Rule("adpter.bn2.{p}", "audio_adapter.norm.{p}"),
    Rule("adpter.project.{p}", "audio_adapter.proj.{p}"),
)
# Persistent buffers of the reference encoder; the project applies CMVN in the data path (global_cmvn.json).
WHALE_CMVN_KEYS = ("encoder.global_cmvn.mean", "encoder.global_cmvn.istd")

VISION_PREFIX = "model.vision_tower.vision_tower."
AUDIO_PREFIX = "model.audio_encoder."
# The released full checkpoint (`VITAQwen2ForCausalLM.save_pretrained`) <-> VitaForCausalLM.
CHECKPOINT_RULES = (
    Rule("model.embed_tokens.{rest}", "language_model.model.embed_tokens.{rest}"),
    Rule("model.layers.{rest}", "language_model.model.layers.{rest}"),
    Rule("model.norm.{rest}", "language_model.model.norm.{rest}"),
    Rule("lm_head.{rest}", "language_model.lm_head.{rest}"),
    Rule("model.mm_projector.{rest}", "mm_projector.{rest}"),
    *(r.prefixed(VISION_PREFIX, "vision_tower.backbone.") for r in INTERNVIT_RULES),
    *(r.prefixed(AUDIO_PREFIX, "") for r in WHALE_RULES),
)

_FIELDS = {"i": r"(?P<i>\d+)", "p": r"(?P<p>weight|bias)", "rest": r"(?P<rest>.+)", "part": r"(?P<part>[a-z]+)"}


def _regex(pattern: str) -> re.Pattern:
    out, pos = "", 0
    for m in re.finditer(r"\{(\w+)\}", pattern):
        out += re.escape(pattern[pos:m.start()]) + _FIELDS[m.group(1)]
        pos = m.end()
    return re.compile(out + re.escape(pattern[pos:]) + r"\Z")


def convert(state: dict[str, torch.Tensor], rules, to: str) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Map `state` to the `to` side ("proj" or "ref"). Returns (mapped, keys no rule matched)."""
    src_side = "ref" if to == "proj" else "proj"
    compiled = [(r, _regex(getattr(r, src_side)), getattr(r, to)) for r in rules]
    out: dict[str, torch.Tensor] = {}
    pending: dict[str, tuple[Rule, dict[str, torch.Tensor]]] = {}  # fused target key -> (rule, {part: tensor})
    unmatched = []
    for key, tensor in state.items():
        for rule, regex, target in compiled:
            m = regex.match(key)
            if not m:
                continue
            fields = {k: v for k, v in m.groupdict().items() if k != "part"}
            if rule.parts and "part" in m.groupdict():        # many -> one: wait for every part, then concatenate
                if m["part"] not in rule.parts:
                    continue
                pending.setdefault(target.format(**fields), (rule, {}))[1][m["part"]] = tensor
            elif rule.parts:                                    # one -> many: equal row blocks in part order
                for part, chunk in zip(rule.parts, tensor.chunk(len(rule.parts), dim=0)):
                    out[target.format(part=part, **fields)] = chunk.clone()
            else:
                out[target.format(**fields)] = tensor
            break
        else:
            unmatched.append(key)
    for key, (rule, parts) in pending.items():
        missing = [p for p in rule.parts if p not in parts]
        if missing:
            raise ConfigError(f"{key}: the source has no {missing} part(s) to concatenate")
        out[key] = torch.cat([parts[p] for p in rule.parts], dim=0)
    return out, unmatched


def convert_all(state: dict[str, torch.Tensor], rules, to: str, source: str) -> dict[str, torch.Tensor]:
    """`convert`, refusing any key no rule maps."""
    mapped, unmatched = convert(state, rules, to)
    check_keys(mapped, mapped, unmatched, source)
    return mapped


def check_keys(mapped: dict, expected: dict, unmatched: list[str], source: str, hint: str = "") -> None:
    """Refuse any unmapped, missing, unexpected or mis-shaped key, listing them all (never a silent random init)."""
    missing = sorted(set(expected) - set(mapped))
    unexpected = sorted(set(mapped) - set(expected))
    shapes = sorted(f"{k}: {tuple(mapped[k].shape)} vs model {tuple(expected[k].shape)}"
                    for k in set(mapped) & set(expected) if tuple(mapped[k].shape) != tuple(expected[k].shape))
    problems = [(f"{len(unmatched)} key(s) no mapping rule knows", unmatched),
                (f"{len(missing)} model key(s) the source lacks", missing),
                (f"{len(unexpected)} mapped key(s) the model lacks", unexpected),
                (f"{len(shapes)} shape mismatch(es)", shapes)]
    lines = [f"  {title}:\n" + "\n".join(f"    {k}" for k in keys[:20]) + ("\n    ..." if len(keys) > 20 else "")
             for title, keys in problems if keys]
    if lines:
        raise ConfigError(f"{source} does not match the model:\n" + "\n".join(lines) + (f"\n{hint}" if hint else ""))
