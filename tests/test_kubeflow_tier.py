"""The operator's jobs run by the real Kubeflow stack: the training operator v1.9.3 and Trainer
v2.3.0 (with JobSet) accept them through their webhooks and make the pods, kube-scheduler places those pods on kwok's
fake GPU nodes, and the run chains on the status the controllers write. Nothing here writes a job's or pod's status
by hand: a test only ends the trainer program in a pod (testing/kubeflow_cluster.py)."""

from __future__ import annotations

import contextlib
import copy
import time

import pytest
import yaml

from testing.apiserver_cluster import assert_no_forbidden, preflight_message
from testing.control_plane import REPO
from testing.kubeflow_stack import GPU
from testing.operator_scenarios import BACKENDS, NS, claim, finished, job_args, run_on, wait_for
from vita_api.termination import failure_message

pytestmark = [pytest.mark.kubeflow, pytest.mark.apiserver, pytest.mark.slow]
STAGE3 = yaml.safe_load((REPO / "manifests" / "examples" / "run-stage3.yaml").read_text())


def stage3(backend: str, name: str) -> dict:
    """run-stage3.yaml, edited only for the tier: its claims, its image and its backend."""
    run = copy.deepcopy(STAGE3)
    run["metadata"].update(name=name, namespace=NS)
    run["spec"]["trainer"].update(image="trainer:kubeflow-tier", backend=backend)
    run["spec"]["volumes"]["dataset"]["claimName"] = "data"
    run["spec"]["volumes"]["checkpoints"]["claimName"] = "ckpt"
    return run


def two_nodes(backend: str, name: str, namespace: str = NS) -> dict:
    """The scenarios' three-stage run (2 nodes x 8 GPUs per stage), tolerating the GPU taint as GPU pools need."""
    run = run_on(backend, name)
    run["metadata"]["namespace"] = namespace
    run["spec"]["resources"]["tolerations"] = [{"key": GPU, "operator": "Exists", "effect": "NoSchedule"}]
    return run


def rank0_first(pods: list[dict]) -> list[dict]:
    """A job's pods, the one holding global rank 0 first (the PyTorchJob's master; the JobSet's completion index 0)."""
    def rank(p: dict) -> int:
        if "master" in p["metadata"]["name"]:
            return 0
        return int(p["metadata"]["annotations"].get("batch.kubernetes.io/job-completion-index", "1") or 1)
    return sorted(pods, key=rank)


def container(pod: dict) -> dict:
    return pod["spec"]["containers"][0]


def env(pod: dict) -> dict[str, str]:
    """The trainer container's environment; a value read from the pod's own fields as `fieldRef:<path>`."""
    def value(e: dict) -> str:
        ref = (e.get("valueFrom") or {}).get("fieldRef")
        return f"fieldRef:{ref['fieldPath']}" if ref else e.get("value", "")
    return {e["name"]: value(e) for e in container(pod).get("env", [])}


def pass_preflight(kubeflow, run: str, stages, tmp_path, monkeypatch) -> None:
    """The preflight Job's pod (made by the Job controller, placed by the scheduler) ends with the real check's
    report."""
    job = f"{run}-preflight-1"
    pods = kubeflow.running_pods(job, "batch", 1)
    kubeflow.end_pods(pods, 0, preflight_message(tmp_path, monkeypatch, bad=False, stages=stages))


@pytest.mark.parametrize("backend", BACKENDS)
def test_run_stage3_runs_on_the_real_controllers(kubeflow, backend, tmp_path, monkeypatch):
    """Scenario 1: run-stage3.yaml's job is accepted by the controllers' webhooks; their pods carry torchrun's
    rendezvous, the GPUs, the tolerations, the volumes and /dev/shm the stage asked for, run on GPU nodes, and the
    run chains to Succeeded on the controllers' own status."""
    name = f"stage3-{backend[:5]}"
    with kubeflow.running(stage3(backend, name), f"operator-stage3-{backend}") as op:
        pass_preflight(kubeflow, name, ("multimodal-sft",), tmp_path, monkeypatch)
        job = wait_for(lambda: f"{name}-multimodal-sft-1" in kubeflow.jobs(backend) and f"{name}-multimodal-sft-1",
                       what="the stage's job")
        (pod,) = kubeflow.running_pods(job, backend, 1)
        assert pod["spec"]["nodeName"].startswith("gpu-node-")
        limits = container(pod)["resources"]["limits"]
        assert limits[GPU] == "8" and limits["memory"] == "900Gi"
        assert any(t.get("key") == GPU and t.get("effect") == "NoSchedule" for t in pod["spec"]["tolerations"])
        assert pod["spec"]["nodeSelector"]["nvidia.com/gpu.product"] == "NVIDIA-H100-80GB-HBM3"
        volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
        shm = next(v for v in volumes.values() if v.get("emptyDir", {}).get("medium") == "Memory")
        assert shm["emptyDir"]["sizeLimit"] == "64Gi"
        claims = {v["persistentVolumeClaim"]["claimName"] for v in volumes.values() if "persistentVolumeClaim" in v}
        assert claims == {"data", "ckpt"}
        # torchrun's rendezvous as each controller writes it: one node of 8 processes, this pod rank 0
        rendezvous = env(pod)
        assert (rendezvous["PET_NNODES"], rendezvous["PET_NPROC_PER_NODE"]) == ("1", "8")
        assert rendezvous["PET_MASTER_PORT"]
        if backend == "pytorchjob":  # the training operator: the master pod's Service, WORLD_SIZE in processes
            assert rendezvous["PET_MASTER_ADDR"] == rendezvous["MASTER_ADDR"] == f"{job}-master-0"
            assert (rendezvous["WORLD_SIZE"], rendezvous["RANK"], rendezvous["PET_NODE_RANK"]) == ("8", "0", "0")
        else:  # Trainer: node 0's name under the JobSet's headless Service; the rank is the Job's completion index
            assert rendezvous["PET_MASTER_ADDR"].startswith(f"{job}-node-0-0.")
            assert rendezvous["PET_NODE_RANK"] == \
                "fieldRef:metadata.annotations['batch.kubernetes.io/job-completion-index']"
        kubeflow.wait_phase(name, "Running")
        kubeflow.end_pods([pod], 0, finished(job, 0.75)["terminated"]["message"])
        status = kubeflow.wait_phase(name, "Succeeded")
        assert status["stages"][0]["finalLoss"] == 0.75
        assert_no_forbidden(op)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_two_node_stage_runs_on_two_gpu_nodes(kubeflow, backend):
    """Scenario 2: both nodes' pods exist and are scheduled on two GPU nodes (8 GPUs each, so never one); the
    training operator's worker init container is in the pod the operator reads; the stage chains to the next."""
    name = f"two-{backend[:5]}"
    with kubeflow.running(two_nodes(backend, name), f"operator-two-nodes-{backend}") as op:
        job = wait_for(lambda: f"{name}-s1-1" in kubeflow.jobs(backend) and f"{name}-s1-1", what="stage 1's job")
        rank0, other = rank0_first(kubeflow.running_pods(job, backend, 2))
        assert rank0["spec"]["nodeName"] != other["spec"]["nodeName"]
        assert env(other)["PET_NNODES"] == "2"
        if backend == "pytorchjob":
            (init,) = other["spec"]["initContainers"]
            assert init["name"] == "init-pytorch" and f"{job}-master-0" in " ".join(init["command"])
            assert other["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"] == 0
        kubeflow.wait_phase(name, "Running")
        kubeflow.end_pods([other], 0)
        kubeflow.end_pods([rank0], 0, finished(job, 1.5)["terminated"]["message"])
        wait_for(lambda: f"{name}-s2-1" in kubeflow.jobs(backend), what="stage 2's job")
        assert kubeflow.run_status(name)["stages"][0]["finalLoss"] == 1.5
        assert_no_forbidden(op)


def test_pods_refused_by_pod_security_show_on_the_run(kubeflow):
    """Scenario 2, restricted: the training operator v1.9.3 injects `init-pytorch` without a securityContext into
    workers, so under PodSecurity "restricted" the API server refuses the worker pod; the refusal reaches the run
    from the training operator's own event instead of a silent hang."""
    ns = "restricted"
    kubeflow.cp.kubectl("create", "namespace", ns)
    kubeflow.cp.kubectl("label", "namespace", ns, "pod-security.kubernetes.io/enforce=restricted")
    for pvc in (claim("data", "ReadOnlyMany"), claim("ckpt", "ReadWriteMany")):
        pvc["metadata"]["namespace"] = ns
        kubeflow.apply(pvc)
    kubeflow.stack.volumes_for(ns, ("data", ["ReadOnlyMany"]), ("ckpt", ["ReadWriteMany"]))
    with kubeflow.running(two_nodes("pytorchjob", "psa", ns), "operator-restricted", resync_seconds=2) as op:

        def refused():
            ready = {c["type"]: c for c in kubeflow.get("vitatrainingrun", "psa", ns).get("status", {})
                     .get("conditions", [])}.get("PodsReady") or {}
            return ready.get("status") == "False" and "PodSecurity" in ready.get("message", "") and ready
        ready = wait_for(refused, timeout=60, what="PodsReady=False naming PodSecurity")
        assert "FailedCreatePod" in ready["message"] and "init-pytorch" in ready["message"]
        assert_no_forbidden(op)
    kubeflow.cp.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_workers_out_of_memory_report_halves_the_micro_batch(kubeflow, backend):
    """Scenario 4: a worker pod ends with the trainer's OOM message while rank 0 is killed without a word; the
    controllers fail the job, and the operator's next attempt has half the micro-batch, not a plain retry."""
    name = f"oom-{backend[:5]}"
    with kubeflow.running(two_nodes(backend, name), f"operator-oom-{backend}") as op:
        job = wait_for(lambda: f"{name}-s1-1" in kubeflow.jobs(backend) and f"{name}-s1-1", what="stage 1's job")
        rank0, other = rank0_first(kubeflow.running_pods(job, backend, 2))
        kubeflow.end_pods([other], 1, failure_message("OutOfMemory", "out of GPU memory at step 12", True,
                                                      outOfMemory={"step": 12, "perDeviceTrainBatchSize": 8,
                                                                   "gradientAccumulationSteps": 2}))
        # torchrun on rank 0's node then kills it; by then the controllers may already have removed it
        wait_for(lambda: any(p["status"].get("phase") == "Failed" for p in kubeflow.pods(job, backend)),
                 what="the worker's pod Failed")
        kubeflow.end_pods([rank0], 137, check=False)
        retry = wait_for(lambda: kubeflow.jobs(backend).get(f"{name}-s1-2"), timeout=60, what="attempt 2")
        args = job_args(retry)
        assert args[args.index("--per_device_train_batch_size") + 1] == "4"
        assert args[args.index("--gradient_accumulation_steps") + 1] == "4"
        assert kubeflow.run_status(name)["stages"][0]["oomAdjustments"][0]["step"] == 12
        assert_no_forbidden(op)


def test_a_job_the_trainer_webhook_refuses_shows_on_the_run(kubeflow):
    """Scenario 5: Trainer's TrainJob webhook refuses torchrun's reserved PET_* variables in trainer.env; the run is
    Blocked with the webhook's own message and no TrainJob exists."""
    run = two_nodes("trainjob", "reserved")
    run["spec"]["trainer"]["env"] = {"PET_NNODES": "4"}
    with kubeflow.running(run, "operator-webhook-refusal", resync_seconds=2) as op:
        status = kubeflow.wait_phase("reserved", "Blocked", timeout=60)
        ready = {c["type"]: c for c in status["conditions"]}["Ready"]
        assert ready["reason"] == "CreateRefused"
        assert "validator.trainjob.trainer.kubeflow.org" in ready["message"]
        assert "must not have reserved envs" in ready["message"] and "PET_NNODES" in ready["message"]
        assert "reserved-s1-1" not in kubeflow.jobs("trainjob")
        assert_no_forbidden(op)


def test_a_failed_trainjob_attempt_is_not_run_again_after_its_jobset_ttl(kubeflow):
    """Scenario 6: with the runtime's JobSet TTL shortened, Trainer v2.3.0 deletes a failed attempt's JobSet when
    the TTL passes and would create it again (kubeflow/trainer#3737), running the stale attempt on GPUs beside the
    retry. The failed attempt stays failed: no pod of it runs again."""
    runtime = "clustertrainingruntime/vita-torch-distributed"
    kubeflow.cp.kubectl("patch", runtime, "--type=merge", "-p",
                        '{"spec": {"template": {"spec": {"ttlSecondsAfterFinished": 3}}}}')
    try:
        with kubeflow.running(two_nodes("trainjob", "ttl"), "operator-ttl") as op:
            job = wait_for(lambda: "ttl-s1-1" in kubeflow.jobs("trainjob") and "ttl-s1-1", what="attempt 1")
            pods = kubeflow.running_pods(job, "trainjob", 2)
            kubeflow.end_pods(pods, 1, failure_message("RuntimeError", "NCCL timeout", True))
            wait_for(lambda: "ttl-s1-2" in kubeflow.jobs("trainjob"), timeout=60, what="attempt 2")
            failed_uids = {p["metadata"]["uid"] for p in pods}
            time.sleep(12)  # four TTLs
            again = [p for p in kubeflow.pods(job, "trainjob") if p["metadata"]["uid"] not in failed_uids]
            assert not again, f"attempt 1 ran again: {[p['metadata']['name'] for p in again]}"
            assert kubeflow.run_status("ttl")["stages"][0]["attempts"] == 2
            assert_no_forbidden(op)
    finally:
        kubeflow.cp.kubectl("patch", runtime, "--type=json", "-p",
                            '[{"op": "remove", "path": "/spec/template/spec/ttlSecondsAfterFinished"}]')


KUEUE = "kueue.x-k8s.io/v1beta2"
# One GPU flavor with a quota of 16 GPUs: one two-node run at a time. A higher WorkloadPriorityClass preempts a lower
# one within the queue.
QUEUES = [{"apiVersion": KUEUE, "kind": "ResourceFlavor", "metadata": {"name": "h100"},
           "spec": {"nodeLabels": {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}}},
          {"apiVersion": KUEUE, "kind": "ClusterQueue", "metadata": {"name": "gpus"},
           "spec": {"namespaceSelector": {}, "preemption": {"withinClusterQueue": "LowerPriority"},
                    "resourceGroups": [{"coveredResources": ["cpu", "memory", GPU], "flavors": [{
                        "name": "h100", "resources": [{"name": "cpu", "nominalQuota": "1000"},
                                                      {"name": "memory", "nominalQuota": "100Ti"},
                                                      {"name": GPU, "nominalQuota": "16"}]}]}]}},
          {"apiVersion": KUEUE, "kind": "LocalQueue", "metadata": {"name": "team", "namespace": NS},
           "spec": {"clusterQueue": "gpus"}},
          {"apiVersion": KUEUE, "kind": "WorkloadPriorityClass", "metadata": {"name": "research"}, "value": 100},
          {"apiVersion": KUEUE, "kind": "WorkloadPriorityClass", "metadata": {"name": "deadline"}, "value": 1000}]


def queued_run(backend: str, name: str, priority: str) -> dict:
    """One two-node stage through Kueue's queue `team`."""
    run = two_nodes(backend, name)
    run["spec"]["stages"] = run["spec"]["stages"][:1]
    run["spec"]["scheduling"] = {"kueueQueue": "team", "kueuePriorityClass": priority}
    return run


@pytest.mark.parametrize("backend", BACKENDS)
def test_kueue_queues_admits_and_preempts_the_runs_jobs(kubeflow, backend):
    """Scenario 3: two runs against a quota that fits one; the second is Queued with Kueue's own reason and starts
    when the first finishes. A run of a higher WorkloadPriorityClass then preempts it: Kueue suspends its running
    job, the run shows Queued (preempted), not failed or hung, and the same attempt resumes when re-admitted."""
    b = backend[:5]
    for obj in QUEUES:
        kubeflow.apply(obj)
    first, second, urgent = (f"q1-{b}", f"q2-{b}", f"q3-{b}")
    with kubeflow.running(queued_run(backend, first, "research"), f"operator-kueue-{backend}") as op, \
            contextlib.ExitStack() as more:
        job1 = wait_for(lambda: f"{first}-s1-1" in kubeflow.jobs(backend) and f"{first}-s1-1", what="first job")
        pods1 = rank0_first(kubeflow.running_pods(job1, backend, 2))
        kubeflow.wait_phase(first, "Running")

        more.enter_context(kubeflow.applied(queued_run(backend, second, "research")))
        queued = kubeflow.wait_phase(second, "Queued", timeout=60)
        assert "Kueue" in queued["message"] and "quota" in queued["message"], queued["message"]
        job2 = f"{second}-s1-1"
        assert not kubeflow.pods(job2, backend)

        kubeflow.end_pods(pods1[1:], 0)
        kubeflow.end_pods(pods1[:1], 0, finished(job1, 1.0)["terminated"]["message"])
        kubeflow.wait_phase(first, "Succeeded")
        kubeflow.running_pods(job2, backend, 2)  # admitted once the first's quota is free
        kubeflow.wait_phase(second, "Running")

        more.enter_context(kubeflow.applied(queued_run(backend, urgent, "deadline")))
        preempted = wait_for(lambda: kubeflow.phase(second) == "Queued" and kubeflow.run_status(second),
                             timeout=60, what="the second run preempted")
        assert "preempted by Kueue" in preempted["message"] or "evicted by Kueue" in preempted["message"]
        job3 = f"{urgent}-s1-1"
        pods3 = rank0_first(kubeflow.running_pods(job3, backend, 2))
        assert not [p for p in kubeflow.pods(job2, backend) if p["status"].get("phase") == "Running"]
        kubeflow.end_pods(pods3[1:], 0)
        kubeflow.end_pods(pods3[:1], 0, finished(job3, 0.5)["terminated"]["message"])
        kubeflow.wait_phase(urgent, "Succeeded")

        kubeflow.running_pods(job2, backend, 2, timeout=120)  # re-admitted: the same attempt, its pods again
        status = kubeflow.wait_phase(second, "Running")
        assert status["stages"][0]["attempts"] == 1 and f"{second}-s1-2" not in kubeflow.jobs(backend)
        assert_no_forbidden(op)


def test_a_lost_node_retries_the_pytorchjob_stage_without_spending_a_retry(kubeflow):
    """The node under rank 0 is deleted; pod garbage collection fails and deletes its pods, the PyTorchJob fails (the
    training operator has no in-place restart that torchrun's static rendezvous could take); the run retries the
    stage as a disruption (retryLimit 0 would fail it), names the node, and the next attempt runs elsewhere."""
    name, backend = "lost-pytor", "pytorchjob"
    with node_lost_under_rank0(kubeflow, backend, name) as (op, _, node, _):
        retry = wait_for(lambda: f"{name}-s1-2" in kubeflow.jobs(backend) and f"{name}-s1-2", timeout=180,
                         what="the stage retried after the node was lost")
        rec = kubeflow.run_status(name)["stages"][0]
        assert rec["disruptions"] == 1 and rec["failures"][0]["nodes"] == [node]
        # whichever the operator saw first: the node gone (its own check), or pod GC's DisruptionTarget
        # ("DeletionByPodGC: PodGC: node no longer exists"); the node is named in `nodes` either way
        assert "no longer exists" in rec["failures"][0]["disruption"]
        assert kubeflow.phase(name) in ("Running", "Queued")
        wait_for_event(kubeflow, name, "StageDisrupted", node)
        assert all(p["spec"]["nodeName"] != node for p in kubeflow.running_pods(retry, backend, 2))
        assert_no_forbidden(op)


def test_a_lost_node_restarts_the_trainjob_in_place(kubeflow):
    """The node under rank 0 is deleted; pod garbage collection marks its pod with DisruptionTarget, the runtime's pod
    failure policy fails that Job, and the JobSet restarts every pod in place (Trainer v2.3.0, JobSet v0.10.1): the
    same TrainJob (its Kueue admission kept) runs on other nodes, no retry spent, the restart and the node on the
    run."""
    name, backend = "lost-train", "trainjob"
    with node_lost_under_rank0(kubeflow, backend, name) as (op, job, node, before):
        restarted = wait_for(lambda: [p for p in kubeflow.running_pods(job, backend, 2, timeout=180)
                                      if p["metadata"]["uid"] not in before] or None, timeout=240,
                             what="the TrainJob's pods restarted in place")
        assert all(p["metadata"]["labels"]["jobset.sigs.k8s.io/restart-attempt"] == "1" for p in restarted)
        assert all(p["spec"]["nodeName"] != node for p in restarted)
        rec = wait_for(lambda: (r := kubeflow.run_status(name)["stages"][0]).get("restartsInPlace") and r,
                       timeout=60, what="the restart recorded on the run")
        assert rec["restartsInPlace"] == 1 and rec["attempts"] == 1 and not rec.get("disruptions")
        assert f"{name}-s1-2" not in kubeflow.jobs(backend) and kubeflow.phase(name) == "Running"
        wait_for_event(kubeflow, name, "StageRestartedInPlace", node)
        assert_no_forbidden(op)


@contextlib.contextmanager
def node_lost_under_rank0(kubeflow, backend: str, name: str):
    """A two-node run (retryLimit 0) whose first job runs and whose nodes the run has recorded; then the node under
    rank 0 is deleted. Yields (the operator, the job, the node, the uids of the job's pods before), and brings the
    node back after."""
    run = two_nodes(backend, name)
    run["spec"]["stages"][0]["retryLimit"] = 0
    with kubeflow.running(run, f"operator-lost-node-{backend}") as op:
        job = wait_for(lambda: f"{name}-s1-1" in kubeflow.jobs(backend) and f"{name}-s1-1", what="stage 1's job")
        rank0, _ = rank0_first(kubeflow.running_pods(job, backend, 2))
        node = rank0["spec"]["nodeName"]
        wait_for(lambda: node in (kubeflow.run_status(name)["stages"][0].get("nodes") or []),
                 what="the attempt's nodes recorded")
        before = {p["metadata"]["uid"] for p in kubeflow.pods(job, backend)}
        kubeflow.stack.lose_node(node)
        try:
            yield op, job, node, before
        finally:
            kubeflow.stack.restore_node(node)


def wait_for_event(kubeflow, name: str, reason: str, text: str) -> None:
    """The run's event with `reason` whose message names `text`. The operator writes the status before it posts the
    decision's events, so a test that saw the status may look a moment before the event exists."""
    wait_for(lambda: any(e["involvedObject"]["name"] == name and e["reason"] == reason and text in e["message"]
                         for e in kubeflow.get("events")["items"]), timeout=30, what=f"a {reason} event naming {text}")


def test_a_partly_created_job_is_explained_and_fails_its_attempt_after_the_startup_timeout(kubeflow):
    """A ResourceQuota of one pod lets the training operator create the
    master and refuses the worker; the run says so within a progress interval (a run whose endpoint does not
    answer, or that is Queued, is reconciled every interval), and after spec.startupTimeoutSeconds the attempt is
    deleted and counted (retryLimit 0: the run fails, naming the quota) instead of waiting out the hang window."""
    ns = "quota"
    kubeflow.cp.kubectl("create", "namespace", ns)
    kubeflow.apply({"apiVersion": "v1", "kind": "ResourceQuota", "metadata": {"name": "one-pod", "namespace": ns},
                    "spec": {"hard": {"pods": "1"}}})
    for pvc in (claim("data", "ReadOnlyMany"), claim("ckpt", "ReadWriteMany")):
        pvc["metadata"]["namespace"] = ns
        kubeflow.apply(pvc)
    kubeflow.stack.volumes_for(ns, ("data", ["ReadOnlyMany"]), ("ckpt", ["ReadWriteMany"]))
    run = two_nodes("pytorchjob", "quota", ns)
    run["spec"].update(progressIntervalSeconds=5, startupTimeoutSeconds=60)
    run["spec"]["stages"][0]["retryLimit"] = 0
    try:
        with kubeflow.running(run, "operator-quota", env={"VITA_OPERATOR_PROGRESS_TICK_SECONDS": "2"}) as op:
            def status():
                return kubeflow.get("vitatrainingrun", "quota", ns).get("status", {})
            start = time.monotonic()
            explained = wait_for(lambda: "exceeded quota" in status().get("message", "") and status(), timeout=60,
                                 what="the run's message naming the quota")
            assert explained["phase"] in ("Running", "Queued") and time.monotonic() - start < 45
            failed = wait_for(lambda: status().get("phase") == "Failed" and status(), timeout=150,
                              what="the attempt failed after the startup timeout")
            assert "did not all start within 60s" in failed["message"] and "exceeded quota" in failed["message"]
            assert_no_forbidden(op)
    finally:
        kubeflow.cp.kubectl("delete", "namespace", ns, "--wait=false")


@pytest.mark.parametrize("backend", BACKENDS)
def test_the_platforms_network_profile_reaches_every_pod_of_a_two_node_stage(kubeflow, backend):
    """A 2-node run that names no profile gets the chart's default (fabric.defaultProfile): the RDMA device, the
    Multus network, the NCCL settings and IPC_LOCK on both nodes' pods, as the real controllers make them. (A run
    that writes these fields itself is refused by the run policy: test_run_admission.)"""
    import json
    profiles = {"defaultProfile": "ib", "profiles": {"ib": {
        "extraResources": {"example.com/rdma": "1"}, "podAnnotations": {"k8s.v1.cni.cncf.io/networks": "rdma-net"},
        "env": {"NCCL_IB_HCA": "mlx5", "NCCL_SOCKET_IFNAME": "eth0"}, "ipcLock": True, "minBusBandwidthGBps": 40}}}
    name = f"ib-{backend[:5]}"
    with kubeflow.running(two_nodes(backend, name), f"operator-fabric-{backend}",
                          env={"VITA_OPERATOR_FABRIC": json.dumps(profiles)}) as op:
        job = wait_for(lambda: f"{name}-s1-1" in kubeflow.jobs(backend) and f"{name}-s1-1", what="stage 1's job")
        # no node offers example.com/rdma: the pods exist (made by the controllers) and wait for one that does
        pods = wait_for(lambda: len(p := kubeflow.pods(job, backend)) == 2 and p, timeout=90, what="both pods")
        for pod in pods:
            trainer = container(pod)
            assert trainer["resources"]["limits"]["example.com/rdma"] == "1", pod["metadata"]["name"]
            assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "rdma-net"
            assert env(pod)["NCCL_IB_HCA"] == "mlx5" and env(pod)["NCCL_SOCKET_IFNAME"] == "eth0"
            assert "IPC_LOCK" in trainer["securityContext"]["capabilities"]["add"]
            assert "--min_bus_bandwidth_gbps 40" in " ".join(trainer.get("args", []) + trainer.get("command", []))
        assert_no_forbidden(op)


def test_a_runtime_with_gang_scheduling_groups_both_pods_of_a_trainjob(kubeflow):
    """The chart's runtime with podGroupPolicy coscheduling: Trainer makes one PodGroup per TrainJob (minMember:
    every node's pod) and labels both pods with it, so a gang scheduler places them together or not at all."""
    from testing.control_plane import helm_template
    runtime = yaml.safe_load(helm_template(
        "--set", "backends.trainjob.enabled=true", "--set", "backends.trainjob.runtime.name=vita-torch-gang",
        "--set-json", 'backends.trainjob.runtime.podGroupPolicy={"coscheduling":{"scheduleTimeoutSeconds":300}}',
        "--show-only", "templates/clustertrainingruntime.yaml"))
    kubeflow.apply(runtime)
    name = "gang"
    with kubeflow.running(two_nodes("trainjob", name), "operator-gang",
                          env={"VITA_OPERATOR_TRAINJOB_RUNTIME": "vita-torch-gang"}) as op:
        job = wait_for(lambda: f"{name}-s1-1" in kubeflow.jobs("trainjob") and f"{name}-s1-1", what="the TrainJob")
        assert kubeflow.jobs("trainjob")[job]["spec"]["runtimeRef"]["name"] == "vita-torch-gang"
        pods = wait_for(lambda: len(p := kubeflow.pods(job, "trainjob")) == 2 and p, timeout=90, what="both pods")
        group = kubeflow.get("podgroups.scheduling.x-k8s.io", job)
        assert group["spec"]["minMember"] == 2
        assert [p["metadata"]["labels"]["scheduling.x-k8s.io/pod-group"] for p in pods] == [job, job]
        assert_no_forbidden(op)
