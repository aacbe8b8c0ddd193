"""Bad runs are refused by the real kube-apiserver at `kubectl apply`, with the field path and how to fix it: what
Kubernetes would refuse later (inside a pod, far from the run's author), what would lose a run's checkpoints, and a
rename of a stage that has started. The CRD's schema and CEL rules do it, and the chart's run policy for the one
check the CRD cannot express (stage arg names)."""

import copy
import json

import pytest

from testing.control_plane import helm_template
from testing.operator_scenarios import NS, RUN, wait_for

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

# (what the author wrote, the field path the API server names, words of the fix it gives)
REFUSED = [
    ("memory: 64GB", lambda s: s["resources"].update(memory="64GB"), "spec.resources.memory",
     "must be a Kubernetes quantity"),
    ("cpu: lots", lambda s: s["resources"].update(cpu="lots"), "spec.resources.cpu", "must be a Kubernetes quantity"),
    ("shmSize: big", lambda s: s["resources"].update(shmSize="big"), "spec.resources.shmSize",
     "must be a Kubernetes quantity"),
    ("a stage's memory: 1 TB", lambda s: s["stages"][1].update(resources={"memory": "1 TB"}),
     "spec.stages[1].resources.memory", "must be a Kubernetes quantity"),
    ("equal mount paths", lambda s: s["volumes"]["checkpoints"].update(mountPath="/data"), "spec.volumes",
     "need different mountPaths"),
    ("output outside every volume", lambda s: s.update(output="/scratch/runs/r1"), "spec.output",
     "under volumes.checkpoints.mountPath"),
    ("output escaping the volume", lambda s: s.update(output="../../etc/runs"), "spec.output",
     "may not contain '..'"),
    ("a 2-node run without a checkpoint volume", lambda s: s["volumes"].pop("checkpoints"), "spec.volumes",
     "needs volumes.checkpoints"),
    ("toleration Exists with a value",
     lambda s: s["resources"].update(tolerations=[{"key": "nvidia.com/gpu", "operator": "Exists", "value": "x"}]),
     "spec.resources.tolerations[0]", "remove value, or use operator Equal"),
    ("node-selector value with spaces", lambda s: s["resources"].update(nodeSelector={"pool": "a b"}),
     "spec.resources.nodeSelector[pool]", "no spaces"),
    ("image in upper case", lambda s: s["trainer"].update(image="Trainer:Test"), "spec.trainer.image",
     "container image reference"),
    ("empty image", lambda s: s["trainer"].update(image=""), "spec.trainer.image", "container image reference"),
    ("env name 1BAD NAME", lambda s: s["trainer"].update(env={"1BAD NAME": "x"}), "spec.trainer.env",
     "environment variable names"),
    ("relative mountPath", lambda s: s["volumes"]["dataset"].update(mountPath="data"),
     "spec.volumes.dataset.mountPath", "must be an absolute path"),
    ("stage arg that is not a flag", lambda s: s["stages"][0].update(args={"--lr; rm -rf /": 1}),
     "spec.stages[0].args", "is not a trainer flag"),
]


POLICY = ("--set", "runPolicy.allowedImagePrefixes={trainer:}", "--set", "runPolicy.allowedPriorityClasses={team-a}",
          "--set", "runPolicy.allowedKueuePriorityClasses={batch}", "--set", "runPolicy.allowedVolcanoQueues={team-a}",
          "--set", "runPolicy.allowedPodAnnotations={k8s.v1.cni.cncf.io/networks}",
          "--set", "runPolicy.allowedExtraResources={rdma/rdma_shared_device_a}")


def run_policy(*values: str) -> str:
    return helm_template("--show-only", "templates/runpolicy.yaml", *POLICY, *values)


@pytest.fixture(scope="module")
def policed(cluster):
    """The chart's run policy, allowing the scenarios' image and one item of each allow-list."""
    rendered = run_policy()
    cluster.cp.kubectl("apply", "-f", "-", input=rendered)
    probe = copy.deepcopy(RUN)
    probe["spec"]["stages"][0]["args"] = {"not a flag": 1}
    wait_for(lambda: cluster.apply(probe, "--dry-run=server", check=False).returncode != 0,
             what="the run policy active")
    yield cluster
    cluster.cp.kubectl("delete", "-f", "-", "--ignore-not-found", input=rendered, check=False)


@pytest.mark.parametrize("what,mutate,path,fix", REFUSED, ids=[r[0] for r in REFUSED])
def test_a_malformed_run_is_refused_at_apply_with_its_field_and_the_fix(policed, what, mutate, path, fix):
    run = copy.deepcopy(RUN)
    mutate(run["spec"])
    done = policed.apply(run, "--dry-run=server", check=False)
    assert done.returncode != 0, what
    assert path in done.stderr and fix in done.stderr, done.stderr


def test_the_scenario_run_itself_is_accepted(policed):
    assert policed.apply(RUN, "--dry-run=server", check=False).returncode == 0


def test_a_started_stage_keeps_its_name(policed):
    """Once status says a stage has started, renaming or removing it is refused (its checkpoints and progress are
    filed under its name); a stage still Pending may be renamed."""
    run = copy.deepcopy(RUN)
    run["metadata"]["name"] = "renamed"
    policed.apply(run)
    status = {"status": {"phase": "Running", "stages": [{"name": "s1", "phase": "Running", "attempts": 1},
                                                        {"name": "s2", "phase": "Pending", "attempts": 0},
                                                        {"name": "s3", "phase": "Pending", "attempts": 0}]}}
    policed.cp.kubectl("patch", "vitatrainingrun", "renamed", "-n", NS, "--subresource=status", "--type=merge",
                       "-p", json.dumps(status))

    def stages(*names):
        return json.dumps({"spec": {"stages": [{**s, "name": n} for s, n in zip(run["spec"]["stages"], names)]}})
    renamed = policed.cp.kubectl("patch", "vitatrainingrun", "renamed", "-n", NS, "--type=merge",
                                 "-p", stages("s1-v2", "s2", "s3"), check=False)
    assert renamed.returncode != 0
    assert "spec.stages" in renamed.stderr and "cannot be renamed or removed" in renamed.stderr
    assert "delete the run and apply it again" in renamed.stderr
    removed = policed.cp.kubectl("patch", "vitatrainingrun", "renamed", "-n", NS, "--type=json",
                                 "-p", '[{"op": "remove", "path": "/spec/stages/0"}]', check=False)
    assert removed.returncode != 0 and "cannot be renamed or removed" in removed.stderr
    policed.cp.kubectl("patch", "vitatrainingrun", "renamed", "-n", NS, "--type=merge",
                       "-p", stages("s1", "audio", "s3"))  # s2 has not started
    got = json.loads(policed.cp.kubectl("get", "vitatrainingrun", "renamed", "-n", NS, "-o", "json").stdout)
    assert [s["name"] for s in got["spec"]["stages"]] == ["s1", "audio", "s3"]
    policed.cp.kubectl("delete", "vitatrainingrun", "renamed", "-n", NS)


# Every field that shapes a pod or reaches a cluster-scoped object or a Secret: (rule, allowed, refused, message).
POLICED = [
    ("priority class", lambda s: s["resources"].update(priorityClassName="team-a"),
     lambda s: s["resources"].update(priorityClassName="system-cluster-critical"),
     "resources.priorityClassName (of the run or a stage) is not allowed here (allowed: team-a)"),
    ("a stage's priority class", lambda s: s["stages"][1].update(resources={"priorityClassName": "team-a"}),
     lambda s: s["stages"][1].update(resources={"priorityClassName": "top"}), "priorityClassName"),
    ("Kueue priority class", lambda s: s.update(scheduling={"kueueQueue": "q", "kueuePriorityClass": "batch"}),
     lambda s: s.update(scheduling={"kueueQueue": "q", "kueuePriorityClass": "top"}),
     "spec.scheduling.kueuePriorityClass is not allowed here (allowed: batch)"),
    ("Volcano queue", lambda s: s.update(scheduling={"volcanoQueue": "team-a"}),
     lambda s: s.update(scheduling={"volcanoQueue": "vip"}), "spec.scheduling.volcanoQueue is not allowed here"),
    ("Hub token Secret", lambda s: s.update(initializers={"tokenSecret": "huggingface/token"}),
     lambda s: s.update(initializers={"tokenSecret": "db/password"}),
     "spec.initializers.tokenSecret names a Secret that runs may not read here"),
    ("env LD_PRELOAD", lambda s: s["trainer"].update(env={"WANDB_PROJECT": "vita"}),
     lambda s: s["trainer"].update(env={"LD_PRELOAD": "/tmp/x.so"}), "sets a variable runs may not set here"),
    ("env PYTHONPATH", None, lambda s: s["trainer"].update(env={"PYTHONPATH": "/data/evil"}),
     "sets a variable runs may not set here"),
    ("env HF_ENDPOINT", None, lambda s: s["trainer"].update(env={"HF_ENDPOINT": "https://evil.example"}),
     "send the Hub token elsewhere"),
    ("an NCCL override", None, lambda s: s["trainer"].update(env={"NCCL_IB_HCA": "mlx5_0"}), "NCCL_*"),
    ("a denied name from a Secret", None,
     lambda s: s["trainer"].update(envFromSecrets={"LD_PRELOAD": "huggingface/token"}), "envFromSecrets"),
    ("pod annotation", lambda s: s["trainer"].update(podAnnotations={"k8s.v1.cni.cncf.io/networks": "rdma-net"}),
     lambda s: s["trainer"].update(podAnnotations={"v1.multus-cni.io/default-network": "other/net"}),
     "spec.trainer.podAnnotations has a key that runs may not set here"),
    ("node selector key", lambda s: s["resources"].update(nodeSelector={"nvidia.com/gpu.product": "H100"}),
     lambda s: s["resources"].update(nodeSelector={"kubernetes.io/hostname": "someone-elses-node"}),
     "a nodeSelector key (of the run or a stage) is not allowed here"),
    ("affinity", None, lambda s: s["resources"].update(affinity={"nodeAffinity": {}}),
     "resources.affinity (of the run or a stage) is not allowed here"),
    ("extra resource", lambda s: s["resources"].update(extraResources={"rdma/rdma_shared_device_a": "1"}),
     lambda s: s["resources"].update(extraResources={"nvidia.com/hostdev": "8"}),
     "resources.extraResources (of the run or a stage) names a resource"),
    ("IPC_LOCK", None, lambda s: s["trainer"].update(ipcLock=True), "spec.trainer.ipcLock (the IPC_LOCK capability)"),
]


def dry_run(cluster, mutate) -> str:
    run = copy.deepcopy(RUN)
    mutate(run["spec"])
    done = cluster.apply(run, "--dry-run=server", check=False)
    return "" if done.returncode == 0 else done.stderr


@pytest.mark.parametrize("rule,allowed,refused,message", POLICED, ids=[p[0] for p in POLICED])
def test_the_run_policy_allows_what_its_lists_allow_and_refuses_the_rest(policed, rule, allowed, refused, message):
    if allowed is not None:
        assert dry_run(policed, allowed) == "", rule
    got = dry_run(policed, refused)
    assert "denied request" in got and message in got, got


def test_affinity_and_ipc_lock_when_the_platform_allows_them(policed):
    opened = run_policy("--set", "runPolicy.allowAffinity=true", "--set", "runPolicy.allowIpcLock=true")
    policed.cp.kubectl("apply", "-f", "-", input=opened)
    try:
        wait_for(lambda: dry_run(policed, lambda s: s["trainer"].update(ipcLock=True)) == "",
                 what="the opened policy active")
        assert dry_run(policed, lambda s: s["resources"].update(affinity={"nodeAffinity": {}})) == ""
    finally:
        policed.cp.kubectl("apply", "-f", "-", input=run_policy())
        wait_for(lambda: dry_run(policed, lambda s: s["trainer"].update(ipcLock=True)) != "",
                 what="the default policy back")


def test_the_run_author_role_creates_runs_and_reads_logs_and_nothing_more(policed):
    """The chart's run-author ClusterRole, bound in a namespace: the author creates a run (as that user, through
    the run policy) and reads its pods and their logs; no pod create or exec, no Secrets, no jobs of their own."""
    cp = policed.cp
    cp.kubectl("apply", "-f", "-", input=helm_template("--show-only", "templates/userroles.yaml"))
    cp.kubectl("create", "serviceaccount", "author", "-n", NS)
    cp.kubectl("create", "rolebinding", "author", "--clusterrole=vita-operator-run-author",
               f"--serviceaccount={NS}:author", "-n", NS)

    def can(verb: str, resource: str) -> bool:
        kind, _, sub = resource.partition("/")  # kubectl reads kind/x as an object named x: a subresource is a flag
        return cp.kubectl("auth", "can-i", verb, kind, *([f"--subresource={sub}"] if sub else []), "-n", NS,
                          "--as", f"system:serviceaccount:{NS}:author", check=False).stdout.strip() == "yes"
    wait_for(lambda: can("create", "vitatrainingruns.vita.training.dev"), what="the aggregated run-author role")
    assert can("delete", "vitatrainingruns.vita.training.dev") and can("get", "pods/log") and can("list", "events")
    assert can("watch", "pytorchjobs.kubeflow.org") and can("get", "vitatrainingruns.vita.training.dev/status")
    for verb, resource in (("create", "pods"), ("create", "pods/exec"), ("get", "secrets"), ("list", "secrets"),
                           ("create", "pytorchjobs.kubeflow.org"), ("create", "jobs.batch"),
                           ("patch", "vitatrainingruns.vita.training.dev/status"), ("create", "rolebindings")):
        assert not can(verb, resource), (verb, resource)
    run = copy.deepcopy(RUN)
    run["metadata"]["name"] = "authored"
    author = cp.service_account_kubeconfig(NS, "author")
    created = cp.kubectl("apply", "-f", "-", input=json.dumps(run), kubeconfig_path=author, check=False)
    assert created.returncode == 0, created.stderr
    refused = copy.deepcopy(run)
    refused["spec"]["trainer"]["env"] = {"LD_PRELOAD": "/x.so"}
    assert "denied request" in cp.kubectl("apply", "-f", "-", input=json.dumps(refused), kubeconfig_path=author,
                                          check=False).stderr
    cp.kubectl("delete", "vitatrainingrun", "authored", "-n", NS)


def test_a_runs_pods_are_isolated_by_network_policies_the_operator_makes_first(policed):
    """With the chart's trainerNetworkPolicy (the operator's environment as the chart renders it), the operator makes
    the run's NetworkPolicies, owned by the run, before its first job: its pods reach each other and DNS and are
    reached by each other, the operator and the chart's scrapers on the metrics port; the initializer's pods may
    connect out on HTTPS. The API server validates them; the chart's RBAC allows them (no Forbidden)."""
    import yaml

    from testing.apiserver_cluster import assert_no_forbidden
    from testing.operator_scenarios import run_on
    deployment = yaml.safe_load(helm_template("--show-only", "templates/deployment.yaml"))
    env = {e["name"]: e["value"] for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
           if e["name"] == "VITA_OPERATOR_TRAINER_NETWORK_POLICY"}
    run = run_on("pytorchjob", "fenced")
    run["spec"]["initializers"] = {"datasets": ["llava_pretrain"]}
    with policed.operator("operator-network-policy", env=env) as op:
        policed.apply(run)
        policies = wait_for(lambda: {p["metadata"]["name"]: p for p in policed.get("networkpolicies")["items"]
                                     if p["metadata"]["name"].startswith("fenced-")} or None,
                            what="the run's NetworkPolicies")
        wait_for(lambda: policed.get("jobs.batch").get("items"), what="the initializer job")
        assert_no_forbidden(op)
    pods, downloads = policies["fenced-pods"]["spec"], policies["fenced-downloads"]["spec"]
    own = {"podSelector": {"matchLabels": {"vita.training.dev/run": "fenced"}}}
    assert pods["podSelector"] == own["podSelector"] and pods["policyTypes"] == ["Ingress", "Egress"]
    assert pods["ingress"][0] == {"from": [own]}
    scrapers = pods["ingress"][1]
    assert scrapers["ports"] == [{"port": 9400, "protocol": "TCP"}]
    assert {"kubernetes.io/metadata.name": "vita-system"} in [p["namespaceSelector"]["matchLabels"]
                                                             for p in scrapers["from"]]
    assert pods["egress"][0] == {"to": [own]} and {"port": 53, "protocol": "UDP"} in pods["egress"][1]["ports"]
    assert len(pods["egress"]) == 2  # nothing out of the cluster for trainers
    assert downloads["podSelector"]["matchLabels"] == {"vita.training.dev/run": "fenced",
                                                       "vita.training.dev/egress": "https"}
    assert downloads["egress"] == [{"ports": [{"port": 443, "protocol": "TCP"}]}]
    owner = policies["fenced-pods"]["metadata"]["ownerReferences"][0]
    assert owner["kind"] == "VitaTrainingRun" and owner["name"] == "fenced"
    initializer = policed.get("jobs.batch")["items"][0]["spec"]["template"]["metadata"]["labels"]
    assert initializer["vita.training.dev/egress"] == "https"  # the downloads policy selects it
    policed.cp.kubectl("delete", "vitatrainingrun", "fenced", "-n", NS, "--wait=false")


def test_an_operator_scoped_to_a_list_of_namespaces_runs_there_and_reaches_no_other(policed, tmp_path):
    """watchAllNamespaces=false with watchNamespaces: a Role in each listed namespace (no cluster-wide create), and
    the operator, on that RBAC alone, runs the runs of those namespaces and leaves another namespace's run alone."""
    from testing.apiserver_cluster import assert_no_forbidden
    from testing.control_plane import OperatorProcess
    from testing.operator_scenarios import CLAIMS
    from vita_trainer.local import free_port
    cp = policed.cp
    for ns in ("team-a", "team-b", "team-c"):
        cp.kubectl("create", "namespace", ns)
        for pvc in CLAIMS:
            cp.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps({**pvc, "metadata": {
                **pvc["metadata"], "namespace": ns}}))
    scoped = ("--set", "watchAllNamespaces=false", "--set", "watchNamespaces={team-a,team-b}",
              "--set", "fullnameOverride=scoped", "--set", "backends.trainjob.enabled=true")
    cp.kubectl("apply", "-f", "-", input=helm_template(*scoped, "--show-only", "templates/serviceaccount.yaml",
                                                        "--show-only", "templates/rbac.yaml"))
    listed = json.loads(cp.kubectl("get", "roles,rolebindings,clusterroles,clusterrolebindings", "-A", "-o",
                                   "json").stdout)["items"]
    kinds = {(d["kind"], d["metadata"].get("namespace")) for d in listed if d["metadata"]["name"] == "scoped"}
    assert kinds == {("Role", "team-a"), ("Role", "team-b"), ("RoleBinding", "team-a"), ("RoleBinding", "team-b")}
    watch = next(d for d in listed if d["metadata"]["name"] == "scoped-namespaces" and d["kind"] == "ClusterRole")
    assert {v for rule in watch["rules"] for v in rule["verbs"]} == {"get", "list", "watch"}  # read-only
    kubeconfig = cp.service_account_kubeconfig("vita-system", "scoped")
    user = "system:serviceaccount:vita-system:scoped"
    assert cp.kubectl("auth", "can-i", "create", "pytorchjobs.kubeflow.org", "-n", "team-c", "--as", user,
                      check=False).stdout.strip() == "no"
    operator = OperatorProcess(kubeconfig, tmp_path / "scoped.log", metrics_port=free_port(), resync_seconds=600,
                               env={"VITA_OPERATOR_NAMESPACE": "team-a,team-b"})
    with operator:
        for ns in ("team-a", "team-b", "team-c"):
            run = copy.deepcopy(RUN)
            run["metadata"].update(name="scoped", namespace=ns)
            policed.apply(run)
        for ns in ("team-a", "team-b"):
            wait_for(lambda ns=ns: policed.get("pytorchjobs.kubeflow.org", namespace=ns)["items"],
                     what=f"the job in {ns}")
        assert_no_forbidden(operator)
    assert not policed.get("pytorchjobs.kubeflow.org", namespace="team-c")["items"]
    assert "status" not in policed.get("vitatrainingrun", "scoped", namespace="team-c")
