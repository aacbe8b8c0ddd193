"""Training entry: `torchrun -m vita_trainer.train [flags]` or `vita-train train [flags]`."""

from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path

import torch
from transformers import HfArgumentParser, set_seed

from vita_api.errors import ConfigError, NodeError, OutOfMemory
from vita_api.plan import GPUS_ENV, PREPARED_BASE_DIR, STAGE_DONE_FILE
from vita_api.presets import FREEZE_FLAGS, get_preset, resolve_trainable, saves_full_weights
from .arguments import DataArguments, ModelArguments, VitaTrainingArguments, resolve_deepspeed
from vita_api.termination import write_termination_message

log = logging.getLogger("vita_trainer")


def require_gpus_if_expected() -> None:
    """A pod that requested GPUs must not fall back to CPU (a bad driver would otherwise train a 7B on CPU)."""
    import os
    expected = int(os.environ.get(GPUS_ENV, "0") or 0)
    if expected and not torch.cuda.is_available():
        raise NodeError(f"this pod requested {expected} GPU(s) ({GPUS_ENV}) but CUDA is unavailable: torch "
                          f"{torch.__version__} built for CUDA {torch.version.cuda}, {torch.cuda.device_count()} "
                          f"device(s) visible. Check the node's NVIDIA driver (it must support CUDA "
                          f"{torch.version.cuda}) and the device plugin; refusing to train on CPU")


def _given_flags(argv: list[str]) -> set[str]:
    return {a[2:].split("=", 1)[0] for a in argv if a.startswith("--")}


def parse(argv: list[str]):
    argv = list(argv)
    for i, arg in enumerate(argv):  # shipped config names -> files
        if arg == "--deepspeed" and i + 1 < len(argv):
            argv[i + 1] = resolve_deepspeed(argv[i + 1])
        elif arg.startswith("--deepspeed="):
            argv[i] = "--deepspeed=" + resolve_deepspeed(arg.split("=", 1)[1])
    parser = HfArgumentParser((ModelArguments, DataArguments, VitaTrainingArguments))
    given = _given_flags(argv)
    preset = get_preset(_flag_value(argv, "--stage") or "multimodal_sft")
    # Preset training defaults apply where the command line is silent.
    extra = []
    for key, value in preset.training.items():
        if key not in given:
            extra += [f"--{key}", str(value)]
    cuda = torch.cuda.is_available()
    extra += recipe_defaults(given, cuda=cuda, bf16=cuda and torch.cuda.is_bf16_supported(),
                             ampere=cuda and torch.cuda.get_device_capability()[0] >= 8)
    require_gpus_if_expected()
    if "use_cpu" not in given and not torch.cuda.is_available():  # CPU runs: tests, the demo, `local` on a laptop
        extra += ["--use_cpu", "True"]
    if "remove_unused_columns" not in given:
        # Our collator needs transcript/skip fields that forward() does not take; HF would strip them.
        extra += ["--remove_unused_columns", "False"]
    if "report_to" not in given:
        extra += ["--report_to", "none"]
    model_args, data_args, train_args = parser.parse_args_into_dataclasses(args=argv + extra)
    if "include_num_input_tokens_seen" not in given:
        # Real tokens seen, kept in checkpoints: the stage summary reports it, and a resumed attempt (say, with a
        # smaller micro-batch after running out of memory) continues the count. The CLI only takes true/false.
        train_args.include_num_input_tokens_seen = "non_padding"
    return model_args, data_args, train_args, preset


# A ZeRO-3 checkpoint of a 7B model with its optimizer states can take longer than HF's 30-minute default to
# write to network storage; every other rank waits for it in a collective meanwhile.
DDP_TIMEOUT_SECONDS = 7200


def recipe_defaults(given: set[str], *, cuda: bool, bf16: bool, ampere: bool) -> list[str]:
    """The reference recipe's settings where HF's defaults differ, for the flags the command line leaves out.
    GPU only where they only make sense there: CPU runs (tests, the demo) keep HF's in-process data loading."""
    defaults = {"ddp_timeout": DDP_TIMEOUT_SECONDS}
    if cuda:
        # 4 workers as the reference; the device image pipeline's uint8 batches are small, so 4 batches ahead per
        # worker cost little pinned memory (samples/s per worker: docs/benchmarks.md).
        defaults.update(gradient_checkpointing=True, dataloader_num_workers=4, dataloader_persistent_workers=True,
                        dataloader_pin_memory=True, dataloader_prefetch_factor=4)
    if bf16:
        defaults["bf16"] = True
    if ampere:
        defaults["tf32"] = True
    return [a for k, v in defaults.items() if k not in given for a in (f"--{k}", str(v))]


def image_pipeline(choice: str, cuda: bool) -> str:
    """auto: the device pipeline where there is a GPU to tile on; on CPU the host path, whose pixels are the
    reference's exactly."""
    return ("device" if cuda else "host") if choice == "auto" else choice


def _flag_value(argv, flag):
    for i, a in enumerate(argv):
        if a == flag and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(flag + "="):
            return a.split("=", 1)[1]
    return None


def prepared_base(model_dir: Path, model_args, output_dir: Path, is_main: bool) -> Path:
    """The folder to load: a VITA folder as it is; a released VITA-1.5 folder imported, or a Hugging Face LLM
    composed with --vision_tower (and --audio_encoder), once per run into <output>/base-model.

    Rank 0 writes it (into a temporary folder, renamed when complete); the other ranks wait at a barrier.
    """
    from ..model.vita15 import MODEL_TYPE as VITA15_TYPE
    from ..model.vita15 import import_vita15, read_json
    kind = read_json(model_dir / "config.json").get("model_type")
    if kind == "vita":
        for flag in ("vision_tower", "audio_encoder"):
            if getattr(model_args, flag):
                raise ConfigError(f"--{flag} applies to a released VITA-1.5 base or an LLM to compose from; "
                                  f"{model_dir} is a VITA folder that already holds its towers")
        return model_dir
    if kind != VITA15_TYPE and not model_args.vision_tower:
        raise ConfigError(f"{model_dir} is a {kind!r} model, not a VITA folder: pass --vision_tower (and "
                          f"--audio_encoder) to compose one from it, or point at a VITA folder")
    target = output_dir.parent / PREPARED_BASE_DIR
    if is_main and not (target / "config.json").is_file():
        tmp = target.with_name(target.name + ".tmp")
        if tmp.exists():
            import shutil
            shutil.rmtree(tmp)
        log.info("preparing the run's base model from %s in %s", model_dir, target)
        if kind == VITA15_TYPE:
            import_vita15(model_dir, tmp, model_args.vision_tower, model_args.audio_encoder,
                          model_args.tokenizer_name_or_path)
        else:
            from ..data.tokenizer import load_tokenizer
            from ..model.builder import write_composed
            write_composed(tmp, str(model_dir), model_args.vision_tower,
                           load_tokenizer(model_args.tokenizer_name_or_path or str(model_dir)),
                           audio_encoder=model_args.audio_encoder,
                           mm_projector_type=model_args.mm_projector_type or "mlp2x_gelu")
        tmp.rename(target)
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    return target


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else argv
    model_args, data_args, args, preset = parse(argv)
    logging.basicConfig(level=logging.INFO if args.process_index == 0 else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.deepspeed and torch.distributed.is_initialized():
        # On CPU, HF initialises torch.distributed itself and DeepSpeed's comm layer would see world size 1.
        import deepspeed
        deepspeed.init_distributed(dist_backend=torch.distributed.get_backend())
    set_seed(args.seed)
    if not torch.cuda.is_available():
        torch.set_flush_denormal(True)  # denormal floats slow CPU kernels badly
    from ..data.audio import GlobalCMVN
    from ..data.chat_format import MODALITIES
    from ..data.collator import MultimodalCollator, PackedCollator
    from ..data.dataset import LazySupervisedDataset
    from ..data.processor import MediaSpec, SampleProcessor
    from ..data.registry import load_registry
    from ..data.tokenizer import load_tokenizer
    from ..model.builder import load_model
    from .metrics import MetricsCallback, TrainerMetrics
    from .trainer import FaultInjection, VitaTrainer, prepare_resume, token_budget_sampler
    from .weights import apply_trainable, load_partial, save_groups

    groups = resolve_trainable(preset, **{k: getattr(model_args, k) for k in FREEZE_FLAGS})
    stage_name = args.stage_name or preset.name
    model_dir = Path(model_args.model_name_or_path)
    if not (model_dir / "config.json").is_file():
        raise ConfigError(f"--model_name_or_path {model_dir} has no config.json; point it at a VITA folder "
                          f"(the previous stage's output, or one made with `vita-train init-model`)")
    registry = load_registry(data_args.data_registry)  # fail before the model loads
    model_dir = prepared_base(model_dir, model_args, Path(args.output_dir), args.process_index == 0)
    tokenizer = load_tokenizer(model_args.tokenizer_name_or_path or str(model_dir))

    config_overrides = {"ctc_vocab_size": 257} if preset.objective == "ctc" else {}
    model = load_model(str(model_dir), **config_overrides)
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
    model.chunked_loss = args.chunked_loss
    if model_args.lora_enable:
        from .lora import unfreeze_lora
        counts["lora"] = unfreeze_lora(model)
    log.info("stage %s (preset %s) trains %s", stage_name, preset.name, counts)

    cmvn_path = Path(data_args.audio_cmvn) if data_args.audio_cmvn else model_dir / "global_cmvn.json"
    cmvn = GlobalCMVN.load(cmvn_path) if cmvn_path.is_file() else GlobalCMVN.identity()
    media = MediaSpec.from_config(model.config, min_audio_seconds=data_args.min_audio_seconds,
                                  max_audio_seconds=data_args.max_audio_seconds,
                                  **({"max_tiles": data_args.max_tiles} if data_args.max_tiles else {}))
    chat_format = model_args.version or model.config.chat_format
    processor = SampleProcessor(tokenizer, media, registry, args.model_max_length,
                                image_aspect_ratio=data_args.image_aspect_ratio, cmvn=cmvn,
                                system_prompt=data_args.system_prompt, chat_format=chat_format,
                                system_prompts={m: getattr(data_args, f"system_prompt_{m}") for m in MODALITIES},
                                image_pipeline=image_pipeline(data_args.image_pipeline, torch.cuda.is_available()))
    model.config.chat_format = processor.format.name  # saved with the stage's output: the next stage keeps the format
    if data_args.image_aspect_ratio == "square" and processor.format.square_still_tiles:
        log.warning("--image_aspect_ratio square still tiles images under the %s chat format, as the reference's "
                    "Qwen2.5 scripts do; list sets under no_patch_sets for single untiled tiles", chat_format)
    dataset = LazySupervisedDataset(registry, data_args.dataset_use, processor,
                                    skip_bad_samples=data_args.skip_bad_samples, seed=args.seed,
                                    cache=data_args.cache_processed_samples)

    metrics = MetricsCallback(TrainerMetrics(), stage_name, preset.name, args.metrics_port)
    module_lr = dict(preset.module_lr)
    for g in ("vision_tower", "mm_projector", "audio_encoder", "audio_adapter"):
        if getattr(args, f"{g}_lr") is not None:
            module_lr[g] = getattr(args, f"{g}_lr")
    if data_args.pack_sequences and preset.objective == "ctc":
        raise ConfigError("--pack_sequences does not apply to the CTC stage (it trains on whole clips)")
    collator = (PackedCollator(tokenizer.pad_token_id, args.model_max_length) if data_args.pack_sequences
                else MultimodalCollator(tokenizer.pad_token_id, ctc=preset.objective == "ctc"))
    budget = data_args.max_tokens_per_batch
    if budget is not None and (budget < args.model_max_length or data_args.group_by_modality_length):
        raise ConfigError(f"--max_tokens_per_batch {budget} must be at least --model_max_length "
                          f"({args.model_max_length}), and it replaces --group_by_modality_length (its batches are "
                          f"already grouped by length)")
    trainer = VitaTrainer(model=model, args=args, train_dataset=dataset, data_collator=collator,
                          processing_class=tokenizer, callbacks=[metrics, FaultInjection()], metrics_callback=metrics,
                          module_lr=module_lr,
                          train_sampler=(token_budget_sampler(dataset, args, budget, packed=data_args.pack_sequences)
                                         if budget else None),
                          modality_lengths=dataset.modality_lengths if (
                              data_args.group_by_modality_length or getattr(args, "group_by_length", False)) else None)
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

    out = Path(args.output_dir)
    outputs = []
    full = saves_full_weights(groups, args.save_full_model, lora=model_args.lora_enable)
    if model_args.lora_enable:
        # The adapter and the other trained weights, then merged into full weights: the next stage starts from them.
        from .lora import merge_on_handoff, save_lora
        outputs += save_lora(trainer, out)
        if args.should_save:
            outputs.append(merge_on_handoff(str(model_dir), str(out), partial))
    elif full:
        trainer.save_model(str(out))
        outputs.append(str(out / "model.safetensors"))
    else:
        outputs += save_groups(trainer.model_wrapped.module if hasattr(trainer.model_wrapped, "module")
                               else trainer.model, groups, out, args.should_save)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    summary = {"stage": stage_name, "preset": preset.name, "trainable": sorted(counts), "full_model": bool(full),
               "outputs": outputs, "global_step": trainer.state.global_step, "train_loss": result.training_loss,
               "tokens_seen": trainer.state.num_input_tokens_seen,
               "final_loss": losses[-1] if losses else None, "first_loss": losses[0] if losses else None,
               "losses": [(h["step"], h["loss"]) for h in trainer.state.log_history if "loss" in h],
               "skipped_samples": dict(dataset.skipped), "seconds": round(time.time() - start, 1),
               "audio_warnings": vars(processor.warnings)}
    if args.should_save:
        if full:
            tokenizer.save_pretrained(str(out))
            if cmvn_path.is_file() and cmvn_path.parent != out:
                (out / "global_cmvn.json").write_text(cmvn_path.read_text())
        tmp = out / (STAGE_DONE_FILE + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(out / STAGE_DONE_FILE)
        write_termination_message(summary)
    if torch.distributed.is_initialized():
        # A process group left alive at interpreter exit can abort a rank ("terminate called ...").
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
    return summary


if __name__ == "__main__":
    main()
