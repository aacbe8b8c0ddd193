"""LoRA on the LLM with peft, saved as the adapter plus non_lora_trainables.bin; and the merge back.

The reference's LoRA path fails with its Qwen2.5 scripts (VITA issue 97) because it wraps the whole
multimodal model; here only the language model is wrapped, so the towers and adapters keep their names.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

from vita_api.errors import VitaError

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def add_lora(model, args):
    from peft import LoraConfig, get_peft_model
    cfg = LoraConfig(r=args.lora_r, lora_alpha=args.lora_alpha, lora_dropout=args.lora_dropout,
                     target_modules=LORA_TARGETS, task_type="CAUSAL_LM")
    model.language_model = get_peft_model(model.language_model, cfg)
    return model


def unfreeze_lora(model) -> int:
    n = 0
    for name, p in model.language_model.named_parameters():
        if "lora_" in name:
            p.requires_grad_(True)
            n += p.numel()
    return n


def save_lora(trainer, out: Path) -> list[str]:
    """Every rank must call this: under ZeRO-3 the trainable parameters (LoRA A/B and the other trained groups)
    are partitioned, and gathering them is collective; rank 0 then writes full tensors."""
    from .weights import gathered
    model = trainer.model
    with gathered(p for p in model.parameters() if p.requires_grad):
        if not trainer.args.should_save:
            return []
        model.language_model.save_pretrained(str(out / "lora"))
        extra = {k: v.detach().cpu().clone() for k, v in model.named_parameters()
                 if v.requires_grad and not k.startswith("language_model.")}
        torch.save(extra, out / "non_lora_trainables.bin")
        model.config.save_pretrained(str(out))
    return [str(out / "lora"), str(out / "non_lora_trainables.bin")]


# What torchrun gives its workers; a fresh process must not think it is one of them.
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK", "GROUP_WORLD_SIZE",
                "ROLE_RANK", "ROLE_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def merge_on_handoff(base_dir: str, run_dir: str, init_weights: list[str]) -> str:
    """Rank 0, after save_lora: the merged full weights into the stage's own folder, so the next stage starts from
    them. In a fresh process: under ZeRO-3 this one loads every model partitioned (zero.Init), which needs every
    rank, while the others wait at the end of the stage."""
    env = {k: v for k, v in os.environ.items() if k not in LAUNCHER_ENV and not k.startswith("TORCHELASTIC_")}
    cmd = [sys.executable, "-m", "vita_trainer.tools.model_cli", "merge-lora", str(base_dir), str(run_dir),
           str(run_dir), "--init-weights", *map(str, init_weights)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise VitaError(f"merging the LoRA adapter into {run_dir} failed ({' '.join(cmd)}):\n{done.stderr[-2000:]}")
    return str(Path(run_dir) / "model.safetensors")


def merge_lora(base_dir: str, lora_run_dir: str, out_dir: str, init_weights: tuple[str, ...] | list[str] = ()) -> str:
    """Base VITA folder (+ the partial weights the stage loaded on top, in order) + a LoRA stage's output -> a
    plain VITA folder with merged weights. `out_dir` may be the LoRA stage's own output (merge on handoff)."""
    from peft import PeftModel

    from ..data.tokenizer import load_tokenizer
    from ..model.builder import load_model
    from .weights import load_partial
    model = load_model(base_dir)
    for path in init_weights:
        load_partial(model, path)
    model.language_model = PeftModel.from_pretrained(model.language_model, str(Path(lora_run_dir) / "lora"))
    model.language_model = model.language_model.merge_and_unload()
    extra = Path(lora_run_dir) / "non_lora_trainables.bin"
    if extra.is_file():
        load_partial(model, extra)
    model.save_pretrained(out_dir)
    load_tokenizer(base_dir).save_pretrained(out_dir)
    return out_dir
