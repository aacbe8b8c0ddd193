"""Benchmark: our training step vs a bare HF causal LM forward/backward/step on identical inputs (CPU).

Both sides hold the same Qwen2 weights; ours adds the multimodal plumbing (embedding splice, and the dummy tile
and clip that keep the encoders in the graph for ZeRO-3). Text-only batches, since the bare LM takes no media.
The bare model is the baseline, measured in the same run; the median of interleaved steps is reported.

    .venv/bin/python bench/step_overhead.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from vita_trainer.data.tokenizer import train_tiny_tokenizer
from vita_trainer.model.builder import build_model, tiny_config


def step(model, opt, batch):
    loss = model(**batch).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=512)
    ap.add_argument("--hidden", type=int, default=512)
    ap.add_argument("--layers", type=int, default=4)
    a = ap.parse_args()
    torch.manual_seed(0)
    torch.set_flush_denormal(True)
    tok = train_tiny_tokenizer([f"word{i} " * 3 for i in range(500)], vocab_size=2000)
    # encoders sized like VITA's relative to its LLM (a few % of the parameters)
    cfg = tiny_config(tok, hidden=a.hidden, layers=a.layers, heads=8, ffn=a.hidden * 3, image_size=224,
                      patch_size=14, vision_hidden=128, vision_layers=2, audio_d_model=64, audio_layers=2)
    ours = build_model(cfg).train()
    bare = type(ours.language_model)(cfg.text_config).train()
    bare.load_state_dict(ours.language_model.state_dict())
    n_lm = sum(p.numel() for p in bare.parameters())
    n_all = sum(p.numel() for p in ours.parameters())
    ids = torch.randint(10, len(tok), (a.batch, a.seq))
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids)}
    opts = {m: torch.optim.AdamW(m.parameters(), lr=1e-5) for m in (ours, bare)}
    times = {m: [] for m in (ours, bare)}
    for i in range(a.steps + 3):
        for m in ((ours, bare) if i % 2 else (bare, ours)):  # interleave to share machine noise
            start = time.perf_counter()
            step(m, opts[m], batch)
            if i >= 3:
                times[m].append(time.perf_counter() - start)
    t_ours, t_bare = statistics.median(times[ours]), statistics.median(times[bare])
    print(f"LLM {n_lm / 1e6:.1f}M params (whole VITA {n_all / 1e6:.1f}M), batch {a.batch} x {a.seq} tokens, CPU")
    print(f"bare HF causal LM step: {t_bare * 1000:.1f} ms   ours: {t_ours * 1000:.1f} ms   "
          f"overhead {100 * (t_ours / t_bare - 1):.1f}% (ratio {t_ours / t_bare:.3f}; goal <= 10%)")


if __name__ == "__main__":
    main()
