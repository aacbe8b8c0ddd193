"""What both operator tiers (kmock and the real API server) run: the three-stage run and the wait helper."""

import time

NS = "default"
RUN = {
    "apiVersion": "vita.training.dev/v1alpha1", "kind": "VitaTrainingRun",
    "metadata": {"name": "r1", "namespace": NS},
    "spec": {"model": {"base": "models/base"}, "data": {"registry": "registry.yaml"}, "output": "runs/r1",
             "trainer": {"image": "trainer:test"}, "resources": {"gpusPerNode": 8, "nodes": 2},
             "volumes": {"dataset": {"claimName": "data", "mountPath": "/data"},
                         "checkpoints": {"claimName": "ckpt", "mountPath": "/ckpt"}},
             "stages": [{"name": "s1", "preset": "vision_align", "datasetUse": "img", "retryLimit": 1},
                        {"name": "s2", "preset": "audio_align", "datasetUse": "aud"},
                        {"name": "s3", "preset": "multimodal_sft", "datasetUse": "mm"}]}}


def wait_for(fn, timeout=30.0, what="condition"):
    """Poll `fn` until it returns something truthy, and return that."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")
