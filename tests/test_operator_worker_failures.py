"""What a job's other pods say counts too: a worker's out-of-memory or data error, an init
container that fails, and pods the job controller could not create."""

import pytest

from testing.operator_scenarios import BACKENDS, result_pod, worker_pod
from vita_api.termination import failure_message
from vita_operator.controller import kube, observe
from vita_operator.jobs.backends import job_backends
from vita_operator.jobs.pods import creation_failure, stuck_reason
from vita_operator.core.decision import ObservedJob

OOM = failure_message("OutOfMemory", "out of GPU memory at step 40", True, outOfMemory={
    "step": 40, "perDeviceTrainBatchSize": 8, "gradientAccumulationSteps": 2})
DATA = failure_message("DataError", "[file=chat.json, sample=x9, field=image[0]] image missing", False)


def failed(message):
    return {"terminated": {"exitCode": 1, "reason": "Error", "message": message}}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("message,field", [(OOM, "oom"), (DATA, "permanent")])
def test_a_workers_report_is_read_when_rank_0_says_nothing(monkeypatch, backend, message, field):
    b = job_backends()[backend]
    job = "r-s1-1"
    pods = [result_pod(backend, job, "Failed", {"terminated": {"exitCode": 137, "reason": "Error"}}),
            worker_pod(backend, job, "Failed", failed(message))]
    selectors = []

    def listed(namespace, selector):
        selectors.append(selector)
        wanted = dict(term.split("=") for term in selector.split(","))
        return [p for p in pods if wanted.items() <= p["metadata"]["labels"].items()]
    monkeypatch.setattr(kube, "pods", listed)
    seen = observe._with_pod_reports(b, "ns", ObservedJob(job, "s1", 1, "Failed", "BackoffLimitExceeded"))
    assert selectors == [b.pods_selector(job)]  # every pod of the job, not rank 0's alone
    if field == "oom":
        assert seen.oom == {"step": 40, "perDeviceTrainBatchSize": 8, "gradientAccumulationSteps": 2}
    else:
        assert "sample=x9" in seen.permanent


def test_a_failing_init_container_is_a_stuck_reason():
    pod = {"metadata": {"name": "r-s1-1-worker-0"}, "status": {"initContainerStatuses": [
        {"name": "init-pytorch", "state": {"waiting": {"reason": "ImagePullBackOff",
                                                       "message": 'Back-off pulling image "alpine:3.10"'}}}]}}
    assert stuck_reason([pod]) == ('pod r-s1-1-worker-0: init container init-pytorch: ImagePullBackOff: '
                                   'Back-off pulling image "alpine:3.10"')
    pod["status"]["initContainerStatuses"][0]["state"] = {"terminated": {"exitCode": 1, "reason": "Error"}}
    assert "init container init-pytorch failed (exit 1): Error" in stuck_reason([pod])


def test_pods_that_were_never_created_are_explained_by_the_controllers_event(monkeypatch):
    denial = ('Error creating: pods "r-s1-1-worker-0" is forbidden: violates PodSecurity "restricted:latest": '
              'allowPrivilegeEscalation != false (container "init-pytorch" must set '
              'securityContext.allowPrivilegeEscalation=false)')
    job = {"kind": "PyTorchJob", "name": "r-s1-1"}
    events = [{"reason": "FailedCreatePod", "type": "Warning", "message": denial,
               "lastTimestamp": "2026-12-04T09:00:00Z", "involvedObject": job},
              {"reason": "FailedCreatePod", "type": "Warning", "message": "old",
               "lastTimestamp": "2026-12-04T08:00:00Z", "involvedObject": job},
              {"reason": "FailedCreate", "type": "Warning", "message": "another run's",
               "involvedObject": {"kind": "Job", "name": "r-s1-10"}}]
    assert creation_failure("r-s1-1", events) == f"no pods were created: FailedCreatePod: {denial}"
    assert creation_failure("r-s2-1", events) == ""
    trainjob_child = [{"reason": "FailedCreate", "message": "exceeded quota", "involvedObject": {
        "kind": "Job", "name": "r-s1-1-node-0"}}]
    assert creation_failure("r-s1-1", trainjob_child) == "no pods were created: FailedCreate: exceeded quota"
    monkeypatch.setattr(kube, "pods", lambda ns, sel: [])
    monkeypatch.setattr(kube, "warning_events", lambda ns: events)
    seen = observe._with_pod_reports(job_backends()["pytorchjob"], "ns", ObservedJob("r-s1-1", "s1", 1, "Pending"))
    assert seen.stuck.startswith("no pods were created: FailedCreatePod") and "PodSecurity" in seen.stuck

    # The master was created, the worker refused: the refusal is newer than the only pod.
    master = {"metadata": {"name": "r-s1-1-master-0", "creationTimestamp": "2026-12-04T08:59:59Z"},
              "status": {"phase": "Running"}}
    assert creation_failure("r-s1-1", events, [master]) == \
        f"1 pod(s) created, the rest refused: FailedCreatePod: {denial}"
    monkeypatch.setattr(kube, "pods", lambda ns, sel: [master])
    two_nodes = ObservedJob("r-s1-1", "s1", 1, "Running", nodes=2)
    assert "PodSecurity" in observe._with_pod_reports(job_backends()["pytorchjob"], "ns", two_nodes).stuck
    # A pod created after the refusal answers it; a job with all its pods reads no events at all.
    worker = {"metadata": {"name": "r-s1-1-worker-0", "creationTimestamp": "2026-12-04T09:00:01Z"}}
    assert creation_failure("r-s1-1", events, [master, worker]) == ""
    monkeypatch.setattr(kube, "warning_events", lambda ns: pytest.fail("read events of a job with all its pods"))
    one_node = ObservedJob("r-s1-1", "s1", 1, "Running", nodes=1)
    assert observe._with_pod_reports(job_backends()["pytorchjob"], "ns", one_node).stuck == ""
