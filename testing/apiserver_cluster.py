"""The real control plane as the operator tiers use it: a Cluster (kubectl, the operator as its own process, what
Kubeflow's controllers and the kubelet write, played by the test) and the preflight's pieces. The `cluster` fixture
(tests/conftest.py) gives each test module its own control plane."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import yaml

from testing.control_plane import ControlPlane, OperatorProcess
from vita_trainer.local import free_port
from testing.operator_scenarios import (BACKENDS, JOB_RESOURCE, NS, finished, job_status, pod, result_pod, run_on,
                                        wait_for)


class Cluster:
    def __init__(self, cp: ControlPlane, operator_kubeconfig: Path, workdir: Path):
        self.cp, self.operator_kubeconfig, self.dir = cp, operator_kubeconfig, workdir

    def operator(self, name: str = "operator", resync_seconds: float = 600,
                 backends: str = ",".join(BACKENDS), env: dict | None = None) -> OperatorProcess:
        # Resync far beyond the test's waits by default: stage chaining must come from watch events, not the
        # safety net.
        return OperatorProcess(self.operator_kubeconfig, self.dir / f"{name}.log", resync_seconds=resync_seconds,
                               metrics_port=free_port(), backends=backends, env=env)

    def apply(self, obj: dict, *extra: str, check: bool = True):
        return self.cp.kubectl("apply", *extra, "-f", "-", input=json.dumps(obj), check=check)

    def get(self, kind: str, name: str = "", namespace: str = NS) -> dict:
        out = self.cp.kubectl("get", kind, *([name] if name else []), "-n", namespace, "-o", "json").stdout
        return json.loads(out)

    def jobs(self, backend: str = "pytorchjob") -> dict[str, dict]:
        group, _, plural = JOB_RESOURCE[backend]
        return {j["metadata"]["name"]: j for j in self.get(f"{plural}.{group}")["items"]}

    def run_status(self, name: str = "r1") -> dict:
        return self.get("vitatrainingrun", name).get("status") or {}

    def condition(self, ctype: str, name: str = "r1") -> dict | None:
        return {c["type"]: c for c in self.run_status(name).get("conditions", [])}.get(ctype)

    def start_run(self, name: str, backend: str = "pytorchjob") -> str:
        """RUN under another name on `backend`, applied; returns its first job's name once the operator made it."""
        self.apply(run_on(backend, name))
        first = f"{name}-s1-1"
        wait_for(lambda: first in self.jobs(backend), what=f"{name}'s first job")
        return first

    def set_job(self, name: str, phase: str, backend: str = "pytorchjob") -> None:
        """What the backend's Kubeflow controller writes when the job reaches `phase`."""
        group, _, plural = JOB_RESOURCE[backend]
        self.cp.kubectl("patch", f"{plural}.{group}", name, "-n", NS, "--subresource=status", "--type=merge",
                        "-p", json.dumps({"status": job_status(backend, phase)}))

    def put_pod(self, manifest: dict) -> None:
        """Create the pod, then write its status through the status subresource, as the kubelet does."""
        manifest = copy.deepcopy(manifest)
        status = {"status": manifest.pop("status")}
        # The default ServiceAccount (admission needs it) comes from the controller-manager shortly after start.
        wait_for(lambda: self.cp.kubectl("get", "serviceaccount", "default", "-n", NS, check=False).returncode == 0,
                 what="default ServiceAccount")
        self.apply(manifest)
        self.cp.kubectl("patch", "pod", manifest["metadata"]["name"], "-n", NS, "--subresource=status",
                        "--type=merge", "-p", json.dumps(status))

    def master_pod(self, job: str, phase: str, state: dict, backend: str = "pytorchjob") -> None:
        """What Kubeflow and the kubelet make: the job's rank-0 pod, its trainer container in `state`."""
        self.put_pod(result_pod(backend, job, phase, state))

    def serving_master_pod(self, job: str) -> None:
        """A running PyTorchJob's rank-0 pod serving /metrics on 127.0.0.1, controlled by the job as the training
        operator makes it (the operator reads only pods its job controls)."""
        master = result_pod("pytorchjob", job, "Running", {"running": {"startedAt": "2026-11-27T00:00:00Z"}})
        master["status"].update(podIP="127.0.0.1", podIPs=[{"ip": "127.0.0.1"}])
        master["metadata"]["ownerReferences"] = [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": job,
                                                  "controller": True, "uid": self.jobs()[job]["metadata"]["uid"]}]
        self.put_pod(master)

    def finished_master_pod(self, job: str, final_loss: float, backend: str = "pytorchjob",
                            eval_loss: float | None = None) -> None:
        self.master_pod(job, "Succeeded", finished(job, final_loss, eval_loss), backend)


def start_cluster(workdir: Path, bins: Path):
    """A control plane with the operator's prerequisites installed, as a Cluster (a context manager's body)."""
    from testing.control_plane import install_operator_prerequisites
    with ControlPlane(workdir, bins) as cp:
        yield Cluster(cp, install_operator_prerequisites(cp), workdir)


def assert_no_forbidden(op: OperatorProcess) -> None:
    """Every request the operator made was allowed by the chart's RBAC."""
    forbidden = [line for line in op.log().splitlines() if "forbidden" in line.lower()]
    assert not forbidden, "\n".join(forbidden[:5])


# --- preflight: the Kubernetes Job controller and kubelet are played by the test, the check itself is real ---------
def preflight_message(tmp_path, monkeypatch, bad: bool, stages=("s1", "s2", "s3")) -> str:
    """What the preflight pod writes: tools/preflight.py run for real on a two-stage data set, one planted bad
    sample in stage s2's file when `bad`."""
    from PIL import Image

    from vita_trainer.tools.preflight import main as preflight_main
    from vita_api.termination import PATH_ENV
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.new("RGB", (64, 48), "red").save(tmp_path / "images" / "ok.jpg")
    turns = [{"from": "human", "value": "<image>\nWhat color?"}, {"from": "gpt", "value": "Red."}]
    for name, images in (("img", ["ok.jpg"] * 2), ("aud", ["ok.jpg", "missing.jpg" if bad else "ok.jpg"]),
                         ("mm", ["ok.jpg"])):
        (tmp_path / f"{name}.json").write_text(json.dumps([{"id": f"{name}{i}", "image": im, "conversations": turns}
                                                           for i, im in enumerate(images)]))
    (tmp_path / "registry.yaml").write_text(yaml.safe_dump({"datasets": {
        n: {"chat_path": f"{n}.json", "image_folder": "images"} for n in ("img", "aud", "mm")}}))
    log = tmp_path / "termination-log"
    log.write_text("")
    monkeypatch.setenv(PATH_ENV, str(log))
    assert preflight_main(["--registry", str(tmp_path / "registry.yaml"), "--report", str(tmp_path / "r.json"),
                           "--workers", "1", *[a for stage, key in zip(stages, ("img", "aud", "mm"))
                                               for a in ("--stage", f"{stage}={key}:6200")]]) == 0
    return log.read_text()


def finish_preflight(cluster, job: str, exit_code: int, message: str, container: str = "preflight") -> None:
    """The pod the Job controller made, terminated as the kubelet reports it; then the Job's own status. (Any of
    the run's batch Jobs: the evaluation's container is "evaluation".)"""
    state = {"terminated": {"exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error",
                            "message": message}}
    cluster.put_pod(pod(f"{job}-x7k2p", {"batch.kubernetes.io/job-name": job}, container,
                        "Succeeded" if exit_code == 0 else "Failed", state))
    now = "2026-11-27T00:00:00Z"
    if exit_code == 0:
        conditions = [{"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now},
                      {"type": "Complete", "status": "True", "lastTransitionTime": now}]
        status = {"startTime": now, "completionTime": now, "succeeded": 1, "conditions": conditions}
    else:
        conditions = [{"type": "FailureTarget", "status": "True", "reason": "BackoffLimitExceeded",
                       "lastTransitionTime": now},
                      {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                       "message": "Job has reached the specified backoff limit", "lastTransitionTime": now}]
        status = {"startTime": now, "failed": 1, "conditions": conditions}
    cluster.cp.kubectl("patch", "job", job, "-n", NS, "--subresource=status", "--type=merge",
                       "-p", json.dumps({"status": status}))


def with_preflight(name: str, max_bad: float = 0.0) -> dict:
    run = run_on("pytorchjob", name)
    run["spec"]["preflight"] = {"maxBadFraction": max_bad}  # enabled: the default
    return run


def preflight_jobs(cluster) -> dict[str, dict]:
    return {j["metadata"]["name"]: j for j in cluster.get("jobs.batch")["items"]}
