"""The trainer's packages import one way: model/ may use data/ (geometry, audio token counts, CMVN), data/ never
uses model/; model/vita15.py (the reference's layout) is used by builder.py and does not use it back."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "vita_trainer"


def imported_modules(path: Path) -> set[str]:
    """Absolute dotted names of everything a module imports, at any depth (function-level imports included)."""
    package = ".".join(path.relative_to(PKG.parent).with_suffix("").parts[:-1])
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
