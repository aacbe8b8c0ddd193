"""Benchmark: the operator at scale.

1. The pure core: the state machine and the PyTorchJob builder driving 1,000 runs x 3 stages to Succeeded
   (decisions/s). Baseline in the same run: building the same jobs alone (what any operator must do).
2. The real kopf operator on kmock with 100 concurrent runs: latency from a job turning Succeeded to the next
   stage's job existing, and the operator's peak RSS.
3. The same against a real control plane (etcd, kube-apiserver with RBAC, controller-manager; built once by
   hack/control-plane/build.sh), the operator on the chart's ServiceAccount, as deployed.
4. The same with the real Kubeflow stack in the loop (testing/kubeflow_stack.py: kube-scheduler, kwok GPU nodes, the
   training operator): each run's pod is scheduled and started; the latency runs from its trainer program ending
   (kwok then reports the pod Succeeded, the training operator the job) to the next stage's job existing.
5. History (--history-runs): on a real control plane, 1,000 finished runs owning 10,000 PyTorchJobs. An operator
   handles them once and stops (as the one that ran them); a second one starts on top, as after an upgrade, and is
   measured once it is quiet: its RSS and API requests per second at steady state (the API server's own flow-control
   count for the operator's ServiceAccount), then the latency of --history-active new runs' stage transitions among
   that history, and its peak RSS over all of it.

    .venv/bin/python bench/operator_scale.py
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vita_operator.jobs.pytorchjob import KUBEFLOW_JOB_NAME, KUBEFLOW_REPLICA_TYPE, PyTorchJobBackend  # noqa: E402
from vita_operator.core.decision import CreateJob, ObservedJob
from vita_operator.core.state import decide  # noqa: E402
from vita_api.spec import VitaTrainingRunSpec  # noqa: E402

SPEC = {"model": {"base": "m"}, "data": {"registry": "r.yaml"}, "output": "o", "resources": {"gpusPerNode": 8},
        "preflight": {"enabled": False},  # the stage jobs are what is measured
        "volumes": {"dataset": {"claimName": "data", "mountPath": "/data"},  # testing.operator_scenarios.CLAIMS
                    "checkpoints": {"claimName": "ckpt", "mountPath": "/ckpt"}},
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


def _operator_process(api_url: str, log_path: Path) -> subprocess.Popen:
    """The operator in its own process, as deployed: its RSS is its own, and it does not share a GIL with kmock."""
    env = {**os.environ, "VITA_OPERATOR_API_URL": api_url, "VITA_OPERATOR_METRICS_PORT": "0",
           "VITA_OPERATOR_RESYNC_SECONDS": "60"}
    return subprocess.Popen([sys.executable, "-m", "kopf", "run", "--standalone", "--all-namespaces",
                             "-m", "vita_operator.controller.handlers"], env=env, stdout=log_path.open("w"),
                            stderr=subprocess.STDOUT)


def _wait(predicate, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):  # the kernel's high-water mark of resident memory
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/<pid>/status")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _transition_latency(lat: list[float]) -> dict:
    """How many runs advanced, and the Succeeded -> next job latency over them (sorted seconds)."""
    return {"advanced_to_stage2": len(lat),
            "succeeded_to_next_job_p50_s": round(statistics.median(lat), 3) if lat else None,
            "succeeded_to_next_job_p95_s": round(lat[int(0.95 * (len(lat) - 1))], 3) if lat else None,
            "succeeded_to_next_job_max_s": round(lat[-1], 3) if lat else None}


def kopf_on_kmock(n_runs: int, log_path: Path, timeout: float = 300) -> dict:
    """n_runs created at once; once all have their first job, every first job turns Succeeded at once.

    Latency per run: from the moment its status PATCH returned to the moment the emulator stored its stage-2 job
    (one monotonic clock: the emulator runs in this process).
    """
    from kubernetes import client

    from testing.kmock_server import KMockThread
    G, V, P, NS = "vita.training.dev", "v1alpha1", "vitatrainingruns", "default"
    with KMockThread(request_history=64) as mock:
        api = client.CustomObjectsApi(client.ApiClient(client.Configuration(host=mock.url)))
        created = mock.kmock.created_at
        proc = _operator_process(mock.url, log_path)
        try:
            t0 = time.monotonic()
            for r in range(n_runs):
                api.create_namespaced_custom_object(G, V, NS, P, {
                    "apiVersion": f"{G}/{V}", "kind": "VitaTrainingRun",
                    "metadata": {"name": f"r{r}", "namespace": NS}, "spec": SPEC})
            first = [("pytorchjobs", NS, f"r{r}-s1-1") for r in range(n_runs)]
            _wait(lambda: all(k in created for k in first), timeout)
            have_first = [r for r in range(n_runs) if first[r] in created]
            first_s = max((created[first[r]] for r in have_first), default=t0) - t0
            flipped, op_cpu0, self_cpu0 = {}, _cpu_seconds(proc.pid), time.process_time()
            for r in have_first:
                api.patch_namespaced_custom_object_status("kubeflow.org", "v1", NS, "pytorchjobs", f"r{r}-s1-1", {
                    "status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Done"}]}})
                flipped[r] = time.monotonic()
            second = {r: ("pytorchjobs", NS, f"r{r}-s2-1") for r in flipped}
            _wait(lambda: all(k in created for k in second.values()), timeout)
            peak = _peak_rss_mib(proc.pid)
            op_cpu, self_cpu = _cpu_seconds(proc.pid) - op_cpu0, time.process_time() - self_cpu0
            phase_s = time.monotonic() - min(flipped.values(), default=time.monotonic())
            if proc.poll() is not None:
                raise RuntimeError(f"the operator exited with {proc.returncode}; see {log_path}")
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:  # kopf drains handlers on SIGTERM; the figures are taken
                proc.kill()
                proc.wait()
    lat = sorted(created[second[r]] - flipped[r] for r in flipped if second[r] in created)
    return {"runs": n_runs, "first_jobs_created": len(have_first), "all_first_jobs_within_s": round(first_s, 2),
            **_transition_latency(lat),
            "operator_peak_rss_mib": round(peak, 1),
            # Where the time went in the transition phase: the operator's CPU vs the emulator's (and client's).
            "transition_phase_s": round(phase_s, 2), "operator_cpu_s": round(op_cpu, 2),
            "emulator_and_client_cpu_s": round(self_cpu, 2)}


def _note_job_creations(api_client, namespace: str, seen: dict[str, float], stop, timeout: float,
                        label_selector: str = "") -> None:
    """A watch in this process noting when each PyTorchJob appears (the server's creationTimestamp has 1 s
    resolution), until `stop` is set; `label_selector`: only those jobs (a watch that first lists 10,000 jobs lags
    behind by the time it takes this process to read them)."""
    import threading

    from kubernetes import client, watch

    def watch_jobs():
        w = watch.Watch()
        try:
            for ev in w.stream(client.CustomObjectsApi(api_client).list_namespaced_custom_object,
                               "kubeflow.org", "v1", namespace, "pytorchjobs", timeout_seconds=int(timeout * 2),
                               label_selector=label_selector):
                if ev["type"] == "ADDED":
                    seen.setdefault(ev["object"]["metadata"]["name"], time.monotonic())
                if stop.is_set():
                    w.stop()
        except Exception:  # the server stopping ends the stream
            if not stop.is_set():
                raise
    threading.Thread(target=watch_jobs, daemon=True).start()


def unrelated_jobs(cp, n: int, namespace: str = "other-team") -> None:
    """Another team's batch Jobs and PyTorchJobs (no label of ours): what a shared cluster holds. No job
    controller runs in this control plane, so they stay as objects."""
    cp.kubectl("create", "namespace", namespace)
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"namespace": namespace, "labels": {"team": "x"}},
           "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [
               {"name": "c", "image": "busybox", "args": ["x" * 200]}]}}}}
    pytorchjob = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"namespace": namespace},
                  "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {"containers": [
                      {"name": "pytorch", "image": "busybox"}]}}}}}}
    docs = [{**job, "metadata": {**job["metadata"], "name": f"j{i}"}} for i in range(n)]
    docs += [{**pytorchjob, "metadata": {**pytorchjob["metadata"], "name": f"p{i}"}} for i in range(n // 10)]
    for start in range(0, len(docs), 250):
        cp.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs[start:start + 250]))


def kopf_on_real_apiserver(n_runs: int, workdir: Path, timeout: float = 300, unrelated: int = 0) -> dict:
    """As kopf_on_kmock, on a real API server, with `unrelated` batch Jobs (and a tenth as many PyTorchJobs) of
    another team present. Job creation times come from a watch in this process (the server's creationTimestamp
    has 1 s resolution)."""
    import threading

    from kubernetes import client

    from testing.control_plane import ControlPlane, OperatorProcess, install_operator_prerequisites
    G, V, P, NS = "vita.training.dev", "v1alpha1", "vitatrainingruns", "default"
    seen: dict[str, float] = {}
    with ControlPlane(workdir) as cp:
        op_kubeconfig = install_operator_prerequisites(cp)
        if unrelated:
            unrelated_jobs(cp, unrelated)
        api = client.CustomObjectsApi(cp.api_client())
        stop = threading.Event()
        _note_job_creations(cp.api_client(), NS, seen, stop, timeout)
        with OperatorProcess(op_kubeconfig, workdir / "operator.log", resync_seconds=600) as op:
            t0 = time.monotonic()
            for r in range(n_runs):
                api.create_namespaced_custom_object(G, V, NS, P, {
                    "apiVersion": f"{G}/{V}", "kind": "VitaTrainingRun",
                    "metadata": {"name": f"r{r}", "namespace": NS}, "spec": SPEC})
            _wait(lambda: all(f"r{r}-s1-1" in seen for r in range(n_runs)), timeout)
            have_first = [r for r in range(n_runs) if f"r{r}-s1-1" in seen]
            first_s = max((seen[f"r{r}-s1-1"] for r in have_first), default=t0) - t0
            flipped, op_cpu0 = {}, _cpu_seconds(op.proc.pid)
            for r in have_first:
                api.patch_namespaced_custom_object_status("kubeflow.org", "v1", NS, "pytorchjobs", f"r{r}-s1-1", {
                    "status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Done"}]}})
                flipped[r] = time.monotonic()
            _wait(lambda: all(f"r{r}-s2-1" in seen for r in flipped), timeout)
            peak, op_cpu = _peak_rss_mib(op.proc.pid), _cpu_seconds(op.proc.pid) - op_cpu0
            phase_s = time.monotonic() - min(flipped.values(), default=time.monotonic())
            apiserver_rss = _peak_rss_mib(cp.procs["kube-apiserver"].pid)
        stop.set()  # before the control plane stops
    lat = sorted(seen[f"r{r}-s2-1"] - flipped[r] for r in flipped if f"r{r}-s2-1" in seen)
    return {"runs": n_runs, "unrelated_jobs": unrelated, "first_jobs_created": len(have_first),
            "all_first_jobs_within_s": round(first_s, 2), **_transition_latency(lat),
            "operator_peak_rss_mib": round(peak, 1), "transition_phase_s": round(phase_s, 2),
            "operator_cpu_s": round(op_cpu, 2), "kube_apiserver_peak_rss_mib": round(apiserver_rss, 1)}


def _operator_requests(cp) -> float:
    """Requests the API server dispatched for ServiceAccounts (flow schema "service-accounts"): here, only the
    operator's (the controller-manager and this benchmark use the admin identity, which is exempt)."""
    text = cp.kubectl("get", "--raw", "/metrics").stdout
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("apiserver_flowcontrol_dispatched_requests_total{")
               and 'flow_schema="service-accounts"' in line)


def _wait_quiet(cp, timeout: float, window: float = 15.0, rate: float = 1.0) -> float:
    """Seconds until the operator's request rate stayed at or under `rate`/s for a whole `window`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        before = _operator_requests(cp)
        time.sleep(window)
        if _operator_requests(cp) - before <= rate * window:
            return time.monotonic() - t0
    raise TimeoutError(f"the operator still made more than {rate} requests/s after {timeout} s")


def kopf_with_history(n_runs: int, jobs_per_run: int, active: int, workdir: Path, steady_s: float = 130,
                      timeout: float = 600, settle_s: float = 15) -> dict:
    """n_runs finished runs, each owning jobs_per_run PyTorchJobs (attempts of its three stages), as a long-lived
    cluster holds them; the operator restarted on top (once it is quiet: `settle_s` without requests); its steady
    state measured over `steady_s` (two resyncs); then `active` new runs created and their stage 1 jobs turned
    Succeeded."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client

    from testing.control_plane import ControlPlane, OperatorProcess, install_operator_prerequisites
    G, V, P, NS = "vita.training.dev", "v1alpha1", "vitatrainingruns", "default"
    spec = VitaTrainingRunSpec.model_validate(SPEC)
    backend = PyTorchJobBackend()
    attempts = [(i, a) for i in range(3) for a in range(1, 5)][:jobs_per_run]
    seen: dict[str, float] = {}
    with ControlPlane(workdir) as cp:
        op_kubeconfig = install_operator_prerequisites(cp)
        api = client.CustomObjectsApi(cp.api_client())
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        finished = {"phase": "Succeeded", "observedGeneration": 1, "message": "all 3 stages succeeded",
                    "conditions": [{"type": "Succeeded", "status": "True", "reason": "AllStagesSucceeded",
                                    "message": "done", "lastTransitionTime": now, "observedGeneration": 1}]}

        def history(r: int) -> None:
            name = f"h{r}"
            run = api.create_namespaced_custom_object(G, V, NS, P, {
                "apiVersion": f"{G}/{V}", "kind": "VitaTrainingRun", "metadata": {"name": name, "namespace": NS},
                "spec": SPEC})
            api.patch_namespaced_custom_object_status(G, V, NS, P, name, {"status": finished})
            owner = {"apiVersion": f"{G}/{V}", "kind": "VitaTrainingRun", "name": name,
                     "uid": run["metadata"]["uid"], "controller": True, "blockOwnerDeletion": True}
            for index, attempt in attempts:
                body = backend.build(name, NS, spec, index, attempt)
                body["metadata"]["ownerReferences"] = [owner]
                api.create_namespaced_custom_object("kubeflow.org", "v1", NS, "pytorchjobs", body)
        t0 = time.monotonic()
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(history, range(n_runs)))
        made_s = time.monotonic() - t0
        stop = threading.Event()
        _note_job_creations(cp.api_client(), NS, seen, stop, timeout,
                            label_selector=f"vita.training.dev/run in ({','.join(f'a{r}' for r in range(active))})")
        # The operator that ran them: it handles each run once (kopf records that on the run), as on a cluster
        # where they ran under it. Then the restart that is measured, as after an upgrade.
        with OperatorProcess(op_kubeconfig, workdir / "operator-first.log", resync_seconds=60):
            first_settle = _wait_quiet(cp, timeout)
        with OperatorProcess(op_kubeconfig, workdir / "operator.log", resync_seconds=60) as op:
            # the initial LIST/WATCH of every run and job, and the resume pass over every run
            restart_settle = _wait_quiet(cp, timeout, window=settle_s)
            before, t1 = _operator_requests(cp), time.monotonic()
            time.sleep(steady_s)
            steady = (_operator_requests(cp) - before) / (time.monotonic() - t1)
            rss_steady = _peak_rss_mib(op.proc.pid)
            before_active = _operator_requests(cp)
            for r in range(active):
                api.create_namespaced_custom_object(G, V, NS, P, {
                    "apiVersion": f"{G}/{V}", "kind": "VitaTrainingRun",
                    "metadata": {"name": f"a{r}", "namespace": NS}, "spec": SPEC})
            _wait(lambda: all(f"a{r}-s1-1" in seen for r in range(active)), timeout)
            flipped = {}
            for r in range(active):
                if f"a{r}-s1-1" in seen:
                    api.patch_namespaced_custom_object_status("kubeflow.org", "v1", NS, "pytorchjobs", f"a{r}-s1-1", {
                        "status": {"conditions": [{"type": "Succeeded", "status": "True", "reason": "Done"}]}})
                    flipped[r] = time.monotonic()
            _wait(lambda: all(f"a{r}-s2-1" in seen for r in flipped), timeout)
            peak = _peak_rss_mib(op.proc.pid)
            active_requests = _operator_requests(cp) - before_active  # the counter counts: not 0 here
        stop.set()
    lat = sorted(seen[f"a{r}-s2-1"] - flipped[r] for r in flipped if f"a{r}-s2-1" in seen)
    return {"finished_runs": n_runs, "their_jobs": n_runs * len(attempts), "history_created_s": round(made_s, 1),
            "first_start_settled_s": round(first_settle, 1), "restart_settled_s": round(restart_settle, 1),
            "steady_operator_requests_per_s": round(steady, 3),
            "operator_rss_at_steady_state_mib": round(rss_steady, 1), "active_runs": active,
            **_transition_latency(lat), "operator_requests_for_the_active_runs": int(active_requests),
            "operator_peak_rss_mib": round(peak, 1)}


def kopf_on_kubeflow(n_runs: int, workdir: Path, timeout: float = 600) -> dict:
    """As kopf_on_real_apiserver, with the controllers in the loop: one GPU node per run, every first job's pod
    running before the clock starts; then every rank-0 pod's program ends (exit 0, its final loss) at once."""
    import threading

    from kubernetes import client

    from testing.control_plane import ensure_binaries
    from testing.kubeflow_cluster import EXIT_CODE, MESSAGE, start_kubeflow_cluster
    from testing.kubeflow_stack import ensure_binaries as kubeflow_binaries
    from testing.operator_scenarios import finished
    G, V, P, NS = "vita.training.dev", "v1alpha1", "vitatrainingruns", "default"
    spec = {**SPEC, "resources": {**SPEC["resources"], "tolerations": [
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}
    seen: dict[str, float] = {}
    cluster_gen = start_kubeflow_cluster(workdir, ensure_binaries(), kubeflow_binaries(), nodes=n_runs)
    cluster = next(cluster_gen)
    try:
        api = client.CustomObjectsApi(cluster.cp.api_client())
        core = client.CoreV1Api(cluster.cp.api_client())
        stop = threading.Event()
        _note_job_creations(cluster.cp.api_client(), NS, seen, stop, timeout)
        with cluster.operator("operator-scale", resync_seconds=600) as op:
            t0 = time.monotonic()
            for r in range(n_runs):
                api.create_namespaced_custom_object(G, V, NS, P, {
                    "apiVersion": f"{G}/{V}", "kind": "VitaTrainingRun",
                    "metadata": {"name": f"r{r}", "namespace": NS}, "spec": spec})

            def running_masters() -> dict[str, str]:
                pods = core.list_namespaced_pod(NS, label_selector=f"{KUBEFLOW_REPLICA_TYPE}=master").items
                return {p.metadata.labels[KUBEFLOW_JOB_NAME]: p.metadata.name for p in pods
                        if p.status.phase == "Running" and p.spec.node_name}
            _wait(lambda: len(running_masters()) >= n_runs, timeout)
            masters = running_masters()
            first_s = time.monotonic() - t0
            ended, op_cpu0 = {}, _cpu_seconds(op.proc.pid)
            to_cpu0 = _cpu_seconds(cluster.stack.procs["training-operator"].pid)
            for r in range(n_runs):
                job = f"r{r}-s1-1"
                if job in masters:
                    core.patch_namespaced_pod(masters[job], NS, {"metadata": {"annotations": {
                        EXIT_CODE: "0", MESSAGE: finished(job, 1.0)["terminated"]["message"]}}})
                    ended[r] = time.monotonic()
            _wait(lambda: all(f"r{r}-s2-1" in seen for r in ended), timeout)
            peak, op_cpu = _peak_rss_mib(op.proc.pid), _cpu_seconds(op.proc.pid) - op_cpu0
            to_cpu = _cpu_seconds(cluster.stack.procs["training-operator"].pid) - to_cpu0
            phase_s = time.monotonic() - min(ended.values(), default=time.monotonic())
        stop.set()
    finally:
        cluster_gen.close()
    lat = sorted(seen[f"r{r}-s2-1"] - ended[r] for r in ended if f"r{r}-s2-1" in seen)
    return {"runs": n_runs, "gpu_nodes": n_runs, "first_pods_running": len(masters),
            "all_first_pods_running_within_s": round(first_s, 2),
            **{k.replace("succeeded_to", "program_end_to"): v for k, v in _transition_latency(lat).items()},
            "operator_peak_rss_mib": round(peak, 1), "transition_phase_s": round(phase_s, 2),
            "operator_cpu_s": round(op_cpu, 2), "training_operator_cpu_s": round(to_cpu, 2)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--kopf-runs", type=int, default=100)
    ap.add_argument("--apiserver-runs", type=int, default=100, help="runs against a real API server (0: skip)")
    ap.add_argument("--only-unrelated", action="store_true", help="skip the real-API-server round without them")
    ap.add_argument("--unrelated-jobs", type=int, default=2000,
                    help="another team's batch Jobs present in the second real-API-server round")
    ap.add_argument("--kubeflow-runs", type=int, default=100,
                    help="runs with the real Kubeflow stack in the loop (testing/kubeflow_stack.py; 0: skip)")
    ap.add_argument("--history-runs", type=int, default=1000,
                    help="finished runs (each owning --history-jobs-per-run jobs) on a real API server (0: skip)")
    ap.add_argument("--history-jobs-per-run", type=int, default=10)
    ap.add_argument("--history-active", type=int, default=20, help="new runs whose transitions are timed then")
    ap.add_argument("--history-steady-seconds", type=float, default=130, help="how long steady state is counted")
    ap.add_argument("--operator-log", type=Path, default=Path("bench_out/operator_scale.log"))
    a = ap.parse_args()
    a.operator_log.parent.mkdir(parents=True, exist_ok=True)
    rate, build_rate = pure_core(a.runs)
    print(f"pure core: {a.runs} runs x 3 stages, {rate:,.0f} decisions/s (each decision builds its job); "
          f"builder alone {build_rate:,.0f} jobs/s")
    if a.kopf_runs:
        print("kopf on kmock (operator in its own process):", kopf_on_kmock(a.kopf_runs, a.operator_log))
    if a.apiserver_runs:
        import tempfile
        for unrelated in ((a.unrelated_jobs,) if a.only_unrelated else (0, a.unrelated_jobs)):
            with tempfile.TemporaryDirectory(prefix="vita-apiserver-") as d:
                print("kopf on a real kube-apiserver (operator in its own process, the chart's RBAC):",
                      kopf_on_real_apiserver(a.apiserver_runs, Path(d), unrelated=unrelated))
    if a.history_runs:
        import tempfile
        with tempfile.TemporaryDirectory(prefix="vita-history-") as d:
            print("kopf among a long-lived cluster's history (real kube-apiserver, the chart's RBAC):",
                  kopf_with_history(a.history_runs, a.history_jobs_per_run, a.history_active, Path(d),
                                    steady_s=a.history_steady_seconds))
    if a.kubeflow_runs:
        import tempfile
        with tempfile.TemporaryDirectory(prefix="vita-kubeflow-") as d:
            print("kopf with the real Kubeflow stack (kube-scheduler, kwok GPU nodes, training operator v1.9.3):",
                  kopf_on_kubeflow(a.kubeflow_runs, Path(d)))


if __name__ == "__main__":
    main()
