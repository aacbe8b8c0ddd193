"""The TrainJob backend against Kubeflow Trainer v2.3.0's CRD schemas, and the chart's ClusterTrainingRuntime
against both that schema and the builder (what the runtime carries and what each TrainJob patches in must fit)."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from testing.control_plane import helm_template
from testing.operator_scenarios import finished, job_status, result_pod
from tests.test_operator_builder_crd import FULL, cel_failures, cel_rules, crd_schema
from vita_api.naming import LABEL_RUN
from vita_operator.jobs.pods import POD_SECURITY, container_security, volumes_and_mounts
from vita_operator.jobs.trainjob import DEFAULT_RUNTIME, REPLICATED_JOB, TrainJobBackend
from vita_api.spec import TrainerSpec, VitaTrainingRunSpec

ROOT = Path(__file__).resolve().parents[1]
TRAINER_CRDS = ROOT / "third_party" / "kubeflow-trainer"
TRAINJOB_VALUES = ROOT / "helm" / "vita-operator" / "examples" / "values-trainjob.yaml"


def schema_of(name: str) -> dict:
    return crd_schema(yaml.safe_load((TRAINER_CRDS / f"trainer.kubeflow.org_{name}-v2.3.0.yaml").read_text()))


@pytest.fixture(scope="module")
def trainjob_schema():
    return schema_of("trainjobs")


def trainjob_spec() -> VitaTrainingRunSpec:
    spec = copy.deepcopy(FULL)
    spec["trainer"]["backend"] = "trainjob"
    del spec["resources"]["priorityClassName"]  # not carried by a TrainJob (the CRD refuses the pair)
    return VitaTrainingRunSpec.model_validate(spec)


def patched_pod(job: dict) -> dict:
    (patch,) = job["spec"]["runtimePatches"]
    (replicated,) = patch["trainingRuntimeSpec"]["template"]["spec"]["replicatedJobs"]
    assert replicated["name"] == REPLICATED_JOB
    return replicated["template"]["spec"]["template"]


@pytest.mark.parametrize("index,attempt", [(0, 1), (1, 3)])
def test_trainjobs_validate_against_the_v2_3_schema_and_its_rules(trainjob_schema, index, attempt):
    spec = trainjob_spec()
    job = TrainJobBackend().build("my-run", "ml", spec, index, attempt)
    jsonschema.validate(job, trainjob_schema)
    assert cel_failures(job, list(cel_rules(trainjob_schema))) == []  # RFC 1035 name, <= 63 characters
    trainer = job["spec"]["trainer"]
    assert job["spec"]["runtimeRef"] == {"apiGroup": "trainer.kubeflow.org", "kind": "ClusterTrainingRuntime",
                                         "name": DEFAULT_RUNTIME}
    assert trainer["command"] == ["torchrun"] and trainer["args"][:2] == ["-m", "vita_trainer.train"]
    assert "--output_dir" in trainer["args"] and trainer["image"] == "ghcr.io/x/trainer:1"
    env = {e["name"]: e for e in trainer["env"]}
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "api-key"}
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    assert job["metadata"]["name"] == f"my-run-{spec.stages[index].name}-{attempt}"
    assert job["spec"]["suspend"] is False
    pod = patched_pod(job)
    assert pod["metadata"]["labels"][LABEL_RUN] == "my-run"
    assert pod["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert pod["spec"]["securityContext"] == POD_SECURITY
    (container,) = pod["spec"]["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["dataset"]["readOnly"] is True and mounts["checkpoints"]["mountPath"] == "/ckpt"
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert vols["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert vols["dataset"]["persistentVolumeClaim"] == {"claimName": "vita-data", "readOnly": True}
    if index == 0:
        assert (trainer["numNodes"], trainer["numProcPerNode"]) == (4, 8)
        assert trainer["resourcesPerNode"]["limits"]["nvidia.com/gpu"] == "8"
        assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
        assert "activeDeadlineSeconds" not in job["spec"]
    else:
        assert (trainer["numNodes"], trainer["numProcPerNode"]) == (1, 2)
        assert "nvidia.com/gpu" not in trainer["resourcesPerNode"]["limits"]
        assert job["spec"]["activeDeadlineSeconds"] == 86400


def test_suspend_and_status_map_like_pytorchjobs():
    backend = TrainJobBackend()
    job = backend.build("r", "ml", trainjob_spec(), 0, 1, suspend=True)
    assert job["spec"]["suspend"] is True and backend.suspend_patch(False) == {"spec": {"suspend": False}}
    for phase in ("Pending", "Running", "Suspended", "Succeeded", "Failed"):
        assert backend.phase({**job, "status": job_status("trainjob", phase)})[0] == phase
    failed = {"conditions": [{"type": "Failed", "status": "True", "reason": "JobSetFailed",
                              "message": "jobset node failed"}, {"type": "Suspended", "status": "False"}]}
    assert backend.phase({"status": failed}) == ("Failed", "JobSetFailed: jobset node failed")


def test_node_zero_reports_the_stage_result():
    from vita_api.termination import failure_message
    backend = TrainJobBackend()
    done = result_pod("trainjob", "r-s1-1", "Succeeded", finished("r-s1-1", 0.25))
    assert backend.final_loss(done) == 0.25
    labels = done["metadata"]["labels"]
    assert all(labels[k] == v for k, v in (t.split("=") for t in backend.result_pod_selector("r-s1-1").split(",")))
    bad = result_pod("trainjob", "r-s1-1", "Failed", {"terminated": {
        "exitCode": 2, "message": failure_message("ConfigError", "bad flag", False)}})
    assert backend.permanent_failure(bad) == "ConfigError: bad flag" and backend.final_loss(bad) is None
    # the PyTorchJob container's name is not the trainer's here
    other = result_pod("pytorchjob", "r-s1-1", "Succeeded", finished("r-s1-1", 0.25))
    assert backend.final_loss(other) is None


def rendered(*values: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(helm_template(*values)) if d]


@pytest.mark.subprocess
def test_the_shipped_runtime_validates_and_fits_the_builder():
    (runtime,) = [d for d in rendered("-f", str(TRAINJOB_VALUES)) if d["kind"] == "ClusterTrainingRuntime"]
    schema = schema_of("clustertrainingruntimes")
    jsonschema.validate(runtime, schema)
    assert cel_failures(runtime, list(cel_rules(schema))) == []
    assert runtime["metadata"]["name"] == DEFAULT_RUNTIME and "torch" in runtime["spec"]["mlPolicy"]
    jobset = runtime["spec"]["template"]["spec"]
    # a disruption restarts every pod in place, uncounted by JobSet (the operator counts it); any other failure
    # fails the JobSet, and the operator's retry is a fresh TrainJob
    policy = jobset["failurePolicy"]
    assert policy["maxRestarts"] == 0 and policy["restartStrategy"] == "BlockingRecreate"
    assert [(r["action"], r.get("onJobFailureReasons")) for r in policy["rules"]] == [
        ("RestartJobSetAndIgnoreMaxRestarts", ["PodFailurePolicy"]), ("FailJobSet", None)]
    (replicated,) = jobset["replicatedJobs"]
    assert replicated["name"] == REPLICATED_JOB
    assert replicated["template"]["metadata"]["labels"]["trainer.kubeflow.org/trainjob-ancestor-step"] == "trainer"
    assert replicated["template"]["spec"]["backoffLimit"] == 0
    assert replicated["template"]["spec"]["podFailurePolicy"] == {"rules": [{"action": "FailJob", "onPodConditions": [
        {"type": "DisruptionTarget", "status": "True"}]}]}
    pod = replicated["template"]["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"] == POD_SECURITY
    (container,) = pod["containers"]
    default = TrainerSpec()
    assert container["name"] == TrainJobBackend.container and container["image"] == default.image
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert container["ports"] == [{"name": "metrics", "containerPort": default.metrics_port, "protocol": "TCP"}]
    spec = trainjob_spec()
    assert container["securityContext"] == container_security(spec)
    # the runtime's volumes are the ones every TrainJob patches (upserted by name), mounted at the same paths
    volumes, mounts = volumes_and_mounts(spec, 0)
    assert {v["name"] for v in pod["volumes"]} <= {v["name"] for v in volumes}
    assert all(m in mounts for m in container["volumeMounts"])


@pytest.mark.subprocess
@pytest.mark.parametrize("values,resources", [
    ((), {"pytorchjobs"}),
    (("-f", str(TRAINJOB_VALUES)), {"trainjobs"}),
    (("--set", "backends.trainjob.enabled=true"), {"pytorchjobs", "trainjobs"}),
])
def test_rbac_only_for_the_enabled_backends(values, resources):
    docs = rendered("--set", "metrics.podMonitor.enabled=true", *values)
    role = next(d for d in docs if d["kind"] == "ClusterRole")
    jobs = {r for rule in role["rules"] for r in rule["resources"] if r.endswith("jobs") and r != "jobs"}
    assert jobs == resources
    env = {e["name"]: e.get("value") for e in next(d for d in docs if d["kind"] == "Deployment")["spec"]["template"][
        "spec"]["containers"][0]["env"]}
    assert set(env["VITA_OPERATOR_BACKENDS"].split(",")) == {r[:-1] for r in resources}
    # one PodMonitor for the trainer pods of every backend (their pods carry the operator's labels alike)
    assert [d["metadata"]["name"] for d in docs if d["kind"] == "PodMonitor"] == ["vita-operator-trainers"]
    assert not [d for d in docs if d["kind"] == "ClusterTrainingRuntime"] or "trainjobs" in resources


@pytest.mark.subprocess
def test_a_default_backend_that_is_not_enabled_is_refused():
    import subprocess
    with pytest.raises(subprocess.CalledProcessError) as e:
        helm_template("--set", "defaultBackend=trainjob")
    assert "backends.trainjob.enabled=true" in e.value.stderr


@pytest.mark.parametrize("backend", ["trainjob", "pytorchjob"])
def test_a_failed_trainjob_is_parked_once(backend):
    """Trainer v2.3.0 recreates a failed TrainJob's JobSet after the runtime's TTL (kubeflow/trainer#3737): the
    operator suspends each failed TrainJob attempt once, so no controller can run it again. A PyTorchJob has no such
    path and is left as it is."""
    from testing.operator_scenarios import RUN
    from vita_operator.core.decision import ObservedJob, SetJobSuspend
    from vita_operator.core.state import decide
    spec = VitaTrainingRunSpec.model_validate(RUN["spec"])
    failed = ObservedJob("r1-s1-1", "s1", 1, "Failed", "BackoffLimitExceeded")
    parks = [a for a in decide("r1", 1, spec, None, [failed], "2026-12-04T00:00:00Z", backend).actions
             if isinstance(a, SetJobSuspend)]
    assert parks == ([SetJobSuspend("r1-s1-1", True)] if backend == "trainjob" else [])
    parked = ObservedJob("r1-s1-1", "s1", 1, "Failed", "BackoffLimitExceeded", suspended=True)
    assert not [a for a in decide("r1", 1, spec, None, [parked], "2026-12-04T00:00:00Z", backend).actions
                if isinstance(a, SetJobSuspend)]
