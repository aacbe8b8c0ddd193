"""`vita-model`: convert a training checkpoint into an inference folder, import and export VITA-1.5's released
layout, merge LoRA, inspect sizes and memory, chat with a trained model."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vita_api.constants import MODEL_MAX_LENGTH
from vita_api.errors import ConfigError, VitaError
from vita_api.termination import EXIT_VITA_ERROR


def _processor_config(config) -> dict:
    from ..data.audio import NUM_MEL_BINS, SAMPLE_RATE
    return {"tile_size": config.tile_size, "max_tiles": config.max_tiles,
            "use_thumbnail": True, "image_mean": config.image_mean, "image_std": config.image_std,
            "tokens_per_tile": config.tokens_per_tile, "sample_rate": SAMPLE_RATE, "num_mel_bins": NUM_MEL_BINS,
            "audio_adapter_stride": config.audio_config["adapter_stride"]}


def convert(ckpt: Path, out: Path) -> Path:
    """A checkpoint (HF folder, or a Trainer checkpoint with DeepSpeed ZeRO shards) -> a clean inference folder:
    model.safetensors, config with the multimodal fields, tokenizer, processor_config.json, global_cmvn.json."""
    from ..data.tokenizer import load_tokenizer
    from ..model.builder import build_model, load_model
    from ..model.configuration import VitaConfig
    if not (ckpt / "config.json").is_file():
        raise ConfigError(f"{ckpt} has no config.json; pass a stage output or a checkpoint-N folder")
    if (ckpt / "latest").is_file():  # ZeRO shards: consolidate to fp32 with DeepSpeed's own tool
        from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint
        state = get_fp32_state_dict_from_zero_checkpoint(str(ckpt))
        model = build_model(VitaConfig.from_pretrained(ckpt))
        missing, unexpected = model.load_state_dict(state, strict=False)
        tied = model.config.text_config.tie_word_embeddings
        missing = [k for k in missing if k != "language_model.lm_head.weight" or not tied]
        if missing or unexpected:
            raise ConfigError(f"{ckpt}: ZeRO state does not match the config (missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]})")
        model.tie_weights()
    else:
        model = load_model(str(ckpt))
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    load_tokenizer(str(ckpt)).save_pretrained(out)
    (out / "processor_config.json").write_text(json.dumps(_processor_config(model.config), indent=2))
    for extra in ("global_cmvn.json",):
        src = ckpt / extra if (ckpt / extra).is_file() else ckpt.parent / extra
        if src.is_file():
            (out / extra).write_text(src.read_text())
    return out


def inspect(model_path: str, stage: str | None, gpus: int, tokens: int = MODEL_MAX_LENGTH,
            gpu_memory_gib: float = 80.0, gradient_checkpointing: bool = True, chunked_loss: bool = True,
            hpz_partition: int = 0) -> dict:
    from ..model import memory
    from ..model.builder import vita_1p5_config
    from ..model.configuration import VitaConfig
    from ..model.modeling import VitaForCausalLM
    from vita_api.module_groups import MODULE_GROUPS
    from vita_api.presets import get_preset, resolve_trainable
    config = vita_1p5_config() if model_path == "vita-1.5-7b" else VitaConfig.from_pretrained(model_path)
    model = VitaForCausalLM.empty(config)
    counts = {g: sum(p.numel() for p in m.parameters()) for g in MODULE_GROUPS
              if (m := model.group_module(g)) is not None}
    total = sum(counts.values())
    report = {"model": model_path, "parameters": counts, "total": total}
    if stage:
        preset = get_preset(stage)
        trainable = resolve_trainable(preset)
        n_train = sum(counts.get(g, 0) for g in trainable)
        per_gpu = memory.model_states_bytes(total, n_train, gpus, hpz_partition)
        report.update(stage=preset.name, trainable_groups=sorted(trainable), trainable=n_train,
                      zero3_model_states_gib_per_gpu=round(per_gpu / memory.GIB, 2), gpus=gpus,
                      memory=memory.estimate(memory.LayerShape.of(config.text_config), total=total, trainable=n_train,
                                             gpus=gpus, tokens=tokens, gpu_memory_gib=gpu_memory_gib,
                                             checkpointed_layers=None if gradient_checkpointing else 0,
                                             chunked_loss=chunked_loss, language_model=preset.objective != "ctc",
                                             hpz_partition=hpz_partition))
        if hpz_partition:
            report["zero3_hpz_secondary_gib_per_gpu"] = round(total * memory.BYTES_BF16 / hpz_partition / memory.GIB, 2)
    return report


def _print_inspect(r: dict) -> None:
    for g, n in r["parameters"].items():
        mark = "  trains" if g in r.get("trainable_groups", []) else ""
        print(f"{g:<16}{n:>16,}{mark}")
    print(f"{'total':<16}{r['total']:>16,}")
    if "stage" not in r:
        return
    m = r["memory"]
    print(f"stage {r['stage']}: {r['trainable']:,} trainable, on {r['gpus']} GPUs; per GPU for a micro-batch of "
          f"{m['tokens']:,} tokens:")
    for part in ("model_states", "activations", "logits", "total"):
        print(f"  {part.replace('_', ' '):<14}{m[part + '_gib']:>8.2f} GiB")
    if "zero3_hpz_secondary_gib_per_gpu" in r:
        print(f"  (model states include ZeRO++'s node-local weight copy: "
              f"{r['zero3_hpz_secondary_gib_per_gpu']:.2f} GiB)")
    if m["fewest_checkpointed_layers"] is not None:
        print(f"  activation checkpointing: {m['checkpointed_layers']} decoder layers here; the fewest that fit: "
              f"{m['fewest_checkpointed_layers']} (--activation_checkpointing)")
    verdict = "fits" if m["fits"] else "does NOT fit"
    print(f"{verdict} a {m['gpu_memory_gib']:g} GiB GPU ({m['usable_gib']:g} GiB usable); at most ~{m['max_tokens']:,} "
          f"tokens per micro-batch (--max_tokens_per_batch)")


def _chat(a) -> int:
    from ..inference import Conversation, generation_kwargs, load_chat_model
    from .chat import answer, repl
    chat = load_chat_model(a.model, a.base, a.system, a.device)
    conversation = Conversation(images=a.image, audio=a.audio, video=a.video)
    generation = generation_kwargs(a.max_new_tokens, a.do_sample, a.temperature, a.top_p, a.top_k,
                                   a.repetition_penalty)
    if a.prompt is not None:
        answer(chat, conversation, a.prompt, sys.stdout, **generation)
    else:
        repl(chat, conversation, **generation)
    return 0


def _download(a) -> int:
    from .model_download import catalogue, download_model, resolve
    if a.list or not a.models:
        for name, src in catalogue().items():
            print(f"{name:<24}{src.repo:<32}{src.licence:<12}{src.description}")
        return 0
    for name in a.models:
        download_model(Path(a.root), resolve(name, a.revision, a.include, a.exclude), dry_run=a.dry_run)
    return 0


def _eval(a) -> int:
    from vita_api.termination import write_failure
    from ..evaluation.run import evaluate, print_scores
    limit = int(a.limit) if a.limit is not None and a.limit >= 1 else a.limit
    try:
        scores = evaluate(a.model, [t for t in a.tasks.split(",") if t], base=a.base, include_path=a.include_path,
                          limit=limit, output=a.output, device=a.device, system=a.system, seed=a.seed)
    except VitaError as e:  # in the evaluation pod: the operator reports it and does not retry
        write_failure(type(e).__name__, str(e), retryable=False)
        raise
    print_scores(scores)
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vita-model", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("convert", help="checkpoint (HF folder or ZeRO shards) -> inference folder")
    c.add_argument("checkpoint")
    c.add_argument("output")
    m = sub.add_parser("merge-lora", help="merge a LoRA stage's adapter into its base model")
    m.add_argument("base")
    m.add_argument("lora_run")
    m.add_argument("output")
    m.add_argument("--init-weights", dest="init_weights", nargs="*", default=[],
                   help="partial weights the LoRA stage loaded on top of BASE (its --init_weights), in order")
    im = sub.add_parser("import", help="a released VITA-1.5 folder -> a VITA folder this project trains")
    im.add_argument("vita15_dir")
    im.add_argument("output")
    im.add_argument("--vision-tower",
                    help="OpenGVLab InternViT-300M-448px folder (default: the config's mm_vision_tower)")
    im.add_argument("--audio-encoder", help="whale folder with train.yaml (default: the config's mm_audio_encoder)")
    im.add_argument("--tokenizer", help="default: the folder's own tokenizer, else the offline Qwen2.5 one")
    ex = sub.add_parser("export", help="a VITA folder -> VITA-1.5's layout for VITA's own inference code")
    ex.add_argument("model", help="a VITA folder (a stage's output or `convert` output)")
    ex.add_argument("output")
    ex.add_argument("--format", choices=["vita15"], default="vita15")
    i = sub.add_parser("inspect", help="parameter counts, trainable modules, ZeRO-3 memory per GPU")
    i.add_argument("model", help="VITA folder, or vita-1.5-7b for the published layout")
    i.add_argument("--stage", help="stage preset for the trainable set and memory estimate")
    i.add_argument("--gpus", type=int, default=8)
    i.add_argument("--tokens", type=int, default=MODEL_MAX_LENGTH,
                   help="tokens per micro-batch per GPU (padded rows x width, or --max_tokens_per_batch)")
    i.add_argument("--gpu-memory-gib", type=float, default=80.0, help="the card's memory (H100 80, H200 141)")
    i.add_argument("--no-gradient-checkpointing", dest="gradient_checkpointing", action="store_false")
    i.add_argument("--no-chunked-loss", dest="chunked_loss", action="store_false")
    i.add_argument("--zero3-hpz", dest="hpz_partition", type=int, default=0, metavar="GPUS_PER_NODE",
                   help="the deepspeed preset zero3_hpz (ZeRO++ hierarchical partitioning), this many GPUs per node")
    i.add_argument("--json", action="store_true")
    ch = sub.add_parser("chat", help="ask a trained model: one answer with --prompt, else an interactive chat")
    ch.add_argument("model", help="a VITA folder (any stage's full output, a merged LoRA stage, `import` output), "
                                  "or an adapter-only stage's output with --base")
    ch.add_argument("--base", help="for an adapter-only stage's output: the folder that stage started from")
    ch.add_argument("--image", action="append", default=[], help="an image file (repeatable)")
    ch.add_argument("--audio", action="append", default=[], help="an audio clip (repeatable)")
    ch.add_argument("--video", help="a video file or a folder of frames")
    ch.add_argument("--system", help="system prompt (default: the prompts the model's stage trained with)")
    ch.add_argument("--prompt", help="ask once and print the answer; without it, an interactive chat on stdin")
    ch.add_argument("--max_new_tokens", type=int, default=512)
    ch.add_argument("--do_sample", action="store_true", help="sample instead of greedy decoding")
    ch.add_argument("--temperature", type=float, default=0.7)
    ch.add_argument("--top_p", type=float, default=0.9)
    ch.add_argument("--top_k", type=int, default=50)
    ch.add_argument("--repetition_penalty", type=float, default=1.0)
    ch.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, ...")
    ev = sub.add_parser("eval", help="lmms-eval benchmarks (MME, MMBench, ... or local tasks) on a VITA folder")
    ev.add_argument("model", help="a VITA folder, as for chat")
    ev.add_argument("--tasks", required=True, help="comma-separated lmms-eval task or group names")
    ev.add_argument("--include-path", help="a folder of more lmms-eval task YAMLs (local tasks)")
    ev.add_argument("--limit", type=float, help="at most this many documents per task (below 1: a fraction)")
    ev.add_argument("--output", help="write lmms-eval's results.json, per-sample logs and scores.json here")
    ev.add_argument("--base", help="for an adapter-only stage's output: the folder that stage started from")
    ev.add_argument("--system", help="system prompt (default: the prompts the model's stage trained with)")
    ev.add_argument("--device", default="auto", help="auto (a GPU if there is one), cpu, cuda, cuda:1, ...")
    ev.add_argument("--seed", type=int, default=0)
    dl = sub.add_parser("download", help="the guide's pretrained parts by name, or any Hugging Face repo id")
    dl.add_argument("models", nargs="*", help="names (--list shows them) or repo ids owner/name")
    dl.add_argument("--root", default="models", help="folder to lay them out in (default: models)")
    dl.add_argument("--revision", help="a branch, tag or commit (default: the catalogue's, else main)")
    dl.add_argument("--include", action="append", default=[], help="only files matching this glob (repeatable)")
    dl.add_argument("--exclude", action="append", default=[], help="not files matching this glob (repeatable)")
    dl.add_argument("--dry-run", action="store_true", help="list the files, their sizes and the licence; fetch nothing")
    dl.add_argument("--list", action="store_true", help="the names this command knows")
    a = p.parse_args(argv)
    try:
        if a.cmd == "download":
            return _download(a)
        if a.cmd == "chat":
            return _chat(a)
        if a.cmd == "eval":
            return _eval(a)
        if a.cmd == "convert":
            print(convert(Path(a.checkpoint), Path(a.output)))
        elif a.cmd == "import":
            from ..model.vita15 import import_vita15
            print(import_vita15(a.vita15_dir, a.output, a.vision_tower, a.audio_encoder, a.tokenizer))
        elif a.cmd == "export":
            from ..model.vita15 import export_vita15
            print(export_vita15(a.model, a.output))
        elif a.cmd == "merge-lora":
            from ..train.lora import merge_lora
            print(merge_lora(a.base, a.lora_run, a.output, a.init_weights))
        else:
            r = inspect(a.model, a.stage, a.gpus, a.tokens, a.gpu_memory_gib, a.gradient_checkpointing,
                        a.chunked_loss, a.hpz_partition)
            if a.json:
                print(json.dumps(r, indent=2))
            else:
                _print_inspect(r)
    except VitaError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_VITA_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
