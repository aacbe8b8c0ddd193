"""What one GPU holds while a stage trains under ZeRO-3: model states, activations and logits, in bytes.

An estimate from the shapes, for `vita-model inspect` to say whether a micro-batch fits a card and how many tokens
would. It assumes bf16 weights and activations, flash-attention/SDPA (no seq x seq scores kept) and Adam.
"""

from __future__ import annotations

from dataclasses import dataclass

from .chunked_loss import CHUNK_TOKENS

BYTES_BF16, BYTES_ADAM_STATE = 2, 4 + 4 + 4  # fp32 master weights + Adam m + v per trainable parameter
# zero3.json's stage3_max_live_parameters: parameters gathered at once, in bf16.
ZERO3_LIVE_PARAMETERS = 1e9
# The CUDA context, NCCL buffers and the caching allocator's fragmentation: kept free on every card.
RESERVE_FRACTION = 0.10
GIB = 2 ** 30


@dataclass(frozen=True)
class LayerShape:
    hidden: int
    intermediate: int
    kv_dim: int
    layers: int
    vocab: int

    @classmethod
    def of(cls, text_config) -> "LayerShape":
        head_dim = getattr(text_config, "head_dim", None) or text_config.hidden_size // text_config.num_attention_heads
        return cls(text_config.hidden_size, text_config.intermediate_size, text_config.num_key_value_heads * head_dim,
                   text_config.num_hidden_layers, text_config.vocab_size)

    def layer_values_per_token(self) -> int:
        """Values a decoder layer keeps for its backward pass, per token: two norms' inputs and outputs, q/k/v, the
        attention output and o_proj's input, and SwiGLU's gate, up, activation and product."""
        return 6 * self.hidden + 2 * self.kv_dim + 4 * self.intermediate


def model_states_bytes(total: int, trainable: int, gpus: int, hpz_partition: int = 0) -> float:
    """ZeRO-3 partitions bf16 weights, gradients and fp32 optimizer states over all GPUs. ZeRO++'s hierarchical
    partitioning (`hpz_partition`: the GPUs of a node) keeps a second copy of the bf16 weights partitioned over the
    node's GPUs only."""
    secondary = total * BYTES_BF16 / hpz_partition if hpz_partition else 0.0
    return (total * BYTES_BF16 + trainable * (BYTES_BF16 + BYTES_ADAM_STATE)) / gpus + secondary


def activation_bytes(shape: LayerShape, tokens: int, checkpointed_layers: int) -> float:
    """A checkpointed layer keeps only its input (plus one layer recomputed at a time in the backward pass); the
    others keep all their values."""
    per_layer = shape.layer_values_per_token() * tokens * BYTES_BF16
    kept = checkpointed_layers * shape.hidden * tokens * BYTES_BF16 + (shape.layers - checkpointed_layers) * per_layer
    return kept + (per_layer if checkpointed_layers else 0)


def logits_bytes(shape: LayerShape, tokens: int, chunked: bool) -> float:
    """bf16 logits, their fp32 upcast and its gradient; chunked: one chunk of labelled positions at a time."""
    rows = min(tokens, CHUNK_TOKENS) if chunked else tokens
    return rows * shape.vocab * (BYTES_BF16 + 4 + 4)


def estimate(shape: LayerShape, *, total: int, trainable: int, gpus: int, tokens: int, gpu_memory_gib: float,
             checkpointed_layers: int | None = None, chunked_loss: bool = True, language_model: bool = True,
             hpz_partition: int = 0) -> dict:
    """GiB per GPU for a micro-batch of `tokens`, whether it fits `gpu_memory_gib`, and the most tokens that do;
    `checkpointed_layers` decoder layers checkpointed (None: all), and the fewest that would fit
    (`fewest_checkpointed_layers`, None if not even all do). `language_model` is False for a stage that never runs
    the LLM (the CTC stage)."""
    fixed = model_states_bytes(total, trainable, gpus, hpz_partition) + ZERO3_LIVE_PARAMETERS * BYTES_BF16
    checkpointed_layers = shape.layers if checkpointed_layers is None else checkpointed_layers

    def need(n: int, checkpointed: int = checkpointed_layers) -> dict:
        act = activation_bytes(shape, n, checkpointed) if language_model else 0.0
        log = logits_bytes(shape, n, chunked_loss) if language_model else 0.0
        return {"activations": act, "logits": log, "total": fixed + act + log}

    usable = gpu_memory_gib * GIB * (1 - RESERVE_FRACTION)
    at = need(tokens)
    lo, hi = 0, 1 << 24  # the most tokens that fit: need() grows with tokens, so bisect
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if need(mid)["total"] <= usable else (lo, mid - 1)
    fewest = next((k for k in range(shape.layers + 1) if need(tokens, k)["total"] <= usable), None)
    return {"tokens": tokens, "checkpointed_layers": checkpointed_layers, "fewest_checkpointed_layers": fewest,
            "model_states_gib": round(fixed / GIB, 2),
            "activations_gib": round(at["activations"] / GIB, 2), "logits_gib": round(at["logits"] / GIB, 2),
            "total_gib": round(at["total"] / GIB, 2), "gpu_memory_gib": gpu_memory_gib,
            "usable_gib": round(usable / GIB, 2), "fits": at["total"] <= usable, "max_tokens": lo}
