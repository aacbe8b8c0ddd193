"""Multi-node fabric: the RDMA userspace in the image, the platform's network profiles on every trainer pod, the
collective timeout and NCCL's flight recorder, and the all-reduce probe that stops a stage running over sockets."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from testing.control_plane import helm_template
from testing.operator_scenarios import RUN
from tests.test_deploy import DOCKERFILES, stages
from vita_api.plan import PathRoots, cluster_roots, stage_args, stage_output_dir
from vita_api.spec import VitaTrainingRunSpec
from vita_operator.jobs import fabric
from vita_operator.jobs.pytorchjob import PyTorchJobBackend
from vita_trainer.train.fabric import bus_bandwidth_gbps, nccl_transport

PROFILES = fabric.FabricSettings.model_validate({"defaultProfile": "ib", "profiles": {"ib": {
    "extraResources": {"rdma/rdma_shared_device_a": "1"},
    "podAnnotations": {"k8s.v1.cni.cncf.io/networks": "rdma-net"},
    "env": {"NCCL_IB_HCA": "mlx5", "NCCL_SOCKET_IFNAME": "eth0"}, "ipcLock": True, "minBusBandwidthGBps": 40},
    "roce": {"env": {"NCCL_IB_GID_INDEX": "3"}}}})


def spec(**changes) -> VitaTrainingRunSpec:
    raw = copy.deepcopy(RUN["spec"])  # 2 nodes
    raw.update(changes)
    return VitaTrainingRunSpec.model_validate(raw)


def test_the_trainer_image_has_the_rdma_userspace():
    """NCCL opens libibverbs at run time; the CUDA runtime base has none, so without these packages it uses TCP."""
    _, final = stages(DOCKERFILES[0])[-1]
    installed = " ".join(rest for inst, rest in final if inst == "RUN")
    for package in ("rdma-core", "libibverbs1", "ibverbs-providers", "librdmacm1"):
        assert f" {package} " in f" {installed} ", package


def test_bus_bandwidth_is_nccl_tests_formula():
    # nccl-tests (doc/PERFORMANCE.md): busbw = algbw x 2(n-1)/n. 1 GB in 0.1 s over 16 ranks: 10 GB/s x 30/16
    assert bus_bandwidth_gbps(10**9, 0.1, 16) == pytest.approx(18.75)
    assert bus_bandwidth_gbps(10**9, 0.1, 2) == pytest.approx(10.0)


@pytest.mark.parametrize("line,transport", [
    ("node-a:123:456 [0] NCCL INFO Using network IB", "ib"),
    ("node-a:123:456 [0] NCCL INFO Using network Socket", "socket"),
    ("node-a:123:456 [0] NCCL INFO Channel 00/0 : 0[0] -> 8[0] [send] via NET/IB/0", "ib"),
    ("node-a:123:456 [0] NCCL INFO Using network AWS Libfabric", "aws"),
    ("node-a:123:456 [0] NCCL INFO Bootstrap : Using eth0:10.0.0.1<0>", "unknown"),
])
def test_the_transport_is_read_from_nccls_log(line, transport):
    assert nccl_transport(line) == transport


def test_a_multi_node_run_gets_the_default_profile_on_every_pod():
    resolved = fabric.with_profile(spec(), PROFILES)
    assert resolved.fabric.profile == "ib" and resolved.fabric.min_bus_bandwidth_gbps == 40
    job = PyTorchJobBackend().build("r1", "ns", resolved, 0, 1)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]
        container = pod["spec"]["containers"][0]
        assert container["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
        assert pod["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "rdma-net"
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["NCCL_IB_HCA"] == "mlx5" and env["NCCL_SOCKET_IFNAME"] == "eth0"
        assert "IPC_LOCK" in container["securityContext"]["capabilities"]["add"]
    args = stage_args(resolved, 0, cluster_roots(resolved))
    assert args[args.index("--min_bus_bandwidth_gbps") + 1] == "40"


def test_a_run_names_its_profile_and_its_own_floor_wins():
    resolved = fabric.with_profile(spec(fabric={"profile": "roce", "minBusBandwidthGBps": 12}), PROFILES)
    assert resolved.trainer.env["NCCL_IB_GID_INDEX"] == "3" and not resolved.trainer.ipc_lock
    assert resolved.fabric.min_bus_bandwidth_gbps == 12
    off = fabric.with_profile(spec(fabric={"minBusBandwidthGBps": 0}), PROFILES)
    assert "--min_bus_bandwidth_gbps" not in stage_args(off, 0, cluster_roots(off))


def test_one_node_gets_no_default_profile_and_no_floor():
    one = spec(resources={"gpusPerNode": 8, "nodes": 1})
    assert fabric.with_profile(one, PROFILES) == one
    floor = spec(resources={"gpusPerNode": 8, "nodes": 1}, fabric={"minBusBandwidthGBps": 40})
    assert "--min_bus_bandwidth_gbps" not in stage_args(floor, 0, cluster_roots(floor))


def test_a_profile_the_platform_does_not_define_is_named_with_the_ones_it_does():
    problem = fabric.unknown_profile(spec(fabric={"profile": "ethernet"}), PROFILES)
    assert "'ethernet'" in problem and "ib, roce" in problem and "fabric.profiles" in problem
    assert fabric.unknown_profile(spec(), PROFILES) == ""
    assert fabric.unknown_profile(spec(), fabric.FabricSettings()) == ""  # no profiles: nothing to choose


def test_topology_placement_groups_a_jobs_pod_sets_in_one_domain():
    from vita_operator.jobs.trainjob import TrainJobBackend
    topology = {"kueueQueue": "gpus", "topology": {"level": "cloud.provider.com/topology-block"}}
    job = PyTorchJobBackend().build("r1", "ns", spec(scheduling=topology), 0, 1)
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        annotations = replica["template"]["metadata"]["annotations"]
        assert annotations["kueue.x-k8s.io/podset-required-topology"] == "cloud.provider.com/topology-block"
        assert annotations["kueue.x-k8s.io/podset-group-name"] == "trainers"  # Master and Worker: one domain
    preferred = {**topology, "topology": {**topology["topology"], "mode": "preferred"}}
    one = spec(scheduling=preferred, resources={"gpusPerNode": 8, "nodes": 1})
    (master,) = PyTorchJobBackend().build("r1", "ns", one, 0, 1)["spec"]["pytorchReplicaSpecs"].values()
    annotations = master["template"]["metadata"]["annotations"]
    # Kueue groups exactly two pod sets: one node has one, so no group
    assert "kueue.x-k8s.io/podset-group-name" not in annotations
    assert annotations["kueue.x-k8s.io/podset-preferred-topology"] == "cloud.provider.com/topology-block"
    trainjob = TrainJobBackend().build("r1", "ns", spec(scheduling=topology), 0, 1)
    pod = trainjob["spec"]["podTemplateOverrides"][0] if "podTemplateOverrides" in trainjob["spec"] else None
    text = json.dumps(trainjob)
    assert '"kueue.x-k8s.io/podset-required-topology": "cloud.provider.com/topology-block"' in text, pod


@pytest.mark.subprocess
def test_the_trainjob_runtime_gangs_its_pods_when_the_chart_asks():
    from tests.test_operator_builder_crd import cel_failures, cel_rules
    from tests.test_operator_trainjob import schema_of
    import jsonschema
    docs = [d for d in yaml.safe_load_all(helm_template(
        "--set", "backends.trainjob.enabled=true", "--set-json",
        'backends.trainjob.runtime.podGroupPolicy={"coscheduling":{"scheduleTimeoutSeconds":300}}')) if d]
    (runtime,) = [d for d in docs if d["kind"] == "ClusterTrainingRuntime"]
    assert runtime["spec"]["podGroupPolicy"] == {"coscheduling": {"scheduleTimeoutSeconds": 300}}
    schema = schema_of("clustertrainingruntimes")  # Trainer v2.3.0's own CRD
    jsonschema.validate(runtime, schema)
    assert cel_failures(runtime, list(cel_rules(schema))) == []
    plain = [d for d in yaml.safe_load_all(helm_template("--set", "backends.trainjob.enabled=true")) if d]
    assert "podGroupPolicy" not in next(d for d in plain if d["kind"] == "ClusterTrainingRuntime")["spec"]


def test_the_collective_timeout_is_its_own_short_setting_and_the_flight_recorder_writes_beside_the_checkpoints():
    sp = spec()
    args = stage_args(sp, 0, cluster_roots(sp))
    assert args[args.index("--ddp_timeout") + 1] == "900"  # minutes, not the hour-long hang window
    assert sp.hang_timeout_seconds == 3600
    longer = spec(trainer={**RUN["spec"]["trainer"], "collectiveTimeoutSeconds": 1800})
    assert stage_args(longer, 0, cluster_roots(longer))[args.index("--ddp_timeout") + 1] == "1800"
    container = PyTorchJobBackend().build("r1", "ns", sp, 0, 1)["spec"]["pytorchReplicaSpecs"]["Master"][
        "template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1" and int(env["TORCH_NCCL_TRACE_BUFFER_SIZE"]) > 0
    out = stage_output_dir(sp, 0, cluster_roots(sp))
    assert env["TORCH_NCCL_DEBUG_INFO_TEMP_FILE"] == f"{out}/nccl-flight-recorder/rank_"
    assert out.startswith("/ckpt/")  # on the checkpoint volume


def test_the_probe_reaches_the_stages_status_through_the_termination_message():
    from vita_api.termination import fabric_of, termination_message
    from vita_operator.core.decision import ObservedJob
    from vita_operator.core.state import decide
    message = termination_message({"stage": "s1", "global_step": 9, "final_loss": 0.5,
                                   "fabric": {"transport": "ib", "bus_bandwidth_gbps": 181.5, "world_size": 16}})
    assert fabric_of(message) == {"transport": "ib", "busBandwidthGBps": 181.5}
    assert fabric_of("NCCL WARN ... (a log tail)") is None
    sp = spec()
    status = {"phase": "Running", "stages": [{"name": "s1", "phase": "Running", "attempts": 1,
                                              "jobName": "r1-s1-1"}]}
    done = ObservedJob("r1-s1-1", "s1", 1, "Succeeded", fabric=fabric_of(message))
    record = decide("r1", 1, sp, status, [done], "2026-12-07T00:00:00Z", "pytorchjob").status["stages"][0]
    assert record["fabric"] == {"transport": "ib", "busBandwidthGBps": 181.5}


@pytest.mark.subprocess
def test_the_chart_hands_its_profiles_to_the_operator():
    values = ["--set-json", 'fabric={"defaultProfile":"ib","profiles":{"ib":{"extraResources":'
                            '{"rdma/rdma_shared_device_a":"1"},"minBusBandwidthGBps":40}}}']
    docs = [d for d in yaml.safe_load_all(helm_template(*values)) if d]
    config = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].endswith("-fabric"))
    settings = fabric.settings_from_env(config["data"]["fabric.json"])
    assert settings.default_profile == "ib" and settings.profiles["ib"].min_bus_bandwidth_gbps == 40
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env[fabric.ENV]["valueFrom"]["configMapKeyRef"] == {"name": config["metadata"]["name"],
                                                               "key": "fabric.json"}
    assert "checksum/fabric" in deployment["spec"]["template"]["metadata"]["annotations"]
    with pytest.raises(SystemExit, match="defaultProfile 'x' is not one of"):
        fabric.settings_from_env(json.dumps({"defaultProfile": "x", "profiles": {}}))


def run_stage(out: Path, tmp: Path, *extra: str, deepspeed: str = "none") -> tuple[int, str]:
    """The tiny demo's first stage on 2 processes (gloo), with `extra` trainer flags; returns the exit code and the
    termination message."""
    from vita_trainer.demo.run import build_run
    from vita_trainer.local import free_port
    run = build_run("fabric", 1.0, deepspeed, 2)
    run["spec"]["stages"] = run["spec"]["stages"][:1]
    run["spec"]["stages"][0]["args"].update(max_steps=2, logging_steps=1, save_strategy="no",
                                            per_device_train_batch_size=2)
    sp = VitaTrainingRunSpec.model_validate(run["spec"])
    message = tmp / "termination-log"
    message.write_text("")
    done = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(free_port()), "-m", "vita_trainer.train",
         *stage_args(sp, 0, PathRoots(str(out), str(out))), "--metrics_port", "0", "--fabric_probe", "on",
         "--fabric_probe_megabytes", "8", *extra],
        capture_output=True, text=True, env={**os.environ, "VITA_TERMINATION_MESSAGE_PATH": str(message),
                                            "OMP_NUM_THREADS": "1"}, timeout=600)
    return done.returncode, message.read_text() or done.stdout[-3000:] + done.stderr[-3000:]


@pytest.mark.slow
def test_the_probe_reports_the_transport_and_a_stage_below_the_floor_stops_before_training(tmp_path):
    from vita_api.plan import STAGE_DONE_FILE
    from vita_trainer.demo.run import prepare
    out = tmp_path / "demo"
    prepare(out, small=True)
    code, message = run_stage(out, tmp_path)
    assert code == 0, message
    summary = json.loads((out / "runs" / "base-lm" / STAGE_DONE_FILE).read_text())
    assert summary["fabric"]["transport"] == "gloo" and summary["fabric"]["bus_bandwidth_gbps"] > 0
    assert summary["fabric"]["world_size"] == 2 and summary["global_step"] == 2
    assert json.loads(message)["fabric"]["transport"] == "gloo"  # in the pod's termination message too
    code, message = run_stage(out, tmp_path, "--min_bus_bandwidth_gbps", "100000")
    failure = json.loads(message)
    assert code != 0 and failure["error"] == "FabricTooSlow" and failure["retryable"] is False
    assert "below the run's floor of 100000 GB/s" in failure["message"] and "over gloo" in failure["message"]
    # ZeRO++ hierarchical partitioning: DeepSpeed takes the preset (its node partition = this node's 2 processes)
    code, message = run_stage(out, tmp_path, deepspeed="zero3_hpz")
    assert code == 0 and json.loads(message)["globalStep"] == 2, message


def test_zero3_hpz_partitions_within_the_node_and_inspect_shows_its_memory(monkeypatch):
    from vita_trainer.model import memory
    from vita_trainer.tools.model_cli import inspect
    from vita_trainer.train.arguments import resolve_deepspeed
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    config = resolve_deepspeed("zero3_hpz")
    assert config["zero_optimization"]["stage"] == 3 and config["zero_optimization"]["zero_hpz_partition_size"] == 8
    assert resolve_deepspeed("zero3").endswith("zero3.json")  # the others stay files
    # the secondary copy: bf16 weights over a node's 8 GPUs, on top of ZeRO-3's share over all 32
    plain = memory.model_states_bytes(8_000_000_000, 1_000_000, 32)
    hpz = memory.model_states_bytes(8_000_000_000, 1_000_000, 32, hpz_partition=8)
    assert hpz - plain == pytest.approx(8_000_000_000 * 2 / 8)
    report = inspect("vita-1.5-7b", "multimodal_sft", 32, hpz_partition=8)
    assert report["zero3_hpz_secondary_gib_per_gpu"] == round(report["total"] * 2 / 8 / 2**30, 2)
    assert report["memory"]["model_states_gib"] > inspect("vita-1.5-7b", "multimodal_sft", 32)["memory"][
        "model_states_gib"]


def test_a_stage_that_dies_on_a_collective_timeout_names_the_flight_recorder_dumps():
    from vita_operator.core.decision import ObservedJob
    from vita_operator.core.state import decide
    sp = spec()
    out = stage_output_dir(sp, 0, cluster_roots(sp))
    status = {"phase": "Running", "stages": [{"name": "s1", "phase": "Running", "attempts": 1, "jobName": "r1-s1-1",
                                              "checkpointPath": out}]}
    # the tail of a rank's log as PyTorch's NCCL watchdog writes it
    tail = ("[rank3]:[E1207 10:00:00.000000 ProcessGroupNCCL.cpp:632] [Rank 3] Watchdog caught collective operation "
            "timeout: WorkNCCL(SeqNum=5121, OpType=_ALLGATHER_BASE, NumelIn=8388608, NumelOut=134217728, "
            "Timeout(ms)=900000) ran for 900085 milliseconds before timing out.")
    failed = decide("r1", 1, sp, status, [ObservedJob("r1-s1-1", "s1", 1, "Failed", tail)], "2026-12-07T00:00:00Z",
                    "pytorchjob").status["stages"][0]
    assert failed["failures"][0]["flightRecorder"] == f"{out}/nccl-flight-recorder/"
    other = decide("r1", 1, sp, status, [ObservedJob("r1-s1-1", "s1", 1, "Failed", "exit 1: CUDA error")],
                   "2026-12-07T00:00:00Z", "pytorchjob").status["stages"][0]
    assert "flightRecorder" not in other["failures"][0]


@pytest.mark.slow
def test_the_trainer_runs_zero3_as_one_process_without_a_launcher(tmp_path):
    """What the README documents: `python -m vita_trainer.train --deepspeed zero3 ...`, no torchrun (DeepSpeed
    looked for MPI then: No module named 'mpi4py')."""
    from vita_api.plan import STAGE_DONE_FILE
    from vita_trainer.demo.run import build_run, prepare
    out = tmp_path / "demo"
    prepare(out, small=True)
    run = build_run("single", 1.0, "zero3", 1)
    run["spec"]["stages"] = run["spec"]["stages"][:1]
    run["spec"]["stages"][0]["args"].update(max_steps=2, logging_steps=1, save_strategy="no",
                                            per_device_train_batch_size=2)
    sp = VitaTrainingRunSpec.model_validate(run["spec"])
    launcher = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    args = stage_args(sp, 0, PathRoots(str(out), str(out)))
    done = subprocess.run([sys.executable, "-m", "vita_trainer.train", *args, "--metrics_port", "0"],
                          capture_output=True, text=True, timeout=600,
                          env={k: v for k, v in os.environ.items() if k not in launcher})
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "runs" / "base-lm" / STAGE_DONE_FILE).read_text())["global_step"] == 2
