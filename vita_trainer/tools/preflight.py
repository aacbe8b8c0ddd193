"""The run's data check before any GPU starts: `vita-data check` over every stage's datasetUse, each with its own
model_max_length and the run's tokenizer. The operator runs it as a CPU Job on the dataset volume.

Writes the full report (every problem) next to the run's output, and a summary the operator reads from the pod's
termination message (at most 4 KiB: counts per stage and reason, and the first problems). Exit 0 whenever the
check ran, problems or not (the operator weighs them against spec.preflight.maxBadFraction); a registry or
dataset key that does not exist is the run's error: exit 2 with a not-retryable termination message.

    python -m vita_trainer.tools.preflight --registry R --stage NAME=DATASET_USE:MAX_LENGTH ... --report PATH
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from vita_api.errors import VitaError
from vita_api.termination import EXIT_VITA_ERROR, MAX_BYTES, failure_message, write_message
from .context import ToolOptions

FIRST_PROBLEMS = 20


def check_stage(opts: ToolOptions, dataset_use: str, workers: int, decode: bool = False) -> dict:
    from .check import summarise
    from .data_cli import check_items
    from .download import attribute_missing, load_manifest
    items, problems = check_items(opts, dataset_use, None, workers, f"preflight {dataset_use}", decode=decode)
    problems, _ = attribute_missing(problems, Path(opts.registry), load_manifest())  # a missing image's source
    return summarise(problems, len(items))


PROBLEM_CHARS = 300


def clip_middle(line: str, limit: int) -> str:
    """A long problem line cut in the middle (usually a long path), so it keeps where it is and how to fix it."""
    if len(line) <= limit:
        return line
    keep = (limit - 5) // 2
    return f"{line[:keep]} ... {line[-keep:]}"


def summary_message(stages: dict[str, dict], report_path: str) -> str:
    """The termination message: per stage counts, reasons summed, and as many of the first problems as fit."""
    reasons: dict[str, int] = {}
    for st in stages.values():
        for reason, n in st["problems_by_reason"].items():
            reasons[reason] = reasons.get(reason, 0) + n
    out = {"preflight": {name: {"samples": st["samples"], "badSamples": st["bad_samples"],
                                "fileProblems": sum(1 for q in st["problems"] if q["sample_id"] == "-")}
                         for name, st in stages.items()},
           "problemsByReason": dict(sorted(reasons.items())), "report": report_path, "problems": []}
    from .check import Problem
    firsts = [Problem(**p).line() for st in stages.values() for p in st["problems"]][:FIRST_PROBLEMS]
    for line in firsts:
        candidate = {**out, "problems": out["problems"] + [clip_middle(line, PROBLEM_CHARS)]}
        if len(json.dumps(candidate, separators=(",", ":")).encode()) > MAX_BYTES - 64:
            break
        out = candidate
    return json.dumps(out, separators=(",", ":"))


def check_writable(folder: Path) -> None:
    """The trainer (this image's user) must create its stage folders and checkpoints here. Kubernetes' fsGroup does
    not change ownership on most ReadWriteMany volumes (NFS-style shares; only CSI drivers with fsGroupPolicy File),
    so a root-owned share fails the first checkpoint save, hours into the first stage: say so now."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".preflight-write-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        nearest = next((p for p in (folder, *folder.parents) if p.exists()), folder)
        st = nearest.stat()
        raise NotWritable(
            f"the run's output folder {folder} is not writable by uid {os.getuid()} gid {os.getgid()} ({e.strerror}): "
            f"{nearest} is owned by uid {st.st_uid} gid {st.st_gid} with mode {oct(st.st_mode & 0o7777)}. fsGroup "
            f"does not apply to most ReadWriteMany (NFS-style) volumes: chown the folder to uid {os.getuid()} on "
            f"the share, or give the volume a CSI driver with fsGroupPolicy File") from e


class NotWritable(VitaError):
    """The checkpoint volume cannot take the trainer's writes (not retryable: a person must fix the storage)."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vita_trainer.tools.preflight", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--registry", required=True)
    p.add_argument("--tokenizer", default="qwen2.5")
    p.add_argument("--stage", action="append", required=True, metavar="NAME=DATASET_USE:MAX_LENGTH")
    p.add_argument("--report", required=True, help="where the full JSON report goes (the checkpoint volume)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    p.add_argument("--decode", action="store_true", help="decode every media file in full (spec.preflight.decode)")
    p.add_argument("--output", help="the run's output folder on the checkpoint volume: must be writable by this "
                                    "user, as the trainer will be")
    a = p.parse_args(argv)
    try:
        if a.output:
            check_writable(Path(a.output))
        stages = {}
        for item in a.stage:
            name, _, rest = item.partition("=")
            dataset_use, _, max_length = rest.rpartition(":")
            opts = ToolOptions(registry=a.registry, tokenizer=a.tokenizer, model_max_length=int(max_length))
            stages[name] = {"dataset_use": dataset_use, "model_max_length": int(max_length),
                            **check_stage(opts, dataset_use, a.workers, a.decode)}
        report = Path(a.report)
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps({"stages": stages}, indent=1, ensure_ascii=False))
        message = summary_message(stages, str(report))
        write_message(message)
        print(message)
        return 0
    except VitaError as e:  # a registry or dataset key that cannot work: the run's own error, not retryable
        print(f"error: {e}", file=sys.stderr)
        write_message(failure_message(type(e).__name__, str(e), False))
        return EXIT_VITA_ERROR


if __name__ == "__main__":
    sys.exit(main())
