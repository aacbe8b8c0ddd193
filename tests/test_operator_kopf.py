"""The real kopf operator (kopf.testing.KopfRunner) against kmock's emulated Kubernetes API.

What this shows: handler flow, stage chaining, retries, restarts without duplicate jobs, events, deletion.
What it cannot show (a mock): CRD validation/defaulting by a real API server, garbage collection of jobs.
"""

import json
import os
import time

import pytest
from kubernetes import client

from tests.kmock_server import KMockThread
from tests.operator_scenarios import NS, RUN, wait_for

pytestmark = pytest.mark.slow
G, V, P = "vita.training.dev", "v1alpha1", "vitatrainingruns"

def api(url):
    return client.CustomObjectsApi(client.ApiClient(client.Configuration(host=url)))


def core(url):
    return client.CoreV1Api(client.ApiClient(client.Configuration(host=url)))


def jobs(a):
    return {j["metadata"]["name"]: j for j in a.list_namespaced_custom_object("kubeflow.org", "v1", NS,
                                                                            "pytorchjobs")["items"]}


def set_job(a, name, cond):
    a.patch_namespaced_custom_object_status("kubeflow.org", "v1", NS, "pytorchjobs", name, {"status": {
        "conditions": [{"type": cond, "status": "True", "reason": f"Job{cond}", "message": f"job {cond.lower()}"}]}})


def add_master_pod(url, job, final_loss):
    """What Kubeflow and the kubelet leave behind: the finished master pod with the trainer's message."""
    core(url).create_namespaced_pod(NS, {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": f"{job}-master-0", "namespace": NS,
                     "labels": {"training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-type": "master"}},
        "spec": {"containers": [{"name": "pytorch", "image": "trainer:test"}]},
        "status": {"phase": "Succeeded", "containerStatuses": [{
            "name": "pytorch", "image": "trainer:test", "imageID": "", "ready": False, "restartCount": 0,
            "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                     "message": json.dumps({"stage": "s1", "globalStep": 9, "finalLoss": final_loss})}},
        }]}})


def run_status(a):
    return a.get_namespaced_custom_object(G, V, NS, P, "r1").get("status") or {}


def operator(url, metrics_port=0, liveness_port=None):
    from kopf.testing import KopfRunner
    os.environ["VITA_OPERATOR_API_URL"] = url
    os.environ["VITA_OPERATOR_METRICS_PORT"] = str(metrics_port)
    os.environ["VITA_OPERATOR_RESYNC_SECONDS"] = "1"
    extra = [f"--liveness=http://127.0.0.1:{liveness_port}/healthz"] if liveness_port else []
    return KopfRunner(["run", "--standalone", "--all-namespaces", "-m", "vita_operator.handlers", *extra])


def test_stages_chain_retry_restart_and_delete():
    with KMockThread() as mock:
        a = api(mock.url)
        with operator(mock.url) as runner:
            a.create_namespaced_custom_object(G, V, NS, P, RUN)
            wait_for(lambda: "r1-s1-1" in jobs(a), what="first job")
            job = jobs(a)["r1-s1-1"]
            assert job["metadata"]["ownerReferences"][0]["name"] == "r1"
            assert job["spec"]["pytorchReplicaSpecs"]["Worker"]["replicas"] == 1
            assert wait_for(lambda: run_status(a).get("phase") == "Running", what="Running")
            # a failure is retried as attempt 2 (retryLimit 1)
            set_job(a, "r1-s1-1", "Failed")
            wait_for(lambda: "r1-s1-2" in jobs(a), what="retry job")
            add_master_pod(mock.url, "r1-s1-1", 9.0)  # the failed attempt's pod is not the result
            add_master_pod(mock.url, "r1-s1-2", 0.375)
            set_job(a, "r1-s1-2", "Succeeded")
            wait_for(lambda: "r1-s2-1" in jobs(a), what="stage 2 job")
            args = jobs(a)["r1-s2-1"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
                "args"]
            # stage 2 starts from the base model plus stage 1's projector (adapter-only stage)
            assert "/ckpt/runs/r1/s1/mm_projector.bin" in args
            assert run_status(a)["stages"][0]["finalLoss"] == 0.375
        assert runner.exception is None
        # operator restart mid-run: no duplicate jobs, progress kept
        before = set(jobs(a))
        with operator(mock.url) as runner:
            time.sleep(3)
            assert set(jobs(a)) == before
            st = run_status(a)
            assert st["currentStage"] == "s2" and [s["phase"] for s in st["stages"]] == ["Succeeded", "Running",
                                                                                          "Pending"]
            set_job(a, "r1-s2-1", "Succeeded")
            wait_for(lambda: "r1-s3-1" in jobs(a), what="stage 3 job")
            args = jobs(a)["r1-s3-1"]["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0][
                "args"]
            assert "/ckpt/runs/r1/s2/audio_adapter.bin" in args
            set_job(a, "r1-s3-1", "Succeeded")
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
        assert sorted(jobs(a)) == ["r1-s1-1", "r1-s1-2", "r1-s2-1", "r1-s3-1"]  # one job per attempt, no dupes
        reasons = [e.reason for e in core(mock.url).list_namespaced_event(NS).items]
        for reason in ("StageStarted", "StageRetrying", "StageSucceeded", "RunSucceeded"):
            assert reason in reasons, (reason, reasons)


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
    from vita_operator.metrics import REGISTRY
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
