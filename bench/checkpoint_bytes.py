"""Benchmark: bytes per checkpoint of an adapter-only stage (vision_align: the projector trains alone).

Measured: the same 2-process ZeRO-3 run of the tiny demo model, once as it runs (checkpoints hold what trains:
mm_projector.bin plus DeepSpeed's optimizer and scheduler state) and once with --save_full_model (every
checkpoint also holds the gathered 16-bit model and DeepSpeed's frozen-weight partitions). Computed, from the
VITA-1.5 7B layout built on the meta device: the 16-bit model a full checkpoint gathers against the projector's
16-bit weights and its fp32 Adam state (master, m, v).

    .venv/bin/python bench/checkpoint_bytes.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from vita_trainer.local import free_port


def checkpoint_bytes(data: Path, out: Path, *extra: str) -> int:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "vita_trainer.train", "--deepspeed", "zero3",
           "--stage", "vision_align", "--model_name_or_path", str(data / "base_model"),
           "--data_registry", str(data / "registry.yaml"), "--dataset_use", "demo_image", "--output_dir", str(out),
           "--max_steps", "2", "--save_steps", "2", "--per_device_train_batch_size", "2", "--metrics_port", "0",
           "--model_max_length", "512", "--disable_tqdm", "True", *extra]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "DS_ACCELERATOR": "cpu"})
    if r.returncode:
        raise SystemExit(r.stderr[-3000:])
    return sum(p.stat().st_size for p in (out / "checkpoint-2").rglob("*") if p.is_file() and p.suffix != ".py")


def seven_b() -> tuple[int, int]:
    from vita_trainer.model.builder import vita_1p5_config
    from vita_trainer.model.modeling import VitaForCausalLM
    model = VitaForCausalLM.empty(vita_1p5_config())
    total = sum(p.numel() for p in model.parameters())
    projector = sum(p.numel() for p in model.mm_projector.parameters())
    return total, projector


def main() -> None:
    from vita_trainer.demo.run import prepare
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "data"
        prepare(data, small=True)
        adapter = checkpoint_bytes(data, Path(tmp) / "adapter")
        full = checkpoint_bytes(data, Path(tmp) / "full", "--save_full_model", "true")
    print(f"tiny model, one checkpoint of vision_align: {adapter / 1e6:.2f} MB adapter-only, {full / 1e6:.2f} MB "
          f"with the full model: {full / adapter:.1f}x smaller")
    total, projector = seven_b()
    full_7b, adapter_7b = 2 * total, 2 * projector + 12 * projector
    print(f"VITA-1.5 7B (computed): the gathered 16-bit model alone {full_7b / 1e9:.1f} GB per checkpoint; "
          f"the projector's {projector / 1e6:.1f}M parameters {2 * projector / 1e6:.0f} MB in 16-bit "
          f"+ {12 * projector / 1e6:.0f} MB fp32 Adam state = {adapter_7b / 1e6:.0f} MB: "
          f"{full_7b / adapter_7b:.0f}x smaller")


if __name__ == "__main__":
    main()
