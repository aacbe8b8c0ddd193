import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TORCH_EXTENSIONS_DIR", os.path.expanduser("~/.cache/vita/torch_extensions"))
os.environ.setdefault("DS_ACCELERATOR", "cpu")
# Every in-process operator (the kmock tier) runs both backends: its settings are read from the environment when it
# starts.
os.environ.setdefault("VITA_OPERATOR_BACKENDS", "pytorchjob,trainjob")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
from PIL import Image  # noqa: E402


@pytest.fixture(scope="session")
def tok():
    from vita_trainer.data.tokenizer import train_tiny_tokenizer
    corpus = ["What color is the shape? red green blue circle square", "hello world, how are you?",
              "You are an AI robot and your name is VITA."] * 20
    return train_tiny_tokenizer(corpus, vocab_size=300)


@pytest.fixture(scope="session")
def tiny_cfg(tok):
    from vita_trainer.model.builder import tiny_config
    return tiny_config(tok)


@pytest.fixture
def media_dir(tmp_path):
    """A folder with a good image, a good 1 s clip, a 0.3 s clip, a corrupt image and a zero-byte wav."""
    Image.new("RGB", (32, 32), "red").save(tmp_path / "red.png")
    Image.new("RGB", (96, 32), "blue").save(tmp_path / "wide.png")
    sf.write(tmp_path / "one.wav", (0.1 * np.sin(np.arange(16000) / 5)).astype("float32"), 16000)
    sf.write(tmp_path / "short.wav", (0.1 * np.sin(np.arange(4800) / 5)).astype("float32"), 16000)
    sf.write(tmp_path / "8k.wav", (0.1 * np.sin(np.arange(8000) / 5)).astype("float32"), 8000)
    (tmp_path / "corrupt.png").write_bytes(b"not a png at all")
    (tmp_path / "empty.wav").write_bytes(b"")
    return tmp_path


def conv(*pairs):
    out = []
    for q, a in pairs:
        out += [{"from": "human", "value": q}, {"from": "gpt", "value": a}]
    return out


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """The small demo data set, tokenizer and base model, made once per session. Tests that train write their
    outputs elsewhere (or under names of their own), never into its runs/."""
    from vita_trainer.demo.run import prepare
    d = tmp_path_factory.mktemp("demo-data")
    prepare(d, small=True)
    return d


@pytest.fixture(scope="session")
def control_plane_binaries():
    """etcd, kube-apiserver and kube-controller-manager, built once per machine (hack/control-plane/build.sh)."""
    from testing.control_plane import ensure_binaries, have_go
    if not have_go() and not os.environ.get("CI"):
        pytest.skip("SKIPPED THE REAL-API-SERVER TIER: `go` is not installed, so the control plane cannot be "
                    "built; install Go >= 1.24 to run it (CI always runs it)")
    return ensure_binaries()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, control_plane_binaries):
    """A real control plane with the operator's prerequisites installed, one per test module
    (testing/apiserver_cluster.py)."""
    from testing.apiserver_cluster import start_cluster
    yield from start_cluster(tmp_path_factory.mktemp("control-plane"), control_plane_binaries)


@pytest.fixture(scope="session")
def kubeflow_binaries(control_plane_binaries):
    """kwok, the training operator, Trainer, JobSet and Kueue, built once per machine (hack/kubeflow/build.sh)."""
    from testing.kubeflow_stack import ensure_binaries
    return ensure_binaries()


@pytest.fixture(scope="module")
def kubeflow(tmp_path_factory, control_plane_binaries, kubeflow_binaries):
    """A real control plane with the Kubeflow stack running on it, one per test module (testing/kubeflow_cluster.py)."""
    from testing.kubeflow_cluster import start_kubeflow_cluster
    yield from start_kubeflow_cluster(tmp_path_factory.mktemp("kubeflow"), control_plane_binaries, kubeflow_binaries)


def _ran(terminalreporter, mark: str) -> list:
    return [r for r in terminalreporter.stats.get("passed", []) + terminalreporter.stats.get("failed", [])
            if mark in r.keywords and r.when == "call"]


def pytest_terminal_summary(terminalreporter):
    from testing.control_plane import k8s_version
    ran = _ran(terminalreporter, "apiserver")
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "apiserver" in r.keywords]
    if ran or skipped:
        terminalreporter.write_line(f"{len(ran)} tests ran against a real kube-apiserver {k8s_version()} "
                                    f"(etcd, RBAC, controller-manager); {len(skipped)} skipped")
    if ran := _ran(terminalreporter, "kubeflow"):
        from testing.kubeflow_stack import describe
        terminalreporter.write_line(f"{len(ran)} of them with the real Kubeflow stack: {describe()}")
    _tier_timings(terminalreporter)


_STARTED = [time.monotonic()]


def pytest_sessionstart(session) -> None:
    _STARTED[0] = time.monotonic()


TIERS = ("kubeflow", "apiserver", "slow", "subprocess")  # a test's tier: the first of its marks here, else "fast"


def _tier_timings(terminalreporter) -> None:
    """Per tier: how many tests and the seconds they took (setup, call and teardown, summed over the workers), and
    the run's wall time: where a slow suite spends its time."""
    tests: dict[str, set] = {}
    seconds: dict[str, float] = {}
    for reports in terminalreporter.stats.values():
        for r in reports:
            if not hasattr(r, "when") or not hasattr(r, "duration"):
                continue
            tier = next((t for t in TIERS if t in r.keywords), "fast")
            tests.setdefault(tier, set()).add(r.nodeid)
            seconds[tier] = seconds.get(tier, 0.0) + r.duration
    if not tests:
        return
    parts = [f"{t} {len(tests[t])} tests {seconds[t]:.0f} s" for t in ("fast", *reversed(TIERS)) if t in tests]
    wall = time.monotonic() - _STARTED[0]
    terminalreporter.write_line(f"tier timings (test seconds summed over workers): {'; '.join(parts)}; "
                                f"wall {wall:.0f} s")


# `make test-fast` sets this: the tests it selects may not start processes. A test that does fails here, naming
# itself, until it is marked `subprocess` (or `slow`), so the fast target keeps its promise.
NO_SUBPROCESS_ENV = "VITA_TEST_NO_SUBPROCESS"
if os.environ.get(NO_SUBPROCESS_ENV) == "1":
    import torch  # noqa: F401,E402  (its first import runs ldconfig to find libdl: before the guard, not in a test)
    import matplotlib.font_manager  # noqa: F401,E402  (a fresh machine's first import runs fc-list for its cache)


@pytest.fixture(autouse=True)
def _no_subprocess_in_fast_runs(request, monkeypatch):
    if os.environ.get(NO_SUBPROCESS_ENV) != "1":
        return
    import subprocess

    def refuse(*args, **kwargs):
        raise AssertionError(f"{request.node.nodeid} starts a process ({args[0] if args else kwargs.get('args')}): "
                             f"mark it `subprocess` to keep it out of make test-fast")
    monkeypatch.setattr(subprocess.Popen, "__init__", refuse)


def pytest_collection_modifyitems(items):
    for item in items:
        if "helm" in getattr(item, "fixturenames", ()):  # the chart tests run the helm binary
            item.add_marker(pytest.mark.subprocess)
