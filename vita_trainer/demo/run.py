"""`vita-train demo`: synthetic data, a tiny VITA, every stage through `vita-train local`, held-out accuracy."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from ..data.audio import GlobalCMVN, fbank, load_audio
from ..data.tokenizer import train_tiny_tokenizer
from ..model.builder import build_model, tiny_config
from . import synth

# A short system prompt: the tiny model's compute goes to the media and answers, not to 48 masked tokens.
SYSTEM_PROMPT = "You are VITA."
# Four stages: "base-lm" stands in for the pretrained Qwen2.5 a real run starts from; then the three VITA stages.
# Stage 3 also trains the encoders: frozen random encoders cap what a tiny model can learn (demo-feasibility.md).
COMMON = {"per_device_train_batch_size": 48, "logging_steps": 25, "save_steps": 500, "save_total_limit": 1,
          "lr_scheduler_type": "cosine", "warmup_steps": 0.03, "dataloader_num_workers": 0,
          "cache_processed_samples": True, "model_max_length": 512, "seed": 0,
          "system_prompt": SYSTEM_PROMPT}
STAGES = [
    ("base-lm", "text_sft", "demo_text", {"max_steps": 400, "learning_rate": 1e-3}),
    ("vision-align", "vision_align", "demo_image", {"max_steps": 300, "learning_rate": 1e-3}),
    ("audio-align", "audio_align", "demo_audio", {"max_steps": 300, "learning_rate": 1e-3}),
    ("multimodal", "multimodal_sft", "demo_multimodal",
     {"max_steps": 2000, "learning_rate": 1e-3, "unfreeze_vision_tower": True, "freeze_audio_encoder": False,
      "vision_tower_lr": 3e-3, "audio_encoder_lr": 3e-3}),
]


def build_run(name: str, steps_scale: float, deepspeed: str, procs: int) -> dict:
    stages = []
    for stage_name, preset, mixture, args in STAGES:
        a = {**COMMON, **args}
        a["max_steps"] = max(int(a["max_steps"] * steps_scale), 2)
        stages.append({"name": stage_name, "preset": preset, "datasetUse": mixture, "args": a})
    return {"apiVersion": "vita.training.dev/v1alpha1", "kind": "VitaTrainingRun", "metadata": {"name": name},
            "spec": {"model": {"base": "base_model", "tokenizer": "base_model"}, "data": {"registry": "registry.yaml"},
                     "output": "runs", "trainer": {"deepspeed": deepspeed},
                     "resources": {"gpusPerNode": 0, "cpuProcsPerNode": procs}, "stages": stages}}


def prepare(out: Path, small: bool = False, seed: int = 0) -> None:
    """Data, tokenizer, base model and CMVN stats; skipped if already there."""
    if (out / "base_model" / "config.json").is_file():
        return
    sizes = dict(n_image=96, n_audio=48, n_text=48, n_eval=8) if small else {}
    files = synth.generate(out, seed=seed, **sizes)
    tok = train_tiny_tokenizer(synth.corpus(list(files["chats"].values())), vocab_size=1000)
    torch.manual_seed(seed)
    cfg = tiny_config(tok, hidden=64, layers=2, heads=4, ffn=256, image_size=64, patch_size=8, vision_hidden=64,
                      vision_layers=2, audio_d_model=64, audio_layers=2)
    build_model(cfg).save_pretrained(out / "base_model")
    tok.save_pretrained(out / "base_model")
    clips = sorted((out / "audio").glob("train_*.wav"))[:100]
    GlobalCMVN.estimate([fbank(load_audio(c)) for c in clips]).save(out / "base_model" / "global_cmvn.json")


def evaluate_run(out: Path, final_stage: str) -> dict:
    from ..data.processor import MediaSpec, SampleProcessor
    from ..data.registry import load_registry
    from ..data.tokenizer import load_tokenizer
    from ..model.builder import load_model
    from .evaluate import evaluate
    model_dir = out / "runs" / final_stage
    model, tok = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    proc = SampleProcessor(tok, MediaSpec.from_config(model.config), load_registry(out / "registry.yaml"), 512,
                           cmvn=GlobalCMVN.load(model_dir / "global_cmvn.json"), system_prompt=SYSTEM_PROMPT)
    kind = {q: k for q, k in synth.IMAGE_QUESTIONS + synth.AUDIO_QUESTIONS}
    return {"image": evaluate(model, tok, proc, str(out / "chats" / "image_eval.json"), kind.get),
            "audio": evaluate(model, tok, proc, str(out / "chats" / "audio_eval.json"), kind.get)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vita-train demo")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--steps-scale", type=float, default=1.0, help="scale every stage's max_steps (tests use less)")
    p.add_argument("--small", action="store_true", help="a few dozen samples (tests)")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--deepspeed", default="none", choices=["none", "zero2", "zero3", "zero3_offload"])
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    t0 = time.time()
    prepare(out, small=a.small)
    run_yaml = out / "run-tiny.yaml"
    run_yaml.write_text(yaml.safe_dump(build_run("tiny-demo", a.steps_scale, a.deepspeed, a.nproc), sort_keys=False))
    from ..local import run_local
    summaries = run_local(run_yaml, a.nproc)
    results = evaluate_run(out, STAGES[-1][0])
    report = {"stages": [{k: s[k] for k in ("stage", "preset", "global_step", "first_loss", "final_loss", "seconds")}
                         for s in summaries], "eval": results, "total_seconds": round(time.time() - t0, 1)}
    (out / "demo_summary.json").write_text(json.dumps(report, indent=2))
    img, aud = results["image"]["accuracy"], results["audio"]["accuracy"]
    print(f"\nheld-out exact-match accuracy: image {img['all']:.3f} (color {img.get('color', 0):.3f}, "
          f"shape {img.get('shape', 0):.3f}) | audio {aud['all']:.3f} (pitch {aud.get('pitch', 0):.3f}, "
          f"count {aud.get('count', 0):.3f})  [{report['total_seconds']}s; loss curves: {out}/runs/*/loss.png]")
    return 0
