"""Time a fresh environment's install: pip (what `make setup` ran before the lock) against uv from uv.lock.

Each installs the test extra into a new venv under a temporary folder, in the same run:
- pip with its own warm cache (torch and torchaudio first, then `-e .[test]`, resolving that day's versions);
- uv sync --locked with its warm cache (a developer's second setup);
- uv sync --locked with an empty cache (a fresh CI machine: every wheel downloaded).

    .venv/bin/python bench/install_time.py
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
UV_VERSION = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
UV = Path.home() / ".cache" / "vita" / f"uv-{UV_VERSION}" / "bin" / "uv"
PY = os.environ.get("PY", "python3.11")


def timed(cmds: list[list[str]], env: dict[str, str]) -> float:
    t = time.perf_counter()
    for cmd in cmds:
        subprocess.run(cmd, cwd=ROOT, env={**os.environ, **env}, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> None:
    if not UV.is_file():
        sys.exit(f"{UV} is missing: run `make setup` first")
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        pip = t / "pip-venv" / "bin" / "pip"
        pip_s = timed([[PY, "-m", "venv", str(t / "pip-venv")], [str(pip), "install", "-q", "--upgrade", "pip"],
                       [str(pip), "install", "-q", "torch==2.14.1", "torchaudio==2.11.0"],
                       [str(pip), "install", "-q", "-e", ".[test]"]], {})
        sync = [str(UV), "sync", "--locked", "--extra", "test", "-q"]
        uv_warm = timed([sync], {"UV_PROJECT_ENVIRONMENT": str(t / "uv-warm"), "UV_PYTHON": PY})
        uv_cold = timed([sync], {"UV_PROJECT_ENVIRONMENT": str(t / "uv-cold"), "UV_PYTHON": PY,
                                 "UV_CACHE_DIR": str(t / "uv-cache")})
    print(f"pip, warm pip cache:        {pip_s:7.1f} s")
    print(f"uv sync --locked, warm cache: {uv_warm:7.1f} s  ({pip_s / uv_warm:.0f}x faster than pip)")
    print(f"uv sync --locked, empty cache (downloads every wheel): {uv_cold:7.1f} s  "
          f"({pip_s / uv_cold:.1f}x faster than pip with its warm cache)")


if __name__ == "__main__":
    main()
