"""The kubeflow tier's cluster: the tier's control plane, the operator's prerequisites, and the real Kubeflow stack
(testing/kubeflow_stack.py). Jobs, pods and their statuses come from the real controllers, kube-scheduler and kwok; a
test only says what the trainer program in a pod does when it ends (its exit code and termination message, as pod
annotations kwok's `pod-exit` stage reads), which no controller writes."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from testing.apiserver_cluster import Cluster
from testing.control_plane import ControlPlane, install_operator_prerequisites
from testing.kubeflow_stack import EXTRA_CONTROLLERS, KubeflowStack
from testing.operator_scenarios import NS, wait_for
from vita_operator.jobs.backends import job_backends
from vita_operator.jobs.batch import pod_selector as batch_pod_selector

EXIT_CODE, MESSAGE = "vita.test/exit-code", "vita.test/termination-message"


def pods_selector(job: str, backend: str) -> str:
    """The label selector the operator itself reads a job's pods by (a stage job's backend, or a batch Job)."""
    return batch_pod_selector(job) if backend == "batch" else job_backends()[backend].pods_selector(job)


class KubeflowCluster(Cluster):
    def __init__(self, cp: ControlPlane, operator_kubeconfig: Path, workdir: Path, stack: KubeflowStack):
        super().__init__(cp, operator_kubeconfig, workdir)
        self.stack = stack

    def pods(self, job: str, backend: str = "pytorchjob", namespace: str = NS) -> list[dict]:
        out = self.cp.kubectl("get", "pods", "-n", namespace, "-l", pods_selector(job, backend), "-o", "json")
        return sorted(json.loads(out.stdout)["items"], key=lambda p: p["metadata"]["name"])

    def running_pods(self, job: str, backend: str, count: int, timeout: float = 90.0) -> list[dict]:
        """The job's pods once `count` of them run on nodes (placed by kube-scheduler, started by kwok)."""
        def running():
            pods = self.pods(job, backend)
            ok = [p for p in pods if p["spec"].get("nodeName") and p["status"].get("phase") == "Running"]
            return ok if len(ok) >= count else None
        return wait_for(running, timeout=timeout, what=f"{count} running pods of {job}")

    def end_pods(self, pods: list[dict], exit_code: int, message: str = "", check: bool = True) -> None:
        """The trainer program in each pod ends: kwok turns that into the container's terminated state."""
        for p in pods:
            self.cp.kubectl("annotate", "pod", p["metadata"]["name"], "-n", p["metadata"]["namespace"],
                            "--overwrite", f"{EXIT_CODE}={exit_code}", f"{MESSAGE}={message}", check=check)

    @contextlib.contextmanager
    def running(self, run: dict, operator: str, **operator_args):
        """The operator as its own process, with `run` applied (and deleted afterwards)."""
        with self.operator(operator, **operator_args) as op, self.applied(run):
            yield op

    @contextlib.contextmanager
    def applied(self, run: dict):
        """`run` applied, and deleted afterwards (its jobs and pods go with it), so the next test finds the GPU
        nodes free."""
        self.apply(run)
        try:
            yield run
        finally:
            self.cp.kubectl("delete", "vitatrainingrun", run["metadata"]["name"], "-n",
                            run["metadata"].get("namespace", NS), "--timeout=60s", check=False)

    def phase(self, name: str) -> str:
        return self.run_status(name).get("phase", "")

    def wait_phase(self, name: str, phase: str, timeout: float = 90.0) -> dict:
        return wait_for(lambda: self.phase(name) == phase and self.run_status(name), timeout=timeout,
                        what=f"{name} {phase} (now {self.phase(name)!r})")


def start_kubeflow_cluster(workdir: Path, bins: Path, kubeflow_bins: dict, nodes: int = 6):
    """A Kubeflow cluster (a context manager's body, for a fixture)."""
    with ControlPlane(workdir, bins, extra_controllers=EXTRA_CONTROLLERS) as cp:
        operator_kubeconfig = install_operator_prerequisites(cp)
        with KubeflowStack(cp, workdir / "stack", kubeflow_bins, nodes=nodes) as stack:
            stack.volumes_for(NS, ("data", ["ReadOnlyMany"]), ("ckpt", ["ReadWriteMany"]))
            yield KubeflowCluster(cp, operator_kubeconfig, workdir, stack)
