"""What every pod the operator makes gets from the platform rather than from the run: no ServiceAccount token unless
the run names one, pull policy by tag or digest, and the trainer UID (chart trainerPods.runAsUser)."""

import copy

import jsonschema
import pytest

import yaml

from tests.test_operator_builder_crd import FULL, KUBEFLOW_CRD, crd_schema
from vita_api.spec import VitaTrainingRunSpec
from vita_operator.jobs.pytorchjob import PyTorchJobBackend


@pytest.fixture(scope="module")
def pytorchjob_schema():
    return crd_schema(yaml.safe_load(KUBEFLOW_CRD.read_text()))


def test_no_api_token_unless_the_run_names_a_service_account_and_tags_are_pulled_every_time(pytorchjob_schema):
    """A trainer pod gets no ServiceAccount token by default; a named ServiceAccount decides for itself. A tag is
    pulled by every pod (one build on every node); a digest once per node. The batch Jobs (preflight) alike."""
    from vita_operator.jobs.preflight import preflight_job
    digest = "ghcr.io/x/trainer@sha256:" + "a" * 64
    for image, policy in (("ghcr.io/x/trainer:1", "Always"), (digest, "IfNotPresent")):
        for account in (None, "vita-trainer"):
            spec = copy.deepcopy(FULL)
            spec["trainer"]["image"] = image
            if account:
                spec["trainer"]["serviceAccountName"] = account
            parsed = VitaTrainingRunSpec.model_validate(spec)
            job = PyTorchJobBackend().build("my-run", "ml", parsed, 0, 1)
            jsonschema.validate(job, pytorchjob_schema)
            pods = [r["template"]["spec"] for r in job["spec"]["pytorchReplicaSpecs"].values()]
            pods.append(preflight_job("my-run", "ml", parsed, 1)["spec"]["template"]["spec"])
            for pod in pods:
                assert pod["containers"][0]["imagePullPolicy"] == policy
                assert pod.get("automountServiceAccountToken") is (None if account else False)


def pod_specs(job):
    """Every pod spec in a job body (a PyTorchJob's replicas, a Job's template, a TrainJob's runtime patch)."""
    if isinstance(job, dict):
        own = [job] if "containers" in job and "securityContext" in job else []
        return own + [p for v in job.values() for p in pod_specs(v)]
    return [p for v in job for p in pod_specs(v)] if isinstance(job, list) else []


def test_the_platform_may_assign_the_trainer_uid(pytorchjob_schema):
    """The chart's trainerPods.runAsUser reaches every pod the operator makes: another UID, or none at all where the
    platform assigns them (OpenShift's restricted-v2 refuses a pod naming a UID outside the namespace's range)."""
    from vita_operator.controller.config import Settings
    from vita_operator.jobs.pods import with_trainer_uid
    from vita_operator.jobs.preflight import preflight_job
    from vita_operator.jobs.trainjob import TrainJobBackend
    spec = VitaTrainingRunSpec.model_validate(FULL)
    assert Settings.from_env({"VITA_OPERATOR_TRAINER_UID": "platform"}).trainer_uid is None
    assert Settings.from_env({}).trainer_uid == 1000
    with pytest.raises(SystemExit, match="non-root UID"):
        Settings.from_env({"VITA_OPERATOR_TRAINER_UID": "0"})
    jobs = [PyTorchJobBackend().build("r", "ml", spec, 0, 1), TrainJobBackend().build("r", "ml", spec, 0, 1),
            preflight_job("r", "ml", spec, 1)]
    for job in jobs:
        pods = pod_specs(job)
        assert pods and all(p["securityContext"]["runAsUser"] == 1000 for p in pods)
        assert with_trainer_uid(job, 1000) is job
        assigned = pod_specs(with_trainer_uid(job, None))
        assert len(assigned) == len(pods)
        assert all(p["securityContext"] == {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
                   for p in assigned)
        assert all(c["securityContext"]["capabilities"]["drop"] == ["ALL"] for p in assigned for c in p["containers"])
        assert all(p["securityContext"]["runAsUser"] == p["securityContext"]["fsGroup"] == 5000
                   for p in pod_specs(with_trainer_uid(job, 5000)))
    jsonschema.validate(with_trainer_uid(jobs[0], None), pytorchjob_schema)
