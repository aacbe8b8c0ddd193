"""[real-controllers] The operator's jobs run by the real Kubeflow stack: the training operator v1.9.3 and Trainer
v2.3.0 (with JobSet) accept them through their webhooks and make the pods, kube-scheduler places those pods on kwok's
fake GPU nodes, and the run chains on the status the controllers write. Nothing here writes a job's or pod's status
by hand: a test only ends the trainer program in a pod (tests/kubeflow_cluster.py)."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.apiserver_cluster import assert_no_forbidden, preflight_message
from tests.control_plane import REPO
from tests.kubeflow_stack import GPU
from tests.operator_scenarios import BACKENDS, NS, finished, wait_for

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
    with kubeflow.operator(f"operator-stage3-{backend}") as op:
        kubeflow.apply(stage3(backend, name))
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
    kubeflow.cp.kubectl("delete", "vitatrainingrun", name, "-n", NS, "--timeout=60s")
