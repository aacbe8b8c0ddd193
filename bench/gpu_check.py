"""GPU check: a ~1B-parameter Qwen2-shaped VITA (plus a SigLIP-style tower) through real training steps.

bf16, flash-attention-2 when installed (SDPA otherwise), gradient checkpointing, packed rows. Prints tokens/s,
achieved TFLOP/s and MFU against the card's bf16 dense peak, peak memory, and checks that the packed and the
unpacked loss agree on the device. Needs only torch + transformers (no DeepSpeed, no network).

    bash bench/gpu_check.sh            # on a GPU machine (< 8 minutes on one H100/H200)
    python bench/gpu_check.py --cpu-smoke   # the same code path, tiny, on CPU (used by the tests)
"""

from __future__ import annotations

import argparse
import json
import time

import torch

# bf16 dense peak TFLOP/s (no sparsity), by device-name substring.
PEAK_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0}


def peak_for(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name), None)


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
    from vita_trainer.constants import IGNORE_INDEX
    samples = []
    tpt = cfg.tokens_per_tile
    size = cfg.tile_size
    for i in range(n_samples):
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
    out.pop("num_tokens", None)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cpu-smoke", action="store_true")
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--samples-per-step", type=int, default=16)
    ap.add_argument("--seq", type=int, default=2048)
    a = ap.parse_args()
    from vita_trainer.data.collator import MultimodalCollator, PackedCollator
    smoke = a.cpu_smoke or not torch.cuda.is_available()
    device = "cpu" if smoke else "cuda"
    dtype = torch.float32 if smoke else torch.bfloat16
    steps, n, seq = (3, 4, 64) if smoke else (a.steps, a.samples_per_step, a.seq)
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    tok, cfg, model = build(smoke, device)
    attn = cfg.text_config._attn_implementation
    model = model.to(dtype)
    n_params = sum(p.numel() for p in model.parameters())

    # 1) packed vs unpacked loss on the device (fp32 copy of the model for a tight comparison)
    check = make_batch(tok, cfg, 4, seq, device, g)
    ref = model.float().eval()
    with torch.no_grad():
        l_unpacked = ref(**to(MultimodalCollator(tok.pad_token_id)(check), device, torch.float32)).loss.item()
        l_packed = ref(**to(PackedCollator(tok.pad_token_id, seq * 2)(check), device, torch.float32)).loss.item()
    model = model.to(dtype).train()
    if not smoke:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=not smoke)
    collate = PackedCollator(tok.pad_token_id, seq * 4)
    tokens = 0
    for i in range(steps + 2):
        batch = to(collate(make_batch(tok, cfg, n, seq, device, g)), device, dtype)
        if i == 2:  # two warm-up steps
            if not smoke:
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
            start, tokens = time.perf_counter(), 0
        loss = model(**batch).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["input_ids"].numel())
    if not smoke:
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    tps = tokens / elapsed
    # 6 N per token for forward+backward, plus 2 N for the recomputed forward under gradient checkpointing
    flops_per_token = (6 + (0 if smoke else 2)) * n_params
    tflops = tps * flops_per_token / 1e12
    name = "cpu" if smoke else torch.cuda.get_device_name()
    peak = None if smoke else peak_for(name)
    result = {"device": name, "attention": attn, "params": n_params, "dtype": str(dtype).replace("torch.", ""),
              "tokens_per_s": round(tps, 1), "achieved_tflops": round(tflops, 2),
              "mfu": round(tflops / peak, 3) if peak else None,
              "peak_memory_gib": None if smoke else round(torch.cuda.max_memory_allocated() / 2 ** 30, 2),
              "loss_unpacked": l_unpacked, "loss_packed": l_packed,
              "packed_matches": abs(l_unpacked - l_packed) < 1e-3, "final_loss": loss.item()}
    print(json.dumps(result, indent=2))
    if not result["packed_matches"]:
        raise SystemExit("packed and unpacked losses disagree")


if __name__ == "__main__":
    main()
