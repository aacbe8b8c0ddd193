"""The trainer's packages import one way: model/ may use data/ (geometry, audio token counts, CMVN), data/ never
uses model/; model/vita15.py (the reference's layout) is used by builder.py and does not use it back."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vita_trainer"


def imported_modules(path: Path, root: Path = PKG.parent) -> set[str]:
    """Absolute dotted names of everything a module imports, at any depth (function-level imports included);
    `root` is the folder its top package lives in."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[:len(base) - node.level + 1]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module or ""
            out.add(name)
            out.update(f"{name}.{a.name}" for a in node.names)
    return out


def test_data_never_imports_model():
    offenders = {str(p.relative_to(PKG)): sorted(m for m in imported_modules(p) if m.startswith("vita_trainer.model"))
                 for p in (PKG / "data").rglob("*.py")}
    assert not {k: v for k, v in offenders.items() if v}


def test_the_reference_layout_does_not_import_the_builder():
    assert not {m for m in imported_modules(PKG / "model" / "vita15.py") if m.startswith("vita_trainer.model.builder")}
    assert "vita_trainer.model.vita15.load_whale_folder" in imported_modules(PKG / "model" / "builder.py")


OPERATOR = Path(__file__).resolve().parents[1] / "operator" / "vita_operator"
# What reaches outside the process, or belongs to the controller edge.
IO_MODULES = ("kopf", "kubernetes", "urllib", "http", "socket", "subprocess", "threading", "requests",
              "vita_operator.controller")


def _offenders(folder: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    found = {str(p.relative_to(OPERATOR)): sorted(m for m in imported_modules(p, OPERATOR.parent)
                                                  if any(m == f or m.startswith(f + ".") for f in forbidden))
             for p in (OPERATOR / folder).rglob("*.py")}
    return {k: v for k, v in found.items() if v}


def test_the_operator_core_is_pure():
    """core/ decides from plain data: no API client, no kopf, no network, no jobs/ (what is built) either."""
    assert not _offenders("core", IO_MODULES + ("vita_operator.jobs",))


def test_the_job_builders_are_pure():
    assert not _offenders("jobs", IO_MODULES)


def test_the_operator_folders_are_the_three_parts():
    assert {p.name for p in OPERATOR.iterdir() if p.is_dir() and p.name != "__pycache__"} == \
        {"core", "jobs", "controller"}
