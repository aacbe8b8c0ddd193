"""The operator as deployed, against a real control plane (etcd, kube-apiserver with RBAC, controller-manager).

What only a real API server shows, beside the kmock tier's handler flow: the CRD installs (CEL cost and
compilation), schema/CEL/name rules reject bad runs with the messages users see, the chart's RBAC is enough
(the operator runs on a ServiceAccount token bound to exactly the chart's ClusterRole, and its log may not
contain a single Forbidden), OwnerReferencesPermissionEnforcement admits the jobs, the controller-manager
garbage-collects a deleted run's jobs, and runs carry no finalizer that would hang with the operator down.
Kubeflow's controller is played by the test: it flips PyTorchJob status as the training operator would.
"""

from __future__ import annotations

import copy
import json

import jsonschema
import pytest
import yaml

from testing.apiserver_cluster import (Cluster, assert_no_forbidden, finish_preflight, preflight_jobs,
                                     preflight_message, with_preflight)
from testing.control_plane import (REPO, ControlPlane, install_operator_prerequisites, install_pytorchjob_crd,
                                 k8s_version)
from testing.operator_scenarios import BACKENDS, NS, RUN, claim, job_args, run_on, wait_for

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]
def test_every_example_applies_and_the_api_server_rejects_bad_runs(cluster):
    for path in sorted((REPO / "manifests" / "examples").glob("*.yaml")):
        done = cluster.cp.kubectl("apply", "--dry-run=server", "-n", NS, "-f", str(path), check=False)
        assert done.returncode == 0, (path.name, done.stderr)

    def rejected(mutate) -> str:
        run = copy.deepcopy(RUN)
        mutate(run)
        done = cluster.apply(run, "--dry-run=server", check=False)
        assert done.returncode != 0, run
        return done.stderr

    assert "DNS-1035" in rejected(lambda r: r["metadata"].update(name="Stage3-Run"))
    assert "at most 40 characters" in rejected(lambda r: r["metadata"].update(name="r" * 41))
    assert "stage names must be unique" in rejected(lambda r: r["spec"]["stages"].append(r["spec"]["stages"][0]))
    assert "may not set output_dir" in rejected(lambda r: r["spec"]["stages"][0].update(args={"output_dir": "/x"}))
    assert "at most one of scheduling.kueueQueue" in rejected(
        lambda r: r["spec"].update(scheduling={"kueueQueue": "q", "volcanoQueue": "v"}))
    assert "Kueue owns the job's suspend" in rejected(
        lambda r: r["spec"].update(suspend=True, scheduling={"kueueQueue": "q"}))
    unknown_preset = rejected(lambda r: r["spec"]["stages"][0].update(preset="stage9"))
    assert "spec.stages[0].preset" in unknown_preset and "Unsupported value" in unknown_preset
    assert "spec.stages: Required value" in rejected(lambda r: r["spec"].pop("stages"))
    assert "spec.resources.gpusPerNode" in rejected(lambda r: r["spec"]["resources"].update(gpusPerNode=99))
    assert "volcanoQueue needs the pytorchjob backend" in rejected(
        lambda r: r["spec"].update(trainer={"backend": "trainjob"}, scheduling={"volcanoQueue": "v"}))
    # a run keeps its backend: its jobs so far are of that kind
    cluster.apply(run_on("pytorchjob", "fixed"))
    moved = cluster.cp.kubectl("patch", "vitatrainingrun", "fixed", "-n", NS, "--type=merge",
                               "-p", '{"spec": {"trainer": {"backend": "trainjob"}}}', check=False)
    assert moved.returncode != 0 and "trainer.backend is immutable" in moved.stderr
    cluster.cp.kubectl("delete", "vitatrainingrun", "fixed", "-n", NS)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_run_chains_retries_survives_a_restart_and_is_garbage_collected(cluster, backend):
    with cluster.operator(f"operator-{backend}") as op:
        cluster.apply(run_on(backend))
        wait_for(lambda: "r1-s1-1" in cluster.jobs(backend), what="first job")
        owner = cluster.jobs(backend)["r1-s1-1"]["metadata"]["ownerReferences"][0]
        # Admitted under OwnerReferencesPermissionEnforcement: the RBAC grants update on the run's finalizers.
        assert owner["name"] == "r1" and owner["blockOwnerDeletion"] is True and owner["controller"] is True
        wait_for(lambda: cluster.run_status().get("phase") == "Running", what="Running")
        cluster.set_job("r1-s1-1", "Failed", backend)
        wait_for(lambda: "r1-s1-2" in cluster.jobs(backend), what="retry job")
        cluster.finished_master_pod("r1-s1-2", 0.375, backend, eval_loss=0.5)
        cluster.set_job("r1-s1-2", "Succeeded", backend)
        wait_for(lambda: "r1-s2-1" in cluster.jobs(backend), what="stage 2 job")
        first = cluster.run_status()["stages"][0]
        assert first["finalLoss"] == 0.375  # read with the chart's pods get/list
        assert first["finalEvalLoss"] == 0.5  # the stage's validation loss, from the same message
        assert_no_forbidden(op)
    before = set(cluster.jobs(backend))
    with cluster.operator(f"operator-{backend}-restarted") as op:
        wait_for(lambda: op.reconciles() >= 1, what="the restarted operator reconciles the run")
        assert set(cluster.jobs(backend)) == before  # restart: no duplicate jobs, progress kept
        status = cluster.run_status()
        assert status["currentStage"] == "s2" and [s["phase"] for s in status["stages"]] == [
            "Succeeded", "Running", "Pending"]
        cluster.set_job("r1-s2-1", "Succeeded", backend)
        wait_for(lambda: "r1-s3-1" in cluster.jobs(backend), what="stage 3 job")
        cluster.set_job("r1-s3-1", "Succeeded", backend)
        wait_for(lambda: cluster.run_status().get("phase") == "Succeeded", what="Succeeded")
        assert_no_forbidden(op)
    # the failed attempt 1 was deleted once stage s1 succeeded (a stale attempt never runs again)
    assert sorted(cluster.jobs(backend)) == ["r1-s1-2", "r1-s2-1", "r1-s3-1"]
    # What users see: the printer columns and the events.
    table = cluster.cp.kubectl("get", "vitatrainingruns", "-n", NS).stdout.splitlines()
    assert table[0].split() == ["NAME", "STAGE", "PHASE", "JOB", "PROGRESS", "ETA", "AGE"]
    assert table[1].split()[:3] == ["r1", "s3", "Succeeded"]
    wide = cluster.cp.kubectl("get", "vitatrainingruns", "-n", NS, "-o", "wide").stdout.splitlines()
    assert "BACKEND" in wide[0].split() and backend in wide[1].split()  # (JOB is blank once the run is done)
    described = cluster.cp.kubectl("describe", "vitatrainingrun", "r1", "-n", NS).stdout
    for reason in ("StageStarted", "StageRetrying", "StageSucceeded", "RunSucceeded"):
        assert reason in described, described[-2000:]
    # Deleting the run: the controller-manager's garbage collector removes its jobs (ownerReferences).
    cluster.cp.kubectl("delete", "vitatrainingrun", "r1", "-n", NS, "--timeout=60s")
    wait_for(lambda: not cluster.jobs(backend), timeout=90, what="jobs garbage-collected")


def test_a_run_deletes_while_the_operator_is_down(cluster):
    with cluster.operator("operator-delete") as op:
        cluster.start_run("orphan")
        wait_for(lambda: cluster.run_status("orphan").get("phase") == "Running", what="Running")
        assert_no_forbidden(op)
    assert not cluster.get("vitatrainingrun", "orphan")["metadata"].get("finalizers")
    # With the operator gone, nothing may hold the deletion up (a kopf finalizer would, forever).
    cluster.cp.kubectl("delete", "vitatrainingrun", "orphan", "-n", NS, "--timeout=30s")
    wait_for(lambda: not [j for j in cluster.jobs() if j.startswith("orphan-")], timeout=90,
             what="jobs garbage-collected")


SUSPEND_FIELD = {"pytorchjob": lambda job: job["spec"]["runPolicy"].get("suspend"),
                 "trainjob": lambda job: job["spec"].get("suspend")}


@pytest.mark.parametrize("backend", BACKENDS)
def test_suspend_reaches_the_current_job(cluster, backend):
    with cluster.operator(f"operator-suspend-{backend}") as op:
        cluster.start_run("pausable", backend)
        cluster.cp.kubectl("patch", "vitatrainingrun", "pausable", "-n", NS, "--type=merge",
                           "-p", '{"spec": {"suspend": true}}')
        wait_for(lambda: SUSPEND_FIELD[backend](cluster.jobs(backend)["pausable-s1-1"]) is True,
                 what="job suspended")
        wait_for(lambda: cluster.run_status("pausable").get("phase") == "Suspended", what="Suspended")
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "pausable", "-n", NS, "--timeout=30s")


def test_pods_that_cannot_start_show_on_the_run(cluster):
    """ImagePullBackOff leaves Kubeflow's job Running forever; the operator's resync loop reports it on the run."""
    with cluster.operator("operator-stuck", resync_seconds=1) as op:
        job = cluster.start_run("badimage")
        cluster.master_pod(job, "Pending", {"waiting": {
            "reason": "ImagePullBackOff", "message": 'Back-off pulling image "trainer:test"'}})
        ready = wait_for(lambda: cluster.condition("PodsReady", "badimage"), what="PodsReady condition")
        assert ready["status"] == "False" and ready["reason"] == "PodsStuck"
        assert "badimage-s1-1-master-0: ImagePullBackOff" in ready["message"]
        described = cluster.cp.kubectl("describe", "vitatrainingrun", "badimage", "-n", NS).stdout
        assert "PodsStuck" in described
        # the kubelet rewords its back-off message on every try: the condition follows it, with no new event
        cluster.cp.kubectl("patch", "pod", f"{job}-master-0", "-n", NS, "--subresource=status", "--type=json",
                           "-p", json.dumps([{"op": "replace", "path": "/status/containerStatuses/0/state/waiting/"
                                              "message", "value": 'Back-off pulling image "trainer:test" (2)'}]))
        wait_for(lambda: "(2)" in cluster.condition("PodsReady", "badimage")["message"], what="reworded message")
        stuck = [e for e in cluster.get("events")["items"]
                 if e["involvedObject"]["name"] == "badimage" and e["reason"] == "PodsStuck"]
        assert len(stuck) == 1, stuck
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "badimage", "-n", NS, "--timeout=30s")


def test_a_repeated_event_is_counted_on_the_first_with_the_charts_rbac(cluster, monkeypatch):
    """What `kubectl describe` shows as "x2": the same event twice is one Event with count 2; another message is
    another Event. Written as the operator's ServiceAccount (the chart's RBAC: create, get, patch)."""
    from kubernetes import client, config
    from vita_operator.controller import kube
    cfg = client.Configuration()
    config.load_kube_config(str(cluster.operator_kubeconfig), client_configuration=cfg)
    monkeypatch.setattr(kube, "_client", client.ApiClient(cfg))
    run = {"metadata": {"name": "evt", "namespace": NS, "uid": "0b6a1f52-0000-4000-8000-000000000001"}}
    for message in ("claim data is missing", "claim data is missing", "claim ckpt is missing"):
        kube.emit_event(run, "Warning", "VolumeNotReady", message)
    ours = sorted((e["message"], e["count"]) for e in cluster.get("events")["items"]
                  if e["involvedObject"]["name"] == "evt")
    assert ours == [("claim ckpt is missing", 1), ("claim data is missing", 2)]
    assert "VolumeNotReady" in cluster.cp.kubectl("get", "events", "-n", NS).stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_permanent_trainer_error_is_not_retried(cluster, backend):
    """A bad config fails the stage at once (the trainer said so in its termination message); retries are kept for
    failures another attempt can fix."""
    from vita_api.termination import failure_message
    with cluster.operator(f"operator-permanent-{backend}") as op:
        job = cluster.start_run("badconfig", backend)
        message = failure_message("ConfigError", "--model_name_or_path /m has no config.json", False)
        cluster.master_pod(job, "Failed", {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
                           backend)
        cluster.set_job(job, "Failed", backend)
        wait_for(lambda: cluster.run_status("badconfig").get("phase") == "Failed", what="run Failed")
        failed = cluster.condition("Failed", "badconfig")
        assert failed["status"] == "True" and failed["reason"] == "PermanentError"
        assert "no config.json" in cluster.run_status("badconfig")["stages"][0]["message"]
        assert "badconfig-s1-2" not in cluster.jobs(backend)  # retryLimit 1 left unused
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "badconfig", "-n", NS, "--timeout=30s")


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_memory_retries_with_half_the_micro_batch(cluster, backend):
    """The trainer's out-of-memory report on rank 0's pod: attempt 2 runs with half the micro-batch
    and twice the accumulation, the adjustment is in the status and an event, and retryLimit is untouched."""
    from vita_api.termination import failure_message
    with cluster.operator(f"operator-oom-{backend}") as op:
        job = cluster.start_run("oom", backend)
        message = failure_message("OutOfMemory", "out of GPU memory at step 40", True, outOfMemory={
            "step": 40, "perDeviceTrainBatchSize": 8, "gradientAccumulationSteps": 2})
        cluster.master_pod(job, "Failed", {"terminated": {"exitCode": 1, "reason": "Error", "message": message}},
                           backend)
        cluster.set_job(job, "Failed", backend)
        retry = wait_for(lambda: cluster.jobs(backend).get("oom-s1-2"), what="attempt 2")
        args = job_args(retry)
        assert args[args.index("--per_device_train_batch_size") + 1] == "4"
        assert args[args.index("--gradient_accumulation_steps") + 1] == "4"
        stage = cluster.run_status("oom")["stages"][0]
        assert stage["oomAdjustments"][0]["nextPerDeviceTrainBatchSize"] == 4 and stage["attempts"] == 2
        described = cluster.cp.kubectl("describe", "vitatrainingrun", "oom", "-n", NS).stdout
        assert "OutOfMemory" in described
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "oom", "-n", NS, "--timeout=30s")


def test_the_trainjob_example_runs_stage_by_stage_on_trainjobs(cluster, tmp_path, monkeypatch):
    """`kubectl apply` of the shipped TrainJob example: its data check passes, then every stage becomes a TrainJob
    that the API server admits under Trainer v2.3.0's CRD (schema and CEL rules), referencing the chart's runtime,
    which is installed."""
    from tests.test_operator_trainjob import schema_of
    path = REPO / "manifests" / "examples" / "run-trainjob.yaml"
    run = yaml.safe_load(path.read_text())
    name, stages = run["metadata"]["name"], [s["name"] for s in run["spec"]["stages"]]
    schema = schema_of("trainjobs")
    message = preflight_message(tmp_path, monkeypatch, bad=False, stages=stages)
    for volume, modes in (("dataset", ("ReadOnlyMany",)), ("checkpoints", ("ReadWriteMany",))):  # 2 nodes share them
        cluster.apply(claim(run["spec"]["volumes"][volume]["claimName"], *modes))
    with cluster.operator("operator-trainjob-example") as op:
        cluster.cp.kubectl("apply", "-n", NS, "-f", str(path))
        wait_for(lambda: f"{name}-preflight-1" in preflight_jobs(cluster), what="the example's preflight Job")
        finish_preflight(cluster, f"{name}-preflight-1", 0, message)
        for stage in stages:
            job_name = f"{name}-{stage}-1"
            job = wait_for(lambda name=job_name: cluster.jobs("trainjob").get(name), what=f"TrainJob {job_name}")
            jsonschema.validate({k: v for k, v in job.items() if k != "status"}, schema)
            runtime = job["spec"]["runtimeRef"]["name"]
            assert cluster.cp.kubectl("get", "clustertrainingruntime", runtime, check=False).returncode == 0
            assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-h100"
            cluster.set_job(job_name, "Succeeded", "trainjob")
        wait_for(lambda: cluster.run_status(name).get("phase") == "Succeeded", what="Succeeded")
        assert not [j for j in cluster.jobs() if j.startswith(name)]  # no PyTorchJob on the way
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", name, "-n", NS, "--timeout=30s")


def test_a_backend_the_operator_does_not_run_is_reported_not_failed(cluster):
    """The chart enables backends one by one (and grants RBAC only for those): a run on another one waits with
    Ready=False and an event, and starts once an operator with that backend runs."""
    with cluster.operator("operator-pytorchjob-only", backends="pytorchjob") as op:
        cluster.apply(run_on("trainjob", "elsewhere"))
        ready = wait_for(lambda: cluster.condition("Ready", "elsewhere"), what="Ready condition")
        assert ready["status"] == "False" and ready["reason"] == "BackendNotEnabled"
        assert "backends.trainjob.enabled" in ready["message"]
        assert cluster.run_status("elsewhere")["phase"] == "Blocked" and not cluster.jobs("trainjob")
        assert "BackendNotEnabled" in cluster.cp.kubectl("describe", "vitatrainingrun", "elsewhere", "-n", NS).stdout
        assert_no_forbidden(op)
    with cluster.operator("operator-both-backends", resync_seconds=1) as op:
        wait_for(lambda: "elsewhere-s1-1" in cluster.jobs("trainjob"), what="its TrainJob")
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "elsewhere", "-n", NS, "--timeout=30s")


def test_a_pytorchjob_crd_installed_after_the_operator_is_picked_up(tmp_path, control_plane_binaries):
    with ControlPlane(tmp_path, control_plane_binaries) as cp:
        cluster = Cluster(cp, install_operator_prerequisites(cp, pytorchjob_crd=False), tmp_path)
        with cluster.operator("operator-late-crd") as op:
            cluster.apply(RUN)
            ready = wait_for(lambda: cluster.condition("Ready"), what="Ready condition")
            assert ready["reason"] == "PyTorchJobCRDMissing" and "Kubeflow" in ready["message"]
            install_pytorchjob_crd(cp)
            # kopf re-reads the API's resources on each CRD event; the events of a fresh CRD can all come before the
            # API server's discovery serves the new kind (then kopf stays "unresolved" until the next CRD event, and
            # the operator's resync catches up instead). As a second install step would, touch the CRD once
            # discovery has it.
            wait_for(lambda: "pytorchjobs.kubeflow.org" in cp.kubectl("api-resources", "--api-group=kubeflow.org",
                                                                      "-o", "name").stdout, what="discovery")
            cp.kubectl("annotate", "crd", "pytorchjobs.kubeflow.org", "vita.training.dev/test-rescan=1", "--overwrite")
            # kopf notices the new CRD (the chart lets it watch CRDs) and starts watching PyTorchJobs; the run's
            # next reconcile (here: a spec edit) creates its job, and the job's status change drives the next
            # stage: no restart.
            cluster.cp.kubectl("patch", "vitatrainingrun", "r1", "-n", NS, "--type=merge",
                               "-p", '{"spec": {"output": "runs/r1b"}}')
            wait_for(lambda: "r1-s1-1" in cluster.jobs(), timeout=60, what="job after the CRD appeared")
            cluster.set_job("r1-s1-1", "Succeeded")
            wait_for(lambda: "r1-s2-1" in cluster.jobs(), timeout=60, what="stage 2 from a job event")
            assert_no_forbidden(op)


def test_the_tier_ran_on_the_pinned_release(cluster):
    server = yaml.safe_load(cluster.cp.kubectl("version", "-o", "yaml").stdout)["serverVersion"]
    assert server["gitVersion"] == k8s_version()


def test_a_planted_bad_sample_fails_the_run_at_preflight_and_no_gpu_job_is_created(cluster, tmp_path, monkeypatch):
    message = preflight_message(tmp_path, monkeypatch, bad=True)
    with cluster.operator("operator-preflight-bad") as op:
        cluster.apply(with_preflight("planted"))
        job = wait_for(lambda: preflight_jobs(cluster).get("planted-preflight-1"), what="the preflight Job")
        container = job["spec"]["template"]["spec"]["containers"][0]  # admitted by the API server's Job schema
        assert container["args"][-4:] == ["--stage", "s3=mm:6200", "--output", "/ckpt/runs/r1"]
        assert "nvidia.com/gpu" not in str(container["resources"])  # a CPU pod
        assert cluster.run_status("planted")["preflight"]["phase"] == "Running" and not cluster.jobs()
        finish_preflight(cluster, "planted-preflight-1", 0, message)
        wait_for(lambda: cluster.run_status("planted").get("phase") == "Failed", what="run Failed")
        failed = cluster.condition("Failed", "planted")
        assert failed["reason"] == "PreflightFailed" and "stage s2: 1 of 2 samples have problems" in failed["message"]
        pf = cluster.run_status("planted")["preflight"]
        assert pf["badSamples"] == 1 and pf["problemsByReason"] == {"missing_file": 1}
        assert "sample aud1 [image[0]] missing_file" in pf["problems"][0]
        assert "PreflightFailed" in cluster.cp.kubectl("describe", "vitatrainingrun", "planted", "-n", NS).stdout
        assert not [j for j in cluster.jobs() if j.startswith("planted")]  # no GPU job, ever
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "planted", "-n", NS, "--timeout=30s")


def test_a_clean_preflight_starts_stage_one_and_an_infrastructure_failure_is_retried(cluster, tmp_path, monkeypatch):
    message = preflight_message(tmp_path, monkeypatch, bad=False)
    with cluster.operator("operator-preflight-ok") as op:
        cluster.apply(with_preflight("checked"))
        wait_for(lambda: "checked-preflight-1" in preflight_jobs(cluster), what="the preflight Job")
        finish_preflight(cluster, "checked-preflight-1", 137, "OOMKilled: the log tail")  # not the check's verdict
        wait_for(lambda: "checked-preflight-2" in preflight_jobs(cluster), what="a second preflight attempt")
        assert "checked-s1-1" not in cluster.jobs()
        finish_preflight(cluster, "checked-preflight-2", 0, message)
        wait_for(lambda: "checked-s1-1" in cluster.jobs(), what="stage 1's PyTorchJob")
        # the job is created before the status is written: wait for that too
        pf = wait_for(lambda: (cluster.run_status("checked").get("preflight") or {}).get("phase") == "Succeeded"
                      and cluster.run_status("checked")["preflight"], what="preflight Succeeded in status")
        assert pf["phase"] == "Succeeded" and pf["samples"] == 5 and pf["badSamples"] == 0 and pf["attempts"] == 2
        described = cluster.cp.kubectl("describe", "vitatrainingrun", "checked", "-n", NS).stdout
        assert "PreflightRetrying" in described and "PreflightPassed" in described
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "checked", "-n", NS, "--timeout=30s")


def eval_pod_message(job: dict, local: dict[str, str], log, monkeypatch) -> tuple[int, str]:
    """What the evaluation pod writes: `vita-model eval` run for real with the Job's own arguments, its volume paths
    mapped to local folders (`local`: mount path prefix -> folder)."""
    from vita_api.termination import PATH_ENV
    from vita_trainer.tools.model_cli import main as model_main
    args = job["spec"]["template"]["spec"]["containers"][0]["args"]
    for prefix, folder in local.items():
        args = [a.replace(prefix, folder) for a in args]
    log.write_text("")
    monkeypatch.setenv(PATH_ENV, str(log))
    try:
        code = model_main(args)
    except Exception:  # what the pod's process does with a VitaError: message written, non-zero exit
        code = 2
    return code, log.read_text()


def test_benchmarks_after_stages_land_in_status_and_prometheus_and_a_failed_one_does_not_fail_the_run(
        cluster, tmp_path, monkeypatch):
    """lmms-eval runs for real on the demo's tasks and a tiny model (the pod's own command); the Job controller and
    the kubelet are played. Stage s1's benchmarks run beside stage s2; s3's fail (a task name lmms-eval does not
    know) and the run still succeeds, saying so."""
    from vita_trainer.demo.lmms_tasks import write_tasks
    from vita_trainer.demo.run import prepare
    demo = tmp_path / "demo"
    prepare(demo, small=True)
    write_tasks(demo, demo / "lmms_tasks")
    run = run_on("pytorchjob", "scored")
    run["spec"]["evaluation"] = {"tasks": ["vita_demo"], "afterStages": ["s1", "s3"], "includePath": "lmms_tasks",
                                 "limit": 4}
    local = {"/ckpt/runs/r1/s1": str(demo / "base_model"), "/ckpt/runs/r1/s3": str(demo / "base_model"),
             "/data": str(demo)}
    with cluster.operator("operator-evaluation") as op:
        cluster.apply(run)
        wait_for(lambda: "scored-s1-1" in cluster.jobs(), what="stage 1's job")
        cluster.set_job("scored-s1-1", "Succeeded")
        job = wait_for(lambda: preflight_jobs(cluster).get("scored-eval-s1-1"), what="the evaluation Job")
        wait_for(lambda: "scored-s2-1" in cluster.jobs(), what="stage 2's job, beside the evaluation")
        code, message = eval_pod_message(job, local, tmp_path / "termination-log", monkeypatch)
        assert code == 0
        expected = json.loads(message)["evaluation"]  # what lmms-eval computed
        assert set(expected) == {"vita_demo_color", "vita_demo_color_choice", "vita_demo_pitch"}
        finish_preflight(cluster, "scored-eval-s1-1", 0, message, container="evaluation")
        rec = wait_for(lambda: next((e for e in cluster.run_status("scored").get("evaluations", [])
                                     if e["phase"] == "Succeeded"), None), what="the scores in status")
        assert rec["stage"] == "s1" and rec["scores"] == expected
        assert cluster.run_status("scored")["phase"] == "Running"  # training went on
        series = wait_for(lambda: {(s.labels["task"], s.labels["metric"]): s.value for s in op.samples()
                                   if s.name == "vita_operator_benchmark_score" and s.labels["run"] == "scored"},
                          what="the scores on the operator's /metrics")
        assert series == {(t, m): v for t, row in expected.items() for m, v in row.items()}
        cluster.set_job("scored-s2-1", "Succeeded")
        wait_for(lambda: "scored-s3-1" in cluster.jobs(), what="stage 3's job")
        cluster.set_job("scored-s3-1", "Succeeded")
        job = wait_for(lambda: preflight_jobs(cluster).get("scored-eval-s3-1"), what="stage 3's evaluation Job")
        wait_for(lambda: cluster.run_status("scored").get("phase") == "Evaluating", what="Evaluating")
        job["spec"]["template"]["spec"]["containers"][0]["args"][5] = "vita_demo_colour"  # --tasks, misspelt
        code, message = eval_pod_message(job, local, tmp_path / "termination-log", monkeypatch)
        assert code != 0 and "unknown lmms-eval task(s): vita_demo_colour (did you mean vita_demo_color" in message
        finish_preflight(cluster, "scored-eval-s3-1", 2, message, container="evaluation")
        wait_for(lambda: cluster.run_status("scored").get("phase") == "Succeeded", what="Succeeded")
        status = cluster.run_status("scored")
        assert "the evaluation after stage(s) s3 failed" in status["message"]
        failed = next(e for e in status["evaluations"] if e["stage"] == "s3")
        assert failed["phase"] == "Failed" and "did you mean vita_demo_color" in failed["message"]
        assert cluster.condition("Evaluated", "scored")["reason"] == "EvaluationFailed"
        described = cluster.cp.kubectl("describe", "vitatrainingrun", "scored", "-n", NS).stdout
        assert "EvaluationSucceeded" in described and "EvaluationFailed" in described
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "scored", "-n", NS, "--timeout=30s")


def test_the_export_job_writes_the_reference_layout_and_status_names_the_folder(cluster, tmp_path, tok, monkeypatch):
    """The export Job's own command (its volume paths mapped to local folders) on a tiny VITA-1.5-shaped model;
    the Job controller and kubelet are played. `vita-model import` reads the folder back bit for bit."""
    import torch

    from tests.test_vita15_interop import write_released_tree
    from vita_trainer.model.vita15 import import_vita15, read_weights
    from vita_trainer.tools.model_cli import main as model_main
    released = write_released_tree(tmp_path / "released", tok)
    trained = import_vita15(released["ckpt"], tmp_path / "ckpt" / "runs" / "r1" / "s3")  # stands for stage s3's output
    run = run_on("pytorchjob", "exported")
    run["spec"]["export"] = {"path": "releases/v1"}
    with cluster.operator("operator-export") as op:
        cluster.apply(run)
        for stage in ("s1", "s2", "s3"):
            wait_for(lambda s=stage: f"exported-{s}-1" in cluster.jobs(), what=f"stage {stage}'s job")
            cluster.set_job(f"exported-{stage}-1", "Succeeded")
        job = wait_for(lambda: preflight_jobs(cluster).get("exported-export-1"), what="the export Job")
        wait_for(lambda: cluster.run_status("exported").get("phase") == "Exporting", what="Exporting")
        args = job["spec"]["template"]["spec"]["containers"][0]["args"]
        assert args == ["export", "/ckpt/runs/r1/s3", "/ckpt/runs/r1/releases/v1", "--format", "vita15"]
        assert model_main([a.replace("/ckpt", str(tmp_path / "ckpt")) for a in args]) == 0  # what the pod runs
        finish_preflight(cluster, "exported-export-1", 0, "", container="export")
        wait_for(lambda: cluster.run_status("exported").get("phase") == "Succeeded", what="Succeeded")
        ex = cluster.run_status("exported")["export"]
        assert ex["phase"] == "Succeeded" and ex["path"] == "/ckpt/runs/r1/releases/v1"
        assert "ExportSucceeded" in cluster.cp.kubectl("describe", "vitatrainingrun", "exported", "-n", NS).stdout
        assert_no_forbidden(op)
    back = import_vita15(tmp_path / "ckpt" / "runs" / "r1" / "releases" / "v1", tmp_path / "reimported")
    a, b = read_weights(trained), read_weights(back)
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    cluster.cp.kubectl("delete", "vitatrainingrun", "exported", "-n", NS, "--timeout=30s")


def test_a_run_from_new_run_is_accepted_by_the_api_server(cluster, tmp_path):
    from vita_trainer.cli import main as cli_main
    out = tmp_path / "run.yaml"
    assert cli_main(["new-run", "vita-h100", "--base", "models/vita-1.5-init", "--registry", "registries/vita.yaml",
                     "--nodes", "4", "--dataset-claim", "data", "--checkpoint-claim", "ckpt", "--queue", "gpu",
                     "--node-selector", "nvidia.com/gpu.product=NVIDIA-H100-80GB-HBM3", "-o", str(out)]) == 0
    done = cluster.cp.kubectl("apply", "--dry-run=server", "-n", NS, "-f", str(out), check=False)
    assert done.returncode == 0 and "created (server dry run)" in done.stdout, done.stderr


def test_download_progress_shows_while_the_initializer_runs(cluster, tmp_path):
    """The operator reads the initializer pod's /metrics (the initializer's own Progress server, here on 127.0.0.1
    as the pod's IP) into status.initializers.progress while the run is Initializing."""
    from testing.apiserver_cluster import finish_preflight
    from testing.operator_scenarios import pod
    from vita_trainer.local import free_port
    from vita_trainer.tools.initialize import Progress, Target
    port = free_port()
    (tmp_path / "models" / "x").mkdir(parents=True)
    (tmp_path / "models" / "x" / "model.safetensors").write_bytes(b"w" * 300)
    progress = Progress(port, [Target(tmp_path / "models" / "x")], 1200, interval=0.5)
    run = run_on("pytorchjob", "fetching")
    run["spec"].update(progressIntervalSeconds=5, initializers={"models": [{"name": "internvit-300m-448px"}]})
    run["spec"]["trainer"]["metricsPort"] = port
    with cluster.operator("operator-download-progress", env={"VITA_OPERATOR_PROGRESS_TICK_SECONDS": "1"}) as op:
        cluster.apply(run)
        job = wait_for(lambda: preflight_jobs(cluster).get("fetching-init-1"), what="the initializer Job")
        running = pod("fetching-init-1-x7k2p", {"batch.kubernetes.io/job-name": "fetching-init-1"}, "initializer",
                      "Running", {"running": {"startedAt": "2026-12-04T00:00:00Z"}})
        running["status"].update(podIP="127.0.0.1", podIPs=[{"ip": "127.0.0.1"}])
        running["metadata"]["ownerReferences"] = [{"apiVersion": "batch/v1", "kind": "Job", "name": "fetching-init-1",
                                                   "controller": True, "uid": job["metadata"]["uid"]}]
        cluster.put_pod(running)
        seen = wait_for(lambda: (cluster.run_status("fetching").get("initializers") or {}).get("progress"),
                        timeout=40, what="download progress in status")
        assert seen["expectedBytes"] == 1200 and seen["bytes"] == 300 and seen["percent"] == 25
        (tmp_path / "models" / "x" / "more.safetensors").write_bytes(b"w" * 900)
        progress.refresh()
        wait_for(lambda: cluster.run_status("fetching")["initializers"]["progress"]["percent"] == 100, timeout=40,
                 what="progress at 100%")
        assert cluster.run_status("fetching")["phase"] == "Initializing"
        finish_preflight(cluster, "fetching-init-1", 0, json.dumps({"initialized": {
            "files": 2, "bytes": 1200, "transferred": 1200, "items": []}}), container="initializer")
        wait_for(lambda: "fetching-s1-1" in cluster.jobs(), what="stage 1 after the downloads")
        assert cluster.run_status("fetching")["initializers"]["transferredBytes"] == 1200
        assert_no_forbidden(op)
    cluster.cp.kubectl("delete", "vitatrainingrun", "fetching", "-n", NS, "--timeout=30s")
