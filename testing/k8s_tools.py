"""helm and kubectl for the tests, built from pinned Go modules and cached next to the control plane.

kubectl comes from the same k8s.io/kubernetes module as the control plane (hack/control-plane), helm from its own
module (hack/helm: it needs other k8s.io library versions). A machine's first run builds them; later runs reuse
the binaries. Without Go (outside CI) the tests that need them skip, saying so.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vita_trainer.data.shared_files import exclusive

REPO = Path(__file__).resolve().parents[1]
HELM_MODULE = REPO / "hack" / "helm"


def module_version(module_dir: Path, module: str) -> str:
    """The version a hack/ build module's go.mod requires of `module`."""
    for line in (module_dir / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == module:
            return parts[1]
    raise RuntimeError(f"{module_dir.relative_to(REPO)}/go.mod does not require {module}")


def helm_version() -> str:
    return module_version(HELM_MODULE, "helm.sh/helm/v4")


def built(out: Path, binary: str, build_script: Path) -> Path:
    """`out/binary`, built by `build_script out` the first time (Go needed then): parallel test workers build it
    once, the others wait on the lock."""
    if not (out / binary).is_file():
        require_go(binary)
        out.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(out):
            if not (out / binary).is_file():
                subprocess.run(["bash", str(build_script), str(out)], check=True)
    return out / binary


def require_go(name: str) -> None:
    if shutil.which("go") is None and not os.environ.get("CI"):
        pytest.skip(f"SKIPPED: {name} is built from its Go module and `go` is not installed; install Go >= 1.24 "
                    "to run this test (CI always runs it)")


def tool(name: str) -> Path:
    if name == "kubectl":
        from testing.control_plane import bin_dir, ensure_binaries
        if not (bin_dir() / "kubectl").is_file():
            require_go(name)
        return ensure_binaries() / "kubectl"
    if name == "helm":
        out = Path(os.environ.get("VITA_K8S_TOOLS", Path.home() / ".cache" / "vita" / "k8s-tools"))
        return built(out / f"helm-{helm_version()}", "helm", HELM_MODULE / "build.sh")
    raise ValueError(f"unknown tool {name!r}")


def assert_valid_builtin(obj: dict, tmp_path=None) -> None:
    """A built-in kind (a batch/v1 Job) against its schema at the tier's Kubernetes minor version, in process:
    kubernetes-validate, strict (unknown fields are errors)."""
    import kubernetes_validate
    from testing.control_plane import k8s_version
    minor = ".".join(k8s_version().lstrip("v").split(".")[:2])
    try:
        kubernetes_validate.validate(obj, minor, strict=True)
    except kubernetes_validate.ValidationError as e:
        raise AssertionError(f"{obj['kind']} {obj['metadata'].get('name')}: {e.message} at "
                             f"{'.'.join(map(str, e.path))}") from e
