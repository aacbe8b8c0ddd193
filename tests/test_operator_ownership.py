"""A job counts as the run's only if the run controls it (owner UID), whatever its labels; a job
with the labels but another owner is reported on the run, never adopted."""

from __future__ import annotations

from vita_api.naming import job_labels
from vita_api.spec import VitaTrainingRunSpec
from vita_operator.controller import kube, observe
from vita_operator.controller.observe import RunRef
from vita_operator.core.decision import CreateJob
from vita_operator.core.state import decide
from vita_operator.jobs.backends import job_backends

NOW = "2026-12-07T00:00:00Z"


def job(name: str, attempt: int, owner_uid: str | None, phase: str = "Failed") -> dict:
    meta = {"name": name, "namespace": "ns", "uid": f"job-{name}", "labels": job_labels("r", "s1", attempt)}
    if owner_uid:
        meta["ownerReferences"] = [{"apiVersion": "vita.training.dev/v1alpha1", "kind": "VitaTrainingRun",
                                    "name": "r", "uid": owner_uid, "controller": True}]
    return {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": meta,
            "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1}}},
            "status": {"conditions": [{"type": phase, "status": "True", "reason": f"Job{phase}"}]}}


def test_only_jobs_the_run_controls_are_its_own():
    ref = RunRef("ns", "r", "uid-now")
    assert ref.owns(job("r-s1-1", 1, "uid-now"))
    assert not ref.owns(job("r-s1-2", 2, "uid-of-a-deleted-run"))
    assert not ref.owns(job("r-s1-3", 3, None))   # made by hand with the labels
    not_controller = job("r-s1-4", 4, "uid-now")
    not_controller["metadata"]["ownerReferences"][0]["controller"] = False
    assert not ref.owns(not_controller)
    other_run = job("x-s1-1", 1, "uid-now")
    other_run["metadata"]["labels"]["vita.training.dev/run"] = "x"
    assert not ref.owns(other_run)               # not even foreign: not labelled as this run's
    assert ref.foreign == ["r-s1-2", "r-s1-3", "r-s1-4"]


def test_a_deleted_runs_failed_job_does_not_drive_the_rerun(monkeypatch):
    """A rerun of the same name while the garbage collector has not yet removed the old run's jobs: the old
    attempt 3 (Failed) would have made the new run retry from attempt 4, or fail it."""
    monkeypatch.setattr(observe, "cached_jobs", lambda *a: [job("r-s1-3", 3, "uid-of-a-deleted-run")])
    monkeypatch.setattr(kube, "pods", lambda ns, sel: [])
    ref = RunRef("ns", "r", "uid-now")
    jobs = observe.observed_jobs(job_backends()["pytorchjob"], ref, set())
    assert jobs == [] and ref.foreign == ["r-s1-3"]
    spec = VitaTrainingRunSpec.model_validate({
        "model": {"base": "b"}, "data": {"registry": "r.yaml"}, "output": "o", "preflight": {"enabled": False},
        "stages": [{"name": "s1", "preset": "vision_align", "datasetUse": "d", "retryLimit": 1}]})
    first = decide("r", 1, spec, None, jobs, NOW, foreign=ref.foreign)
    assert first.actions == [CreateJob(0, 1, False)] and first.status["phase"] == "Running"
    assert first.status["foreignJobs"] == ["r-s1-3"]
    assert [e.reason for e in first.events].count("ForeignJobs") == 1
    assert "r-s1-3" in next(e.message for e in first.events if e.reason == "ForeignJobs")
    again = decide("r", 1, spec, first.status, jobs, NOW, foreign=ref.foreign)
    assert "ForeignJobs" not in [e.reason for e in again.events]   # said once
    gone = decide("r", 1, spec, again.status, jobs, NOW)
    assert gone.status["foreignJobs"] is None                       # removed from status by the merge patch
