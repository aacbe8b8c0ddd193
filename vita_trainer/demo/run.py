"""`vita-train demo`: synthetic data, a tiny VITA, every stage through `vita-train local`, held-out accuracy."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import yaml

from vita_api.constants import DEEPSPEED_PRESETS
from ..data.audio import GlobalCMVN, fbank, load_audio
from ..data.tokenizer import train_tiny_tokenizer
from ..model.builder import build_model, tiny_config
from . import synth

# The schedule is data: the shipped run-tiny.yaml (also manifests/examples/run-tiny.yaml).
RUN_TINY = Path(__file__).with_name("run-tiny.yaml")


def build_run(name: str, steps_scale: float, deepspeed: str, procs: int) -> dict:
    """The shipped tiny run, with this invocation's step scale, DeepSpeed preset and process count."""
    run = yaml.safe_load(RUN_TINY.read_text())
    run["metadata"]["name"] = name
    run["spec"]["trainer"]["deepspeed"] = deepspeed
    run["spec"]["resources"]["cpuProcsPerNode"] = procs
    for stage in run["spec"]["stages"]:
        stage["args"]["max_steps"] = max(int(stage["args"]["max_steps"] * steps_scale), 2)
    return run


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


def check_answers(out: Path, final_stage: dict) -> dict:
    """The demo's answer check: held-out accuracy of the final stage's model, prompted exactly as that stage was
    trained."""
    from ..data.processor import MediaSpec, SampleProcessor
    from ..data.registry import load_registry
    from ..data.tokenizer import load_tokenizer
    from ..model.builder import load_model
    from .answer_check import answer_accuracy
    model_dir = out / "runs" / final_stage["name"]
    args = final_stage["args"]
    model, tok = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    proc = SampleProcessor(tok, MediaSpec.from_config(model.config), load_registry(out / "registry.yaml"),
                           args["model_max_length"], cmvn=GlobalCMVN.load(model_dir / "global_cmvn.json"),
                           system_prompt=args.get("system_prompt"), chat_format=model.config.chat_format)
    kind = {q: k for q, k in synth.IMAGE_QUESTIONS + synth.AUDIO_QUESTIONS}
    return {"image": answer_accuracy(model, tok, proc, str(out / "chats" / "image_eval.json"), kind.get),
            "audio": answer_accuracy(model, tok, proc, str(out / "chats" / "audio_eval.json"), kind.get)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="vita-train demo")
    p.add_argument("--out", default="demo_out")
    p.add_argument("--steps-scale", type=float, default=1.0, help="scale every stage's max_steps (tests use less)")
    p.add_argument("--small", action="store_true", help="a few dozen samples (tests)")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("--deepspeed", default="none", choices=["none", *DEEPSPEED_PRESETS])
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    t0 = time.time()
    prepare(out, small=a.small)
    run_yaml = out / "run-tiny.yaml"
    run_yaml.write_text(yaml.safe_dump(build_run("tiny-demo", a.steps_scale, a.deepspeed, a.nproc), sort_keys=False))
    from ..local import run_local
    summaries = run_local(run_yaml, a.nproc)
    results = check_answers(out, yaml.safe_load(run_yaml.read_text())["spec"]["stages"][-1])
    report = {"stages": [{k: s[k] for k in ("stage", "preset", "global_step", "first_loss", "final_loss", "seconds")}
                         for s in summaries], "answer_check": results, "total_seconds": round(time.time() - t0, 1)}
    (out / "demo_summary.json").write_text(json.dumps(report, indent=2))
    from .lmms_tasks import GROUP, write_tasks
    tasks = write_tasks(out, out / "lmms_tasks")
    img, aud = results["image"]["accuracy"], results["audio"]["accuracy"]
    print(f"\nheld-out exact-match accuracy: image {img['all']:.3f} (color {img.get('color', 0):.3f}, "
          f"shape {img.get('shape', 0):.3f}) | audio {aud['all']:.3f} (pitch {aud.get('pitch', 0):.3f}, "
          f"count {aud.get('count', 0):.3f})  [{report['total_seconds']}s; loss curves: {out}/runs/*/loss.png]")
    final = out / "runs" / yaml.safe_load(run_yaml.read_text())["spec"]["stages"][-1]["name"]
    print(f"benchmark it with lmms-eval: vita-model eval {final} --tasks {GROUP} --include-path {tasks}\n"
          f"talk to it: vita-model chat {final} --image {out}/images/eval_00000.png "
          f"--prompt 'What color is the shape?'")
    return 0
