"""The operator reads a trainer's /metrics as untrusted input: the run's own pods only, no
redirects, a byte cap and an overall deadline, a fixed vocabulary in status, and one slow endpoint holds up no
other run's reading. Endpoints are real HTTP servers on 127.0.0.1."""

import http.server
import threading
import time

import pytest

from testing.operator_scenarios import FakeTrainerEndpoint, result_pod
from vita_operator.controller import kube, progress_loop
from vita_operator.jobs.backends import job_backends
from vita_operator.controller.progress_loop import ScrapeError, owned_by_job, scrape


class Endpoint:
    """An HTTP server whose GET does what `handle(handler)` says; counts its requests."""

    def __init__(self, handle):
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.hits += 1
                handle(self)

            def log_message(self, *args):
                pass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/metrics"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()


def reply(code, body=b"", headers=()):
    def handle(h):
        h.send_response(code)
        for k, v in headers:
            h.send_header(k, v)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return handle


@pytest.fixture
def endpoints():
    made = []

    def make(handle):
        made.append(Endpoint(handle))
        return made[-1]
    yield make
    for e in made:
        e.close()


def test_redirects_are_refused_and_never_followed(endpoints):
    internal = endpoints(reply(200, b"internal secret"))
    redirect = endpoints(reply(302, headers=[("Location", internal.url)]))
    with pytest.raises(ScrapeError, match="^redirect refused$"):
        scrape(redirect.url, timeout=2)
    assert internal.hits == 0


def test_a_response_over_the_cap_or_a_trickle_past_the_deadline_is_cut(endpoints):
    big = endpoints(reply(200, b"x" * (2 << 20)))
    with pytest.raises(ScrapeError, match="^response too large$"):
        scrape(big.url, timeout=5)

    def trickle(h):
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
        for _ in range(40):
            h.wfile.write(b"#")
            h.wfile.flush()
            time.sleep(0.1)
    slow = endpoints(trickle)
    start = time.monotonic()
    with pytest.raises(ScrapeError, match="^timed out$"):
        scrape(slow.url, timeout=1)
    assert time.monotonic() - start < 2.5  # the whole read, not each recv, is bounded


def test_errors_are_a_fixed_vocabulary_never_the_response(endpoints):
    with pytest.raises(ScrapeError, match="^HTTP status 500$"):
        scrape(endpoints(reply(500, b"stack trace with secrets")).url, timeout=2)
    closed = Endpoint(reply(200))
    url = closed.url
    closed.close()
    closed.server.server_close()
    with pytest.raises(ScrapeError, match="^(connection refused|unreachable)$"):
        scrape(url, timeout=2)


def test_only_pods_the_job_controls_are_read():
    pod = result_pod("pytorchjob", "r-s1-1", "Running", {"running": {}})
    assert not owned_by_job(pod, "r-s1-1")  # the job's labels alone are not enough
    pod["metadata"]["ownerReferences"] = [{"kind": "PyTorchJob", "name": "r-s1-1", "controller": True}]
    assert owned_by_job(pod, "r-s1-1") and not owned_by_job(pod, "r-s1-10")
    pod["metadata"]["ownerReferences"] = [{"kind": "Job", "name": "r-s1-1-node-0", "controller": True}]
    assert owned_by_job(pod, "r-s1-1")  # Trainer: the JobSet's child Job


def running_run(name, port):
    return {"metadata": {"name": name, "namespace": "ns"},
            "spec": {"model": {"base": "b"}, "data": {"registry": "r"}, "output": "o",
                     "trainer": {"metricsPort": port},
                     "stages": [{"name": "s1", "preset": "text_sft", "datasetUse": "d"}]},
            "status": {"phase": "Running", "currentJob": f"{name}-s1-1", "currentStage": "s1",
                       "stages": [{"name": "s1", "phase": "Running", "attempts": 1}]}}


def test_one_slow_endpoint_does_not_delay_another_runs_reading(endpoints, monkeypatch):
    fast = FakeTrainerEndpoint("s1")
    slow_port = {}

    def slow(h):
        time.sleep(3)
        reply(200, b"")(h)
    slowpoint = endpoints(slow)
    slow_port["port"] = slowpoint.server.server_address[1]
    runs = [running_run("slow", slow_port["port"]), running_run("fast", fast.port)]

    def pods(namespace, selector):
        job = selector.split("=")[1].split(",")[0]
        pod = result_pod("pytorchjob", job, "Running", {"running": {}})
        pod["status"]["podIP"] = "127.0.0.1"
        pod["metadata"]["ownerReferences"] = [{"kind": "PyTorchJob", "name": job, "controller": True}]
        return [pod]
    written = {}
    start = time.monotonic()
    monkeypatch.setattr(kube, "pods", pods)
    monkeypatch.setattr(kube, "patch_status", lambda ns, name, body: written.setdefault(
        name, (time.monotonic() - start, body["progress"])))
    monkeypatch.setattr(kube, "get_run", lambda ns, name: next(r for r in runs if r["metadata"]["name"] == name))
    monkeypatch.setenv(progress_loop.SCRAPE_TIMEOUT_ENV, "5")
    reconciled = []
    try:
        read = progress_loop.progress_pass(runs, lambda run: job_backends()["pytorchjob"],
                                           lambda run: reconciled.append(run["metadata"]["name"]),
                                           progress_loop.logging.getLogger("test"))
    finally:
        fast.close()
    assert read == 2
    assert written["fast"][0] < 1.5 and written["fast"][1]["step"] == 5 and not written["fast"][1]["stale"]
    assert written["slow"][0] >= 3 and written["slow"][1]["stale"]
    assert written["slow"][1]["staleReason"].endswith("no metrics for stage s1 yet")
    assert reconciled == ["slow"]  # an endpoint that does not answer: the reconcile says why at once
