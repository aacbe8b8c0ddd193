"""`vita-train new-run`: a VitaTrainingRun written from a few answers, with each stage's micro-batch and
accumulation from `vita-model inspect`'s memory model for the card and the guide's global batch.

Micro-batch: the largest power of two whose padded rows (micro-batch x model_max_length tokens) fit the card by the
memory model, capped at the guide's 8; then the fewest decoder layers to checkpoint that still fit it
(`--activation_checkpointing`: none, a number of layers, or all), since every checkpointed layer runs twice.
Accumulation: global batch / (micro-batch x GPUs), rounded up (the comment above each stage says the global batch
it gives). The run is validated by the same model the CRD is generated from before it is written.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import yaml

from vita_api.constants import MODEL_MAX_LENGTH
from vita_api.errors import ConfigError
from vita_api.plan import check_spec, cluster_problems, saves_full_model
from vita_api.spec import API_VERSION, JOB_BACKENDS, KIND, VitaTrainingRun

# The guide's schedule (manifests/examples/run-full.yaml): 8 per GPU x 2 accumulation x 32 GPUs.
GUIDE_STAGES = ("vision-align=vision_align:Pretrain_image", "audio-align=audio_align:Pretrain_audio",
                "multimodal-sft=multimodal_sft:Pretrain_multimodal")
GUIDE_GLOBAL_BATCH = 512
GUIDE_MICRO_BATCH = 8
# GPU memory by card, as `vita-model inspect --gpu-memory-gib` takes it.
CARDS = {"h100": 80.0, "h200": 141.0, "b200": 180.0, "a100-80gb": 80.0, "a100-40gb": 40.0, "l40s": 48.0,
         "a10g": 24.0}
CPU_PER_GPU, MEM_GIB_PER_GPU, SHM_GIB_PER_GPU = 12, 160, 16
GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


def parse_stage(text: str) -> tuple[str, str, str]:
    name, sep, rest = text.partition("=")
    preset, sep2, dataset = rest.partition(":")
    if not (sep and sep2 and name and preset and dataset):
        raise ConfigError(f"--stage {text!r}: write NAME=PRESET:DATASET_USE, e.g. vision-align=vision_align:"
                          f"Pretrain_image")
    return name, preset, dataset


def batch_plan(preset: str, gpus_total: int, gpu_memory_gib: float, max_length: int, global_batch: int,
               model: str) -> dict[str, Any]:
    """{micro, accumulation, global, max_tokens}: the micro-batch that fits, and the accumulation for the global
    batch. On CPU (no GPUs) the memory model does not apply: the guide's micro-batch."""
    from .model_cli import inspect
    procs = max(gpus_total, 1)
    if gpus_total:
        report = inspect(model, preset, gpus_total, max_length, gpu_memory_gib)
        max_tokens = int(report["memory"]["max_tokens"])
        fits = max_tokens // max_length
        if fits < 1:
            raise ConfigError(f"stage preset {preset}: one row of {max_length} tokens does not fit a "
                              f"{gpu_memory_gib:g} GiB GPU with {gpus_total} GPUs (at most {max_tokens} tokens); use "
                              f"more GPUs or a larger card, or lower --model-max-length")
        micro = min(GUIDE_MICRO_BATCH, 1 << (fits.bit_length() - 1))
    else:
        max_tokens, micro = 0, GUIDE_MICRO_BATCH
    micro = min(micro, max(global_batch // procs, 1))
    accumulation = max(math.ceil(global_batch / (micro * procs)), 1)
    plan = {"micro": micro, "accumulation": accumulation, "global": micro * accumulation * procs,
            "max_tokens": max_tokens}
    if gpus_total:  # the fewest checkpointed decoder layers that still fit the chosen micro-batch
        memory = inspect(model, preset, gpus_total, micro * max_length, gpu_memory_gib)["memory"]
        fewest, layers = memory["fewest_checkpointed_layers"], memory["checkpointed_layers"]
        plan["checkpointing"] = "none" if fewest == 0 else "all" if fewest == layers else fewest
    return plan


def run_of(a: argparse.Namespace, spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": {"name": a.name}, "spec": spec}


def new_run(a: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """(the run, one comment line per stage)."""
    if a.card not in CARDS:
        raise ConfigError(f"--card {a.card}: known cards {', '.join(CARDS)} (or give --gpu-memory-gib)")
    gib = a.gpu_memory_gib or CARDS[a.card]
    gpus_total = a.nodes * a.gpus_per_node
    stages, notes = [], []
    for text in a.stage or GUIDE_STAGES:
        name, preset, dataset = parse_stage(text)
        plan = batch_plan(preset, gpus_total, gib, a.model_max_length, a.global_batch, a.inspect_model)
        args: dict[str, Any] = {"per_device_train_batch_size": plan["micro"],
                                "gradient_accumulation_steps": plan["accumulation"],
                                "model_max_length": a.model_max_length, "num_train_epochs": a.epochs,
                                "save_steps": 500, "save_total_limit": 2, "logging_steps": 10}
        if "checkpointing" in plan:
            args["activation_checkpointing"] = plan["checkpointing"]
        stages.append({"name": name, "preset": preset, "datasetUse": dataset, "args": args})
        where = f"{gpus_total} x {a.card} ({gib:g} GiB), at most {plan['max_tokens']:,} tokens per micro-batch" \
            if gpus_total else f"{a.cpu_procs} CPU process(es) per node"
        checkpointing = f"; activation checkpointing: {plan['checkpointing']}" if "checkpointing" in plan else ""
        notes.append(f"stage {name}: micro-batch {plan['micro']} x accumulation {plan['accumulation']} x "
                     f"{max(gpus_total, 1)} = global batch {plan['global']} on {where}{checkpointing}")
    per = max(a.gpus_per_node, 1)  # pod sizes scale with the node's GPUs (run-full.yaml: 96 CPUs, 1.5 TiB, 8 GPUs)
    resources: dict[str, Any] = {
        "nodes": a.nodes, "gpusPerNode": a.gpus_per_node, "cpu": a.cpu or str(CPU_PER_GPU * per),
        "memory": a.memory or f"{MEM_GIB_PER_GPU * per}Gi", "shmSize": f"{SHM_GIB_PER_GPU * per}Gi"}
    if not a.gpus_per_node:
        resources["cpuProcsPerNode"] = a.cpu_procs
    else:
        resources["tolerations"] = [GPU_TOLERATION]
    if a.node_selector:
        resources["nodeSelector"] = dict(kv.split("=", 1) for kv in a.node_selector)
    model = {"base": a.base, "tokenizer": a.tokenizer}
    if a.vision_tower:
        model["visionTower"] = a.vision_tower
    if a.audio_encoder:
        model["audioEncoder"] = a.audio_encoder
    spec: dict[str, Any] = {"model": model, "data": {"registry": a.registry},
                            "output": a.output or a.name, "trainer": {"image": a.image, "deepspeed": a.deepspeed},
                            "resources": resources, "stages": stages}
    if a.backend:
        spec["trainer"]["backend"] = a.backend
    if a.dataset_claim or a.checkpoint_claim:
        if not (a.dataset_claim and a.checkpoint_claim):
            raise ConfigError("give both --dataset-claim and --checkpoint-claim (or neither, for vita-train local)")
        spec["volumes"] = {"dataset": {"claimName": a.dataset_claim, "mountPath": "/data"},
                           "checkpoints": {"claimName": a.checkpoint_claim, "mountPath": "/checkpoints"}}
    if a.queue:
        spec["scheduling"] = {"kueueQueue": a.queue}
    if not a.preflight:
        spec["preflight"] = {"enabled": False}
    if a.download_model or a.download_dataset:
        init: dict[str, Any] = {"models": [{"name": m} for m in a.download_model], "datasets": a.download_dataset}
        if a.download_manifest:
            init["manifest"] = a.download_manifest
        if a.hf_token_secret:
            init["tokenSecret"] = a.hf_token_secret
        spec["initializers"] = init
    if a.export:
        spec["export"] = {}
        last = VitaTrainingRun.model_validate(run_of(a, spec)).spec
        if not saves_full_model(last, len(stages) - 1):  # an adapter-only last stage: a whole model to export
            stages[-1]["args"]["save_full_model"] = True
            notes.append(f"stage {stages[-1]['name']}: saves the full model too, for spec.export")
    run = run_of(a, spec)
    parsed = VitaTrainingRun.model_validate(run)
    # With claims it is a cluster run: the CRD's cluster rules apply too (the API server would refuse it).
    if problems := check_spec(parsed.spec) + (cluster_problems(parsed.spec) if a.checkpoint_claim else []):
        raise ConfigError("the run would not start: " + "; ".join(problems))
    return run, notes


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="vita-train new-run", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", help="the run's name (DNS-1035, at most 40 characters)")
    p.add_argument("--base", required=True, help="model.base: a VITA folder (e.g. models/vita-1.5-init), a released "
                                                 "VITA-1.5 folder, ...")
    p.add_argument("--registry", required=True, help="data.registry: the dataset registry YAML")
    p.add_argument("--stage", action="append", help="NAME=PRESET:DATASET_USE, in order (repeatable); default: the "
                                                    "guide's three, " + ", ".join(GUIDE_STAGES))
    p.add_argument("--tokenizer", default="qwen2.5")
    p.add_argument("--vision-tower", help="model.visionTower (with an LLM --base: the InternViT folder)")
    p.add_argument("--audio-encoder", help="model.audioEncoder (with an LLM --base: the whale folder)")
    p.add_argument("--download-model", action="append", default=[], help="spec.initializers: a `vita-model download` "
                   "name or repo id fetched into models/ on the dataset volume first (repeatable)")
    p.add_argument("--download-dataset", action="append", default=[], help="spec.initializers: a `vita-data "
                   "download` source fetched onto the dataset volume first (repeatable)")
    p.add_argument("--download-manifest", help="spec.initializers.manifest: another download manifest (a mirror)")
    p.add_argument("--hf-token-secret", help="spec.initializers.tokenSecret: 'secret/key' holding HF_TOKEN")
    p.add_argument("--export", action="store_true", help="spec.export: export the last stage as vita15")
    p.add_argument("--output", help="the run's output folder (default: its name)")
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=8, help="0 for CPU processes (vita-train local)")
    p.add_argument("--cpu-procs", type=int, default=1, help="processes per node without GPUs")
    p.add_argument("--card", default="h100", help=f"GPU model: {', '.join(CARDS)}")
    p.add_argument("--cpu", help=f"CPU per pod (default: {CPU_PER_GPU} per GPU)")
    p.add_argument("--memory", help=f"memory per pod (default: {MEM_GIB_PER_GPU}Gi per GPU)")
    p.add_argument("--gpu-memory-gib", type=float, help="instead of the card's")
    p.add_argument("--inspect-model", default="vita-1.5-7b", help="the model the memory model sizes: "
                   "vita-1.5-7b (the published layout) or a local VITA folder")
    p.add_argument("--global-batch", type=int, default=GUIDE_GLOBAL_BATCH)
    p.add_argument("--model-max-length", type=int, default=MODEL_MAX_LENGTH)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--image", default="ghcr.io/vita-trainer/trainer:0.1.0")
    p.add_argument("--deepspeed", default="zero3")
    p.add_argument("--backend", choices=JOB_BACKENDS, help="default: the operator's")
    p.add_argument("--dataset-claim", help="PVC with models/ and the datasets (mounted read-only at /data)")
    p.add_argument("--checkpoint-claim", help="PVC for the outputs (mounted at /checkpoints)")
    p.add_argument("--queue", help="Kueue LocalQueue")
    p.add_argument("--node-selector", action="append", help="KEY=VALUE (repeatable), e.g. "
                                                            "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3")
    p.add_argument("--no-preflight", dest="preflight", action="store_false")
    p.add_argument("-o", "--out", help="write here (default: stdout)")
    return p


def main(argv: list[str]) -> int:
    a = parser().parse_args(argv)
    run, notes = new_run(a)
    text = "".join(f"# {n}\n" for n in notes) + yaml.safe_dump(run, sort_keys=False)
    if a.out:
        Path(a.out).write_text(text)
        print(f"wrote {a.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
