"""How the operator creates a job: owned by the run, none of the run's labels, and a refusal that names why."""

import json

import pytest
from kubernetes.client.exceptions import ApiException

from vita_operator.controller import act

RUN = {"apiVersion": "vita.training.dev/v1alpha1", "kind": "VitaTrainingRun",
       "metadata": {"name": "r1", "namespace": "ns", "uid": "u-1",
                    "labels": {"app.kubernetes.io/instance": "argo-app", "kueue.x-k8s.io/queue-name": "gpu",
                               "team": "a"}}}


def job_body():
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
            "metadata": {"name": "r1-s1-1", "namespace": "ns", "labels": {"vita.training.dev/run": "r1"}}}


def test_a_job_is_owned_by_its_run_and_carries_none_of_the_runs_labels():
    """Argo CD tracks by app.kubernetes.io/instance (copied, it would prune running jobs); a queue-name label on the
    run must not reach a job that the spec did not queue."""
    created = []
    act.create_owned(RUN, job_body(), created.append)
    (body,) = created
    assert body["metadata"]["labels"] == {"vita.training.dev/run": "r1"}
    (owner,) = body["metadata"]["ownerReferences"]
    assert (owner["kind"], owner["name"], owner["uid"]) == ("VitaTrainingRun", "r1", "u-1")
    assert owner["controller"] is True and owner["blockOwnerDeletion"] is True


@pytest.mark.parametrize("status", [400, 403, 422])
def test_an_admission_refusal_is_raised_with_the_apis_message(status):
    def refuse(body):
        e = ApiException(status=status, reason="Forbidden")
        e.body = json.dumps({"kind": "Status", "message": 'admission webhook "v" denied the request: bad image'})
        raise e
    with pytest.raises(act.Refused) as refused:
        act.create_owned(RUN, job_body(), refuse)
    assert refused.value.job == "r1-s1-1" and refused.value.kind == "PyTorchJob"
    assert refused.value.message == 'admission webhook "v" denied the request: bad image'


def test_an_existing_job_is_fine_and_a_server_error_is_retried_by_kopf():
    def exists(body):
        raise ApiException(status=409, reason="AlreadyExists")
    act.create_owned(RUN, job_body(), exists)

    def down(body):
        raise ApiException(status=503, reason="Unavailable")
    with pytest.raises(ApiException):
        act.create_owned(RUN, job_body(), down)
