"""GPU step benchmark: a 7B stage-3 step shaped like the user's run, on one GPU, per trainer configuration.

The model is VITA-1.5's 7B layout (model/builder.vita_1p5_config: Qwen2.5-7B's decoder, hidden 3584, MLP 18944,
28 query / 4 key-value heads, untied 152,064 vocabulary; InternViT-300M at 448 px, up to 13 tiles per image; the
24-layer whale encoder) with the decoder cut to 2 and to 6 layers. Each configuration's micro-batch step (forward
and backward) is timed on both: a decoder layer's time is the difference / 4, and the 28-layer step is projected
from it (the towers, embedding, LM head and loss are in the 2-layer time once). Stage 3's groups train (LLM,
projector, audio adapter); the towers are frozen.

Data: samples drawn from bench/token_efficiency.py's length model (LLaVA-1.5's instruction mix, image tiles from
each source's image size), of which AUDIO_SHARE carry a clip of 2-10 s; the labelled share of each sample's text is
ANSWER_SHARE per source (this script's assumptions). A micro-batch takes samples up to --budget tokens; packed
configurations use the trainer's PackedCollator (rows of at most --max-length), padded ones its
MultimodalCollator (one sample per row, padded to the longest).

Configurations (CONFIGS): attention backend x activation checkpointing x loss x kernels. "today" is what the
trainer ran on a GPU without flash-attn before: padded rows, SDPA, every layer checkpointed, the chunked loss with as
many lm_head calls as the labels need. "new default" is what it runs now: packed rows, the varlen backend
(flash-attention-2 where installed), fixed lm_head calls, and the fewest checkpointed layers the memory model
(model/memory.py) fits on this card at this budget with --gpus GPUs sharing the model states; its 28-layer time is
projected from the measured per-layer times with and without checkpointing. Both are measured in the same run and
the ratio is printed.

Per configuration: real tokens/s, the projected 28-layer step, MFU by model/flops.py (the LM head at labelled
positions only under the chunked loss, frozen towers at 2N, the projector per merged token) against the card's
dense bf16 peak and against a measured large-matmul rate, HFU (adds recomputed layers and the attention the backend
really computes: SDPA scores every (query, key) pair of a row, masked or not), peak memory per token per decoder
layer next to model/memory.py's estimate, and the host syncs in one micro-batch's forward and backward
(torch.cuda.set_sync_debug_mode). With liger-kernel installed, the fused linear cross-entropy's loss is compared
with the chunked loss's.

A single-GPU, compute-only bound: no ZeRO-3 collectives, no data loading, no optimizer step (Adam on ZeRO-3 shards
is memory-bound and split over the GPUs).

    bash bench/gpu_check.sh                 # runs this after gpu_check.py (< 8 minutes on one H100/H200)
    python bench/gpu_step.py --cpu-smoke    # the same code on a tiny model on CPU (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from token_efficiency import CHAT_OVERHEAD, sample_shapes  # noqa: E402

from vita_api.constants import IGNORE_INDEX  # noqa: E402

# Assumptions about the mix (stated in the docstring): the share of a sample's text tokens that are answers (the
# labels), per source; the share of samples with an audio clip, and its length.
ANSWER_SHARE = {"llava_instruct": 0.6, "sharegpt": 0.6, "vqav2": 0.2, "gqa": 0.2, "okvqa": 0.2, "ocrvqa": 0.25,
                "aokvqa": 0.3, "textcaps": 0.5, "refcoco": 0.35, "vg": 0.35}
AUDIO_SHARE, CLIP_SECONDS = 0.2, (2.0, 10.0)
FBANK_FRAMES_PER_SECOND = 100
STAGE3 = frozenset({"llm", "mm_projector", "audio_adapter"})
LAYERS = (2, 6)


@dataclass(frozen=True)
class Config:
    name: str
    attention: str        # sdpa | varlen | flash_attention_2
    checkpointing: str    # all | none
    loss: str             # chunked (calls by labels) | fixed (calls from the budget) | fused (Liger)
    packed: bool = True
    liger: bool = False   # Liger's RoPE / RMSNorm / SwiGLU kernels


CONFIGS = (
    Config("today: padded, sdpa, all checkpointed, chunked", "sdpa", "all", "chunked", packed=False),
    Config("packed, sdpa, all, chunked", "sdpa", "all", "chunked"),
    Config("packed, varlen, all, fixed", "varlen", "all", "fixed"),
    Config("packed, varlen, none, fixed", "varlen", "none", "fixed"),
    Config("packed, flash_attention_2, all, fixed", "flash_attention_2", "all", "fixed"),
    Config("packed, flash_attention_2, none, fixed", "flash_attention_2", "none", "fixed"),
    Config("packed, varlen, all, fused loss (Liger)", "varlen", "all", "fused", liger=True),
    Config("packed, varlen, none, fixed, Liger kernels", "varlen", "none", "fixed", liger=True),
)


def available(config: Config) -> str | None:
    """Why a configuration cannot run here, or None."""
    if config.attention == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available
        if not is_flash_attn_2_available():
            return "flash-attn not installed"
    if config.liger:
        try:
            import liger_kernel  # noqa: F401
        except ImportError:
            return "liger-kernel not installed"
        if not torch.cuda.is_available():
            return "Liger needs a GPU"
    return None


def model_config(smoke: bool, layers: int, tok=None):
    from vita_trainer.model.builder import tiny_config, vita_1p5_config
    if smoke:
        cfg = tiny_config(tok, layers=layers)
    else:
        cfg = vita_1p5_config()
        cfg.text_config.num_hidden_layers = layers
    return cfg


def build(cfg, device: str):
    from vita_trainer.model.modeling import VitaForCausalLM
    from vita_trainer.train.weights import apply_trainable
    with torch.device(device):
        model = VitaForCausalLM(cfg)
    model = model.to(torch.bfloat16 if device == "cuda" else torch.float32)
    apply_trainable(model, STAGE3)
    model.chunked_loss = True
    return model.train()


def samples(cfg, n: int, max_length: int, seed: int, smoke: bool) -> list[dict]:
    """Processed samples (as data/processor.py makes them) from the mix's shapes: chat overhead and questions
    unlabelled, then the image slots, the audio slots, and the labelled answer tokens."""
    from vita_trainer.data.audio_tokens import audio_llm_tokens
    g = torch.Generator().manual_seed(seed)
    out = []
    stride = cfg.audio_config["adapter_stride"]
    vocab = 400 if smoke else 150_000
    for source, tiles, text in sample_shapes(n * 4, seed):
        if smoke:
            tiles, text = min(tiles, 2), max(text // 20, 4)
        frames = 0
        if float(torch.rand(1, generator=g)) < AUDIO_SHARE:
            seconds = CLIP_SECONDS[0] + float(torch.rand(1, generator=g)) * (CLIP_SECONDS[1] - CLIP_SECONDS[0])
            frames = int(seconds * FBANK_FRAMES_PER_SECOND) if not smoke else 64
        audio_tokens = audio_llm_tokens(frames, stride) if frames else 0
        answer = max(int(text * ANSWER_SHARE[source]), 1)
        length = CHAT_OVERHEAD + tiles * cfg.tokens_per_tile + audio_tokens + text
        if length > max_length:
            continue
        ids = torch.randint(10, vocab, (length,), generator=g)
        ids[(ids == cfg.image_token_id) | (ids == cfg.audio_token_id)] = 10  # media slots only where placed below
        at = CHAT_OVERHEAD
        ids[at:at + tiles * cfg.tokens_per_tile] = cfg.image_token_id
        at += tiles * cfg.tokens_per_tile
        ids[at:at + audio_tokens] = cfg.audio_token_id
        labels = torch.full_like(ids, IGNORE_INDEX)
        labels[-answer:] = ids[-answer:]
        sample = {"input_ids": ids, "labels": labels, "modality": "image" if tiles else "text"}
        if tiles:
            sample["pixel_values"] = torch.randn(tiles, 3, cfg.tile_size, cfg.tile_size, generator=g)
        if frames:
            sample["audio_features"] = [torch.randn(frames, cfg.audio_config["input_dim"], generator=g)]
        out.append(sample)
        if len(out) == n:
            break
    return out


def micro_batches(items: list[dict], budget: int) -> list[list[dict]]:
    batches, current, tokens = [], [], 0
    for s in items:
        if current and tokens + len(s["input_ids"]) > budget:
            batches.append(current)
            current, tokens = [], 0
        current.append(s)
        tokens += len(s["input_ids"])
    return batches or [current]


def collate(batch: list[dict], packed: bool, max_length: int, device: str, pad: int = 0) -> dict:
    from vita_trainer.data.collator import MultimodalCollator, PackedCollator
    out = (PackedCollator(pad, max_length) if packed else MultimodalCollator(pad))(batch)
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    return {k: (v.to(device, dtype=dtype) if torch.is_floating_point(v) else v.to(device)) if torch.is_tensor(v)
            else v for k, v in out.items()}


def set_config(model, config: Config, budget: int, liger_loss):
    """Switches the built model to `config`; returns Liger's fused loss module once Liger is applied (Liger
    patches the model in place, so its configurations come last)."""
    from vita_trainer.model.builder import training_attention
    from vita_trainer.model.chunked_loss import fixed_calls
    model.language_model.config._attn_implementation = training_attention(config.attention, cuda=True)
    model.checkpoint_policy = config.checkpointing
    if config.checkpointing == "none":
        model.activation_checkpointing_disable()
    else:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    model.lm_head_calls = fixed_calls(budget) if config.loss == "fixed" else None
    if (config.loss == "fused" or config.liger) and liger_loss is None:
        from vita_trainer.model.liger import apply_liger
        apply_liger(model)
        liger_loss = model.fused_loss
    model.fused_loss = liger_loss if config.loss == "fused" else None
    return liger_loss


def step(model, batch: dict) -> torch.Tensor:
    loss = model(**batch).loss
    loss.backward()
    return loss.detach()


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def host_syncs(model, batch: dict, device: str) -> int | None:
    """Synchronizing CUDA calls in one micro-batch's forward and backward, as PyTorch's sync debug mode warns them."""
    if device != "cuda":
        return None
    synchronize(device)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(model, batch)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    model.zero_grad(set_to_none=True)
    return sum("synchroniz" in str(w.message) for w in caught)


def time_steps(model, batches: list[dict], seconds: float, device: str) -> tuple[float, float]:
    """(mean seconds per micro-batch, peak bytes beyond the weights and their gradients): one warm-up step per
    batch, then at least one pass over the batches and at least `seconds`."""
    from vita_trainer.model.device_checks import raise_failed
    for b in batches:
        step(model, b)
        model.zero_grad(set_to_none=True)
    synchronize(device)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated() if device == "cuda" else 0
    start, done = time.perf_counter(), 0
    while done < len(batches) or time.perf_counter() - start < seconds:
        step(model, batches[done % len(batches)])
        model.zero_grad(set_to_none=True)
        done += 1
    synchronize(device)
    elapsed = (time.perf_counter() - start) / done
    raise_failed()  # the splice checks kept on the GPU (model/device_checks.py)
    if device != "cuda":
        return elapsed, 0.0
    gradients = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return elapsed, float(torch.cuda.max_memory_allocated() - before - gradients)  # the step's activations


def matmul_tflops(device: str) -> float | None:
    """The card's measured bf16 rate on a large square matmul (8192^3), TFLOP/s."""
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    synchronize(device)
    start, n = time.perf_counter(), 20
    for _ in range(n):
        a @ b
    synchronize(device)
    return 2 * 8192 ** 3 * n / (time.perf_counter() - start) / 1e12


def attention_computed(batch: dict, sdpa: bool, step_flops) -> float:
    """Forward attention FLOPs the backend computes: every (query, key) pair of each row under SDPA (its mask
    hides pairs but the kernel still scores them), the causal pairs of each segment under a varlen kernel."""
    rows, row_width = batch["input_ids"].shape
    if sdpa:
        return 4 * step_flops.attention_width * step_flops.layers * rows * row_width * row_width
    cu = batch["cu_seq_lens_q"].tolist()
    return sum(step_flops.causal_attention(z - a) for a, z in zip(cu, cu[1:]))


def per_decoder_layer(by_depth: dict[int, float]) -> float:
    """One decoder layer's share of a figure (seconds, bytes) measured at both depths: the difference over the
    layers added."""
    return (by_depth[LAYERS[1]] - by_depth[LAYERS[0]]) / (LAYERS[1] - LAYERS[0])


def run(a) -> dict:
    from vita_trainer.model.flops import StepFlops, peak_tflops
    device = "cpu" if a.cpu_smoke else "cuda"
    tok = None
    if a.cpu_smoke:
        from vita_trainer.data.tokenizer import train_tiny_tokenizer
        tok = train_tiny_tokenizer([f"w{i} " * 4 for i in range(500)], vocab_size=400)
    name = torch.cuda.get_device_name() if device == "cuda" else "cpu"
    peak, measured = peak_tflops(name), matmul_tflops(device)
    result: dict = {"device": name, "torch": torch.__version__, "budget_tokens": a.budget, "max_length": a.max_length,
                    "bound": "single GPU, compute only: forward + backward of one micro-batch; no ZeRO-3 "
                             "collectives, no data loading, no optimizer step",
                    "peak_bf16_tflops": peak, "measured_matmul_tflops": round(measured, 1) if measured else None}
    items = samples(model_config(a.cpu_smoke, LAYERS[0], tok), a.samples, a.max_length, 0, a.cpu_smoke)
    chosen = micro_batches(items, a.budget)[:a.batches]
    runnable = [c for c in CONFIGS if not available(c)]
    result["skipped"] = {c.name: why for c in CONFIGS if (why := available(c))}
    times: dict[str, dict[int, float]] = {c.name: {} for c in runnable}
    peaks: dict[str, dict[int, float]] = {c.name: {} for c in runnable}
    syncs: dict[str, int | None] = {}
    losses: dict[str, float] = {}
    for layers in LAYERS:
        torch.manual_seed(0)
        model = build(model_config(a.cpu_smoke, layers, tok), device)
        liger_loss = None
        for config in runnable:
            liger_loss = set_config(model, config, a.budget, liger_loss)
            batches = [collate(b, config.packed, a.max_length, device) for b in chosen]
            times[config.name][layers], peaks[config.name][layers] = time_steps(model, batches, a.seconds, device)
            if layers == LAYERS[-1]:
                syncs[config.name] = host_syncs(model, batches[0], device)
                torch.manual_seed(0)  # the same dropout in the frozen whale encoder for every configuration
                with torch.no_grad():
                    losses[config.name] = float(model(**batches[0]).loss)
        del model, liger_loss
        if device == "cuda":
            torch.cuda.empty_cache()

    full = model_config(a.cpu_smoke, 4 if a.cpu_smoke else 28, tok)
    full_layers, text = full.text_config.num_hidden_layers, full.text_config
    step_flops = StepFlops.of(full, STAGE3)
    flops = sum(step_flops.processed(s) for b in chosen for s in b) / len(chosen)
    tokens = sum(len(s["input_ids"]) for b in chosen for s in b) / len(chosen)
    useful_attention = sum(step_flops.causal_attention(len(s["input_ids"])) for b in chosen for s in b) / len(chosen)
    layouts = {packed: [collate(b, packed, a.max_length, "cpu") for b in chosen] for packed in (True, False)}
    from vita_trainer.model import memory
    shape = memory.LayerShape.of(text)
    report = {}
    for config in runnable:
        per_layer = per_decoder_layer(times[config.name])
        projected = times[config.name][LAYERS[0]] + (full_layers - LAYERS[0]) * per_layer
        batches = layouts[config.packed]
        positions = sum(b["input_ids"].numel() for b in batches) / len(batches)
        computed = sum(attention_computed(b, config.attention == "sdpa", step_flops) for b in batches) / len(batches)
        recomputed = config.checkpointing == "all"
        # hardware FLOPs: the decoder on every position (padding too), the attention really computed, and the
        # checkpointed layers' forward again
        hardware = (flops + 6 * step_flops.decoder_params * (positions - tokens) + 3 * (computed - useful_attention)
                    + (2 * step_flops.decoder_params * positions + computed if recomputed else 0.0))
        memory_per_layer = per_decoder_layer(peaks[config.name]) / tokens
        report[config.name] = {
            "tokens_per_s": round(tokens / projected, 1), "step_s_28_layers": round(projected, 4),
            "decoder_layer_s": round(per_layer, 5), "mfu": _ratio(flops / projected, peak),
            "mfu_vs_measured_matmul": _ratio(flops / projected, measured), "hfu": _ratio(hardware / projected, peak),
            "memory_per_token_per_layer_bytes": round(memory_per_layer),
            "memory_model_bytes": (shape.hidden if recomputed else shape.layer_values_per_token()) * memory.BYTES_BF16,
            "host_syncs_per_micro_batch": syncs[config.name], "loss": round(losses[config.name], 4)}

    # the new default: the fewest checkpointed layers the memory model fits, timed from the two measured policies
    attention = "varlen" if available(CONFIGS[4]) else "flash_attention_2"
    measured_runs = {(c.attention, c.checkpointing): c.name for c in runnable if c.loss == "fixed" and not c.liger}
    t_all, t_none = times[measured_runs[(attention, "all")]], times[measured_runs[(attention, "none")]]
    card_gib = torch.cuda.get_device_properties(0).total_memory / 2 ** 30 if device == "cuda" else 80.0
    fits = stage3_memory(a.gpus, a.budget, card_gib)
    fewest = min(full_layers, fits["fewest_checkpointed_layers"] if fits["fewest_checkpointed_layers"] is not None
                 else full_layers)
    layer_all, layer_none = per_decoder_layer(t_all), per_decoder_layer(t_none)
    new_step = t_none[LAYERS[0]] - LAYERS[0] * layer_none + fewest * layer_all + (full_layers - fewest) * layer_none
    today = report[CONFIGS[0].name]
    result.update(configs=report, new_default={
        "attention": attention, "checkpointed_layers": f"{fewest} of {full_layers}",
        "policy_from": f"model/memory.py: {a.gpus} GPUs of {card_gib:.0f} GiB, {a.budget} tokens per micro-batch",
        "step_s_28_layers": round(new_step, 4), "tokens_per_s": round(tokens / new_step, 1),
        "mfu": _ratio(flops / new_step, peak), "speedup_vs_today": round(today["step_s_28_layers"] / new_step, 2)},
        micro_batch={"real_tokens": tokens, "model_tflop": round(flops / 1e12, 3)})
    fused = next((c.name for c in runnable if c.loss == "fused"), None)
    if fused:
        chunked = report[measured_runs[("varlen", "all")]]["loss"]
        result["fused_loss_vs_chunked"] = {"fused": report[fused]["loss"], "chunked": chunked,
                                           "matches": abs(report[fused]["loss"] - chunked) < 2e-2}
    return result


def stage3_memory(gpus: int, tokens: int, gpu_memory_gib: float) -> dict:
    """model/memory.py's estimate for the 7B layout's stage 3 (what `vita-model inspect --stage multimodal_sft`
    prints, without the preset file's dependencies)."""
    from vita_trainer.model import memory
    from vita_trainer.model.builder import vita_1p5_config
    from vita_trainer.model.modeling import VitaForCausalLM
    config = vita_1p5_config()
    model = VitaForCausalLM.empty(config)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for g in STAGE3 for p in model.group_module(g).parameters())
    return memory.estimate(memory.LayerShape.of(config.text_config), total=total, trainable=trainable, gpus=gpus,
                           tokens=tokens, gpu_memory_gib=gpu_memory_gib)


def _ratio(rate: float, peak_tflops: float | None) -> float | None:
    return round(rate / (peak_tflops * 1e12), 4) if peak_tflops else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--budget", type=int, default=16384, help="tokens per micro-batch")
    ap.add_argument("--max-length", type=int, default=8192, help="tokens per packed row")
    ap.add_argument("--samples", type=int, default=80, help="samples made (those of --batches micro-batches used)")
    ap.add_argument("--batches", type=int, default=3, help="distinct micro-batches cycled through")
    ap.add_argument("--seconds", type=float, default=6.0, help="timing per configuration and layer count")
    ap.add_argument("--gpus", type=int, default=8, help="GPUs sharing the model states, for the memory model")
    ap.add_argument("--cpu-smoke", action="store_true", help="a tiny model on CPU: checks the code path only")
    a = ap.parse_args()
    if a.cpu_smoke:
        a.budget, a.max_length, a.samples, a.batches, a.seconds = 256, 128, 20, 2, 0.0
    print(json.dumps(run(a), indent=2))


if __name__ == "__main__":
    main()
