"""Training entry: `torchrun -m vita_trainer.train [flags]` or `vita-train train [flags]`.

A stage is a recipe of four steps: `setup_model` (load, partial weights, LoRA, what trains), `setup_data` (the
processor, the dataset and its collator), `build_trainer`, and `save_outputs` (what the stage plan says the next
stage starts from). `main` runs them in order.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import set_seed

from vita_api.errors import ConfigError, OutOfMemory
from vita_api.module_groups import MODULE_GROUPS
from vita_api.plan import STAGE_DONE_FILE
from vita_api.presets import FREEZE_FLAGS, StagePreset, resolve_trainable, saves_full_weights
from vita_api.termination import write_termination_message
from ..data.chat_format import get_format
from .arguments import DataArguments, ModelArguments, VitaTrainingArguments, parse
from .base_model import prepared_base

log = logging.getLogger("vita_trainer")


def image_pipeline(choice: str, cuda: bool, chat_format: str = "chatml") -> str:
    """auto: the host path, whose pixels are the reference's exactly, under the vita15 format (fine-tuning the
    released model: at 7B a GPU consumes 1-2 samples/s, far below what host workers deliver) and on CPU; the
    device pipeline otherwise where there is a GPU to tile on."""
    if choice != "auto":
        return choice
    return "device" if cuda and get_format(chat_format).name != "vita15" else "host"


@dataclass
class ModelSetup:
    model: Any               # VitaForCausalLM, or its peft wrapper under LoRA
    tokenizer: Any
    model_dir: Path          # the folder loaded (a composed or imported base lives in <output>/base-model)
    groups: frozenset[str]   # the module groups this stage trains in full
    counts: dict[str, int]   # trainable parameters per group (and "lora")
    partial: list[str]       # partial state dicts loaded on top, in order (the LoRA merge loads them again)


def use_attention(model, choice: str) -> None:
    """The training attention backend (model/builder.training_attention) on the language model."""
    from transformers.utils import is_flash_attn_2_available

    from ..model.builder import training_attention
    name = training_attention(choice, torch.cuda.is_available())
    if name == "flash_attention_2" and not is_flash_attn_2_available():
        raise ConfigError("--attn_implementation flash_attention_2 but flash-attn is not installed here; use "
                          "--attn_implementation varlen (PyTorch's own varlen kernel) or auto")
    model.language_model.config._attn_implementation = name  # under LoRA, through peft's wrapper
    log.info("attention: %s", name)


@dataclass
class DataSetup:
    dataset: Any             # LazySupervisedDataset
    collator: Any
    processor: Any           # SampleProcessor
    cmvn_path: Path          # the audio stats the stage used (copied next to full weights)
    eval_dataset: Any = None     # validation: --eval_dataset_use, or --eval_holdout of the training data
    eval_collator: Any = None    # validation batches are never packed (one sample per row: one modality)


def setup_model(model_args: ModelArguments, args: VitaTrainingArguments, preset: StagePreset) -> ModelSetup:
    from ..data.tokenizer import load_tokenizer
    from ..model.builder import load_model
    from .weights import apply_trainable, load_partial

    groups = resolve_trainable(preset, **{k: getattr(model_args, k) for k in FREEZE_FLAGS})
    model_dir = Path(model_args.model_name_or_path)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"--model_name_or_path {model_dir} has no config.json; point it at a VITA folder "
                          f"(the previous stage's output, or one made with `vita-train init-model`)")
    model_dir = prepared_base(model_dir, model_args, Path(args.output_dir), args.process_index == 0)
    tokenizer = load_tokenizer(model_args.tokenizer_name_or_path or str(model_dir))
    model = load_model(str(model_dir), **({"ctc_vocab_size": 257} if preset.objective == "ctc" else {}))
    for key in ("chunk_size", "left_chunks", "dynamic_chunks"):  # saved with the model's config
        if (value := getattr(model_args, f"audio_{key}")) is not None:
            model.config.audio_config[key] = value
            setattr(model.audio_encoder, key, value)
    if model_args.mm_projector_type and model_args.mm_projector_type != model.config.mm_projector_type:
        raise ConfigError(f"--mm_projector_type {model_args.mm_projector_type} but {model_dir} was built with "
                          f"{model.config.mm_projector_type}")
    partial = list(model_args.init_weights) + [p for p in (model_args.pretrain_mm_mlp_adapter,
                                                           model_args.pretrain_audio_mlp_adapter) if p]
    for path in partial:
        log.info("loaded %s from %s", load_partial(model, path), path)
    if model_args.lora_enable:
        from .lora import add_lora
        model = add_lora(model, model_args)
        groups = groups - {"llm"}
    counts = apply_trainable(model, groups)
    use_attention(model, model_args.attn_implementation)
    if args.use_liger_kernel:
        from ..model.liger import apply_liger
        apply_liger(model)
    model.checkpoint_policy = args.checkpoint_policy
    model.chunked_loss = args.chunked_loss
    model.frozen_audio_encoder_eval = args.frozen_audio_encoder_eval
    if model_args.lora_enable:
        from .lora import unfreeze_lora
        counts["lora"] = unfreeze_lora(model)
    return ModelSetup(model, tokenizer, model_dir, groups, counts, partial)


def setup_data(setup: ModelSetup, registry: Any, model_args: ModelArguments, data_args: DataArguments,
               args: VitaTrainingArguments, preset: StagePreset) -> DataSetup:
    from ..data.audio import GlobalCMVN
    from ..data.chat_format import MODALITIES
    from ..data.collator import MultimodalCollator, PackedCollator
    from ..data.dataset import LazySupervisedDataset
    from ..data.processor import MediaSpec, SampleProcessor

    if data_args.pack_sequences and preset.objective == "ctc":
        raise ConfigError("--pack_sequences does not apply to the CTC stage (it trains on whole clips)")
    budget = data_args.max_tokens_per_batch
    if budget is not None and (budget < args.model_max_length or data_args.group_by_modality_length):
        raise ConfigError(f"--max_tokens_per_batch {budget} must be at least --model_max_length "
                          f"({args.model_max_length}), and it replaces --group_by_modality_length (its batches are "
                          f"already grouped by length)")
    config = setup.model.config
    cmvn_path = Path(data_args.audio_cmvn) if data_args.audio_cmvn else setup.model_dir / "global_cmvn.json"
    cmvn = GlobalCMVN.load(cmvn_path) if cmvn_path.is_file() else GlobalCMVN.identity()
    media = MediaSpec.from_config(config, min_audio_seconds=data_args.min_audio_seconds,
                                  max_audio_seconds=data_args.max_audio_seconds,
                                  **({"max_tiles": data_args.max_tiles} if data_args.max_tiles else {}))
    chat_format = model_args.version or config.chat_format
    processor = SampleProcessor(setup.tokenizer, media, registry, args.model_max_length,
                                image_aspect_ratio=data_args.image_aspect_ratio, cmvn=cmvn,
                                system_prompt=data_args.system_prompt, chat_format=chat_format,
                                system_prompts={m: getattr(data_args, f"system_prompt_{m}") for m in MODALITIES},
                                image_pipeline=image_pipeline(data_args.image_pipeline, torch.cuda.is_available(),
                                                               chat_format))
    config.chat_format = processor.format.name  # saved with the stage's output: the next stage keeps the format
    # and the system prompts this stage trained with, for `vita-model chat` (None: the format's own)
    config.system_prompt = data_args.system_prompt
    config.system_prompts = {m: p for m in MODALITIES if (p := getattr(data_args, f"system_prompt_{m}"))}
    if data_args.image_aspect_ratio == "square" and processor.format.square_still_tiles:
        log.warning("--image_aspect_ratio square still tiles images under the %s chat format, as the reference's "
                    "Qwen2.5 scripts do (no_patch_sets untiles the images of multi-image samples)", chat_format)
    dataset = LazySupervisedDataset(registry, data_args.dataset_use, processor,
                                    skip_bad_samples=data_args.skip_bad_samples, seed=args.seed,
                                    cache=data_args.cache_processed_samples)
    eval_dataset = None
    if data_args.eval_holdout:
        eval_dataset = dataset.hold_out(data_args.eval_holdout, args.seed)
    elif data_args.eval_dataset_use:
        eval_dataset = LazySupervisedDataset(registry, data_args.eval_dataset_use, processor,
                                             skip_bad_samples=data_args.skip_bad_samples, seed=args.seed)
    if eval_dataset is not None:
        log.info("validation: %d samples (%s), training: %d", len(eval_dataset),
                 data_args.eval_dataset_use or f"{data_args.eval_holdout:g} held out", len(dataset))
    pad = setup.tokenizer.pad_token_id
    unpacked = MultimodalCollator(pad, ctc=preset.objective == "ctc")
    collator = PackedCollator(pad, args.model_max_length) if data_args.pack_sequences else unpacked
    return DataSetup(dataset, collator, processor, cmvn_path, eval_dataset, unpacked)


# The flag that sets each module group's learning rate: --{group}_lr, except the projector's, whose reference name
# --mm_projector_lr means the vision tower's rate (REFERENCE_TOWER_LR_FLAG).
LR_FLAGS = {g: f"{g}_lr" for g in MODULE_GROUPS} | {"mm_projector": "projector_lr"}
REFERENCE_TOWER_LR_FLAG = "mm_projector_lr"


def module_learning_rates(preset: StagePreset, args: VitaTrainingArguments) -> dict[str, float]:
    """Per module group: the preset's learning rates, replaced by the flags given (LR_FLAGS)."""
    flags = {g: lr for g, flag in LR_FLAGS.items() if (lr := getattr(args, flag, None)) is not None}
    tower = getattr(args, REFERENCE_TOWER_LR_FLAG, None)
    if tower is not None:
        if flags.get("vision_tower", tower) != tower:
            raise ConfigError(f"--{REFERENCE_TOWER_LR_FLAG} {tower} and --vision_tower_lr {flags['vision_tower']} "
                              f"both set the vision tower's learning rate; give one")
        flags["vision_tower"] = tower
        log.info("--%s %g sets the vision tower's learning rate, as in the VITA reference; the projector's is "
                 "--projector_lr (now %g)", REFERENCE_TOWER_LR_FLAG, tower,
                 flags.get("mm_projector", preset.module_lr.get("mm_projector", args.learning_rate)))
    return dict(preset.module_lr) | flags


def gpu_peak_flops() -> float | None:
    """This GPU's bf16 dense peak (FLOP/s) by its name, for MFU; None on CPU or a card not in the table."""
    from ..model.flops import peak_tflops
    if not torch.cuda.is_available():
        return None
    tflops = peak_tflops(torch.cuda.get_device_name())
    return tflops * 1e12 if tflops else None


def step_flops(setup: ModelSetup, args: VitaTrainingArguments, preset: StagePreset):
    """The model FLOPs per sample of this stage (model/flops.py); None for the CTC stage (no LLM step)."""
    from ..model.flops import StepFlops
    if preset.objective == "ctc":
        return None
    return StepFlops.of(setup.model.config, setup.groups, args.chunked_loss, lora="lora" in setup.counts)


def build_trainer(setup: ModelSetup, data: DataSetup, data_args: DataArguments, args: VitaTrainingArguments,
                  preset: StagePreset, stage_name: str) -> Any:
    from .metrics import MetricsCallback, TrainerMetrics
    from .faults import FaultInjection
    from .trainer import VitaTrainer, token_budget_sampler

    metrics = MetricsCallback(TrainerMetrics(), stage_name, preset.name, args.metrics_port, gpu_peak_flops())
    module_lr = module_learning_rates(preset, args)
    budget = data_args.max_tokens_per_batch
    return VitaTrainer(model=setup.model, args=args, train_dataset=data.dataset, data_collator=data.collator,
                       eval_dataset=data.eval_dataset, eval_collator=data.eval_collator,
                       processing_class=setup.tokenizer, callbacks=[metrics, FaultInjection()],
                       metrics_callback=metrics, module_lr=module_lr,
                       step_flops=step_flops(setup, args, preset) if metrics.peak_flops else None,
                       partial_groups=None if saves_full_weights(setup.groups, args.save_full_model,
                                                                 lora="lora" in setup.counts) else setup.groups,
                       train_sampler=(token_budget_sampler(data.dataset, args, budget,
                                                           packed=data_args.pack_sequences) if budget else None),
                       modality_lengths=(data.dataset.modality_lengths if data_args.group_by_modality_length
                                         else None))


def save_outputs(trainer: Any, setup: ModelSetup, data: DataSetup, model_args: ModelArguments,
                 args: VitaTrainingArguments) -> tuple[bool, list[str]]:
    """What the next stage starts from, by the plan's one handoff rule (saves_full_weights): full weights (with the
    tokenizer and audio stats), a LoRA adapter merged into full weights, or the trained groups as {group}.bin.
    Returns (full weights?, the files written)."""
    from .weights import save_groups
    out = Path(args.output_dir)
    full = saves_full_weights(setup.groups, args.save_full_model, lora=model_args.lora_enable)
    outputs: list[str] = []
    if model_args.lora_enable:
        # The adapter and the other trained weights, then merged into full weights: the next stage starts from them.
        from .lora import merge_on_handoff, save_lora
        outputs += save_lora(trainer, out)
        if args.should_save:
            outputs.append(merge_on_handoff(str(setup.model_dir), str(out), setup.partial))
    elif full:
        trainer.save_model(str(out))
        outputs.append(str(out / "model.safetensors"))
    else:
        outputs += save_groups(trainer.model_wrapped.module if hasattr(trainer.model_wrapped, "module")
                               else trainer.model, setup.groups, out, args.should_save)
    if full and args.should_save:
        setup.tokenizer.save_pretrained(str(out))
        if data.cmvn_path.is_file() and data.cmvn_path.parent != out:
            (out / "global_cmvn.json").write_text(data.cmvn_path.read_text())
    return full, outputs


def write_summary(summary: dict[str, Any], args: VitaTrainingArguments) -> None:
    """The stage's done marker (the plan's STAGE_DONE_FILE, written last and atomically) and the pod's
    termination message."""
    if not args.should_save:
        return
    out = Path(args.output_dir)
    tmp = out / (STAGE_DONE_FILE + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2))
    tmp.replace(out / STAGE_DONE_FILE)
    write_termination_message(summary)


def lm_head_calls(args: VitaTrainingArguments, data_args: DataArguments) -> int | None:
    """Under ZeRO-3, a fixed number of lm_head calls per micro-batch, from the largest one the run can have (its
    token budget, else rows x --model_max_length): the same module order on every step and rank, so DeepSpeed's
    prefetch keeps its recorded trace, and no collective or host sync picks the count."""
    from transformers.integrations import is_deepspeed_zero3_enabled

    from ..model.chunked_loss import fixed_calls
    if not (args.chunked_loss and is_deepspeed_zero3_enabled()):
        return None
    rows = max(args.per_device_train_batch_size, args.per_device_eval_batch_size)
    return fixed_calls(data_args.max_tokens_per_batch or rows * args.model_max_length, args.lm_head_chunk_tokens)


def single_process_rendezvous(argv: list[str]) -> None:
    """`python -m vita_trainer.train --deepspeed ...` without torchrun: a one-process group of its own. DeepSpeed
    would otherwise look for MPI to learn its rank (ModuleNotFoundError: No module named 'mpi4py')."""
    if "--deepspeed" not in argv or any(k in os.environ for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK")):
        return
    from ..local import free_port
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(free_port()))
    log.info("no launcher: one process, rendezvous on 127.0.0.1:%s (use torchrun for more)", os.environ["MASTER_PORT"])


def main(argv: list[str] | None = None) -> dict[str, Any]:
    from .fabric import check_fabric, prepare_nccl_log
    from .zero3 import prepare_zero3
    argv = sys.argv[1:] if argv is None else argv
    single_process_rendezvous(argv)
    nccl_log = prepare_nccl_log()  # before the process group exists: NCCL reads it then
    model_args, data_args, args, preset = parse(argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.deepspeed and torch.distributed.is_initialized():
        # On CPU, HF initialises torch.distributed itself and DeepSpeed's comm layer would see world size 1.
        import deepspeed
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    # before the model loads: a stage over sockets stops here, in seconds
    fabric = check_fabric(args.fabric_probe, args.min_bus_bandwidth_gbps, args.fabric_probe_megabytes, nccl_log)
    set_seed(args.seed)
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # denormal floats slow CPU kernels badly
    from ..data.registry import load_registry
    from .trainer import prepare_resume

    stage_name = args.stage_name or preset.name
    registry = load_registry(data_args.data_registry)  # a bad registry fails before the model loads
    setup = setup_model(model_args, args, preset)
    prepare_zero3(args, setup.model)
    setup.model.lm_head_calls = lm_head_calls(args, data_args)
    setup.model.lm_head_chunk_tokens = args.lm_head_chunk_tokens
    log.info("stage %s (preset %s) trains %s", stage_name, preset.name, setup.counts)
    data = setup_data(setup, registry, model_args, data_args, args, preset)
    trainer = build_trainer(setup, data, data_args, args, preset, stage_name)
    if fabric and args.process_index == 0:
        trainer.metrics_callback.m.nccl_bus_bandwidth.labels(stage_name, fabric["transport"]).set(
            fabric["bus_bandwidth_gbps"])
    # automatic resume when checkpoints exist (unless --resume_from_checkpoint names one)
    resume = prepare_resume(args.output_dir, args.resume_from_checkpoint, args.should_save)
    if resume:
        log.info("resuming from %s", resume)
    start = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=resume)
    except torch.OutOfMemoryError as e:
        raise OutOfMemory(trainer.state.global_step, args.per_device_train_batch_size,
                          args.gradient_accumulation_steps, str(e)) from e
    # The stage's final validation (every rank: under ZeRO-3 each holds a shard of the weights).
    final_eval = trainer.evaluate() if data.eval_dataset is not None else {}
    full, outputs = save_outputs(trainer, setup, data, model_args, args)
    losses = [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h]
    eval_losses = [(h["step"], h["eval_loss"]) for h in trainer.state.log_history if "eval_loss" in h]
    summary = {"stage": stage_name, "preset": preset.name, "trainable": sorted(setup.counts), "full_model": full,
               "outputs": outputs, "global_step": trainer.state.global_step, "train_loss": result.training_loss,
               "tokens_seen": trainer.state.num_input_tokens_seen,
               "final_loss": losses[-1][1] if losses else None, "first_loss": losses[0][1] if losses else None,
               "losses": losses, "skipped_samples": dict(data.dataset.skipped),
               "eval_loss": final_eval.get("eval_loss"), "eval_losses": eval_losses,
               "eval_loss_by_modality": {k.removeprefix("eval_loss_"): v for k, v in final_eval.items()
                                         if k.startswith("eval_loss_")},
               "seconds": round(time.time() - start, 1), "audio_warnings": vars(data.processor.warnings),
               "fabric": fabric, "mfu": trainer.metrics_callback.mfu(trainer.metrics_callback.total_flops,
                                                                    result.metrics.get("train_runtime", 0.0))}
    write_summary(summary, args)
    if torch.distributed.is_initialized():
        # A process group left alive at interpreter exit can abort a rank ("terminate called ...").
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
