"""A Failed run resumes when its retry limit is raised, a spec with
fields this operator does not know is left alone, finished runs expire after their TTL and cost nothing per resync,
and the phase gauge is kept incrementally."""

from __future__ import annotations

import dataclasses
from datetime import datetime, timedelta, timezone

from pydantic import ValidationError

from testing.status_schema import assert_valid_status
from vita_api.spec import VitaTrainingRunSpec
from vita_operator.controller import kube, metrics, reconcile
from vita_operator.core.decision import CreateJob, DeleteJob, ObservedJob
from vita_operator.core.state import decide, decide_unknown_fields, expired

NOW = "2026-12-07T00:00:00Z"


def spec(retry: int = 1, **extra) -> VitaTrainingRunSpec:
    return VitaTrainingRunSpec.model_validate({
        "model": {"base": "b"}, "data": {"registry": "r.yaml"}, "output": "o", "preflight": {"enabled": False},
        **extra, "stages": [{"name": "s1", "preset": "vision_align", "datasetUse": "d"},
                            {"name": "s2", "preset": "multimodal_sft", "datasetUse": "d", "retryLimit": retry}]})


def failed_run():
    """s1 succeeded; s2 spent its one retry."""
    st = decide("r", 1, spec(), None, [ObservedJob("r-s1-1", "s1", 1, "Succeeded")], NOW).status
    st = decide("r", 1, spec(), st, [ObservedJob("r-s1-1", "s1", 1, "Succeeded"),
                                     ObservedJob("r-s2-1", "s2", 1, "Failed", "NCCL error")], NOW).status
    d = decide("r", 1, spec(), st, [ObservedJob("r-s2-1", "s2", 1, "Failed"),
                                    ObservedJob("r-s2-2", "s2", 2, "Failed", "NCCL error")], NOW)
    assert d.status["phase"] == "Failed" and d.status["stages"][1]["attempts"] == 2
    return d.status


def test_a_failed_run_resumes_its_failed_stage_when_the_retry_limit_is_raised():
    st = failed_run()
    same = decide("r", 2, spec(retry=1), st, [], NOW)
    assert same.status["phase"] == "Failed" and not same.actions           # other edits: still ignored
    resumed = decide("r", 3, spec(retry=3), st, [], NOW)
    assert resumed.actions == [CreateJob(1, 3, False)]                       # s1 is not redone
    assert resumed.status["phase"] == "Running" and resumed.status["currentJob"] == "r-s2-3"
    assert [e.reason for e in resumed.events] == ["RunResumed", "RunRunning"]
    assert resumed.status["stages"][0]["phase"] == "Succeeded" and resumed.status["stages"][1]["phase"] == "Running"
    assert_valid_status(resumed.status)
    # from there on it is an ordinary attempt
    done = decide("r", 3, spec(retry=3), resumed.status, [ObservedJob("r-s2-3", "s2", 3, "Succeeded")], NOW)
    assert done.status["phase"] == "Succeeded"


def test_a_run_failed_for_a_permanent_error_is_not_resumed_by_more_retries():
    st = decide("r", 1, spec(), None, [ObservedJob("r-s1-1", "s1", 1, "Failed", permanent="bad data")], NOW).status
    assert st["phase"] == "Failed"
    assert not decide("r", 2, spec(retry=5), st, [], NOW).actions


def unknown(error_spec: dict) -> list[str]:
    try:
        VitaTrainingRunSpec.model_validate(error_spec)
    except ValidationError as e:
        return reconcile.unknown_fields(e)
    raise AssertionError("the spec validated")


def test_a_spec_with_fields_this_operator_does_not_know_is_left_alone():
    base = spec().model_dump(by_alias=True, exclude_none=True)
    newer = {**base, "checkpointing": {"mode": "async"}, "stages": [{**base["stages"][0], "topology": "rack"},
                                                                   base["stages"][1]]}
    fields = unknown(newer)
    assert sorted(fields) == ["spec.checkpointing", "spec.stages.0.topology"]
    assert unknown({**base, "output": None}) == []  # a real error is not an unknown field
    running = decide("r", 1, spec(), None, [], NOW).status
    d = decide_unknown_fields(running, fields, NOW, 2)
    assert d.status["phase"] == "Running" and not d.actions                 # not Failed, its job untouched
    cond = {c["type"]: c for c in d.status["conditions"]}["SpecUnderstood"]
    assert cond["status"] == "False" and cond["reason"] == "UnknownFields" and "spec.checkpointing" in cond["message"]
    assert [e.reason for e in d.events] == ["UnknownFields"]
    assert not decide_unknown_fields(d.status, fields, NOW, 2).events       # said once
    assert_valid_status(d.status)
    back = decide("r", 3, spec(), d.status, [ObservedJob("r-s1-1", "s1", 1, "Running")], NOW)
    assert {c["type"]: c for c in back.status["conditions"]}["SpecUnderstood"]["status"] == "True"


def finished_at(when: str) -> dict:
    return {"phase": "Succeeded", "observedGeneration": 1, "conditions": [
        {"type": "Succeeded", "status": "True", "reason": "AllStagesSucceeded", "lastTransitionTime": when}]}


def test_finished_runs_expire_after_their_ttl():
    now = datetime(2026, 12, 7, tzinfo=timezone.utc)
    st = finished_at("2026-12-06T00:00:00Z")
    assert not expired(st, None, now)
    assert not expired(st, 2 * 86400, now)
    assert expired(st, 86400, now)
    assert not expired({**st, "phase": "Running"}, 0, now)


def test_a_finished_run_is_not_read_again_and_is_deleted_after_its_ttl(monkeypatch):
    """The resync reaches every run: a finished one lists no jobs, reads no pods and writes nothing."""
    calls = []
    for fn in ("custom_objects", "pods", "batch_jobs", "patch_status", "warning_events", "claim"):
        monkeypatch.setattr(kube, fn, lambda *a, _fn=fn, **k: calls.append(_fn))
    deleted = []
    monkeypatch.setattr(kube, "delete_run", lambda ns, name: deleted.append((ns, name)))
    run = {"metadata": {"name": "old", "namespace": "ns", "uid": "u", "generation": 1},
           "spec": spec(ttlSecondsAfterFinished=3600).model_dump(by_alias=True, exclude_none=True),
           "status": finished_at((datetime.now(timezone.utc) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ"))}
    reconcile.reconcile(run, reconcile.log)
    assert calls == [] and deleted == []
    run["status"] = finished_at("2026-01-01T00:00:00Z")
    reconcile.reconcile(run, reconcile.log)
    assert calls == [] and deleted == [("ns", "old")]


def test_the_phase_gauge_moves_one_run_at_a_time():
    def value(phase):
        return metrics.REGISTRY.get_sample_value("vita_operator_runs", {"phase": phase})

    def st(phase):
        return {"phase": phase}
    before = {p: value(p) for p in ("Running", "Succeeded", "Queued")}
    metrics.record_run("t", "a", st("Running"))
    metrics.record_run("t", "b", st("Running"))
    metrics.record_run("t", "a", st("Succeeded"))
    metrics.record_run("t", "a", st("Succeeded"))
    assert value("Running") == before["Running"] + 1 and value("Succeeded") == before["Succeeded"] + 1
    metrics.record_run("t", "a", None)
    metrics.record_run("t", "b", None)
    assert value("Running") == before["Running"] and value("Succeeded") == before["Succeeded"]
    assert value("Queued") == before["Queued"]


def test_each_run_has_one_series_with_the_time_it_entered_its_phase():
    def series(run):
        return [(s.labels, s.value) for m in metrics.REGISTRY.collect() for s in m.samples
                if s.name == "vita_operator_run_phase_transition_timestamp_seconds" and s.labels["run"] == run]
    queued = {"phase": "Queued", "phaseTransitionTime": "2026-01-01T00:00:00Z", "currentStage": "s1",
              "conditions": [{"type": "Ready", "status": "True", "reason": "JobQueued"}]}
    metrics.record_run("t", "q", queued)
    # 2026-01-01T00:00:00Z is 1767225600 s after the epoch (date -d 2026-01-01T00:00:00Z +%s)
    assert series("q") == [({"namespace": "t", "run": "q", "phase": "Queued", "reason": "JobQueued", "stage": "s1"},
                            1767225600.0)]
    failed = {**queued, "phase": "Failed", "phaseTransitionTime": "2026-01-01T01:00:00Z",
              "conditions": [{"type": "Ready", "status": "False", "reason": "JobFailed"}]}
    metrics.record_run("t", "q", failed)
    assert series("q") == [({"namespace": "t", "run": "q", "phase": "Failed", "reason": "JobFailed", "stage": "s1"},
                            1767229200.0)]
    metrics.record_run("t", "q", None)
    assert series("q") == []


def disrupted(attempt: int, node: str) -> ObservedJob:
    return ObservedJob(f"r-s1-{attempt}", "s1", attempt, "Failed", "PodFailed", disruption=
                       "DeletionByTaintManager: Taint manager: deleting due to NoExecute taint", failed_nodes=(node,))


def test_disruptions_are_retried_without_spending_retries_and_a_node_that_fails_twice_is_avoided():
    """A lost node is not the stage's failure; the node is recorded per attempt, and after two
    failed attempts on it the next attempt's pods are kept off it."""
    sp = spec()  # s1: retryLimit 2
    st = decide("r", 1, sp, None, [], NOW).status
    d = decide("r", 1, sp, st, [disrupted(1, "gpu-7")], NOW)
    assert d.actions == [CreateJob(0, 2, False)] and d.status["phase"] == "Running"
    rec = d.status["stages"][0]
    assert rec["disruptions"] == 1 and rec["failures"] == [
        {"attempt": 1, "message": "PodFailed", "nodes": ["gpu-7"],
         "disruption": "DeletionByTaintManager: Taint manager: deleting due to NoExecute taint"}]
    assert [e.reason for e in d.events] == ["StageDisrupted"] and "gpu-7" in d.events[0].message
    d = decide("r", 1, sp, d.status, [disrupted(2, "gpu-7")], NOW)
    assert d.actions == [CreateJob(0, 3, False, avoid_nodes=("gpu-7",))]
    assert d.status["stages"][0]["avoidNodes"] == ["gpu-7"] and d.status["stages"][0]["disruptions"] == 2
    assert [e.reason for e in d.events] == ["NodeAvoided", "StageDisrupted"]
    assert_valid_status(d.status)
    # two disruptions spent none of its 2 retries: its own failures still have both
    own = ObservedJob("r-s1-3", "s1", 3, "Failed", "exit 1", failed_nodes=("gpu-2",))
    d = decide("r", 1, sp, d.status, [own], NOW)
    assert d.actions == [CreateJob(0, 4, False, avoid_nodes=("gpu-7",))]
    d = decide("r", 1, sp, d.status, [ObservedJob("r-s1-4", "s1", 4, "Failed", "exit 1")], NOW)
    assert d.actions == [CreateJob(0, 5, False, avoid_nodes=("gpu-7",))]
    d = decide("r", 1, sp, d.status, [ObservedJob("r-s1-5", "s1", 5, "Failed", "exit 1")], NOW)
    assert d.status["phase"] == "Failed" and not d.actions


def test_the_disruption_cap_ends_free_retries():
    sp = spec().model_copy()
    sp.stages[0] = sp.stages[0].model_copy(update={"disruption_limit": 1, "retry_limit": 0})
    st = decide("r", 1, sp, None, [], NOW).status
    st = decide("r", 1, sp, st, [disrupted(1, "a")], NOW).status
    d = decide("r", 1, sp, st, [disrupted(2, "b")], NOW)
    assert d.status["phase"] == "Failed" and d.status["stages"][0]["disruptions"] == 1


def test_in_place_restarts_are_recorded_announced_and_capped_with_the_disruptions():
    """A TrainJob's pods restarted in place by its JobSet after a disruption (JobSet's restart-attempt label on the
    new pods): the same attempt goes on, the restart is recorded and announced once, and it counts toward
    disruptionLimit with the attempts disruptions ended; past the cap the job is stopped and a retry is spent."""
    from vita_operator.jobs.pods import restarts_in_place
    pod = {"metadata": {"labels": {"jobset.sigs.k8s.io/restart-attempt": "2"}}}
    assert restarts_in_place([pod, {"metadata": {"labels": {}}}]) == 2 and restarts_in_place([]) == 0
    sp = spec().model_copy()
    sp.stages[0] = sp.stages[0].model_copy(update={"disruption_limit": 3, "retry_limit": 1})

    def running(attempt: int, restarts: int, **extra) -> ObservedJob:
        return ObservedJob(f"r-s1-{attempt}", "s1", attempt, "Running", restarts=restarts, **extra)
    st = decide("r", 1, sp, None, [], NOW).status
    d = decide("r", 1, sp, st, [running(1, 1, disruption="node gpu-3 no longer exists", failed_nodes=("gpu-3",))],
               NOW)
    assert d.actions == [] and d.status["phase"] == "Running" and d.status["stages"][0]["restartsInPlace"] == 1
    assert [e.reason for e in d.events] == ["StageRestartedInPlace"]
    assert "gpu-3" in d.events[0].message and "disruption 1 of 3" in d.events[0].message
    d = decide("r", 1, sp, d.status, [running(1, 1)], NOW)  # seen already: nothing new
    assert d.actions == [] and "StageRestartedInPlace" not in [e.reason for e in d.events]
    d = decide("r", 1, sp, d.status, [disrupted(1, "gpu-5")], NOW)  # then a disruption the JobSet did not absorb
    assert d.actions == [CreateJob(0, 2, False)]
    rec = d.status["stages"][0]
    assert rec["disruptions"] == 1 and rec["restartsInPlace"] == 1 and rec["restartsInPlaceBefore"] == 1
    assert "disruption 2 of 3" in d.events[-1].message
    d = decide("r", 1, sp, d.status, [running(2, 1)], NOW)  # attempt 2's first restart: the third disruption
    assert d.actions == [] and d.status["stages"][0]["restartsInPlace"] == 2
    assert_valid_status(d.status)
    d = decide("r", 1, sp, d.status, [running(2, 2)], NOW)  # the fourth: past the cap, stopped, a retry spent
    assert d.actions[0] == DeleteJob("r-s1-2") and d.actions[1] == CreateJob(0, 3, False)
    assert "restarted in place 2 times, past disruptionLimit 3" in d.status["stages"][0]["failures"][-1]["message"]
    d = decide("r", 1, sp, d.status, [ObservedJob("r-s1-3", "s1", 3, "Failed", "exit 1")], NOW)
    assert d.status["phase"] == "Failed"  # retryLimit 1: attempt 2 spent it


def test_failures_of_its_own_back_off_exponentially_visible_in_status():
    sp = spec(retry=3)
    st = decide("r", 1, sp, None, [ObservedJob("r-s1-1", "s1", 1, "Succeeded")], NOW, retry_backoff_seconds=30).status
    failed = ObservedJob("r-s2-1", "s2", 1, "Failed", "NCCL error")
    wait = decide("r", 1, sp, st, [failed], "2026-12-07T00:00:00Z", retry_backoff_seconds=30)
    assert not wait.actions and wait.status["stages"][1]["nextAttemptTime"] == "2026-12-07T00:00:30Z"
    assert [e.reason for e in wait.events] == ["StageRetrying"] and "at 2026-12-07T00:00:30Z" in wait.events[0].message
    assert "attempt 2 starts at 2026-12-07T00:00:30Z" in wait.status["message"]
    assert_valid_status(wait.status)
    still = decide("r", 1, sp, wait.status, [failed], "2026-12-07T00:00:29Z", retry_backoff_seconds=30)
    assert not still.actions and not still.events
    go = decide("r", 1, sp, still.status, [failed], "2026-12-07T00:00:31Z", retry_backoff_seconds=30)
    assert go.actions == [CreateJob(1, 2, False)] and not go.events
    assert go.status["stages"][1]["nextAttemptTime"] is None
    second = ObservedJob("r-s2-2", "s2", 2, "Failed", "NCCL error")
    again = decide("r", 1, sp, go.status, [second], "2026-12-07T00:01:00Z", retry_backoff_seconds=30)
    assert again.status["stages"][1]["nextAttemptTime"] == "2026-12-07T00:02:00Z"  # 60 s: doubled


def test_a_pods_disruption_and_node_are_read_from_its_status():
    from vita_operator.jobs.pods import avoiding_nodes, disruption_of, failed_node
    gone = {"spec": {"nodeName": "gpu-7"}, "status": {"phase": "Failed", "conditions": [
        {"type": "DisruptionTarget", "status": "True", "reason": "DeletionByPodGC",
         "message": "PodGC: node no longer exists"}]}}
    assert disruption_of(gone) == "DeletionByPodGC: PodGC: node no longer exists" and failed_node(gone) == "gpu-7"
    evicted = {"spec": {"nodeName": "n"}, "status": {"phase": "Failed", "reason": "Evicted",
                                                      "message": "The node was low on resource: memory."}}
    assert disruption_of(evicted).startswith("Evicted") and failed_node(evicted) == "n"
    crashed = {"spec": {"nodeName": "n2"}, "status": {"phase": "Failed", "containerStatuses": [
        {"name": "pytorch", "state": {"terminated": {"exitCode": 1}}}]}}
    assert disruption_of(crashed) == "" and failed_node(crashed) == "n2"
    fine = {"spec": {"nodeName": "n3"}, "status": {"phase": "Running"}}
    assert failed_node(fine) == ""
    user = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": [
        {"matchExpressions": [{"key": "rack", "operator": "In", "values": ["a"]}]},
        {"matchExpressions": [{"key": "rack", "operator": "In", "values": ["b"]}]}]}}}
    out = avoiding_nodes(user, ["gpu-7"])
    terms = out["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert all(t["matchExpressions"][-1] == {"key": "kubernetes.io/hostname", "operator": "NotIn",
                                             "values": ["gpu-7"]} for t in terms) and len(terms) == 2
    assert user["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0][
        "matchExpressions"] == [{"key": "rack", "operator": "In", "values": ["a"]}]  # not changed in place


def test_an_attempt_that_avoids_nodes_gets_the_anti_affinity_on_both_backends():
    from vita_operator.jobs.backends import job_backends
    from vita_operator.jobs.pods import with_avoided_nodes
    sp = with_avoided_nodes(spec(), 1, ["gpu-7"])
    assert spec().stages[1].resources is None  # the user's spec is unchanged
    for backend in job_backends().values():
        body = backend.build("r", "ns", sp, 1, 3)
        text = str(body)
        assert "'kubernetes.io/hostname', 'operator': 'NotIn', 'values': ['gpu-7']" in text, backend.name
        assert "gpu-7" not in str(backend.build("r", "ns", sp, 0, 1))  # only that stage


def test_the_job_cache_keeps_only_what_the_operator_reads():
    """10,000 jobs of finished runs stay in the operator's cache; their pod templates and managedFields
    do not. What the operator reads from a cached job is the same as from the whole job."""
    from testing.operator_scenarios import job_status
    from vita_operator.jobs.backends import job_backends
    from vita_operator.jobs.pods import active_since
    for backend in job_backends().values():
        for phase in ("Pending", "Running", "Suspended", "Succeeded", "Failed"):
            body = backend.build("r", "ns", spec(), 1, 2, suspend=phase == "Suspended")
            body["metadata"].update(uid="u-1", creationTimestamp="2026-12-07T00:00:00Z", managedFields=[{"x": 1}],
                                    ownerReferences=[{"uid": "run-uid", "controller": True}])
            body["status"] = job_status(backend.name, phase)
            slim = backend.index_fields(body)
            assert backend.phase(slim) == backend.phase(body) and backend.node_count(slim) == backend.node_count(body)
            assert backend.suspended(slim) == backend.suspended(body) and active_since(slim) == active_since(body)
            assert slim["metadata"]["labels"] == body["metadata"]["labels"] and "managedFields" not in slim["metadata"]
            assert len(str(slim)) < len(str(body)) / 3, backend.name


def test_a_failed_job_whose_pods_are_gone_is_a_disruption_if_its_node_is_lost(monkeypatch):
    """Pod garbage collection deletes a deleted node's pods before the operator reads them: the nodes recorded while
    the job ran say what happened."""
    from vita_operator.controller import observe
    from vita_operator.jobs.backends import job_backends
    from vita_operator.jobs.pods import node_lost
    ready = {"status": {"conditions": [{"type": "Ready", "status": "True"}]}}
    assert node_lost("a", ready) == "" and node_lost("a", None) == "node a no longer exists"
    assert "NotReady" in node_lost("a", {"status": {"conditions": [{"type": "Ready", "status": "Unknown",
                                                                   "reason": "NodeStatusUnknown"}]}})
    assert "unreachable" in node_lost("a", {**ready, "spec": {"taints": [{"key": "node.kubernetes.io/unreachable"}]}})
    nodes = {"gpu-1": ready, "gpu-2": None}
    monkeypatch.setattr(kube, "pods", lambda ns, sel: [])
    monkeypatch.setattr(kube, "node", lambda name: nodes[name])
    backend = job_backends()["pytorchjob"]
    failed = ObservedJob("r-s1-1", "s1", 1, "Failed", "1 Master replica(s) failed")
    seen = observe._with_pod_reports(backend, "ns", failed, ["gpu-1", "gpu-2"])
    assert seen.disruption == "node gpu-2 no longer exists" and seen.failed_nodes == ("gpu-2",)
    nodes["gpu-2"] = ready
    assert observe._with_pod_reports(backend, "ns", failed, ["gpu-1", "gpu-2"]).disruption == ""


def test_a_job_whose_pods_cannot_all_start_fails_its_attempt_after_the_startup_timeout():
    """A quota that refuses the worker leaves the master waiting in torchrun's rendezvous; the
    run says why at once, and after startupTimeoutSeconds the attempt is deleted and counted as failed."""
    from vita_operator.core.decision import DeleteJob
    sp = spec()
    st = decide("r", 1, sp, None, [], NOW).status
    quota = "1 pod(s) created, the rest refused: FailedCreate: pods \"r-s1-1-worker-0\" is forbidden: exceeded quota"
    young = ObservedJob("r-s1-1", "s1", 1, "Running", stuck=quota, active_since="2026-12-06T23:59:00Z", nodes=2)
    d = decide("r", 1, sp, st, [young], NOW, startup_timeout_seconds=600)
    assert not d.actions and "exceeded quota" in d.status["message"] and d.status["phase"] == "Running"
    old = dataclasses.replace(young, active_since="2026-12-06T23:40:00Z")
    d = decide("r", 1, sp, d.status, [old], NOW, startup_timeout_seconds=600)
    assert d.actions == [DeleteJob("r-s1-1"), CreateJob(0, 2, False)]
    assert "did not all start within 600s" in d.status["stages"][0]["failures"][0]["message"]
    assert [e.reason for e in d.events] == ["StageRetrying"]
    waiting = dataclasses.replace(old, stuck="pod r-s1-1-master-0: Unschedulable: 0/4 nodes have 8 GPUs free")
    assert not decide("r", 1, sp, st, [waiting], NOW, startup_timeout_seconds=600).actions  # capacity: it waits
    assert not decide("r", 1, sp, st, [old], NOW).actions                                    # no timeout: waits


def test_the_cache_follows_watch_events():
    """The operator's cache as a watch drives it: the initial listing (type None) and ADDED fill it, MODIFIED replaces,
    a relabelled job moves to its new run (or leaves, with no run label), DELETED removes; readers get copies."""
    from vita_operator.controller.cache import Store

    def job(name: str, phase: str) -> dict:
        return {"metadata": {"name": name, "namespace": "ns"}, "status": {"phase": phase}}
    store = Store()
    store.apply(None, ("ns", "r1"), job("r1-s1-1", "Succeeded"))
    store.apply("ADDED", ("ns", "r1"), job("r1-s2-1", "Running"))
    store.apply("ADDED", ("ns", "r2"), job("r2-s1-1", "Running"))
    store.apply("MODIFIED", ("ns", "r1"), job("r1-s2-1", "Failed"))
    assert sorted((j["metadata"]["name"], j["status"]["phase"]) for j in store.group(("ns", "r1"))) == [
        ("r1-s1-1", "Succeeded"), ("r1-s2-1", "Failed")]
    store.group(("ns", "r1")).clear()  # a copy
    assert len(store.group(("ns", "r1"))) == 2 and len(store) == 3
    store.apply("MODIFIED", ("ns", "r2"), job("r1-s1-1", "Succeeded"))  # its run label now names r2
    assert [j["metadata"]["name"] for j in store.group(("ns", "r1"))] == ["r1-s2-1"]
    assert len(store.group(("ns", "r2"))) == 2
    store.apply("MODIFIED", None, job("r2-s1-1", "Running"))  # no run label any more
    store.apply("DELETED", ("ns", "r1"), job("r1-s2-1", "Failed"))
    assert store.group(("ns", "r1")) == [] and [j["metadata"]["name"] for j in store.all()] == ["r1-s1-1"]
    assert len(store) == 1
