"""What Kueue says about a queued job (its Workload's conditions) shows on the run."""

from vita_operator.controller import kube, observe
from vita_operator.jobs.backends import job_backends
from vita_operator.core.kueue import workload_state
from vita_operator.core.state import decide
from testing.operator_scenarios import job_status, run_on


def workload(*conditions):
    return {"metadata": {"name": "pytorchjob-r-s1-1-ab12", "creationTimestamp": "2026-12-04T09:00:00Z"},
            "status": {"conditions": [{"type": t, "status": s, "reason": r, "message": m}
                                      for t, s, r, m in conditions]}}


def test_the_workloads_conditions_become_one_line():
    no_quota = workload(("QuotaReserved", "False", "Pending", "couldn't assign flavors to pod set master: "
                                                              "insufficient quota for nvidia.com/gpu in flavor h100"))
    assert workload_state([no_quota]) == ("waiting for quota in Kueue (Pending: couldn't assign flavors to pod set "
                                          "master: insufficient quota for nvidia.com/gpu in flavor h100)")
    preempted = workload(("QuotaReserved", "False", "Pending", ""), ("Evicted", "True", "Preempted", "x"),
                         ("Preempted", "True", "InClusterQueue", "Preempted to accommodate a higher priority"))
    assert workload_state([preempted]).startswith("preempted by Kueue (InClusterQueue: Preempted to accommodate")
    checks = workload(("QuotaReserved", "True", "QuotaReserved", ""), ("Admitted", "False", "AdmissionCheck", "ps"))
    assert workload_state([checks]) == "quota reserved, waiting for admission checks (AdmissionCheck: ps)"
    assert workload_state([]) == ""


def test_a_queued_jobs_workload_reason_reaches_the_runs_status(monkeypatch):
    backend = job_backends()["pytorchjob"]
    run = run_on("pytorchjob", "q")
    run["spec"]["scheduling"] = {"kueueQueue": "gpu"}
    from vita_api.spec import VitaTrainingRunSpec
    spec = VitaTrainingRunSpec.model_validate(run["spec"])
    job = backend.build("q", "default", spec, 0, 1, suspend=True)
    job["metadata"]["uid"] = "uid-1"
    job["status"] = job_status("pytorchjob", "Suspended")
    asked = []
    monkeypatch.setattr(observe, "cached_jobs", lambda *a: [job])
    monkeypatch.setattr(kube, "pods", lambda ns, sel: [])
    monkeypatch.setattr(kube, "warning_events", lambda ns: [])
    monkeypatch.setattr(kube, "workloads", lambda ns, sel: asked.append(sel) or [workload(
        ("QuotaReserved", "False", "Pending", "insufficient quota for nvidia.com/gpu"))])
    (seen,) = observe.observed_jobs(backend, observe.RunRef("default", "q", None), set())
    assert asked == ["kueue.x-k8s.io/job-uid=uid-1"] and "insufficient quota" in seen.message
    d = decide("q", 1, spec, {"phase": "Running", "stages": [{"name": "s1", "phase": "Running", "attempts": 1}]},
               [seen], "2026-12-04T09:00:00Z")
    assert d.status["phase"] == "Queued" and "insufficient quota for nvidia.com/gpu" in d.status["message"]


def test_workloads_are_read_through_the_newest_version_served():
    """Kueue deprecates v1beta1 for v1beta2."""
    from vita_operator.core.kueue import workload_version
    assert workload_version(["v1beta1", "v1beta2"]) == "v1beta2"
    assert workload_version(["v1beta1"]) == "v1beta1"
    assert workload_version([]) is None and workload_version(["v1alpha9"]) is None
