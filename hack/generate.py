"""Every derived file in the repository, regenerated from its one source (`make generate`), or checked
(`--check`: lists the files that differ from what their source gives, exits 1; tests/test_deploy.py runs it).

    manifests/crd, helm/.../crds    the CRD, from the run spec model (vita_api.spec, via vita_operator.crd)
    manifests/operator.yaml         the chart rendered with default values, without Helm's labels
    manifests/grafana/*.json        the chart's dashboard, for Grafana without Helm
    manifests/examples/run-tiny     the demo's run (vita_trainer/demo/run-tiny.yaml)
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "operator")]  # runnable from a checkout without installing


def _crd() -> str:
    from vita_operator.crd import render
    return render()


def _operator_manifests() -> str:
    from hack.render_manifests import render
    from tests.k8s_tools import tool
    return render(str(tool("helm")))


def _copy(source: str) -> Callable[[], str]:
    return lambda: (REPO / source).read_text()


DERIVED: dict[str, Callable[[], str]] = {
    "manifests/crd/vitatrainingruns.yaml": _crd,
    "helm/vita-operator/crds/vitatrainingruns.yaml": _crd,
    "manifests/operator.yaml": _operator_manifests,
    "manifests/grafana/vita-training.json": _copy("helm/vita-operator/dashboards/vita-training.json"),
    "manifests/examples/run-tiny.yaml": _copy("vita_trainer/demo/run-tiny.yaml"),
}


def rendered() -> dict[str, str]:
    """Each derived file's content as its source gives it now (each source rendered once)."""
    by_source = {make: make() for make in set(DERIVED.values())}
    return {path: by_source[make] for path, make in DERIVED.items()}


def drifted(texts: dict[str, str] | None = None) -> list[str]:
    """The derived files whose content is not what their source gives now."""
    texts = rendered() if texts is None else texts
    return [p for p, text in texts.items() if not (REPO / p).is_file() or (REPO / p).read_text() != text]


def generate() -> list[str]:
    """Writes every derived file; returns the ones that changed."""
    texts = rendered()
    changed = drifted(texts)
    for path in changed:
        (REPO / path).parent.mkdir(parents=True, exist_ok=True)
        (REPO / path).write_text(texts[path])
    return changed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only list what differs; exit 1 if anything does")
    if ap.parse_args().check:
        stale = drifted()
        for path in stale:
            print(f"{path} differs from its source: run `make generate`", file=sys.stderr)
        sys.exit(1 if stale else 0)
    for path in generate():
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
