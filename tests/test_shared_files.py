"""The registry on the shared dataset volume is changed under a lock and replaced atomically, so
initializers of two runs in one namespace keep each other's entries."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import yaml

from vita_trainer.data.shared_files import update_text
from vita_trainer.tools.download import Manifest, update_registry

# Each process merges its own sources one at a time, as an initializer's downloads complete.
WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from vita_trainer.tools.download import Manifest, update_registry
    root, who, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    names = [f"{who}-{i}" for i in range(n)]
    manifest = Manifest.model_validate({"sources": {
        name: {"manual": "by hand", "registry": {"datasets": {name: {"chat": f"{name}.json"}}}}
        for name in names}})
    for name in names:
        update_registry(root, manifest, [name])
""")


@pytest.mark.subprocess
def test_two_concurrent_initializers_keep_both_registries_entries(tmp_path):
    (tmp_path / "registry.yaml").write_text("datasets:\n  mine: {chat: mine.json}\n")  # a user's own entry
    n = 40
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), who, str(n)]) for who in ("a", "b")]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    reg = yaml.safe_load((tmp_path / "registry.yaml").read_text())
    expected = {"mine"} | {f"{who}-{i}" for who in ("a", "b") for i in range(n)}
    assert set(reg["datasets"]) == expected
    assert not list(tmp_path.glob(".registry.yaml.*.tmp"))  # no temp file left behind


def test_a_failed_change_leaves_the_file_as_it_was(tmp_path):
    path = tmp_path / "registry.yaml"
    path.write_text("datasets: {}\n")

    def broken(text):
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError):
        update_text(path, broken)
    assert path.read_text() == "datasets: {}\n"
    update_registry(tmp_path, Manifest.model_validate({"sources": {"x": {
        "manual": "by hand", "registry": {"datasets": {"x": {"chat": "x.json"}}}}}}), ["x"])
    assert set(yaml.safe_load(path.read_text())["datasets"]) == {"x"}
