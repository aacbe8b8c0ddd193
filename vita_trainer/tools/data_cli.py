"""`vita-data`: download, check, stats, concat, audio-chat, speak, preprocess-images, preprocess-audio."""

from __future__ import annotations

import argparse
import json
import os
import sys
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from vita_api.constants import MAX_AUDIO_SECONDS, MIN_AUDIO_SECONDS, MODEL_MAX_LENGTH
from vita_api.errors import VitaError
from vita_api.termination import EXIT_PROBLEMS_FOUND, EXIT_VITA_ERROR
from .context import ToolOptions, build_processor, chat_files, init_worker, worker_processor


def _check_chunk(chunk, decode: bool = False):
    from .check import check_sample
    proc = worker_processor()
    return [p for file, index, raw in chunk for p in check_sample(proc, raw, file, index, decode)]


def _decode_chunk(chunk):
    return _check_chunk(chunk, decode=True)


def _chunks(items, size):
    return [items[i:i + size] for i in range(0, len(items), size)]


def parallel_map(fn, items, opts: ToolOptions, workers: int, desc: str, chunk: int = 256):
    """fn over chunks of items in `workers` processes, with a progress bar; results in input order."""
    chunks = _chunks(items, chunk)
    bar = tqdm(total=len(items), desc=desc, unit="sample", disable=None, file=sys.stderr)
    out = []
    if workers <= 1:
        init_worker(opts)
        for c in chunks:
            out.append(fn(c))
            bar.update(len(c))
    else:
        with get_context("fork").Pool(workers, initializer=init_worker, initargs=(opts,)) as pool:
            for c, res in zip(chunks, pool.imap(fn, chunks)):
                out.append(res)
                bar.update(len(c))
    bar.close()
    return out


def check_items(opts: ToolOptions, dataset_use: str | None, chats: list[str] | None, workers: int,
                desc: str = "check", decode: bool = False) -> tuple[list, list]:
    """(file, index, raw) of every sample, and every problem: file-level ones, then each sample's. `decode`
    decodes every media file in full (slow; finds truncated and cut files the headers do not show)."""
    from .check import load_chat_files
    items, problems = load_chat_files(chat_files(opts, dataset_use, chats))
    for res in parallel_map(_decode_chunk if decode else _check_chunk, items, opts, workers, desc):
        problems.extend(res)
    return items, problems


def cmd_check(a, opts: ToolOptions) -> int:
    from .check import Problem, summarise, write_clean
    from .download import SOURCES_FILE, attribute_missing, how_to_get, load_manifest
    items, problems = check_items(opts, a.dataset_use, a.chat, a.workers, "decode" if a.decode else "check",
                                  decode=a.decode)
    manifest = load_manifest(Path(a.manifest) if a.manifest else SOURCES_FILE)
    problems, by_source = attribute_missing(problems, Path(opts.registry), manifest)
    report = summarise(problems, len(items))
    report["missing_by_source"] = by_source
    if a.write_clean:
        report["clean_files"] = write_clean(items, problems, Path(a.write_clean))
    if a.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['samples']} samples, {report['bad_samples']} with problems")
        for reason, n in report["problems_by_reason"].items():
            print(f"  {reason:<18}{n:>8}")
        for name, n in by_source.items():
            print(f"  {n} missing file(s) belong to source {name}: "
                  f"{how_to_get(manifest, name, Path(opts.registry).resolve().parent)}")
        for p in report["problems"][: a.limit]:
            print(Problem(**p).line())
        if len(report["problems"]) > a.limit:
            print(f"... {len(report['problems']) - a.limit} more (use --json for all)")
    return EXIT_PROBLEMS_FOUND if problems else 0


def cmd_stats(a, opts: ToolOptions) -> int:
    from .check import load_chat_files
    from .stats import collect, write_report
    items, _ = load_chat_files(chat_files(opts, a.dataset_use, a.chat))
    rows = [r for res in parallel_map(collect, items, opts, a.workers, "stats") for r in res]
    report = write_report(rows, Path(a.out))
    print(json.dumps({k: v for k, v in report.items() if k != "histograms"}, indent=2) if a.json else
          f"wrote {a.out}/stats.json and {a.out}/stats.png: {report['samples']} samples")
    return 0


def cmd_concat(a, opts: ToolOptions) -> int:
    from .concat import concat_file
    n_in, n_out = concat_file(Path(a.chat[0]), Path(a.output), build_processor(opts), a.max_tokens, a.seed)
    print(f"packed {n_in} samples into {n_out} (max {a.max_tokens} tokens) -> {a.output}")
    return 0


def cmd_preprocess(a, kind: str) -> int:
    from .preprocess import run_preprocess
    done, skipped = run_preprocess(kind, Path(a.input), Path(a.output), a.workers, max_side=a.max_side,
                                   fbank=getattr(a, "fbank", False))
    print(f"{kind}: wrote {done}, up to date {skipped} -> {a.output}")
    return 0


def cmd_download(a) -> int:
    from .download import SOURCES_FILE, download, load_manifest
    manifest = load_manifest(Path(a.manifest) if a.manifest else SOURCES_FILE)
    if a.list or not (a.source or a.all):
        for name, src in manifest.sources.items():
            size = " + ".join(([f"{sum(f.approx_bytes for f in src.files) / 1e9:.1f} GB"] if src.files else [])
                              + (["by hand"] if src.manual else []))
            print(f"{name:<16}{size:>18}  {src.description} [{src.licence}]")
        if not a.list:
            print("choose with --source NAME (repeatable) or --all", file=sys.stderr)
        return 0 if a.list else EXIT_VITA_ERROR
    download(Path(a.root), list(manifest.sources) if a.all else a.source, manifest, dry_run=a.dry_run,
             keep_archives=a.keep_archives, retries=a.retries)
    return 0


def cmd_audio_chat(a) -> int:
    from .audio_chat import AudioChatOptions, convert
    opts = AudioChatOptions(
        fmt=a.format, src=Path(a.src), out=Path(a.out), task=a.task, audio_dir=Path(a.audio_dir) if a.audio_dir else
        None, name=a.name, language=a.language, normalize=a.normalize, seed=a.seed, shard_size=a.shard_size,
        min_seconds=a.min_audio_seconds, max_seconds=a.max_audio_seconds,
        **({"prompts": Path(a.prompts)} if a.prompts else {}), text_column=a.text_column,
        audio_column=a.audio_column, registry=Path(a.registry) if a.registry else None)
    summary = convert(opts)
    print(json.dumps(summary, indent=2) if a.json else
          f"{summary['samples']} samples from {summary['clips']} clips ({summary['audio_hours']} h) in "
          f"{len(summary['shards'])} shard(s): {', '.join(summary['shards'])}\nskipped: "
          + ", ".join(f"{k} {v}" for k, v in summary["skipped"].items())
          + (f"\nregistered in {summary['registry']}" if "registry" in summary else ""))
    return 0


def cmd_speak(a) -> int:
    from .speak import SpeakOptions, speak
    summary = speak(SpeakOptions(src=a.src, model=a.model, out=Path(a.out), share=a.share, seed=a.seed,
                                 audio_dir=Path(a.audio_dir) if a.audio_dir else None,
                                 max_seconds=a.max_audio_seconds, registry=Path(a.registry) if a.registry else None,
                                 name=a.name, device=a.device))
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vita-data", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)

    def common(sp, needs_registry=True):
        sp.add_argument("--registry", required=needs_registry, help="dataset registry YAML")
        sp.add_argument("--dataset_use", help="mixture or dataset key (default: every dataset)")
        sp.add_argument("--chat", nargs="*", help="chat files instead of the registry's datasets")
        sp.add_argument("--model", help="VITA folder for the tokenizer and media token costs")
        sp.add_argument("--tokenizer", default="qwen2.5")
        sp.add_argument("--model_max_length", type=int, default=MODEL_MAX_LENGTH)
        sp.add_argument("--version",
                        help="chat format: vita15 (alias qwen2p5_instruct) or chatml (default: the model's)")
        sp.add_argument("--min_audio_seconds", type=float, default=MIN_AUDIO_SECONDS)
        sp.add_argument("--max_audio_seconds", type=float, default=MAX_AUDIO_SECONDS)
        sp.add_argument("--workers", type=int, default=os.cpu_count() or 1)
        sp.add_argument("--json", action="store_true", help="machine-readable output")

    d = sub.add_parser("download", help="fetch the guide's datasets (resumable, verified) and write a registry")
    d.add_argument("--root", default="datasets",
                   help="download folder; the registry is written to <root>/registry.yaml")
    d.add_argument("--source", action="append", help="a source to fetch (repeatable); see --list")
    d.add_argument("--all", action="store_true", help="every source")
    d.add_argument("--list", action="store_true", help="list the sources and their sizes")
    d.add_argument("--dry-run", dest="dry_run", action="store_true", help="print what would be fetched and the disk")
    d.add_argument("--keep-archives", dest="keep_archives", action="store_true", help="keep zips after unpacking")
    d.add_argument("--retries", type=int, default=5, help="retries per file on dropped connections and 5xx")
    d.add_argument("--manifest", help="another sources file of the shipped one's shape (e.g. an internal mirror)")
    c = sub.add_parser("check", help="validate samples and media; exit 1 when problems exist")
    common(c)
    c.add_argument("--write-clean", dest="write_clean", help="folder for cleaned JSON files without bad samples")
    c.add_argument("--decode", action="store_true",
                   help="decode every image, audio clip and chosen video frame in full (slower; also finds truncated "
                        "JPEGs, cut WAVs and MP4s that do not decode, which header checks pass)")
    c.add_argument("--limit", type=int, default=50, help="problems to print (all with --json)")
    c.add_argument("--manifest", help="the download sources (default: the shipped list) that name where a missing "
                                      "file comes from")
    s = sub.add_parser("stats", help="counts and histograms (PNG + JSON)")
    common(s)
    s.add_argument("--out", required=True)
    k = sub.add_parser("concat", help="greedily pack samples into multi-turn samples up to N tokens")
    common(k)
    k.add_argument("--max-tokens", dest="max_tokens", type=int, default=6000)
    k.add_argument("--seed", type=int, default=0)
    k.add_argument("--output", required=True)
    ac = sub.add_parser("audio-chat", help="an audio dataset (LibriSpeech, a manifest, Parquet, Clotho/AudioCaps) as "
                                           "VITA conversations, sharded and resumable; registered with --registry")
    ac.add_argument("src", help="LibriSpeech split folder, CSV/TSV manifest, Parquet/Arrow file or folder, or a "
                                "Clotho/AudioCaps captions CSV")
    ac.add_argument("--format", required=True, choices=("librispeech", "manifest", "parquet", "clotho"))
    ac.add_argument("--task", choices=("asr", "caption", "qa"),
                    help="what the samples teach (default: asr for librispeech, caption for clotho)")
    ac.add_argument("--out", required=True, help="the JSON file (several shards: OUT-00000-of-0000N.json)")
    ac.add_argument("--audio-dir", dest="audio_dir", help="where the clips are (manifest: its folder; clotho: the "
                    "split's folder beside the CSV); parquet: where the embedded audio is written (<out>_audio)")
    ac.add_argument("--name", help="dataset name in the registry and sample id prefix (default: OUT's stem)")
    ac.add_argument("--registry", help="register the shards in this registry YAML (and rebuild Pretrain_audio / "
                                       "Pretrain_multimodal)")
    ac.add_argument("--language", choices=("auto", "en", "zh"), default="auto",
                    help="instruction language (auto: Chinese when the target text has Chinese characters)")
    ac.add_argument("--normalize", choices=("sentence", "none"),
                    help="transcripts: sentence case (default for librispeech, whose transcripts are upper case) "
                         "or as they are")
    ac.add_argument("--seed", type=int, default=0, help="instruction choice (per sample id)")
    ac.add_argument("--shard-size", dest="shard_size", type=int, default=100_000, help="clips per output shard")
    ac.add_argument("--min_audio_seconds", type=float, default=MIN_AUDIO_SECONDS)
    ac.add_argument("--max_audio_seconds", type=float, default=MAX_AUDIO_SECONDS,
                    help="longer clips are skipped and counted (whale's limit: 30 s)")
    ac.add_argument("--prompts", help="instructions YAML (default: the shipped audio_prompts.yaml)")
    ac.add_argument("--text-column", dest="text_column", help="manifest/parquet: the text column")
    ac.add_argument("--audio-column", dest="audio_column", help="manifest/parquet: the audio column")
    ac.add_argument("--json", action="store_true", help="machine-readable summary")
    sp = sub.add_parser("speak", help="read a share of a dataset's questions aloud with a text-to-speech model "
                                      "(stage 2.2's spoken questions)")
    sp.add_argument("src", help="a chat file, or a dataset name of --registry")
    sp.add_argument("--model", required=True, help="text-to-speech model folder or Hub id (transformers pipeline)")
    sp.add_argument("--out", required=True, help="the JSON file written (every sample; the chosen ones spoken)")
    sp.add_argument("--share", type=float, default=0.5, help="fraction of samples whose question is spoken")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--audio-dir", dest="audio_dir", help="where the clips go (default: <out>_speech beside OUT)")
    sp.add_argument("--max_audio_seconds", type=float, default=MAX_AUDIO_SECONDS)
    sp.add_argument("--registry", help="read SRC from and register the result in this registry YAML")
    sp.add_argument("--name", help="dataset name (default: OUT's stem)")
    sp.add_argument("--device", help="torch device for the model (default: the pipeline's)")
    for kind in ("images", "audio"):
        pp = sub.add_parser(f"preprocess-{kind}", help=f"resize/re-encode {kind} into another folder (idempotent)")
        pp.add_argument("input")
        pp.add_argument("output")
        pp.add_argument("--workers", type=int, default=os.cpu_count() or 1)
        pp.add_argument("--max-side", dest="max_side", type=int, default=1344, help="images: longest side")
        if kind == "audio":
            pp.add_argument("--fbank", action="store_true", help="also write <name>.fbank.npy features")
    a = p.parse_args(argv)
    try:
        if a.cmd.startswith("preprocess-"):
            return cmd_preprocess(a, a.cmd.split("-", 1)[1])
        if a.cmd == "download":
            return cmd_download(a)
        if a.cmd in ("audio-chat", "speak"):
            return {"audio-chat": cmd_audio_chat, "speak": cmd_speak}[a.cmd](a)
        opts = ToolOptions(registry=a.registry, model=a.model, tokenizer=a.tokenizer,
                           model_max_length=a.model_max_length, min_audio_seconds=a.min_audio_seconds,
                           max_audio_seconds=a.max_audio_seconds, chat_format=a.version)
        return {"check": cmd_check, "stats": cmd_stats, "concat": cmd_concat}[a.cmd](a, opts)
    except VitaError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_VITA_ERROR


if __name__ == "__main__":
    sys.exit(main())
