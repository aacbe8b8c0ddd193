"""The real kopf operator (kopf.testing.KopfRunner) against kmock's emulated Kubernetes API.

What this shows: handler flow, stage chaining, retries, restarts without duplicate jobs, events, deletion.
What it cannot show (a mock): CRD validation/defaulting by a real API server, garbage collection of jobs.
"""

import os

import pytest
from kubernetes import client

from testing.kmock_server import KMockThread
from testing.operator_scenarios import (BACKENDS, JOB_RESOURCE, NS, RUN, finished, job_args, job_status, result_pod,
                                      run_on, wait_for)

pytestmark = pytest.mark.slow
G, V, P = "vita.training.dev", "v1alpha1", "vitatrainingruns"

def api(url):
    return client.CustomObjectsApi(client.ApiClient(client.Configuration(host=url)))


def core(url):
    return client.CoreV1Api(client.ApiClient(client.Configuration(host=url)))


def jobs(a, backend="pytorchjob"):
    return {j["metadata"]["name"]: j for j in a.list_namespaced_custom_object(
        *JOB_RESOURCE[backend][:2], NS, JOB_RESOURCE[backend][2])["items"]}


def set_job(a, name, phase, backend="pytorchjob"):
    """What the backend's Kubeflow controller writes when the job reaches `phase`."""
    group, version, plural = JOB_RESOURCE[backend]
    a.patch_namespaced_custom_object_status(group, version, NS, plural, name, {"status": job_status(backend, phase)})


def add_master_pod(url, job, final_loss, backend="pytorchjob"):
    """What Kubeflow and the kubelet leave behind: the finished rank-0 pod with the trainer's message."""
    core(url).create_namespaced_pod(NS, result_pod(backend, job, "Succeeded", finished(job, final_loss)))


def reconciles() -> float:
    """Reconciles finished in this process (KopfRunner runs the operator here): waited on before asserting that
    something did not happen, so a slow machine cannot pass the assertion before the operator looked."""
    from vita_operator.controller.metrics import REGISTRY
    return REGISTRY.get_sample_value("vita_operator_reconcile_seconds_count") or 0.0


def after_reconciles(n: int, what: str) -> None:
    start = reconciles()
    wait_for(lambda: reconciles() >= start + n, what=f"{n} reconciles ({what})")


def run_status(a):
    return a.get_namespaced_custom_object(G, V, NS, P, "r1").get("status") or {}


def operator(url, metrics_port=0, liveness_port=None):
    from kopf.testing import KopfRunner
    os.environ["VITA_OPERATOR_API_URL"] = url
    os.environ["VITA_OPERATOR_METRICS_PORT"] = str(metrics_port)
    os.environ["VITA_OPERATOR_RESYNC_SECONDS"] = "1"
    os.environ["VITA_OPERATOR_BACKENDS"] = ",".join(BACKENDS)  # read by the startup handler
    extra = [f"--liveness=http://127.0.0.1:{liveness_port}/healthz"] if liveness_port else []
    return KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "vita_operator.controller.handlers", *extra])


@pytest.mark.parametrize("backend", BACKENDS)
def test_stages_chain_retry_restart_and_delete(backend):
    with KMockThread() as mock:
        a = api(mock.url)
        with operator(mock.url) as runner:
            a.create_namespaced_custom_object(G, V, NS, P, run_on(backend))
            wait_for(lambda: "r1-s1-1" in jobs(a, backend), what="first job")
            job = jobs(a, backend)["r1-s1-1"]
            assert job["metadata"]["ownerReferences"][0]["name"] == "r1"
            assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1 if backend == "pytorchjob" else \
                job["spec"]["trainer"]["numNodes"] == 2
            assert wait_for(lambda: run_status(a).get("phase") == "Running", what="Running")
            assert run_status(a)["backend"] == backend
            # a failure is retried as attempt 2 (retryLimit 1)
            set_job(a, "r1-s1-1", "Failed", backend)
            wait_for(lambda: "r1-s1-2" in jobs(a, backend), what="retry job")
            add_master_pod(mock.url, "r1-s1-1", 9.0, backend)  # the failed attempt's pod is not the result
            add_master_pod(mock.url, "r1-s1-2", 0.375, backend)
            set_job(a, "r1-s1-2", "Succeeded", backend)
            wait_for(lambda: "r1-s2-1" in jobs(a, backend), what="stage 2 job")
            # stage 2 starts from the base model plus stage 1's projector (adapter-only stage)
            assert "/ckpt/runs/r1/s1/mm_projector.bin" in job_args(jobs(a, backend)["r1-s2-1"])
            assert run_status(a)["stages"][0]["finalLoss"] == 0.375
        assert runner.exception is None
        # operator restart mid-run: no duplicate jobs, progress kept
        before = set(jobs(a, backend))
        with operator(mock.url) as runner:
            after_reconciles(3, "the resumed run, then 1 s resyncs")
            assert set(jobs(a, backend)) == before
            st = run_status(a)
            assert st["currentStage"] == "s2" and [s["phase"] for s in st["stages"]] == ["Succeeded", "Running",
                                                                                          "Pending"]
            set_job(a, "r1-s2-1", "Succeeded", backend)
            wait_for(lambda: "r1-s3-1" in jobs(a, backend), what="stage 3 job")
            assert "/ckpt/runs/r1/s2/audio_adapter.bin" in job_args(jobs(a, backend)["r1-s3-1"])
            set_job(a, "r1-s3-1", "Succeeded", backend)
            wait_for(lambda: run_status(a).get("phase") == "Succeeded", what="Succeeded")
            st = run_status(a)
            assert [s["attempts"] for s in st["stages"]] == [2, 1, 1]
            assert [s.get("finalLoss") for s in st["stages"]] == [0.375, None, None]  # no pods: left unset
            assert st["observedGeneration"] >= 1
            assert {c["type"]: c["status"] for c in st["conditions"]}["Succeeded"] == "True"
            a.delete_namespaced_custom_object(G, V, NS, P, "r1")
            wait_for(lambda: not any(o for o in a.list_namespaced_custom_object(G, V, NS, P)["items"]),
                     what="run deleted")
        assert runner.exception is None
        # one per attempt, no duplicates; the failed attempt 1 was deleted once its stage succeeded
        assert sorted(jobs(a, backend)) == ["r1-s1-2", "r1-s2-1", "r1-s3-1"]
        other = next(b for b in BACKENDS if b != backend)
        assert not jobs(a, other)  # every stage on the run's backend
        reasons = [e.reason for e in core(mock.url).list_namespaced_event(NS).items]
        for reason in ("StageStarted", "StageRetrying", "StageSucceeded", "RunSucceeded"):
            assert reason in reasons, (reason, reasons)


def test_reconciles_read_a_runs_jobs_from_the_cache_not_a_list_each():
    """Job events and the 1 s resync reconcile the run again and again; once its job is cached, none LISTs jobs."""
    with KMockThread() as mock:
        a = api(mock.url)
        with operator(mock.url) as runner:
            a.create_namespaced_custom_object(G, V, NS, P, run_on("pytorchjob"))
            wait_for(lambda: "r1-s1-1" in jobs(a), what="first job")
            set_job(a, "r1-s1-1", "Running")
            wait_for(lambda: run_status(a).get("phase") == "Running", what="Running")
            after_reconciles(2, "the job's events cached")
            lists = mock.kmock.selected_lists[("pytorchjobs", "vita.training.dev/run=r1")]
            for phase in ("Pending", "Running", "Pending", "Running"):  # four job events, each a reconcile
                set_job(a, "r1-s1-1", phase)
                after_reconciles(1, f"job {phase}")
            after_reconciles(2, "two resync passes")
            assert mock.kmock.selected_lists[("pytorchjobs", "vita.training.dev/run=r1")] == lists
            set_job(a, "r1-s1-1", "Failed")  # still acts on what the cache holds: the retry
            wait_for(lambda: "r1-s1-2" in jobs(a), what="retry job")
            assert lists <= 3  # the first reconciles, before the first job was cached
        assert runner.exception is None


def test_the_operator_asks_the_api_server_only_for_what_it_owns():
    """kopf's label filters are client-side; the job watches carry a server-side label selector,
    so the API server never streams the cluster's other Jobs and PyTorchJobs, and the resync and progress loops
    read runs from the operator's cache instead of LISTing every run each pass."""
    with KMockThread() as mock:
        a = api(mock.url)
        with operator(mock.url) as runner:
            a.create_namespaced_custom_object(G, V, NS, P, run_on("pytorchjob"))
            wait_for(lambda: "r1-s1-1" in jobs(a), what="first job")
            lists = mock.kmock.selected_lists
            owned = "app.kubernetes.io/managed-by=vita-operator"
            wait_for(lambda: all(lists[(p, owned)] for p in ("pytorchjobs", "trainjobs")),  # (no batch Jobs here)
                     what="kopf's selected job watches")
            everything = {p: lists[(p, "")] for p in ("pytorchjobs", "trainjobs", "vitatrainingruns")}
            after_reconciles(3, "three 1 s resync passes")  # (this test's own polling LISTs every job: it stopped)
            for plural in ("pytorchjobs", "trainjobs"):
                assert lists[(plural, "")] == everything[plural], dict(lists)
            assert lists[("vitatrainingruns", "")] == everything["vitatrainingruns"] <= 1  # kopf's initial list
        assert runner.exception is None


def test_concurrent_runs_each_get_their_own_jobs():
    """Many runs at once: each handler sees its own run (kopf keys per-object state by uid)."""
    names = [f"c{i}" for i in range(8)]
    with KMockThread() as mock:
        a = api(mock.url)
        with operator(mock.url) as runner:
            for n in names:
                a.create_namespaced_custom_object(G, V, NS, P, {**RUN, "metadata": {"name": n, "namespace": NS}})
            wait_for(lambda: {f"{n}-s1-1" for n in names} <= set(jobs(a)), timeout=60, what="first jobs")
            for n in names:
                set_job(a, f"{n}-s1-1", "Succeeded")
            wait_for(lambda: {f"{n}-s2-1" for n in names} <= set(jobs(a)), timeout=60, what="second jobs")
            statuses = {n: a.get_namespaced_custom_object(G, V, NS, P, n)["status"] for n in names}
        assert runner.exception is None
        assert sorted(jobs(a)) == sorted(f"{n}-s{i}-1" for n in names for i in (1, 2))
        for name, job in jobs(a).items():
            assert job["metadata"]["labels"]["vita.training.dev/run"] == name.split("-")[0]
            assert job["metadata"]["ownerReferences"][0]["name"] == name.split("-")[0]
        assert all(st["currentJob"] == f"{n}-s2-1" for n, st in statuses.items()), statuses


def test_exhausted_retries_fail_the_run_with_the_job_reason():
    import urllib.request

    from vita_trainer.local import free_port
    from vita_operator.controller.metrics import REGISTRY
    metrics_port, liveness_port = free_port(), free_port()
    failures_before = REGISTRY.get_sample_value("vita_operator_job_failures_total") or 0.0
    with KMockThread() as mock:
        a = api(mock.url)
        run = {**RUN, "spec": {**RUN["spec"], "stages": [dict(RUN["spec"]["stages"][2], retryLimit=0)]}}
        with operator(mock.url, metrics_port, liveness_port) as runner:
            a.create_namespaced_custom_object(G, V, NS, P, run)
            wait_for(lambda: "r1-s3-1" in jobs(a), what="job")
            set_job(a, "r1-s3-1", "Failed")
            wait_for(lambda: run_status(a).get("phase") == "Failed", what="Failed")
            cond = {c["type"]: c for c in run_status(a)["conditions"]}["Failed"]
            assert cond["reason"] == "JobFailed" and "job failed" in cond["message"]
            health = urllib.request.urlopen(f"http://127.0.0.1:{liveness_port}/healthz", timeout=5)
            assert health.status == 200
            body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).read().decode()
            assert 'vita_operator_runs{phase="Failed"} 1.0' in body
            assert f"vita_operator_job_failures_total {failures_before + 1.0}" in body
            assert "vita_operator_reconcile_seconds_count" in body
        assert runner.exception is None and set(jobs(a)) == {"r1-s3-1"}


def test_missing_pytorchjob_crd_is_a_condition_not_a_crash():
    with KMockThread(with_pytorchjobs=False) as mock:
        a = api(mock.url)
        with operator(mock.url) as runner:
            a.create_namespaced_custom_object(G, V, NS, P, RUN)
            cond = wait_for(lambda: {c["type"]: c for c in run_status(a).get("conditions", [])}.get("Ready"),
                            what="Ready condition")
            assert cond["reason"] == "PyTorchJobCRDMissing" and "Kubeflow" in cond["message"]
        assert runner.exception is None
