"""`vita-train` command line: train, local, init-model, demo (merge-lora is `vita-model merge-lora`)."""

from __future__ import annotations

import argparse
import sys

from vita_api.errors import VitaError
from vita_api.termination import EXIT_VITA_ERROR

USAGE = """vita-train COMMAND ...
  train [HF/VITA flags]         one stage (what torchrun launches; same as python -m vita_trainer.train)
  local RUN.yaml [--nproc N] [--root DIR]
                                every stage of a VitaTrainingRun on this machine
  init-model OUT --llm L --vision_tower V [--audio_encoder A]   compose a VITA folder from pretrained parts
  init-model OUT --tiny         write a random tiny VITA folder (tests, demo)
  demo [--out DIR]              synthetic data + tiny model + full pipeline + held-out accuracy
  new-run NAME --base B --registry R [--nodes N --gpus-per-node G --card h100 ...] [-o RUN.yaml]
                                write a VitaTrainingRun, batch sizes sized for the card
"""


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0
    cmd, rest = argv[0], argv[1:]
    try:
        if cmd == "train":
            from .train.main import main as train_main
            train_main(rest)
        elif cmd == "local":
            p = argparse.ArgumentParser(prog="vita-train local")
            p.add_argument("run")
            p.add_argument("--nproc", type=int, default=None, help="processes per stage (default: from the spec)")
            p.add_argument("--root", help="folder the run's relative paths resolve against (data, models, outputs; "
                                          "default: the run file's folder)")
            a = p.parse_args(rest)
            from .local import run_local
            run_local(a.run, a.nproc, a.root)
        elif cmd == "init-model":
            from .model.vision_families import families_help
            p = argparse.ArgumentParser(prog="vita-train init-model")
            p.add_argument("out")
            p.add_argument("--tiny", action="store_true", help="tiny random model (CPU tests)")
            p.add_argument("--llm", help="HF causal LM folder, e.g. Qwen2.5-7B-Instruct")
            p.add_argument("--vision_tower", help=f"vision folder, one of: {families_help()}")
            p.add_argument("--audio_encoder", help="whale audio-encoder folder (final.pt, train.yaml, global_cmvn); "
                                                   "without it the encoder starts random")
            p.add_argument("--mm_projector_type", default="mlp2x_gelu")
            p.add_argument("--tokenizer", default=None, help="default: the LLM folder's, else qwen2.5")
            a = p.parse_args(rest)
            from .data.tokenizer import load_tokenizer
            from .model.builder import build_model, tiny_config, write_composed
            tok = load_tokenizer(a.tokenizer or a.llm or "qwen2.5")
            if a.tiny:
                build_model(tiny_config(tok)).save_pretrained(a.out)
                tok.save_pretrained(a.out)
            elif a.llm and a.vision_tower:
                write_composed(a.out, a.llm, a.vision_tower, tok, audio_encoder=a.audio_encoder,
                               mm_projector_type=a.mm_projector_type)
            else:
                p.error("pass --tiny, or --llm and --vision_tower")
            print(f"wrote {a.out}")
        elif cmd == "new-run":
            from .tools.new_run import main as new_run_main
            return new_run_main(rest)
        elif cmd == "demo":
            from .demo.run import main as demo_main
            return demo_main(rest)
        else:
            print(USAGE, file=sys.stderr)
            return EXIT_VITA_ERROR
    except VitaError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_VITA_ERROR
    return 0


if __name__ == "__main__":
    sys.exit(main())
