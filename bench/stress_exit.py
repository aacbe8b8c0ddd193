"""Stress: back-to-back 2-process ZeRO-3 stages, counting aborts at interpreter exit ([cluster] item 17).

A rank that finished its stage but dies at exit ("terminate called without an active exception", SIGABRT) is a
failed pod and a needless retry in Kubernetes. Each run trains 4 steps with a checkpoint, like the resume test;
with --resume each run is first cut at step 2 (after its checkpoint) and then resumed, and the resumed run is the
one counted (where the abort was first seen).

    .venv/bin/python bench/stress_exit.py --runs 20 [--resume]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.test_resume_and_checkpoints import run, train_cmd  # noqa: E402
from vita_trainer.demo.run import prepare  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--resume", action="store_true", help="cut each run at step 2, then resume it")
    a = ap.parse_args()
    aborts, failures = 0, 0
    with tempfile.TemporaryDirectory(prefix="vita-stress-") as d:
        data = Path(d) / "data"
        prepare(data, small=True)
        for i in range(a.runs):
            start = time.monotonic()
            cmd = train_cmd(Path(d) / f"run{i}", data, steps=4)
            if a.resume:
                cmd[cmd.index("--save_steps") + 1] = "2"
                cut = run(cmd, VITA_FAULT_EXIT_AT_STEP="2")
                assert cut.returncode != 0, "the fault hook did not cut the run"
            r = run(cmd)
            aborted = "terminate called" in r.stderr or r.returncode in (-6, 134)
            aborts += aborted
            failures += r.returncode != 0
            done = (Path(d) / f"run{i}" / "vita_stage.json").is_file()
            print(f"run {i + 1}/{a.runs}: rc={r.returncode} stage_done={done} abort={aborted} "
                  f"{time.monotonic() - start:.1f}s", flush=True)
            if r.returncode != 0:
                print(r.stderr[-1500:], flush=True)
    kind = "resumed " if a.resume else ""
    print(f"{a.runs} back-to-back {kind}2-process runs: {failures} failed, {aborts} aborted at exit")


if __name__ == "__main__":
    main()
