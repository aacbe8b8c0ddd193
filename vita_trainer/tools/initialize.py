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
from dataclasses import dataclass
from pathlib import Path

from vita_api.errors import VitaError
from vita_api.termination import EXIT_VITA_ERROR, write_failure, write_message


# What the operator reads from the initializer pod's /metrics while it runs (status.initializers.progress).
BYTES, EXPECTED = "vita_init_bytes", "vita_init_expected_bytes"


@dataclass(frozen=True)
class Target:
    """A path a download writes (a file, or a folder of partial files) and, for a dataset file, the marker that
    says it is complete (an archive is unpacked and removed then: its announced size counts)."""
    path: Path
    done_marker: Path | None = None
    done_bytes: int = 0

    def bytes_now(self) -> int:
        if self.done_marker is not None and self.done_marker.is_file():
            return self.done_bytes
        if self.path.is_file():
            return self.path.stat().st_size
        return sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()) if self.path.is_dir() else 0


class Progress:
    """Gauges of the bytes the run's downloads need and have on disk so far, on /metrics (prometheus-client),
    refreshed from the disk every `interval` seconds by a thread."""

    def __init__(self, port: int, targets: list[Target], expected: int, interval: float = 2.0):
        import threading

        from prometheus_client import CollectorRegistry, Gauge, start_http_server
        self.registry = CollectorRegistry()
        self.bytes = Gauge(BYTES, "Bytes of the run's models and datasets on the dataset volume so far",
                           registry=self.registry)
        Gauge(EXPECTED, "Bytes of the run's models and datasets when complete",
              registry=self.registry).set(expected)
        self.targets, self.stop = targets, threading.Event()
        self.refresh()
        try:
            start_http_server(port, registry=self.registry)
        except OSError as e:  # progress is a convenience: the downloads go on without it
            print(f"warning: no progress on :{port}/metrics ({e})", file=sys.stderr)
            return
        threading.Thread(target=self._loop, args=(interval,), daemon=True).start()

    def refresh(self) -> None:
        self.bytes.set(sum(t.bytes_now() for t in self.targets))

    def _loop(self, interval: float) -> None:
        while not self.stop.wait(interval):
            self.refresh()


def plan(a: argparse.Namespace) -> tuple[list[Target], int]:
    """(what the downloads write, their expected size in bytes): the models' listed sizes, the datasets' announced
    ones."""
    from .download import SOURCES_FILE, Pending, load_manifest, marker_path, with_hub_sizes
    from .model_download import listing, resolve
    targets: list[Target] = []
    expected = 0
    for i, spec in enumerate(a.model):
        name, _, revision = spec.partition("@")
        src = resolve(name, revision or None, _patterns(a.include, i), _patterns(a.exclude, i))
        _, files = listing(src)
        expected += sum(f.size for f in files)
        folder = Path(a.models_root) / src.into
        targets += [Target(folder / f.path) for f in files] + [Target(folder / ".cache")]
    if a.source:
        manifest = load_manifest(Path(a.manifest) if a.manifest else SOURCES_FILE)
        root = Path(a.datasets_root)
        every = [Pending(name, f, 0, 0) for name in a.source for f in manifest.sources[name].files]
        for f in (p.file for p in with_hub_sizes(every)):  # the Hub's sizes where it has the file
            expected += f.approx_bytes
            targets += [Target(root / f.name, marker_path(root, f), f.approx_bytes),
                        Target(root / (f.name + ".part"), marker_path(root, f), 0)]
    return targets, expected


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vita_trainer.tools.initialize")
    p.add_argument("--models-root", default="models")
    p.add_argument("--model", action="append", default=[], help="NAME or owner/repo, with @REVISION (repeatable)")
    p.add_argument("--include", action="append", default=[], help="INDEX=GLOB: a pattern for the INDEX-th --model")
    p.add_argument("--exclude", action="append", default=[], help="INDEX=GLOB")
    p.add_argument("--datasets-root", default=".")
    p.add_argument("--source", action="append", default=[], help="a vita-data download source (repeatable)")
    p.add_argument("--manifest", help="download manifest instead of the shipped sources")
    p.add_argument("--metrics-port", type=int, help="serve the bytes so far and expected on this port's /metrics")
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
        if a.metrics_port:
            Progress(a.metrics_port, *plan(a))
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
