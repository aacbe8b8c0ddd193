"""First-day failures on a real control plane (etcd, kube-apiserver with RBAC and admission, controller-manager):
what a shared GPU cluster's policies, PodSecurity, Kueue and lost nodes do to a run, and how each shows on it; the
trainer's progress read into status, and the hang rule through preemption, an unreachable endpoint and an operator
outage.
Kubeflow's controllers, Kueue and the kubelet are played by the test, as in tests/test_operator_apiserver.py."""

from __future__ import annotations

import json
import time

import pytest

from testing.apiserver_cluster import assert_no_forbidden, preflight_jobs, with_preflight
from testing.operator_scenarios import BACKENDS, NS, FakeTrainerEndpoint, job_args, run_on, wait_for

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]


def denying_policy(name: str, group: str, resource: str, expression: str, message: str) -> list[dict]:
    """A policy engine's rule, played by kube-apiserver's built-in ValidatingAdmissionPolicy: creates of `resource`
    in the scenarios' namespace are denied with `message` unless `expression` holds."""
    return [
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
         "metadata": {"name": name},
         "spec": {"failurePolicy": "Fail",
                  "matchConstraints": {"resourceRules": [{"apiGroups": [group], "apiVersions": ["v1"],
                                                          "operations": ["CREATE"], "resources": [resource]}]},
                  "validations": [{"expression": expression, "message": message}]}},
        {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
         "metadata": {"name": name},
         "spec": {"policyName": name, "validationActions": ["Deny"],
                  "matchResources": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS}}}}}]


# Trainer images come from one registry.
TRUSTED_REGISTRY = denying_policy(
    "trusted-registry", "kubeflow.org", "pytorchjobs",
    "object.spec.pytorchReplicaSpecs.all(r, object.spec.pytorchReplicaSpecs[r].template.spec.containers.all(c, "
    "c.image.startsWith('registry.example.com/')))", "images must come from registry.example.com")


def test_a_create_refused_by_admission_blocks_the_run_with_the_policys_message(cluster):
    """The denial shows on the run (phase Blocked, Ready=False with the API's message, an
    event, the PHASE column); fixing the spec creates the job; the job carries none of the run's labels."""
    for obj in TRUSTED_REGISTRY:
        cluster.apply(obj)
    probe = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "metadata": {"name": "probe", "namespace": NS},
             "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {"containers": [
                 {"name": "pytorch", "image": "trainer:test"}]}}}}}}
    wait_for(lambda: cluster.apply(probe, "--dry-run=server", check=False).returncode != 0, what="policy active")
    try:
        with cluster.operator("operator-refused", resync_seconds=2) as op:
            run = run_on("pytorchjob", "denied")
            run["metadata"]["labels"] = {"app.kubernetes.io/instance": "argo-app", "team": "vision"}
            cluster.apply(run)
            status = wait_for(lambda: (s := cluster.run_status("denied")).get("phase") == "Blocked" and s,
                              what="Blocked")
            ready = {c["type"]: c for c in status["conditions"]}["Ready"]
            assert ready["status"] == "False" and ready["reason"] == "CreateRefused"
            assert "denied-s1-1" in ready["message"] and "images must come from registry.example.com" in \
                ready["message"]
            assert "denied-s1-1" not in cluster.jobs()
            assert "Blocked" in cluster.cp.kubectl("get", "vitatrainingrun", "denied", "-n", NS).stdout
            assert "RunBlocked" in cluster.cp.kubectl("describe", "vitatrainingrun", "denied", "-n", NS).stdout
            seen = op.reconciles()
            wait_for(lambda: op.reconciles() >= seen + 2, what="two resyncs retry the same create")
            assert cluster.run_status("denied")["phase"] == "Blocked"
            cluster.cp.kubectl("patch", "vitatrainingrun", "denied", "-n", NS, "--type=merge",
                               "-p", '{"spec": {"trainer": {"image": "registry.example.com/vita/trainer:1"}}}')
            job = wait_for(lambda: cluster.jobs().get("denied-s1-1"), what="job after the fix")
            wait_for(lambda: cluster.run_status("denied").get("phase") == "Running", what="Running")
            labels = job["metadata"]["labels"]
            assert "app.kubernetes.io/instance" not in labels and "team" not in labels
            events = cluster.get("events")["items"]
            assert sum(1 for e in events if e["involvedObject"]["name"] == "denied" and
                       e["reason"] == "RunBlocked") == 1
    finally:
        for obj in reversed(TRUSTED_REGISTRY):
            cluster.cp.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], check=False)
        cluster.cp.kubectl("delete", "vitatrainingrun", "denied", "-n", NS, "--timeout=30s", check=False)


def test_renaming_a_started_stage_is_refused_and_its_job_runs_on(cluster):
    """The API server refuses the rename (the CRD's transition rule on status.stages): the running job is not
    deleted and restarted under a new name. (A job of a stage the spec no longer has is still deleted by the
    operator, as a second line: test_operator_state.)"""
    with cluster.operator("operator-rename") as op:
        cluster.start_run("renamed")
        wait_for(lambda: (cluster.run_status("renamed").get("stages") or [{}])[0].get("phase") == "Running",
                 what="stage s1 recorded as started")
        refused = cluster.cp.kubectl("patch", "vitatrainingrun", "renamed", "-n", NS, "--type=json", "-p",
                                     '[{"op": "replace", "path": "/spec/stages/0/name", "value": "s1b"}]',
                                     check=False)
        assert refused.returncode != 0 and "cannot be renamed or removed" in refused.stderr
        assert set(cluster.jobs()) >= {"renamed-s1-1"} and "renamed-s1b-1" not in cluster.jobs()
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "renamed", "-n", NS, "--timeout=30s")


def test_the_charts_run_policy_and_user_roles(cluster):
    """kube-apiserver itself refuses a run whose image, ServiceAccount,
    tolerations or Secrets are not allowed (with a message naming the field), and the aggregated roles give a
    namespace's editors runs and its viewers read access, nothing more."""
    from testing.control_plane import helm_template
    rendered = helm_template("--show-only", "templates/runpolicy.yaml", "--show-only", "templates/userroles.yaml",
                             "--set", "runPolicy.allowedImagePrefixes={registry.example.com/,trainer:}",
                             "--set", "runPolicy.allowedServiceAccounts={trainer}")
    cluster.cp.kubectl("apply", "-f", "-", input=rendered)
    try:
        def dry_run(mutate) -> str:
            run = run_on("pytorchjob", "policed")
            run["spec"]["trainer"].update(envFromSecrets={"WANDB_API_KEY": "wandb/api-key"})
            run["spec"]["resources"]["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists"}]
            mutate(run)
            done = cluster.apply(run, "--dry-run=server", check=False)
            return "" if done.returncode == 0 else done.stderr

        wait_for(lambda: dry_run(lambda r: r["spec"]["trainer"].update(image="evil.io/miner:1")),
                 what="the run policy active")
        assert dry_run(lambda r: None) == ""  # what the policy allows
        assert dry_run(lambda r: r["spec"]["trainer"].update(serviceAccountName="trainer")) == ""
        image = dry_run(lambda r: r["spec"]["trainer"].update(image="evil.io/miner:1"))
        assert "spec.trainer.image evil.io/miner:1 is not allowed here" in image and "registry.example.com/" in image
        account = dry_run(lambda r: r["spec"]["trainer"].update(serviceAccountName="cluster-admin-sa"))
        assert "spec.trainer.serviceAccountName cluster-admin-sa is not allowed here" in account
        everything = [{"operator": "Exists"}]
        assert "toleration" in dry_run(lambda r: r["spec"]["resources"].update(tolerations=everything))
        assert "toleration" in dry_run(lambda r: r["spec"]["stages"][1].update(
            resources={"tolerations": [{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists"}]}))
        secret = dry_run(lambda r: r["spec"]["trainer"]["envFromSecrets"].update(DB="postgres/password"))
        assert "envFromSecrets names a Secret" in secret
        # the built-in roles, aggregated by the controller-manager
        def can(verb: str, role: str) -> bool:
            user = f"system:serviceaccount:{NS}:{role}-user"
            return cluster.cp.kubectl("auth", "can-i", verb, "vitatrainingruns.vita.training.dev", "-n", NS,
                                      "--as", user, check=False).stdout.strip() == "yes"
        for role in ("edit", "view"):
            cluster.cp.kubectl("create", "rolebinding", f"{role}-user", f"--clusterrole={role}",
                               f"--serviceaccount={NS}:{role}-user", "-n", NS)
        wait_for(lambda: can("create", "edit") and can("list", "view"), what="aggregated roles")
        assert can("delete", "edit") and not can("create", "view") and not can("delete", "view")
    finally:
        cluster.cp.kubectl("delete", "-f", "-", "--ignore-not-found", input=rendered, check=False)
        for role in ("edit", "view"):
            cluster.cp.kubectl("delete", "rolebinding", f"{role}-user", "-n", NS, "--ignore-not-found", check=False)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_workers_out_of_memory_report_halves_the_micro_batch(cluster, backend):
    """Rank 0 was killed without a word; a worker's pod says it ran out of memory."""
    from testing.operator_scenarios import worker_pod
    from vita_api.termination import failure_message
    with cluster.operator(f"operator-worker-oom-{backend}") as op:
        job = cluster.start_run("woom", backend)
        message = failure_message("OutOfMemory", "out of GPU memory at step 12", True, outOfMemory={
            "step": 12, "perDeviceTrainBatchSize": 8, "gradientAccumulationSteps": 2})
        cluster.master_pod(job, "Failed", {"terminated": {"exitCode": 137, "reason": "Error"}}, backend)
        cluster.put_pod(worker_pod(backend, job, "Failed", {"terminated": {"exitCode": 1, "reason": "Error",
                                                                          "message": message}}))
        cluster.set_job(job, "Failed", backend)
        retry = wait_for(lambda: cluster.jobs(backend).get("woom-s1-2"), what="attempt 2")
        args = job_args(retry)
        assert args[args.index("--per_device_train_batch_size") + 1] == "4"
        assert cluster.run_status("woom")["stages"][0]["oomAdjustments"][0]["step"] == 12
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "woom", "-n", NS, "--timeout=30s")


def test_pods_refused_by_pod_security_show_on_the_run(cluster):
    """The training operator v1 injects `init-pytorch` (no securityContext) into workers; under
    PodSecurity "restricted" the API server refuses those pods and the job controller only records an event. The
    refusal here is the real PodSecurity admission's; the event is what the training operator writes with it."""
    cluster.cp.kubectl("create", "namespace", "restricted-probe")
    cluster.cp.kubectl("label", "namespace", "restricted-probe", "pod-security.kubernetes.io/enforce=restricted")
    probe = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "w", "namespace": "restricted-probe"},
             "spec": {"initContainers": [{"name": "init-pytorch", "image": "alpine:3.10", "command": ["true"]}],
                      "containers": [{"name": "pytorch", "image": "trainer:test"}]}}
    refused = cluster.apply(probe, check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr and "init-pytorch" in refused.stderr
    denial = refused.stderr.strip().removeprefix("Error from server (Forbidden): error when creating \"STDIN\": ")
    with cluster.operator("operator-podsecurity", resync_seconds=1) as op:
        job = cluster.start_run("psa")
        cluster.apply({"apiVersion": "v1", "kind": "Event", "metadata": {"name": f"{job}.1", "namespace": NS},
                       "type": "Warning", "reason": "FailedCreatePod", "message": f"Error creating: {denial}",
                       "involvedObject": {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob", "name": job,
                                          "namespace": NS},
                       "source": {"component": "pytorchjob-controller"}, "count": 1})
        ready = wait_for(lambda: (c := cluster.condition("PodsReady", "psa")) and c["status"] == "False" and c,
                         what="PodsReady=False")
        assert ready["message"].startswith("no pods were created: FailedCreatePod") and "PodSecurity" in \
            ready["message"] and "init-pytorch" in ready["message"]
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "psa", "-n", NS, "--timeout=30s")
    cluster.cp.kubectl("delete", "namespace", "restricted-probe", "--wait=false")


def watched_run(name: str, endpoint: FakeTrainerEndpoint) -> dict:
    """A run whose trainer endpoint is `endpoint`, read every 5 s, hung after 12 s without a step."""
    run = run_on("pytorchjob", name)
    run["spec"].update(progressIntervalSeconds=5, hangTimeoutSeconds=12)
    run["spec"]["trainer"]["metricsPort"] = endpoint.port
    return run


def test_progress_and_eta_show_in_kubectl_get_and_a_hung_stage_is_retried(cluster):
    """The operator reads the running stage's rank-0 endpoint into status.progress (kubectl get shows
    PROGRESS and ETA); when the step stops moving for hangTimeoutSeconds the job is deleted and the stage retried."""
    endpoint = FakeTrainerEndpoint("s1")
    run = watched_run("live", endpoint)
    try:
        with cluster.operator("operator-progress", env={"VITA_OPERATOR_PROGRESS_TICK_SECONDS": "1"}) as op:
            cluster.apply(run)
            job = wait_for(lambda: "live-s1-1" in cluster.jobs() and "live-s1-1", what="first job")
            assert "--ddp_timeout" in job_args(cluster.jobs()[job])  # the collective timeout follows the spec
            cluster.serving_master_pod(job)
            cluster.set_job(job, "Running")
            progress = wait_for(lambda: (cluster.run_status("live").get("progress") or {}).get("eta") and
                                cluster.run_status("live")["progress"], timeout=40, what="progress with an ETA")
            assert progress["job"] == job and progress["totalSteps"] == 1000 and progress["step"] >= 10
            assert progress["tokensPerSecond"] == 40000 and progress["gpuHoursSoFar"] >= 0 and not progress["stale"]
            table = cluster.cp.kubectl("get", "vitatrainingrun", "live", "-n", NS).stdout.splitlines()
            header, row = table[0].split(), table[1]
            assert "PROGRESS" in header and "ETA" in header and f"{progress['step']}/1000" in row
            endpoint.frozen = True
            wait_for(lambda: "live-s1-2" in cluster.jobs(), timeout=60, what="the retry of the hung stage")
            wait_for(lambda: "live-s1-1" not in cluster.jobs(), what="the hung job deleted")
            hung = cluster.condition("Hung", "live")
            assert hung["status"] == "True" and "no training step" in hung["message"]
            assert "Hung" in cluster.cp.kubectl("describe", "vitatrainingrun", "live", "-n", NS).stdout
            assert cluster.run_status("live")["stages"][0]["attempts"] == 2
            assert_no_forbidden(op)
    finally:
        endpoint.close()
    cluster.cp.kubectl("delete", "vitatrainingrun", "live", "-n", NS, "--timeout=30s")


def test_a_job_kueue_suspends_and_readmits_is_not_taken_for_hung(cluster):
    """A job preempted (suspended) for longer than hangTimeoutSeconds and re-admitted starts a
    fresh hang window from its admission; only a job that then stays without a step is hung."""
    endpoint = FakeTrainerEndpoint("s1")
    run = watched_run("preempted", endpoint)
    try:
        with cluster.operator("operator-readmitted", resync_seconds=1,
                              env={"VITA_OPERATOR_PROGRESS_TICK_SECONDS": "1"}):
            cluster.apply(run)
            job = wait_for(lambda: "preempted-s1-1" in cluster.jobs() and "preempted-s1-1", what="first job")
            cluster.serving_master_pod(job)
            cluster.set_job(job, "Running")
            wait_for(lambda: (cluster.run_status("preempted").get("progress") or {}).get("step"), what="progress")
            endpoint.frozen = True  # from here on no step moves
            cluster.set_job(job, "Suspended")  # Kueue preempts it
            wait_for(lambda: cluster.run_status("preempted").get("phase") == "Queued", what="Queued")
            time.sleep(14)  # longer than hangTimeoutSeconds while suspended
            assert job in cluster.jobs()
            now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
            cluster.cp.kubectl("patch", "pytorchjobs.kubeflow.org", job, "-n", NS, "--subresource=status",
                               "--type=merge", "-p", json.dumps({"status": {"conditions": [
                                   {"type": "Suspended", "status": "False", "reason": "JobResumed",
                                    "lastTransitionTime": now},
                                   {"type": "Running", "status": "True", "reason": "JobRunning",
                                    "lastTransitionTime": now}]}}))  # re-admitted
            wait_for(lambda: cluster.run_status("preempted").get("phase") == "Running", what="Running again")
            time.sleep(6)  # the pre-suspension step is 20 s old: the old rule deleted the job at once
            assert job in cluster.jobs() and "preempted-s1-2" not in cluster.jobs()
            wait_for(lambda: "preempted-s1-2" in cluster.jobs(), timeout=40, what="hung after a full window")
    finally:
        endpoint.close()
    cluster.cp.kubectl("delete", "vitatrainingrun", "preempted", "-n", NS, "--timeout=30s")


def running_with_progress(cluster, name: str, endpoint: FakeTrainerEndpoint) -> str:
    """The run's first job Running, its endpoint read into status.progress at least once; the job's name."""
    job = wait_for(lambda: f"{name}-s1-1" in cluster.jobs() and f"{name}-s1-1", what="first job")
    cluster.serving_master_pod(job)
    cluster.set_job(job, "Running")
    wait_for(lambda: (cluster.run_status(name).get("progress") or {}).get("step"), what="progress")
    return job


def test_a_trainer_endpoint_that_stops_answering_makes_progress_stale_never_hung(cluster):
    """The trainer is fine but its /metrics stops answering (a tenant's default-deny NetworkPolicy, a CNI fault) for
    twice hangTimeoutSeconds: progress says stale, and the job is left alone."""
    endpoint = FakeTrainerEndpoint("s1")
    run = watched_run("unreachable", endpoint)
    try:
        with cluster.operator("operator-unreachable", resync_seconds=1,
                              env={"VITA_OPERATOR_PROGRESS_TICK_SECONDS": "1"}) as op:
            cluster.apply(run)
            job = running_with_progress(cluster, "unreachable", endpoint)
            endpoint.close()  # from here on every read fails
            wait_for(lambda: (cluster.run_status("unreachable").get("progress") or {}).get("stale"),
                     what="progress marked stale")
            time.sleep(24)  # twice the hang window
            assert [j for j in cluster.jobs() if j.startswith("unreachable-")] == [job], "deleted or retried"
            status = cluster.run_status("unreachable")
            assert status["phase"] == "Running" and status["progress"]["stale"] and not status.get("hung")
            assert (cluster.condition("Hung", "unreachable") or {}).get("status") != "True"
            assert_no_forbidden(op)
    finally:
        endpoint.close()
    cluster.cp.kubectl("delete", "vitatrainingrun", "unreachable", "-n", NS, "--timeout=30s")


def test_an_operator_back_from_a_long_outage_whose_first_read_fails_deletes_nothing(cluster):
    """The operator is down for longer than hangTimeoutSeconds (the last recorded step is old); when it comes back,
    the endpoint does not answer: no read of its own since it started has shown a step, so the stage is stale, not
    hung."""
    endpoint = FakeTrainerEndpoint("s1")
    run = watched_run("outage", endpoint)
    env = {"VITA_OPERATOR_PROGRESS_TICK_SECONDS": "1"}
    try:
        with cluster.operator("operator-before-outage", resync_seconds=1, env=env):
            cluster.apply(run)
            job = running_with_progress(cluster, "outage", endpoint)
        endpoint.close()
        time.sleep(14)  # the outage: longer than the hang window
        with cluster.operator("operator-after-outage", resync_seconds=1, env=env) as op:
            wait_for(lambda: (cluster.run_status("outage").get("progress") or {}).get("stale"),
                     what="progress marked stale after the restart")
            time.sleep(18)  # longer than the hang window again, every read failing
            assert [j for j in cluster.jobs() if j.startswith("outage-")] == [job], "deleted or retried"
            assert cluster.run_status("outage")["phase"] == "Running"
            assert_no_forbidden(op)
    finally:
        endpoint.close()
    cluster.cp.kubectl("delete", "vitatrainingrun", "outage", "-n", NS, "--timeout=30s")


def test_the_preflight_job_runs_where_the_first_stage_runs(cluster, tmp_path, monkeypatch):
    """The stage's node selector and tolerations, its Kueue queue
    (created suspended), a deadline; a pod that cannot be scheduled shows on the run."""
    run = with_preflight("placed")
    run["spec"]["resources"].update(nodeSelector={"nvidia.com/gpu.product": "H100"}, tolerations=[
        {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}])
    with cluster.operator("operator-preflight-placed", resync_seconds=1) as op:
        cluster.apply(run)
        job = wait_for(lambda: preflight_jobs(cluster).get("placed-preflight-1"), what="the preflight Job")
        pod_spec = job["spec"]["template"]["spec"]
        assert pod_spec["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
        assert pod_spec["tolerations"][0]["key"] == "nvidia.com/gpu" and job["spec"]["activeDeadlineSeconds"] == 3600
        cluster.put_pod({"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": "placed-preflight-1-x", "namespace": NS,
            "labels": {"batch.kubernetes.io/job-name": "placed-preflight-1"}},
            "spec": {"restartPolicy": "Never", "containers": [{"name": "preflight", "image": "trainer:test"}]},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector"}]}})
        ready = wait_for(lambda: (c := cluster.condition("PodsReady", "placed")) and c["status"] == "False" and c,
                         what="PodsReady=False")
        assert "Unschedulable" in ready["message"] and cluster.run_status("placed")["phase"] == "Preflight"
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "placed", "-n", NS, "--timeout=30s")


def test_two_replicas_one_operates_and_the_standby_takes_over(cluster):
    """Two operator processes on the chart's RBAC share a Lease: one operates, the other stands by
    (live, doing nothing); when the leader dies the standby takes over within the lease and carries the run on,
    without a duplicate job."""
    import os
    import signal
    lease = {"VITA_OPERATOR_LEADER_ELECTION": "true", "VITA_OPERATOR_POD_NAMESPACE": "vita-system",
             "VITA_OPERATOR_LEASE_SECONDS": "4"}

    def holder() -> str:
        return cluster.cp.kubectl("get", "lease", "vita-operator", "-n", "vita-system", "-o",
                                  "jsonpath={.spec.holderIdentity}", check=False).stdout
    with cluster.operator("replica-a", resync_seconds=1, env={**lease, "HOSTNAME": "replica-a"}) as a:
        wait_for(lambda: holder() == "replica-a", what="replica-a leads")
        with cluster.operator("replica-b", resync_seconds=1, env={**lease, "HOSTNAME": "replica-b"}) as b:
            job = cluster.start_run("ha")
            wait_for(lambda: a.reconciles() >= 3, what="three reconciles of the leader")
            assert holder() == "replica-a" and "reconciled default/ha" in a.log()
            assert "reconciled" not in b.log()  # the standby does nothing
            # ...but is a healthy scrape target: its /metrics answers, at 0 (VitaOperatorNotLeading reads the 1)
            assert [(s.name, s.value) for s in b.samples() if s.name == "vita_operator_leader"] == [
                ("vita_operator_leader", 0.0)]
            assert [(s.name, s.value) for s in a.samples() if s.name == "vita_operator_leader"] == [
                ("vita_operator_leader", 1.0)]
            os.killpg(a.proc.pid, signal.SIGKILL)  # the leader's node is lost
            cluster.set_job(job, "Succeeded")
            wait_for(lambda: holder() == "replica-b", timeout=30, what="replica-b takes the Lease")
            wait_for(lambda: "ha-s2-1" in cluster.jobs(), timeout=30, what="the standby carries the run on")
            seen = b.reconciles()
            wait_for(lambda: b.reconciles() >= seen + 2, what="two more reconciles of the new leader")
            assert sorted(j for j in cluster.jobs() if j.startswith("ha-")) == ["ha-s1-1", "ha-s2-1"]
            assert "reconciled default/ha" in b.log()
            assert next(s.value for s in b.samples() if s.name == "vita_operator_leader") == 1.0
            assert_no_forbidden(b)
    cluster.cp.kubectl("delete", "vitatrainingrun", "ha", "-n", NS, "--timeout=30s")


def test_a_job_with_the_runs_labels_that_the_run_does_not_own_is_never_adopted(cluster):
    """A Failed job labelled as attempt 5 of run "own" (made by anyone who
    can create jobs in the namespace, or left by a deleted run of that name) does not fail the run or move its
    attempt counter: the run creates its own attempt 1 and names the other job in status.foreignJobs."""
    from vita_api.naming import job_labels
    stray = {"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
             "metadata": {"name": "own-s1-5", "namespace": NS, "labels": job_labels("own", "s1", 5)},
             "spec": {"pytorchReplicaSpecs": {"Master": {"replicas": 1, "template": {"spec": {"containers": [
                 {"name": "pytorch", "image": "trainer:test"}]}}}}}}
    cluster.apply(stray)
    cluster.set_job("own-s1-5", "Failed")
    try:
        with cluster.operator("operator-foreign") as op:
            cluster.apply(run_on("pytorchjob", "own"))
            wait_for(lambda: "own-s1-1" in cluster.jobs(), what="the run's own first job")
            status = wait_for(lambda: (s := cluster.run_status("own")).get("foreignJobs") and s,
                              what="foreignJobs")
            assert status["foreignJobs"] == ["own-s1-5"] and status["phase"] == "Running"
            assert status["stages"][0]["attempts"] == 1
            assert "ForeignJobs" in cluster.cp.kubectl("describe", "vitatrainingrun", "own", "-n", NS).stdout
            assert_no_forbidden(op)
    finally:
        cluster.cp.kubectl("delete", "vitatrainingrun", "own", "-n", NS, "--timeout=30s", check=False)
        cluster.cp.kubectl("delete", "pytorchjob", "own-s1-5", "-n", NS, "--timeout=30s", check=False)


# The run's preflight Jobs (batch/v1, by the operator's preflight label) are refused.
NO_PREFLIGHT_JOBS = denying_policy(
    "no-preflight", "batch", "jobs",
    "!has(object.metadata.labels) || !('vita.training.dev/preflight' in object.metadata.labels)",
    "preflight Jobs are not allowed in this namespace")


def test_a_refused_preflight_job_blocks_the_run_with_the_apis_message(cluster):
    """A preflight Job that admission refuses makes the run Blocked with the policy's message
    and status.refused names the Job."""
    for obj in NO_PREFLIGHT_JOBS:
        cluster.apply(obj)
    probe = {"apiVersion": "batch/v1", "kind": "Job",
             "metadata": {"name": "probe", "namespace": NS, "labels": {"vita.training.dev/preflight": "true"}},
             "spec": {"template": {"spec": {"restartPolicy": "Never",
                                            "containers": [{"name": "c", "image": "trainer:test"}]}}}}
    wait_for(lambda: cluster.apply(probe, "--dry-run=server", check=False).returncode != 0, what="policy active")
    try:
        with cluster.operator("operator-refused-preflight", resync_seconds=2) as op:
            cluster.apply(with_preflight("nopf"))
            status = wait_for(lambda: (s := cluster.run_status("nopf")).get("phase") == "Blocked" and s,
                              what="Blocked")
            assert "preflight Jobs are not allowed in this namespace" in status["message"]
            assert status["refused"]["job"] == "nopf-preflight-1"
            ready = {c["type"]: c for c in status["conditions"]}["Ready"]
            assert ready["status"] == "False" and ready["reason"] == "CreateRefused"
            assert not preflight_jobs(cluster)
            seen = op.reconciles()
            wait_for(lambda: op.reconciles() >= seen + 2, what="two resyncs retry the same create")
            assert cluster.run_status("nopf")["phase"] == "Blocked"
    finally:
        for obj in reversed(NO_PREFLIGHT_JOBS):
            cluster.cp.kubectl("delete", obj["kind"].lower(), obj["metadata"]["name"], check=False)
        cluster.cp.kubectl("delete", "vitatrainingrun", "nopf", "-n", NS, "--timeout=30s", check=False)
