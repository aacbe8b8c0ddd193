"""The run's initializer (spec.initializers): its pretrained parts (`vita-model download`) and datasets (`vita-data
download`) onto the dataset volume, before preflight. The operator runs it as a Job; it reads the totals from the
pod's termination message. A rerun resumes partial files and skips what is there at the same revision.

    python -m vita_trainer.tools.initialize --models-root R [--model NAME[@REVISION]]... [--datasets-root D]
        [--source NAME]... [--manifest FILE] [--include-for NAME=GLOB]...
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vita_api.errors import VitaError
from vita_api.termination import EXIT_VITA_ERROR, write_failure, write_message


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vita_trainer.tools.initialize")
    p.add_argument("--models-root", default="models")
    p.add_argument("--model", action="append", default=[], help="NAME or owner/repo, with @REVISION (repeatable)")
    p.add_argument("--include", action="append", default=[], help="INDEX=GLOB: a pattern for the INDEX-th --model")
    p.add_argument("--exclude", action="append", default=[], help="INDEX=GLOB")
    p.add_argument("--datasets-root", default=".")
    p.add_argument("--source", action="append", default=[], help="a vita-data download source (repeatable)")
    p.add_argument("--manifest", help="download manifest instead of the shipped sources")
    return p


def _patterns(pairs: list[str], index: int) -> list[str]:
    return [glob for pair in pairs for i, _, glob in [pair.partition("=")] if int(i) == index]


def initialize(a: argparse.Namespace) -> dict:
    from .download import SOURCES_FILE, download, load_manifest
    from .model_download import download_model, resolve
    items, files, size, moved = [], 0, 0, 0
    for i, spec in enumerate(a.model):
        name, _, revision = spec.partition("@")
        done = download_model(Path(a.models_root), resolve(name, revision or None, _patterns(a.include, i),
                                                           _patterns(a.exclude, i)))
        files, size, moved = files + done["files"], size + done["bytes"], moved + done["transferred"]
        items.append({"model": name, "commit": done["commit"], "files": done["files"], "folder": done["folder"]})
    if a.source:
        manifest = load_manifest(Path(a.manifest) if a.manifest else SOURCES_FILE)
        done = download(Path(a.datasets_root), a.source, manifest)
        moved += done["bytes"]
        n = sum(len(manifest.sources[s].files) for s in a.source)
        files, size = files + n, size + done["bytes"]
        items.append({"datasets": list(a.source), "files": n, "registry": done.get("registry", "")})
    return {"files": files, "bytes": size, "transferred": moved, "items": items}


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        result = initialize(a)
    except VitaError as e:
        write_failure(type(e).__name__, str(e), retryable=e.retryable)
        print(f"error: {e}", file=sys.stderr)
        return EXIT_VITA_ERROR
    message = json.dumps({"initialized": {k: v for k, v in result.items() if k != "items"} |
                          {"items": result["items"][:8]}}, separators=(",", ":"))
    write_message(message[:4096])
    print(f"initialized: {result['files']} files, {result['transferred']} bytes transferred")
    return 0


if __name__ == "__main__":
    sys.exit(main())
