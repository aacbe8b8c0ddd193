"""uv.lock is the environment: it agrees with pyproject.toml, `make setup` installed exactly it, and the images
install it too."""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[1]
LOCK = tomllib.loads((ROOT / "uv.lock").read_text())
UV_VERSION = re.search(r"^UV_VERSION := (\S+)$", (ROOT / "Makefile").read_text(), re.M).group(1)
UV = Path.home() / ".cache" / "vita" / f"uv-{UV_VERSION}" / "bin" / "uv"


def _uv(*args: str) -> subprocess.CompletedProcess:
    if not UV.is_file():
        pytest.fail(f"{UV} is missing: `make setup` installs uv {UV_VERSION} there")
    return subprocess.run([str(UV), *args, "--offline"], cwd=ROOT, capture_output=True, text=True)


def _normalized(reqs) -> set[str]:
    out = set()
    for r in map(Requirement, reqs):
        extras = ",".join(sorted(r.extras))
        out.add(f"{canonicalize_name(r.name)}[{extras}]{sorted(str(s) for s in r.specifier)}{r.marker or ''}")
    return out


def test_the_lock_records_exactly_the_requirements_of_pyproject():
    """Read from both files, not from uv: a dependency edited in pyproject.toml without `make lock` fails here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    root = next(p for p in LOCK["package"] if p["name"] == "vita-trainer")
    locked = root["metadata"]["requires-dist"]
    wanted = list(project["dependencies"])
    for extra, reqs in project["optional-dependencies"].items():
        wanted += [f"{r}; extra == '{extra}'" if ";" not in r else f"{r} and extra == '{extra}'" for r in reqs]

    def as_text(entry):
        text = entry["name"] + (f"[{','.join(entry['extras'])}]" if entry.get("extras") else "")
        text += entry.get("specifier", "")
        return text + (f"; {entry['marker']}" if entry.get("marker") else "")

    # The [gpu]/[test] extras name this project's own extras; uv records those expanded.
    wanted = [w for w in wanted if not w.startswith("vita-trainer[")]
    locked = [as_text(e) for e in locked if e["name"] != "vita-trainer"]
    assert _normalized(locked) == _normalized(wanted)


@pytest.mark.subprocess
def test_uv_agrees_the_lock_is_current():
    done = _uv("lock", "--check")
    assert done.returncode == 0, done.stderr


@pytest.mark.subprocess
def test_setup_installed_exactly_the_locked_set():
    """`make setup` syncs .venv to the lock with the test extra: uv finds nothing to change, and every installed
    distribution the lock names has the locked version."""
    done = _uv("sync", "--locked", "--check", "--extra", "test")
    assert done.returncode == 0, f"run `make setup`:\n{done.stdout}{done.stderr}"
    locked: dict[str, set[str]] = {}
    for p in LOCK["package"]:
        locked.setdefault(canonicalize_name(p["name"]), set()).add(p["version"])
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    for name in ("torch", "transformers", "deepspeed", "kopf", "kubernetes", "pydantic", "numpy"):
        assert installed[name].split("+")[0] in locked[name], (name, installed[name], locked[name])
    wrong = {n: v for n, v in installed.items() if n in locked and v.split("+")[0] not in locked[n]}
    assert not wrong, wrong


def test_the_images_install_the_lock_with_the_same_uv():
    for image in ("trainer", "operator"):
        text = (ROOT / "images" / image / "Dockerfile").read_text()
        assert f"ARG UV_VERSION={UV_VERSION}" in text, image
        assert "COPY pyproject.toml uv.lock" in text and "uv sync --locked" in text, image
