"""Run benchmarks and keep what they print: bench/results/<name>.txt (the command, the machine, the date, then the
script's stdout, untouched). docs/benchmarks.md is generated from these files (`make generate`), so every figure
there is one a script printed.

    .venv/bin/python bench/record.py                  # every benchmark this machine can run
    .venv/bin/python bench/record.py token_efficiency data_check
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
# name: arguments after the script (its defaults are the recorded configuration)
BENCHMARKS = {
    "token_efficiency": [],
    "data_check": [],
    "data_pipeline": [],
    "step_overhead": [],
    "video_lengths": [],
    "checkpoint_bytes": [],
    "install_time": [],
    "operator_scale": [],
}


def machine() -> str:
    gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs, {gib:.0f} GiB, {platform.processor() or platform.machine()}, no GPU, " \
           f"Python {platform.python_version()}"


def record(name: str) -> None:
    cmd = [".venv/bin/python", f"bench/{name}.py", *BENCHMARKS[name]]
    print(f"running {' '.join(cmd)}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, *cmd[1:]], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    if done.returncode:
        sys.exit(f"{name} failed ({done.returncode}); nothing recorded")
    header = [f"command: {' '.join(cmd)}", f"machine: {machine()}", f"date: {datetime.date.today().isoformat()}"]
    (RESULTS / f"{name}.txt").write_text("\n".join(header) + "\n\n" + done.stdout)


def main() -> None:
    names = sys.argv[1:] or list(BENCHMARKS)
    unknown = set(names) - set(BENCHMARKS)
    if unknown:
        sys.exit(f"unknown benchmark(s) {sorted(unknown)}; choose from {sorted(BENCHMARKS)}")
    RESULTS.mkdir(exist_ok=True)
    for name in names:
        record(name)


if __name__ == "__main__":
    main()
