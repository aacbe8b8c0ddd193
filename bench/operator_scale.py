"""Benchmark: the operator at scale.

1. The pure core: the state machine and the PyTorchJob builder driving 1,000 runs x 3 stages to Succeeded
   (decisions/s). Baseline in the same run: building the same jobs alone (what any operator must do).
2. The real kopf operator on kmock with 100 concurrent runs: latency from a job turning Succeeded to the next
   stage's job existing, and the operator's peak RSS.

    .venv/bin/python bench/operator_scale.py
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vita_operator.builder import PyTorchJobBackend  # noqa: E402
from vita_operator.state import CreateJob, ObservedJob, decide  # noqa: E402
from vita_trainer.spec import VitaTrainingRunSpec  # noqa: E402

SPEC = {"model": {"base": "m"}, "data": {"registry": "r.yaml"}, "output": "o", "resources": {"gpusPerNode": 8},
        "volumes": {"dataset": {"claimName": "d", "mountPath": "/data"},
                    "checkpoints": {"claimName": "c", "mountPath": "/ckpt"}},
        "stages": [{"name": "s1", "preset": "vision_align", "datasetUse": "a"},
                   {"name": "s2", "preset": "audio_align", "datasetUse": "b"},
                   {"name": "s3", "preset": "multimodal_sft", "datasetUse": "c"}]}


def pure_core(runs: int) -> tuple[float, float]:
    spec = VitaTrainingRunSpec.model_validate(SPEC)
    backend = PyTorchJobBackend()
    decisions = 0
    start = time.perf_counter()
    for r in range(runs):
        name, status, jobs = f"run{r}", None, []
        while (status or {}).get("phase") != "Succeeded":
            d = decide(name, 1, spec, status, jobs, "2026-01-01T00:00:00Z")
            decisions += 1
            status = d.status
            for a in d.actions:
                if isinstance(a, CreateJob):
                    body = backend.build(name, "ns", spec, a.index, a.attempt)
                    stage = spec.stages[a.index].name
                    jobs.append(ObservedJob(body["metadata"]["name"], stage, a.attempt, "Running"))
            jobs = [ObservedJob(j.name, j.stage, j.attempt, "Succeeded") for j in jobs]  # the job finishes
    rate = decisions / (time.perf_counter() - start)
    start = time.perf_counter()
    for r in range(runs):
        for i in range(3):
            backend.build(f"run{r}", "ns", spec, i, 1)
    build_rate = runs * 3 / (time.perf_counter() - start)
    return rate, build_rate


def kopf_on_kmock(n_runs: int) -> dict:
    from kubernetes import client
    from kopf.testing import KopfRunner

    from tests.kmock_server import KMockThread
    G, V, P, NS = "vita.training.dev", "v1alpha1", "vitatrainingruns", "default"
    with KMockThread() as mock:
        api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=mock.url)))
        os.environ.update(VITA_OPERATOR_API_URL=mock.url, VITA_OPERATOR_METRICS_PORT="0",
                          VITA_OPERATOR_RESYNC_SECONDS="30")

        def jobs() -> set[str]:
            return {j["metadata"]["name"] for j in
                    api.list_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs")["items"]}

        def wait_count(count, timeout):
            end = time.monotonic() + timeout
            while time.monotonic() < end and count() < n_runs:
                time.sleep(0.1)
            return count()

        with KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "vita_operator.handlers"]) as runner:
            t0 = time.monotonic()
            for r in range(n_runs):
                api.create_namespaced_custom_object(G, V, NS, P, {
                    "apiVersion": f"{G}/{V}", "kind": "VitaTrainingRun",
                    "metadata": {"name": f"r{r}", "namespace": NS, "resourceVersion": "1"},  # kmock assigns none
                    "spec": SPEC})
            first = wait_count(lambda: sum(1 for r in range(n_runs) if f"r{r}-s1-1" in jobs()), 120)
            created_s = time.monotonic() - t0
            # Flip every existing first-stage job to Succeeded; time until each run's stage-2 job exists.
            started = {}
            for r in range(n_runs):
                if f"r{r}-s1-1" in jobs():
                    api.patch_namespaced_custom_object_status("kubeflow.org", "v1", NS, "pytorchjobs", f"r{r}-s1-1", {
                        "status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Done"}]}})
                    started[r] = time.monotonic()
            latencies, deadline = {}, time.monotonic() + 120
            while len(latencies) < len(started) and time.monotonic() < deadline:
                present, now = jobs(), time.monotonic()
                for r in started:
                    if r not in latencies and f"r{r}-s2-1" in present:
                        latencies[r] = now - started[r]
                time.sleep(0.05)
        assert runner.exception is None
    lat = sorted(latencies.values())
    return {"runs": n_runs, "first_jobs_created": first, "first_jobs_seconds": round(created_s, 2),
            "advanced_to_stage2": len(lat),
            "succeeded_to_next_job_p50_s": round(statistics.median(lat), 3) if lat else None,
            "succeeded_to_next_job_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3) if lat else None,
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--kopf-runs", type=int, default=100)
    a = ap.parse_args()
    rate, build_rate = pure_core(a.runs)
    print(f"pure core: {a.runs} runs x 3 stages, {rate:,.0f} decisions/s (each decision builds its job); "
          f"builder alone {build_rate:,.0f} jobs/s")
    print("kopf on kmock:", kopf_on_kmock(a.kopf_runs),
          "(peak RSS is the whole benchmark process: kmock + kopf + client)")


if __name__ == "__main__":
    main()
