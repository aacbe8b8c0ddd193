"""The PyTorchJob builder against Kubeflow's real CRD schema, and our CRD against the run spec."""

import copy
from pathlib import Path

import jsonschema
import pytest
import yaml

from vita_api.naming import job_name
from vita_operator.jobs.pytorchjob import PyTorchJobBackend
from vita_operator.crd import render
from vita_api.spec import VitaTrainingRunSpec

ROOT = Path(__file__).resolve().parents[1]
KUBEFLOW_CRD = ROOT / "third_party" / "kubeflow" / "pytorchjobs.kubeflow.org-v1.9.4.yaml"


def crd_schema(doc):
    return doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


@pytest.fixture(scope="module")
def pytorchjob_schema():
    if not KUBEFLOW_CRD.is_file():
        pytest.fail(f"Kubeflow CRD not found at {KUBEFLOW_CRD}")
    return crd_schema(yaml.safe_load(KUBEFLOW_CRD.read_text()))


FULL = {
    "model": {"base": "models/vita-base"}, "data": {"registry": "registry.yaml"}, "output": "runs/full",
    "trainer": {"image": "ghcr.io/x/trainer:1", "envFromSecrets": {"WANDB_API_KEY": "wandb/api-key"}},
    "resources": {"nodes": 4, "gpusPerNode": 8, "cpu": "96", "memory": "1500Gi",
                  "nodeSelector": {"nvidia.com/gpu.product": "H100"},
                  "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
                  "priorityClassName": "training"},
    "volumes": {"dataset": {"claimName": "vita-data", "mountPath": "/data"},
                "checkpoints": {"claimName": "vita-ckpt", "mountPath": "/ckpt"}},
    "scheduling": {"kueueQueue": "gpu-queue"},
    "stages": [{"name": "align", "preset": "vision_align", "datasetUse": "img", "args": {"max_steps": 10}},
               {"name": "sft", "preset": "multimodal_sft", "datasetUse": "mm",
                "activeDeadlineSeconds": 86400, "args": {},
                "resources": {"nodes": 1, "gpusPerNode": 0, "cpuProcsPerNode": 2}}],
}


@pytest.mark.parametrize("index,attempt", [(0, 1), (1, 3)])
def test_builder_output_validates_against_kubeflow_crd(pytorchjob_schema, index, attempt):
    spec = VitaTrainingRunSpec.model_validate(FULL)
    job = PyTorchJobBackend().build("my-run", "ml", spec, index, attempt)
    jsonschema.validate(job, pytorchjob_schema)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    pod = replicas["Master"]["template"]["spec"]
    c = pod["containers"][0]
    if index == 0:
        assert replicas["Worker"]["replicas"] == 3 and job["spec"]["nprocPerNode"] == "8"
        assert c["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"} and pod["priorityClassName"] == "training"
        assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpu-queue"
    else:
        assert "Worker" not in replicas and job["spec"]["nprocPerNode"] == "2"
        assert "nvidia.com/gpu" not in c["resources"]["limits"]
        assert job["spec"]["runPolicy"]["activeDeadlineSeconds"] == 86400
    mounts = {m["name"]: m for m in c["volumeMounts"]}
    assert mounts["dataset"]["readOnly"] is True and "readOnly" not in mounts["checkpoints"]
    vols = {v["name"]: v for v in pod["volumes"]}
    assert vols["dshm"]["emptyDir"]["medium"] == "Memory"
    env = {e["name"]: e for e in c["env"]}
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "wandb", "key": "api-key"}
    assert "value" not in env["WANDB_API_KEY"]
    assert replicas["Master"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    for replica in replicas.values():  # a node autoscaler must not drain a rank's node mid-stage
        annotations = replica["template"]["metadata"]["annotations"]
        assert annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"] == "false"
        assert annotations["karpenter.sh/do-not-disrupt"] == "true"
    assert c["name"] == "pytorch" and c["command"] == ["torchrun"]
    assert job["metadata"]["name"] == f"my-run-{spec.stages[index].name}-{attempt}"


def test_volcano_scheduling_policy(pytorchjob_schema):
    spec = VitaTrainingRunSpec.model_validate({**FULL, "scheduling": {"volcanoQueue": "q1"}})
    job = PyTorchJobBackend().build("r", "ml", spec, 0, 1, suspend=True)
    jsonschema.validate(job, pytorchjob_schema)
    assert job["spec"]["runPolicy"]["schedulingPolicy"] == {"queue": "q1", "minAvailable": 4, "priorityClass":
                                                            "training"}
    assert job["spec"]["runPolicy"]["suspend"] is True


def test_job_names_are_deterministic_and_short():
    assert job_name("r", "s", 1) == job_name("r", "s", 1)
    long = job_name("a" * 40, "b" * 30, 12)
    assert len(long) <= 50 and long.endswith("-12") and long != job_name("a" * 40, "b" * 30, 13)


def test_crd_is_structural_and_documented():
    # OpenAPI v3 (the API server's) has boolean exclusiveMinimum/Maximum; pydantic's gt/lt write JSON Schema's
    # numbers, which the API server cannot even decode: the spec uses ge/le only.
    assert "exclusiveM" not in render()
    doc = yaml.safe_load(render())
    version = doc["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    cols = [c["name"] for c in version["additionalPrinterColumns"]]
    assert cols == ["Stage", "Phase", "Job", "Progress", "ETA", "Backend", "Eval Loss", "Message", "Age"]
    spec = crd_schema(doc)["properties"]["spec"]

    def walk(node, path):
        assert "$ref" not in node and "anyOf" not in node and "title" not in node, path
        assert "type" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        for k, v in node.get("properties", {}).items():
            walk(v, f"{path}.{k}")
        if isinstance(node.get("items"), dict):
            walk(node["items"], f"{path}[]")
    walk(spec, "spec")
    assert spec["properties"]["stages"]["description"]
    status = crd_schema(doc)["properties"]["status"]["properties"]
    assert {"phase", "currentStage", "observedGeneration", "conditions", "stages"} <= set(status)


MALFORMED = [
    ("no stages", lambda s: s.update(stages=[])),
    ("missing model", lambda s: s.pop("model")),
    ("missing base", lambda s: s["model"].pop("base")),
    ("missing registry", lambda s: s["data"].pop("registry")),
    ("missing output", lambda s: s.pop("output")),
    ("stage without name", lambda s: s["stages"][0].pop("name")),
    ("stage without preset", lambda s: s["stages"][0].pop("preset")),
    ("stage without datasetUse", lambda s: s["stages"][0].pop("datasetUse")),
    ("unknown preset", lambda s: s["stages"][0].update(preset="stage9")),
    ("uppercase stage name", lambda s: s["stages"][0].update(name="Align")),
    ("stage name too long", lambda s: s["stages"][0].update(name="a" * 31)),
    ("negative retry limit", lambda s: s["stages"][0].update(retryLimit=-1)),
    ("zero nodes", lambda s: s["resources"].update(nodes=0)),
    ("too many gpus", lambda s: s["resources"].update(gpusPerNode=17)),
    ("negative gpus", lambda s: s["resources"].update(gpusPerNode=-1)),
    ("zero cpu procs", lambda s: s["resources"].update(cpuProcsPerNode=0)),
    ("bad deepspeed preset", lambda s: s["trainer"].update(deepspeed="zero4")),
    ("privileged metrics port", lambda s: s["trainer"].update(metricsPort=80)),
    ("bad projector type", lambda s: s["model"].update(mmProjectorType="spp")),
    ("nodes as string", lambda s: s["resources"].update(nodes="four")),
    ("stages not a list", lambda s: s.update(stages={"name": "x"})),
    ("toleration bad effect", lambda s: s["resources"].update(tolerations=[{"key": "k", "effect": "Always"}])),
    ("volume without claim", lambda s: s["volumes"]["dataset"].pop("claimName")),
    ("suspend not bool", lambda s: s.update(suspend="yes please")),
    # what Kubernetes would refuse later, far from the run's author
    ("memory not a quantity", lambda s: s["resources"].update(memory="64GB")),
    ("cpu not a quantity", lambda s: s["resources"].update(cpu="lots")),
    ("shm not a quantity", lambda s: s["resources"].update(shmSize="big")),
    ("stage memory with a space", lambda s: s["stages"][1]["resources"].update(memory="1 TB")),
    ("node selector value with spaces", lambda s: s["resources"].update(nodeSelector={"pool": "a b"})),
    ("upper-case image", lambda s: s["trainer"].update(image="Trainer:Test")),
    ("empty image", lambda s: s["trainer"].update(image="")),
    ("relative mount path", lambda s: s["volumes"]["dataset"].update(mountPath="data")),
    ("claim name with a slash", lambda s: s["volumes"]["dataset"].update(claimName="a/b")),
]


@pytest.mark.parametrize("name,mutate", MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_specs_are_rejected_by_the_crd_and_the_model(name, mutate):
    spec = copy.deepcopy(FULL)
    mutate(spec)
    schema = crd_schema(yaml.safe_load(render()))
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"apiVersion": "vita.training.dev/v1alpha1", "kind": "VitaTrainingRun",
                             "metadata": {"name": "x"}, "spec": spec}, schema)
    # the Python side rejects it too: by the model's schema, or (unknown preset) by the semantic check
    from pydantic import ValidationError

    from vita_api.plan import check_spec
    try:
        problems = check_spec(VitaTrainingRunSpec.model_validate(spec))
    except ValidationError:
        problems = ["schema"]
    assert problems


def test_the_run_policys_arg_name_check_is_the_models():
    """Stage arg names are checked by the chart's run policy (the CRD cannot): with the model's own pattern."""
    from vita_api.spec import ARG_NAME
    policy = (ROOT / "helm" / "vita-operator" / "templates" / "runpolicy.yaml").read_text()
    assert f"k.matches('{ARG_NAME}')" in policy


def test_valid_spec_passes_the_crd():
    schema = crd_schema(yaml.safe_load(render()))
    jsonschema.validate({"apiVersion": "vita.training.dev/v1alpha1", "kind": "VitaTrainingRun",
                         "metadata": {"name": "x"}, "spec": FULL}, schema)


def cel_rules(schema, path=()):
    """(path, rule, message) for every x-kubernetes-validations rule; '*' in a path stands for list items."""
    for r in schema.get("x-kubernetes-validations", []):
        yield path, r["rule"], r.get("message", "")
    for key, sub in (schema.get("properties") or {}).items():
        yield from cel_rules(sub, path + (key,))
    if "items" in schema:
        yield from cel_rules(schema["items"], path + ("*",))
    if isinstance(schema.get("additionalProperties"), dict):
        yield from cel_rules(schema["additionalProperties"], path + ("+",))


def cel_failures(obj, rules):
    """The messages of the rules `obj` breaks, evaluated with cel-python (standard CEL, as the API server uses)."""
    import celpy
    env = celpy.Environment()

    def targets(node, path):
        if not path:
            yield node
        elif path[0] == "*":
            for item in node or []:
                yield from targets(item, path[1:])
        elif path[0] == "+":  # a map's values
            for item in (node or {}).values():
                yield from targets(item, path[1:])
        elif isinstance(node, dict) and path[0] in node:
            yield from targets(node[path[0]], path[1:])

    failed = []
    for path, rule, message in rules:
        if "oldSelf" in rule:  # a transition rule: only updates have an old object
            continue
        program = env.program(env.compile(rule))
        for target in targets(obj, path):
            if not bool(program.evaluate({"self": celpy.json_to_cel(target)})):
                failed.append(message or rule)
    return failed


def _trainjob(spec, **scheduling):
    spec["trainer"]["backend"] = "trainjob"
    if scheduling:
        spec["resources"].pop("priorityClassName")
        spec["scheduling"] = scheduling


CEL_BROKEN = [
    ("trainjob with a priority class", _trainjob, "priorityclassname needs the pytorchjob backend"),
    ("trainjob with volcano", lambda s: _trainjob(s, volcanoQueue="v"), "volcanoqueue needs the pytorchjob backend"),
    ("duplicate stage names", lambda s: s["stages"].append(copy.deepcopy(s["stages"][0])), "unique"),
    ("kueue and volcano", lambda s: s["scheduling"].update(volcanoQueue="v"), "volcano"),
    ("suspend with kueue", lambda s: s.update(suspend=True), "unsuspend"),
    ("kueue priority without a queue", lambda s: s.update(scheduling={"kueuePriorityClass": "high"}),
     "needs scheduling.kueuequeue"),
    ("topology without a queue", lambda s: s.update(scheduling={"topology": {"level": "cloud.provider.com/block"}}),
     "topology needs scheduling.kueuequeue"),
    ("args set output_dir", lambda s: s["stages"][0]["args"].update(output_dir="/x"), "output_dir"),
    ("args set model_name_or_path", lambda s: s["stages"][1]["args"].update(model_name_or_path="m"),
     "model_name_or_path"),
    ("args set a job setting", lambda s: s["stages"][1]["args"].update(active_deadline_seconds=60), "job setting"),
    ("two kinds of validation data", lambda s: s["stages"][1].update(evalDatasetUse="v", evalHoldout=0.1),
     "give one"),
    ("evaluation after a stage the run lacks", lambda s: s.update(evaluation={"tasks": ["mme"],
                                                                              "afterStages": ["align", "nope"]}),
     "afterstages"),
    ("exists with a value", lambda s: s["resources"]["tolerations"][0].update(value="x"), "operator exists"),
    ("equal mount paths", lambda s: s["volumes"]["checkpoints"].update(mountPath="/data"), "different mountpaths"),
    ("env name", lambda s: s["trainer"].update(env={"1BAD NAME": "x"}), "environment variable names"),
    ("env from a secret under a bad name", lambda s: s["trainer"]["envFromSecrets"].update({"A-B": "wandb/k"}),
     "environment variable names"),
    ("node selector key", lambda s: s["resources"].update(nodeSelector={"a b": "x"}), "qualified names"),
    ("pod annotation key", lambda s: s["trainer"].update(podAnnotations={"bad key!": "x"}), "qualified names"),
    ("extra resource name", lambda s: s["resources"].update(extraResources={"rdma shared": "1"}), "qualified names"),
    ("stage extra resource name", lambda s: s["stages"][1]["resources"].update(extraResources={"x y": "1"}),
     "qualified names"),
    ("stage node selector key", lambda s: s["stages"][1]["resources"].update(nodeSelector={"x y": "1"}),
     "qualified names"),
    # a cluster run: the CRD's rules; their twin is plan.cluster_problems
    ("no checkpoint volume", lambda s: s["volumes"].pop("checkpoints"), "needs volumes.checkpoints"),
    ("output escapes the volume", lambda s: s.update(output="../../etc/runs"), "may not contain '..'"),
    ("absolute output outside the volume", lambda s: s.update(output="/scratch/runs/r1"),
     "under volumes.checkpoints.mountpath"),
]


def test_cel_rules_hold_for_valid_specs_and_the_examples():
    schema = crd_schema(yaml.safe_load(render()))
    rules = list(cel_rules(schema))
    assert len(rules) >= 3
    runs = [{"spec": FULL}] + [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "manifests" / "examples")
                                                                             .glob("*.yaml"))]
    for run in runs:
        assert cel_failures(run, rules) == [], run.get("metadata")


@pytest.mark.parametrize("name,mutate,expected", CEL_BROKEN, ids=[c[0] for c in CEL_BROKEN])
def test_cel_rules_reject_cross_field_errors_like_the_model(name, mutate, expected):
    spec = copy.deepcopy(FULL)
    mutate(spec)
    failed = cel_failures({"spec": spec}, list(cel_rules(crd_schema(yaml.safe_load(render())))))
    assert len(failed) == 1 and expected in failed[0].lower(), failed
    # the same rule on the Python side: the model, or the stage plan's semantic check
    from pydantic import ValidationError

    from vita_api.plan import check_spec, cluster_problems
    try:
        parsed = VitaTrainingRunSpec.model_validate(spec)
        problems = check_spec(parsed) + cluster_problems(parsed)
    except ValidationError as e:
        problems = [str(e)]
    # A map key's rule is the model's key pattern: pydantic names the key ("[key]") where CEL gives the message.
    python_expected = "[key]" if expected in ("environment variable names", "qualified names") else expected
    assert any(python_expected in p.lower() for p in problems), problems


def test_every_cel_rule_has_a_case_that_the_python_side_rejects_too():
    """CEL rules (in the CRD) and their Python twins (the model, plan.check_spec) agree case by case above; this
    makes sure no rule is left without a case: a new rule must come with one. Transition rules (oldSelf) have no
    twin: only the API server sees the old object."""
    rules = [r for r in cel_rules(crd_schema(yaml.safe_load(render()))) if "oldSelf" not in r[1]]
    from celpy.evaluation import CELEvalError
    covered = set()
    for mutate in [m for _, m, _ in CEL_BROKEN] + [m for _, m in MALFORMED]:  # a pattern's fix: a MALFORMED case
        spec = copy.deepcopy(FULL)
        try:
            mutate(spec)
            covered |= set(cel_failures({"spec": spec}, rules))
        except CELEvalError:  # a case that breaks the shape a rule reads (no output at all), not the rule
            pass
    covered |= set(cel_failures({"metadata": {"name": "Bad_Name"}, "spec": FULL}, rules))  # the run-name test
    assert {message or rule for _, rule, message in rules} <= covered


def _pod(message, exit_code=0, container="pytorch"):
    return {"status": {"containerStatuses": [
        {"name": container, "state": {"terminated": {"exitCode": exit_code, "message": message}}}]}}


@pytest.mark.parametrize("pod,expected", [
    (_pod('{"stage":"s1","globalStep":10,"finalLoss":0.25}'), 0.25),
    (_pod('{"stage":"s1","globalStep":0,"finalLoss":null}'), None),          # no loss was logged
    (_pod('{"finalLoss":0.25}', exit_code=1), None),                         # failed: the message is a log tail
    (_pod("Traceback (most recent call last): ..."), None),                  # not our JSON
    (_pod('{"finalLoss":0.25}', container="sidecar"), None),
    ({"status": {"containerStatuses": [{"name": "pytorch", "state": {"running": {}}}]}}, None),
    ({}, None),
])
def test_final_loss_from_the_master_pods_termination_message(pod, expected):
    assert PyTorchJobBackend().final_loss(pod) == expected


def test_trainer_result_reaches_the_pod_status():
    job = PyTorchJobBackend().build("r", "ns", VitaTrainingRunSpec.model_validate(FULL), 0, 1)
    container = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]
    assert container["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert PyTorchJobBackend().result_pod_selector("r-align-1") == \
        "training.kubeflow.org/job-name=r-align-1,training.kubeflow.org/replica-type=master"


@pytest.mark.parametrize("name,ok", [("vita-stage3", True), ("r", True), ("1run", False), ("Run", False),
                                     ("run-", False), ("a" * 40, True), ("a" * 41, False), ("run_1", False)])
def test_run_names_are_checked_by_the_api_server_and_the_model(name, ok):
    """The API server cannot schema-check metadata.name, so a CEL rule does; the run model applies the same."""
    from pydantic import ValidationError

    from vita_api.spec import VitaTrainingRun
    rules = list(cel_rules(crd_schema(yaml.safe_load(render()))))
    run = {"apiVersion": "vita.training.dev/v1alpha1", "kind": "VitaTrainingRun", "metadata": {"name": name},
           "spec": copy.deepcopy(FULL)}
    failed = cel_failures(run, rules)
    assert (failed == []) == ok, failed
    if not ok:
        assert "DNS-1035" in failed[0]
    try:
        VitaTrainingRun.model_validate(run)
        accepted = True
    except ValidationError:
        accepted = False
    assert accepted == ok


def test_trainer_pods_meet_pod_security_restricted_and_can_write_their_volumes(pytorchjob_schema):
    """fsGroup so root-owned CSI volumes take the first checkpoint; the "restricted" PodSecurity fields; HOME and
    the caches on a writable volume, as an arbitrary UID (OpenShift) has HOME=/."""
    import re
    job = PyTorchJobBackend().build("my-run", "ml", VitaTrainingRunSpec.model_validate(FULL), 0, 1)
    jsonschema.validate(job, pytorchjob_schema)
    uid = int(re.search(r"--uid (\d+)", (ROOT / "images" / "trainer" / "Dockerfile").read_text()).group(1))
    for replica in job["spec"]["pytorchReplicaSpecs"].values():
        pod = replica["template"]["spec"]
        assert pod["securityContext"]["fsGroup"] == pod["securityContext"]["runAsUser"] == uid
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        c = pod["containers"][0]
        assert c["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}
        env = {e["name"]: e.get("value") for e in c["env"]}
        cache = next(m["mountPath"] for m in c["volumeMounts"] if m["name"] == "cache")
        assert all(env[k].startswith(cache) for k in ("HOME", "HF_HOME", "TRITON_CACHE_DIR", "TORCH_EXTENSIONS_DIR"))
        assert {"name": "cache", "emptyDir": {}} in pod["volumes"]


def test_private_images_and_the_trainer_service_account(pytorchjob_schema):
    spec = copy.deepcopy(FULL)
    spec["trainer"].update(imagePullSecrets=["registry-cred"], serviceAccountName="vita-trainer")
    job = PyTorchJobBackend().build("my-run", "ml", VitaTrainingRunSpec.model_validate(spec), 0, 1)
    jsonschema.validate(job, pytorchjob_schema)
    pod = job["spec"]["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]
    assert pod["imagePullSecrets"] == [{"name": "registry-cred"}] and pod["serviceAccountName"] == "vita-trainer"
    plain = PyTorchJobBackend().build("my-run", "ml", VitaTrainingRunSpec.model_validate(FULL), 0, 1)
    assert "imagePullSecrets" not in plain["spec"]["pytorchReplicaSpecs"]["Master"]["template"]["spec"]


def test_a_gpu_pod_refuses_to_train_on_cpu(monkeypatch):
    """Pods that request GPUs tell the trainer so; without CUDA it stops with the versions instead of silently
    training on CPU (this machine has no GPU, as a node with a broken driver would look)."""
    from vita_api.errors import ConfigError
    from vita_api.plan import GPUS_ENV
    from vita_trainer.train.arguments import parse
    spec = VitaTrainingRunSpec.model_validate(FULL)
    gpu_env = {e["name"]: e.get("value") for e in PyTorchJobBackend().build("r", "ml", spec, 0, 1)["spec"][
        "pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
    cpu_env = {e["name"] for e in PyTorchJobBackend().build("r", "ml", spec, 1, 1)["spec"][
        "pytorchReplicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]}
    assert gpu_env[GPUS_ENV] == "8" and GPUS_ENV not in cpu_env
    argv = ["--model_name_or_path", "m", "--output_dir", "o", "--data_registry", "r", "--dataset_use", "d"]
    monkeypatch.setenv(GPUS_ENV, "8")
    with pytest.raises(ConfigError, match="requested 8 GPU.*CUDA is unavailable.*driver"):
        parse(argv)
    monkeypatch.delenv(GPUS_ENV)
    assert parse(argv)[2].use_cpu  # CPU runs (tests, the demo) still work


def test_multi_node_networking_reaches_the_pods(pytorchjob_schema):
    """What a 4x8 H100 run over InfiniBand/RoCE needs: NCCL env, RDMA resources, a Multus network, affinity,
    IPC_LOCK."""
    spec = copy.deepcopy(FULL)
    affinity = {"podAffinity": {"preferredDuringSchedulingIgnoredDuringExecution": [{"weight": 100, "podAffinityTerm": {
        "topologyKey": "topology.kubernetes.io/zone",
        "labelSelector": {"matchLabels": {"vita.training.dev/run": "r"}}}}]}}
    spec["trainer"].update(env={"NCCL_SOCKET_IFNAME": "net1", "NCCL_IB_HCA": "mlx5", "HOME": "/scratch"},
                           podAnnotations={"k8s.v1.cni.cncf.io/networks": "ib-net"}, ipcLock=True)
    spec["resources"].update(extraResources={"rdma/rdma_shared_device_a": "1"}, affinity=affinity)
    run = VitaTrainingRunSpec.model_validate(spec)
    for index in (0, 1):  # the second stage overrides resources partly and keeps these
        job = PyTorchJobBackend().build("my-run", "ml", run, index, 1)
        jsonschema.validate(job, pytorchjob_schema)
        template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
        c = template["spec"]["containers"][0]
        env = {e["name"]: e.get("value") for e in c["env"]}
        assert env["NCCL_SOCKET_IFNAME"] == "net1" and env["NCCL_IB_HCA"] == "mlx5"
        assert env["HOME"] == "/scratch" and [e["name"] for e in c["env"]].count("HOME") == 1
        assert c["resources"]["limits"]["rdma/rdma_shared_device_a"] == "1"
        assert c["resources"]["requests"]["rdma/rdma_shared_device_a"] == "1"
        assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["IPC_LOCK"]}
        assert template["metadata"]["annotations"]["k8s.v1.cni.cncf.io/networks"] == "ib-net"
        assert template["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
        assert template["spec"]["affinity"] == affinity
    # the CRD keeps every one of them (nothing pruned by the API server's structural schema)
    schema = crd_schema(yaml.safe_load(render()))["properties"]["spec"]
    jsonschema.validate(spec, schema)
    assert schema["properties"]["resources"]["properties"]["affinity"]["x-kubernetes-preserve-unknown-fields"]


def _pod_status(name, **status):
    return {"metadata": {"name": name}, "status": status}


@pytest.mark.parametrize("pods,expected", [
    ([], ""),
    ([_pod_status("j-master-0", phase="Running", containerStatuses=[{"state": {"running": {}}}])], ""),
    ([_pod_status("j-master-0", containerStatuses=[{"state": {"waiting": {"reason": "ContainerCreating"}}}])], ""),
    ([_pod_status("j-worker-0", containerStatuses=[{"state": {"waiting": {
        "reason": "ImagePullBackOff", "message": "Back-off pulling image \"trainer:nope\""}}}])],
     'pod j-worker-0: ImagePullBackOff: Back-off pulling image "trainer:nope"'),
    ([_pod_status("j-master-0", containerStatuses=[{"state": {"waiting": {
        "reason": "CreateContainerConfigError", "message": "secret \"wandb\" not found"}}}])],
     'pod j-master-0: CreateContainerConfigError: secret "wandb" not found'),
    ([_pod_status("j-master-0", conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                             "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}])],
     "pod j-master-0: Unschedulable: 0/4 nodes are available: 4 Insufficient nvidia.com/gpu."),
])
def test_stuck_pods_are_named_with_their_reason(pods, expected):
    from vita_operator.jobs.pods import stuck_reason
    assert stuck_reason(pods) == expected


def test_pods_are_not_restarted_alone_and_permanent_errors_are_read(pytorchjob_schema):
    """One failed pod fails the job (a fresh attempt gets a fresh rendezvous); the trainer's "not retryable" is read
    from the failed master pod's termination message."""
    from vita_api.termination import failure_message
    job = PyTorchJobBackend().build("my-run", "ml", VitaTrainingRunSpec.model_validate(FULL), 0, 1)
    jsonschema.validate(job, pytorchjob_schema)
    assert {r["restartPolicy"] for r in job["spec"]["pytorchReplicaSpecs"].values()} == {"Never"}
    assert "backoffLimit" not in job["spec"]["runPolicy"]  # one set makes the training operator delete the failed pod
    backend = PyTorchJobBackend()
    assert backend.permanent_failure(_pod(failure_message("ConfigError", "bad flag", False), exit_code=2)) == \
        "ConfigError: bad flag"
    assert backend.permanent_failure(_pod(failure_message("NodeError", "no GPU", True), exit_code=2)) is None
    assert backend.permanent_failure(_pod("Traceback ... NCCL error", exit_code=1)) is None  # log tail: retry
    assert backend.permanent_failure(_pod('{"stage":"s","finalLoss":1.0}', exit_code=0)) is None
