"""What every operator tier (the pure state machine, kmock, the real API server) runs: the three-stage run, what
each backend's Kubeflow controller writes on its jobs and pods, and the wait helper."""

import copy
import time

NS = "default"
RUN = {
    "apiVersion": "vita.training.dev/v1alpha1", "kind": "VitaTrainingRun",
    "metadata": {"name": "r1", "namespace": NS},
    "spec": {"model": {"base": "models/base"}, "data": {"registry": "registry.yaml"}, "output": "runs/r1",
             "trainer": {"image": "trainer:test"}, "resources": {"gpusPerNode": 8, "nodes": 2},
             "preflight": {"enabled": False},  # its own scenarios turn it on
             "volumes": {"dataset": {"claimName": "data", "mountPath": "/data"},
                         "checkpoints": {"claimName": "ckpt", "mountPath": "/ckpt"}},
             "stages": [{"name": "s1", "preset": "vision_align", "datasetUse": "img", "retryLimit": 1},
                        {"name": "s2", "preset": "audio_align", "datasetUse": "aud"},
                        {"name": "s3", "preset": "multimodal_sft", "datasetUse": "mm"}]}}
BACKENDS = ("pytorchjob", "trainjob")


def claim(name: str, *modes: str) -> dict:
    """A PersistentVolumeClaim of the test namespace (the operator checks the run's claims exist and fit)."""
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": name, "namespace": NS},
            "spec": {"accessModes": list(modes), "resources": {"requests": {"storage": "1Gi"}}}}


# RUN's claims, as a multi-node run needs them: the dataset shared read-only, the checkpoints read-write.
CLAIMS = [claim("data", "ReadOnlyMany"), claim("ckpt", "ReadWriteMany")]
# group, version, plural of each backend's job
JOB_RESOURCE = {"pytorchjob": ("kubeflow.org", "v1", "pytorchjobs"),
                "trainjob": ("trainer.kubeflow.org", "v1alpha1", "trainjobs")}


def run_on(backend: str, name: str = "r1") -> dict:
    """RUN under `name`, with its stages on `backend`."""
    run = copy.deepcopy(RUN)
    run["metadata"]["name"] = name
    run["spec"]["trainer"]["backend"] = backend
    return run


def job_status(backend: str, phase: str) -> dict:
    """The status each backend's controller writes for a job in `phase` (Pending|Running|Suspended|Succeeded|
    Failed): the training operator's PyTorchJob conditions, or Trainer's TrainJob conditions and jobsStatus."""
    def cond(ctype):
        return {"conditions": [{"type": ctype, "status": "True", "reason": f"Job{phase}",
                                "message": f"job {phase.lower()}", "lastTransitionTime": "2026-11-27T00:00:00Z"}]}
    if phase == "Pending":
        return {}
    if backend == "pytorchjob":
        return cond(phase)
    if phase == "Running":
        return {"jobsStatus": [{"name": "node", "active": 1, "ready": 1, "succeeded": 0, "failed": 0,
                                "suspended": 0}]}
    return cond({"Succeeded": "Complete"}.get(phase, phase))


def job_args(job: dict) -> list[str]:
    """The trainer's arguments in a built job of either backend."""
    if job["kind"] == "TrainJob":
        return job["spec"]["trainer"]["args"]
    return job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["args"]


def pod(name: str, labels: dict, container: str, phase: str, state: dict) -> dict:
    """A pod as a job controller and the kubelet leave it: one container, in `state`."""
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": NS, "labels": labels},
            "spec": {"restartPolicy": "Never", "containers": [{"name": container, "image": "trainer:test"}]},
            "status": {"phase": phase, "containerStatuses": [{
                "name": container, "image": "trainer:test", "imageID": "", "ready": False, "restartCount": 0,
                "state": state}]}}


def node_pod(backend: str, job: str, phase: str, state: dict, node: int) -> dict:
    """The pod of node `node` (0 holds global rank 0) as each backend's controllers and the kubelet leave it."""
    if backend == "pytorchjob":
        kind, name = ("master", f"{job}-master-0") if node == 0 else ("worker", f"{job}-worker-{node - 1}")
        return pod(name, {"training.kubeflow.org/job-name": job, "training.kubeflow.org/replica-type": kind},
                   "pytorch", phase, state)
    return pod(f"{job}-node-0-{node}-x7k2p", {"jobset.sigs.k8s.io/jobset-name": job,
                                              "jobset.sigs.k8s.io/replicatedjob-name": "node",
                                              "batch.kubernetes.io/job-completion-index": str(node)},
               "node", phase, state)


def result_pod(backend: str, job: str, phase: str, state: dict) -> dict:
    """Rank 0's pod, its trainer container in `state`."""
    return node_pod(backend, job, phase, state, 0)


def worker_pod(backend: str, job: str, phase: str, state: dict) -> dict:
    """A pod of another node (rank 8 and up)."""
    return node_pod(backend, job, phase, state, 1)


def finished(job: str, final_loss: float, eval_loss: float | None = None) -> dict:
    """A trainer container's state when its stage succeeded and reported its final loss (and validation loss):
    the message the trainer writes (vita_api.termination)."""
    from vita_api.termination import termination_message
    message = termination_message({"stage": job.split("-")[1], "global_step": 9, "final_loss": final_loss,
                                   "eval_loss": eval_loss})
    return {"terminated": {"exitCode": 0, "reason": "Completed", "message": message}}


def wait_for(fn, timeout=30.0, what="condition"):
    """Poll `fn` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


class FakeTrainerEndpoint:
    """A trainer's rank-0 /metrics on 127.0.0.1, in the trainer's own exposition format: each read advances the step
    by 5 until frozen."""

    def __init__(self, stage: str, total: int = 1000):
        import http.server
        import threading

        from prometheus_client import generate_latest

        from vita_trainer.train.metrics import TrainerMetrics
        self.step, self.frozen, metrics = 0, False, TrainerMetrics()
        metrics.max_steps.labels(stage).set(total)
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if not fake.frozen:
                    fake.step += 5
                metrics.step.labels(stage).set(fake.step)
                metrics.samples_per_second.labels(stage).set(12.5)
                metrics.tokens_per_second.labels(stage).set(40000)
                body = generate_latest(metrics.registry)
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
