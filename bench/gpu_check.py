"""GPU check: a ~1B-parameter Qwen2-shaped VITA (plus a SigLIP-style tower) through real training steps.

bf16, flash-attention-2 when installed (SDPA otherwise), gradient checkpointing, packed rows. Prints real tokens/s,
model TFLOP/s and MFU (6N per real token plus causal attention over each sample, against the card model's bf16
dense peak), hardware TFLOP/s separately (with the recomputed forward and padding), peak memory; and checks that
packed rows (two or more) give the unpacked loss in fp32 (SDPA) and in bf16 under every attention backend here:
SDPA, flash-attention-2 when installed, the trainer's varlen backend (model/varlen_attention.py: PyTorch's own
varlen flash kernel in bf16 on the GPU) and the plain-torch flash-attention reference (model/varlen_reference.py),
which take the same varlen arguments; and times the device image pipeline's step (8 decoded 640x480 images to
104 normalised tiles). Needs only torch + transformers (no DeepSpeed, no network).

    bash bench/gpu_check.sh            # on a GPU machine (< 8 minutes on one H100/H200)
    python bench/gpu_check.py --cpu-smoke   # the same code path, tiny, on CPU (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from vita_trainer.model.flops import peak_tflops  # the card table the trainer's MFU uses

BF16_LOSS_TOLERANCE = 2e-2  # bf16 rounding differs between padded and packed layouts; a leak moves the loss more


def build(smoke: bool, device: str):
    from vita_trainer.data.tokenizer import train_tiny_tokenizer
    from vita_trainer.model.builder import build_model, tiny_config
    tok = train_tiny_tokenizer([f"w{i} " * 4 for i in range(2000)], vocab_size=4000 if not smoke else 400)
    if smoke:
        cfg = tiny_config(tok)
    else:  # ~1.1B: Qwen2 2048 x 20 layers + a 12-layer 768-wide SigLIP-style tower at 448 px
        cfg = tiny_config(tok, hidden=2048, layers=20, heads=16, ffn=5632, image_size=448, patch_size=14,
                          vision_hidden=768, vision_layers=12, audio_d_model=256, audio_layers=2,
                          downsample_ratio=0.5)
        cfg.text_config.vocab_size = 32000  # a realistic LM head cost; token ids stay < len(tok)
    model = build_model(cfg).to(device)
    return tok, cfg, model


def make_batch(tok, cfg, n_samples: int, seq: int, device: str, g: torch.Generator):
    """Samples of varying length with one image tile each (media slots + text), as processed samples."""
    from vita_api.constants import IGNORE_INDEX
    samples = []
    tpt = cfg.tokens_per_tile
    size = cfg.tile_size
    for _ in range(n_samples):
        n_text = int(torch.randint(seq // 4, seq // 2, (1,), generator=g))
        text = torch.randint(10, len(tok), (n_text,), generator=g)
        ids = torch.cat([text[:8], torch.full((tpt,), cfg.image_token_id), text[8:]])
        labels = ids.clone()
        labels[: 8 + tpt] = IGNORE_INDEX
        samples.append({"input_ids": ids, "labels": labels, "audio_features": [],
                        "pixel_values": torch.randn(1, 3, size, size, generator=g)})
    return samples


def to(batch, device, dtype):
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            v = v.to(device)
            out[k] = v.to(dtype) if v.is_floating_point() else v
        else:
            out[k] = v
    return out


def step_flops(cfg, model, lengths: list[int], processed_tokens: int, tiles: int,
               recompute: bool) -> tuple[float, float]:
    """(model FLOPs, hardware FLOPs) of one training step. Model: 6N per real token (N: the decoder layers and the
    LM head), causal attention 6 L d s^2 per sample of s tokens, 6N per vision patch. Hardware adds the forward
    recomputed under gradient checkpointing (8 instead of 6) and the padding positions the rows carry."""
    from vita_trainer.model.vision import side
    text = cfg.text_config
    n_llm = sum(p.numel() for p in model.language_model.model.layers.parameters()) + text.vocab_size * text.hidden_size
    n_vis = sum(p.numel() for m in (model.vision_tower, model.mm_projector) for p in m.parameters())
    vcfg = cfg.vision_config
    size, patch = (vcfg["image_size"], vcfg["patch_size"]) if isinstance(vcfg, dict) else (vcfg.image_size,
                                                                                             vcfg.patch_size)
    patches = tiles * (side(size) // side(patch)) ** 2
    attention = text.num_hidden_layers * text.hidden_size * sum(n * n for n in lengths)
    per = 8 if recompute else 6
    model_flops = 6 * n_llm * sum(lengths) + 6 * attention + 6 * n_vis * patches
    hardware_flops = per * n_llm * processed_tokens + per * attention + per * n_vis * patches
    return model_flops, hardware_flops


def packing_check(model, tok, cfg, seq: int, device: str, dtype, g) -> dict:
    """Packed (two or more rows) vs unpacked loss on the device, per attention backend and dtype; for the flash
    backends also the loss without the varlen arguments (what transformers ran before), to show the check sees a
    leak."""
    import importlib.util

    from vita_trainer.data.collator import MultimodalCollator, PackedCollator
    from vita_trainer.model import varlen_attention, varlen_reference
    samples = make_batch(tok, cfg, 6, seq, device, g)
    unpacked = MultimodalCollator(tok.pad_token_id)(samples)
    packed = PackedCollator(tok.pad_token_id, 2 * seq)(samples)
    rows = int(packed["input_ids"].shape[0])
    # the trainer's varlen backend: PyTorch's varlen flash kernel on the GPU in bf16, per-segment SDPA in fp32
    backends = ["sdpa", varlen_reference.register(), varlen_attention.NAME]
    if device == "cuda" and importlib.util.find_spec("flash_attn") is not None:
        backends.append("flash_attention_2")
    # fp32 for a tight comparison (SDPA, and the reference), then the training dtype under every backend
    runs = list(dict.fromkeys([("sdpa", torch.float32), (backends[1], torch.float32)] + [(b, dtype) for b in backends]))
    llm_cfg = model.language_model.config
    results = {"rows": rows, "samples": len(samples),
               "backends_missing": [] if "flash_attention_2" in backends else ["flash_attention_2"]}
    model.eval()
    for backend, dt in runs:
        model.to(dt)
        llm_cfg._attn_implementation = backend
        with torch.no_grad():
            a = model(**to(unpacked, device, dt)).loss.item()
            b = model(**to(packed, device, dt)).loss.item()
            leaky = None
            if "flash" in backend:
                bare = {k: v for k, v in packed.items() if not k.startswith(("cu_seq_lens", "max_length"))}
                leaky = model(**to(bare, device, dt)).loss.item()
        tol = 1e-3 if dt == torch.float32 else BF16_LOSS_TOLERANCE
        results[f"{backend}/{str(dt).replace('torch.', '')}"] = {
            "unpacked": a, "packed": b, "matches": abs(a - b) < tol,
            **({"without_varlen_args": leaky} if leaky is not None else {})}
    llm_cfg._attn_implementation = "sdpa"
    results["all_match"] = 2 <= rows < len(samples) and all(r["matches"] for r in results.values()
                                                            if isinstance(r, dict))
    return results


def device_image_step_ms(device: str, reps: int) -> float:
    """The device image pipeline's step (resize, tile, normalise) for a batch of 8 decoded 640x480 images, each
    a 4x3 grid plus thumbnail (104 tiles of 448 px), in ms per batch."""
    from vita_trainer.model.image_tiles import tiles_from_images
    mean = std = (0.5, 0.5, 0.5)  # (data.image's constants would import Pillow, which the GPU image lacks)
    images = torch.randint(0, 256, (8, 480, 640, 3), dtype=torch.uint8).to(device)
    sizes = torch.tensor([[480, 640]] * 8)
    grids = torch.tensor([[4, 3, 1, 0]] * 8)  # (cols, rows, thumbnail, centre crop)
    for _ in range(2):
        tiles_from_images(images, sizes, grids, 448, mean, std)
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        tiles_from_images(images, sizes, grids, 448, mean, std)
    if device == "cuda":
        torch.cuda.synchronize()
    return 1e3 * (time.perf_counter() - start) / reps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--samples-per-step", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2048)
    a = ap.parse_args()
    import importlib.util

    from vita_trainer.data.collator import PackedCollator
    smoke = a.cpu_smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    dtype = torch.float32 if smoke else torch.bfloat16
    steps, n, seq = (3, 4, 64) if smoke else (a.steps, a.samples_per_step, a.seq)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tok, cfg, model = build(smoke, device)
    n_params = sum(p.numel() for p in model.parameters())

    # 1) packed vs unpacked loss on the device, fp32 and bf16, per attention backend
    packing = packing_check(model, tok, cfg, seq, device, dtype, g)

    image_step_ms = device_image_step_ms(device, 1 if smoke else 20)

    # 2) training throughput, flash-attention-2 when installed
    attn = "flash_attention_2" if not smoke and importlib.util.find_spec("flash_attn") else "sdpa"
    model.language_model.config._attn_implementation = attn
    model = model.to(dtype).train()
    if not smoke:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=not smoke)
    collate = PackedCollator(tok.pad_token_id, seq * 4)
    real = processed = 0
    model_flops = hardware_flops = 0.0
    for i in range(steps + 2):
        samples = make_batch(tok, cfg, n, seq, device, g)
        batch = to(collate(samples), device, dtype)
        if i == 2:  # two warm-up steps
            if not smoke:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start, real, processed, model_flops, hardware_flops = time.perf_counter(), 0, 0, 0.0, 0.0
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        lengths = [len(s["input_ids"]) for s in samples]
        real += sum(lengths)
        processed += int(batch["input_ids"].numel())
        mf, hf = step_flops(cfg, model, lengths, int(batch["input_ids"].numel()),
                            tiles=int(batch["pixel_values"].shape[0]), recompute=not smoke)
        model_flops, hardware_flops = model_flops + mf, hardware_flops + hf
    if not smoke:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    name = "cpu" if smoke else torch.cuda.get_device_name()
    peak = None if smoke else peak_tflops(name)
    tflops, hw_tflops = model_flops / elapsed / 1e12, hardware_flops / elapsed / 1e12
    result = {"device": name, "attention": attn, "params": n_params, "dtype": str(dtype).replace("torch.", ""),
              "peak_tflops": peak, "tokens_per_s": round(real / elapsed, 1), "padding_fraction":
              round(1 - real / processed, 3), "model_tflops": round(tflops, 4), "hardware_tflops": round(hw_tflops, 4),
              "mfu": round(tflops / peak, 3) if peak else None, "hfu": round(hw_tflops / peak, 3) if peak else None,
              "peak_memory_gib": None if smoke else round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
              "device_image_step_ms_per_8_images": round(image_step_ms, 2),
              "packing": packing, "packed_matches": packing["all_match"], "final_loss": loss.item()}
    print(json.dumps(result, indent=2))
    if not result["packed_matches"]:
        raise SystemExit("packed and unpacked losses disagree (see packing)")


if __name__ == "__main__":
    main()
