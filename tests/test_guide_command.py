"""The retraining guide's custom-training command, flag for flag (docs: the guide's `torchrun vita/train/train.py`
line), run through `python -m vita_trainer.train` under torchrun on 2 CPU processes with DeepSpeed ZeRO-3.

Changed from the guide, and only these: the paths point at tiny stand-ins of its three downloads (a Qwen2-shaped
LLM, an InternViT folder, a whale folder); `--data_registry` names the registry holding `Custom_dataset`;
`--eval_holdout 0.1` gives the evaluation it asks for some data (the guide's command names none);
`--bf16`/`--tf32` are left out (CPU); `--report_to none` instead of wandb (no network, not installed); and
`--max_steps 4` keeps it short."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import yaml

from tests.test_vita15_interop import write_released_tree, write_tiny_llm
from vita_api.plan import STAGE_DONE_FILE
from vita_trainer.data.tokenizer import load_tokenizer
from vita_trainer.local import free_port

pytestmark = pytest.mark.slow

GUIDE = """--deepspeed {zero3} --model_name_or_path {llm} --model_type qwen2p5_instruct --version qwen2p5_instruct
--dataset_use Custom_dataset --vision_tower {vision} --mm_projector_type mlp2x_gelu --audio_encoder {whale}
--freeze_audio_encoder True --freeze_audio_encoder_adapter False --image_aspect_ratio square
--group_by_modality_length False --output_dir {out} --num_train_epochs 3 --per_device_train_batch_size 4
--per_device_eval_batch_size 2 --gradient_accumulation_steps 4 --evaluation_strategy steps --eval_steps 100
--save_strategy steps --save_steps 200 --save_total_limit 3 --learning_rate 2e-5 --weight_decay 0.01
--warmup_ratio 0.1 --lr_scheduler_type cosine --logging_steps 10 --model_max_length 4096
--gradient_checkpointing True --dataloader_num_workers 4 --lazy_preprocess True --report_to none --run_name
custom_vita_training"""


def test_the_guides_custom_training_command_trains_and_evaluates(demo_data, tmp_path):
    tok = load_tokenizer(str(demo_data / "base_model"))
    tree = write_released_tree(tmp_path / "downloads", tok)
    llm = write_tiny_llm(tmp_path / "downloads" / "Qwen2.5-7B-Instruct", tok)
    registry = yaml.safe_load((demo_data / "registry.yaml").read_text())
    registry["mixtures"]["Custom_dataset"] = ["image_train", "audio_train"]
    registry["image_folders"] = {k: str(demo_data / v) for k, v in registry["image_folders"].items()}
    registry["audio_root"] = str(demo_data / registry["audio_root"])
    registry["datasets"] = {k: {"chat_path": str(demo_data / v["chat_path"])} for k, v in registry["datasets"].items()}
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump(registry))
    out = tmp_path / "OUT"
    argv = GUIDE.format(zero3="zero3", llm=llm, vision=tree["vision"], whale=tree["whale"], out=out).split()
    argv += ["--data_registry", str(tmp_path / "registry.yaml"), "--eval_holdout", "0.1", "--max_steps", "4",
             "--metrics_port", "0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "vita_trainer.train", *argv]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env={**os.environ, "CUDA_DEVICE_MAX_CONNECTIONS": "1", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    assert "--evaluation_strategy is --eval_strategy in transformers 5" in done.stderr
    summary = json.loads((out / STAGE_DONE_FILE).read_text())
    assert summary["global_step"] == 4 and summary["eval_loss"] > 0
    assert set(summary["eval_loss_by_modality"]) == {"image", "audio"}
    assert summary["eval_losses"][-1][0] == 4  # the final evaluation, at the stage's end
