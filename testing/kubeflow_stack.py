"""The Kubeflow stack as processes on the tier's control plane: kube-scheduler, kwok (the kubelet of fake GPU nodes),
the training operator v1.9.3 with its PyTorchJob webhook, Trainer v2.3.0's controller manager with its webhooks, the
JobSet v0.10.1 controller, and Kueue v0.17.0.

Each controller runs from a binary built by hack/kubeflow/build.sh (cached outside the checkout) and reads its
CRDs and webhook configurations from its own Go module's source at the pinned version (`kubectl kustomize` renders
them as its deployment would). Webhooks are served over TLS and reached the way a cluster reaches them: through a
Service. There is no kube-proxy, so the API server routes to the Service's endpoints (--enable-aggregator-routing),
an EndpointSlice holding this machine's own non-loopback address. The training operator and Kueue manage their
certificates themselves, as their deployments do; Trainer and JobSet run as with cert-manager: a certificate for
`<service>.<namespace>.svc` signed by the tier's CA, whose bundle is set on their webhook configurations.

The controllers act as cluster-admin (their own ClusterRoles are theirs to test); the operator keeps the chart's RBAC.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import time
from pathlib import Path

import yaml

from testing.control_plane import REPO, ControlPlane, _openssl, _Processes
from testing.operator_scenarios import wait_for
from vita_trainer.data.shared_files import exclusive
from vita_trainer.local import free_port

HACK = REPO / "hack" / "kubeflow"
COMPONENTS = ("kwok", "training-operator", "jobset", "trainer", "kueue")
STAGES = REPO / "tests" / "fixtures" / "kwok-stages.yaml"
# The kube-controller-manager controllers the stack needs besides the API-server tier's: batch Jobs (the run's
# preflight and JobSet's child Jobs), binding the run's claims to their volumes (the scheduler waits for that), and
# node lifecycle (it lifts the not-ready taint a new node is admitted with once kwok reports it Ready); pod garbage
# collection and taint-based eviction (a lost node's pods fail and go, as on a cluster); ResourceQuota usage (the
# quota admission plugin refuses only what a computed quota status says is over).
EXTRA_CONTROLLERS = ("job", "persistentvolume-binder", "ttl-after-finished", "node-lifecycle-controller", "podgc",
                     "taint-eviction-controller", "resourcequota")
GPU = "nvidia.com/gpu"
GPU_PRODUCT = "NVIDIA-H100-80GB-HBM3"
# training-operator v1.9.3 hard-codes this (pkg/cert); it is also controller-runtime's default with TMPDIR unset.
TRAINING_OPERATOR_CERT_DIR = Path("/tmp/k8s-webhook-server/serving-certs")


def module_version(component: str) -> tuple[str, str]:
    """(module path, version) of the component's pinned module (the one its tool package lives in)."""
    lines = (HACK / component / "go.mod").read_text().splitlines()
    tool = next(line.split()[1] for line in lines if line.startswith("tool "))
    mods = [line.split()[:2] for line in lines if line.startswith("\t") and len(line.split()) >= 2]
    path, version = max(((m, v) for m, v in mods if tool == m or tool.startswith(m + "/")), key=lambda mv: len(mv[0]))
    return path, version


def cache_root() -> Path:
    return Path(os.environ.get("VITA_KUBEFLOW_BIN", Path.home() / ".cache" / "vita" / "kubeflow"))


def binary(component: str) -> Path:
    return cache_root() / f"{component}-{module_version(component)[1]}" / component


def ensure_binaries() -> dict[str, Path]:
    """Build what is missing (a machine's first run: see README for how long), or reuse the cache."""
    if any(not binary(c).is_file() for c in COMPONENTS):
        cache_root().mkdir(parents=True, exist_ok=True)
        with exclusive(cache_root() / "build"):  # parallel test workers: one builds, the others wait for it
            if missing := [c for c in COMPONENTS if not binary(c).is_file()]:
                subprocess.run(["bash", str(HACK / "build.sh"), str(cache_root()), *missing], check=True)
    return {c: binary(c) for c in COMPONENTS}


def module_dir(component: str) -> Path:
    """The component's source at its pinned version, from Go's module cache (downloaded if needed)."""
    path, version = module_version(component)
    out = subprocess.run(["go", "mod", "download", "-json", f"{path}@{version}"], cwd=HACK / component,
                         capture_output=True, text=True, check=True).stdout
    return Path(json.loads(out)["Dir"])


def dependency_dir(component: str, module: str) -> Path:
    """A module the component's pinned version requires, at that version, from Go's module cache."""
    version = next(line.split()[1] for line in (HACK / component / "go.mod").read_text().splitlines()
                   if line.startswith("\t") and line.split()[0] == module)
    out = subprocess.run(["go", "mod", "download", "-json", f"{module}@{version}"], cwd=HACK / component,
                         capture_output=True, text=True, check=True).stdout
    return Path(json.loads(out)["Dir"])


def host_ip() -> str:
    """This machine's first non-loopback IPv4 address: an EndpointSlice refuses loopback ones."""
    import psutil
    for addrs in psutil.net_if_addrs().values():
        for a in addrs:
            if a.family == socket.AF_INET and not a.address.startswith(("127.", "169.254.")):
                return a.address
    raise RuntimeError("the kubeflow tier needs a non-loopback IPv4 address for webhook endpoints; found none")


def kustomize(cp: ControlPlane, folder: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(cp.kubectl("kustomize", str(folder)).stdout) if d]


def serving_cert(cp: ControlPlane, out: Path, dns: str) -> None:
    """tls.crt/tls.key for `dns`, signed by the tier's CA (what cert-manager would issue)."""
    out.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(out / "tls.key"), "-out", str(out / "tls.csr"),
             "-subj", f"/CN={dns}", cwd=cp.pki)
    (out / "san.ext").write_text(f"subjectAltName=DNS:{dns}\nextendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", str(out / "tls.csr"), "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", str(out / "tls.crt"), "-days", "2", "-extfile", str(out / "san.ext"), cwd=cp.pki)


class KubeflowStack(_Processes):
    """`with KubeflowStack(cp, workdir) as stack:` on a started ControlPlane (made with EXTRA_CONTROLLERS)."""

    def __init__(self, cp: ControlPlane, workdir: Path, bins: dict[str, Path], *, nodes: int = 6):
        super().__init__(workdir)
        self.cp, self.bins, self.nodes = cp, bins, nodes
        self.ip = host_ip()
        self.ca_bundle = base64.b64encode((cp.pki / "ca.crt").read_bytes()).decode()

    def _spawn(self, name: str, argv: list, env: dict | None = None) -> None:
        super()._spawn(name, argv, {"KUBECONFIG": str(self.cp.admin_kubeconfig), **(env or {})})

    # --- pieces -----------------------------------------------------------------------------------------------
    def apply(self, *objs: dict, server_side: bool = False) -> None:
        extra = ["--server-side", "--force-conflicts"] if server_side else []
        self.cp.kubectl("apply", *extra, "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))

    def webhook_service(self, name: str, namespace: str, port: int) -> None:
        """A Service without a selector whose EndpointSlice is this machine's address: how the API server reaches a
        webhook server running here as a process."""
        self.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
        self.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": namespace},
                    "spec": {"ports": [{"name": "webhook", "port": 443, "targetPort": port}]}},
                   {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": f"{name}-host", "namespace": namespace,
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4", "endpoints": [{"addresses": [self.ip], "conditions": {"ready": True}}],
                    "ports": [{"name": "webhook", "port": port, "protocol": "TCP"}]})

    def webhooks(self, folder: Path, service: str, namespace: str, *, ca_bundle: bool, name_prefix: str = "") -> None:
        """The component's webhook configurations as its kustomization renders them, pointed at our Service (named
        as its default overlay names them)."""
        for conf in kustomize(self.cp, folder):
            if not conf["kind"].endswith("WebhookConfiguration"):
                continue
            conf["metadata"]["name"] = name_prefix + conf["metadata"]["name"]
            for hook in conf["webhooks"]:
                hook["clientConfig"]["service"].update(name=service, namespace=namespace)
                if ca_bundle:
                    hook["clientConfig"]["caBundle"] = self.ca_bundle
            self.apply(conf)

    def crds(self, *files: Path) -> None:
        for f in files:
            self.cp.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(f))

    def wait_webhook_served(self, name: str, port: int, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with socket.create_connection((self.ip, port), timeout=1):
                    return
            except OSError:
                time.sleep(0.3)
        raise RuntimeError(f"{name}'s webhook server not listening on {self.ip}:{port} after {timeout:.0f}s:\n"
                           f"{self.log(name)[-3000:]}")

    def wait_ca_injected(self, kind: str, name: str, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.check_alive()
            out = self.cp.kubectl("get", kind, name, "-o", "jsonpath={.webhooks[*].clientConfig.caBundle}",
                                  check=False).stdout.split()
            if out and all(out):
                return
            time.sleep(0.5)
        raise RuntimeError(f"{kind} {name} got no caBundle after {timeout:.0f}s")

    # --- the stack ----------------------------------------------------------------------------------------------
    def start_scheduler(self) -> None:
        kc = self.cp.admin_kubeconfig
        self._spawn("kube-scheduler", [self.cp.bins / "kube-scheduler", f"--kubeconfig={kc}",
                                       f"--authentication-kubeconfig={kc}", f"--authorization-kubeconfig={kc}",
                                       "--leader-elect=false", "--secure-port=0", "-v=1"])

    def gpu_nodes(self) -> list[dict]:
        """Nodes as a GPU node pool registers them: 8 GPUs each, the GPU taint, the GPU product and a zone label."""
        return [{"apiVersion": "v1", "kind": "Node",
                 "metadata": {"name": f"gpu-node-{i}", "annotations": {"kwok.x-k8s.io/node": "fake"},
                              "labels": {"kubernetes.io/hostname": f"gpu-node-{i}", "type": "kwok",
                                         "nvidia.com/gpu.product": GPU_PRODUCT, "nvidia.com/gpu.count": "8",
                                         "topology.kubernetes.io/zone": f"zone-{'ab'[i % 2]}"}},
                 "spec": {"taints": [{"key": GPU, "value": "present", "effect": "NoSchedule"}]},
                 "status": {"capacity": (cap := {"cpu": "192", "memory": "2000Gi", "pods": "110",
                                                 "ephemeral-storage": "10Ti", GPU: "8"}),
                            "allocatable": cap}} for i in range(self.nodes)]

    def lose_node(self, name: str) -> None:
        """The node is gone (deleted, as a cloud provider's node controller does with a reclaimed VM): pod garbage
        collection then fails and deletes its pods."""
        self.cp.kubectl("delete", "node", name, "--wait=false")

    def restore_node(self, name: str) -> None:
        """The node registers again and becomes Ready (kwok), its not-ready taint lifted."""
        self.apply(*[n for n in self.gpu_nodes() if n["metadata"]["name"] == name])

        def ready() -> bool:
            node = json.loads(self.cp.kubectl("get", "node", name, "-o", "json").stdout)
            conds = {c["type"]: c["status"] for c in node.get("status", {}).get("conditions", [])}
            return conds.get("Ready") == "True" and not any(
                t["key"].startswith("node.kubernetes.io/") for t in node["spec"].get("taints", []))
        wait_for(ready, timeout=60, what=f"node {name} Ready again")

    def start_kwok(self) -> None:
        self.apply(*self.gpu_nodes())
        self._spawn("kwok", [self.bins["kwok"], f"--kubeconfig={self.cp.admin_kubeconfig}",
                             f"--config={STAGES}", "--manage-nodes-with-annotation-selector=kwok.x-k8s.io/node=fake",
                             "--cidr=10.244.0.0/16", f"--node-ip={self.ip}", "--server-address=127.0.0.1:0"])

    def volumes_for(self, namespace: str, *claims: tuple[str, list[str]]) -> None:
        """A PersistentVolume bound ahead to each claim (the scheduler places a pod only once its claims are bound;
        an NFS export is what a ReadWriteMany checkpoint volume usually is)."""
        for name, modes in claims:
            self.apply({"apiVersion": "v1", "kind": "PersistentVolume", "metadata": {"name": f"pv-{namespace}-{name}"},
                        "spec": {"capacity": {"storage": "10Ti"}, "accessModes": modes,
                                 "persistentVolumeReclaimPolicy": "Retain", "storageClassName": "",
                                 "nfs": {"server": "10.0.0.2", "path": f"/{namespace}/{name}"},
                                 "claimRef": {"namespace": namespace, "name": name}}})

    def start_training_operator(self) -> None:
        port = free_port()
        self.webhook_service("training-operator", "kubeflow", port)
        src = module_dir("training-operator")
        # Its deployment ships the Secret empty; its cert controller fills it.
        self.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": "training-operator-webhook-cert", "namespace": "kubeflow"}})
        self.webhooks(src / "manifests" / "base" / "webhook", "training-operator", "kubeflow", ca_bundle=False)
        self._spawn("training-operator", [
            self.bins["training-operator"], "--enable-scheme=pytorchjob", f"--webhook-server-port={port}",
            "--metrics-bind-address=0", f"--health-probe-bind-address=127.0.0.1:{free_port()}",
            "--leader-elect=false", "--zap-log-level=info"], env={"MY_POD_NAMESPACE": "kubeflow"})
        # Its own cert controller writes the serving certificate into the Secret and the caBundle, as in a deployment,
        # then waits for the Secret to appear in its (hard-coded) certificate folder, where the kubelet would mount it.
        self.wait_ca_injected("validatingwebhookconfiguration", "validator.training-operator.kubeflow.org")
        self.mount_secret("kubeflow", "training-operator-webhook-cert", TRAINING_OPERATOR_CERT_DIR)
        self.wait_webhook_served("training-operator", port)

    def mount_secret(self, namespace: str, name: str, folder: Path, timeout: float = 60.0) -> None:
        """What the kubelet does for a Secret volume: its keys as files (once the Secret holds a certificate)."""
        def data() -> dict:
            out = self.cp.kubectl("get", "secret", name, "-n", namespace, "-o", "json", check=False).stdout
            d = (json.loads(out) if out else {}).get("data") or {}
            return d if "tls.crt" in d else {}
        secret = wait_for(data, timeout=timeout, what=f"a certificate in Secret {namespace}/{name}")
        folder.mkdir(parents=True, exist_ok=True)
        for key, value in secret.items():
            (folder / key).write_bytes(base64.b64decode(value))

    def start_jobset(self) -> None:
        port, ns, svc = free_port(), "jobset-system", "jobset-webhook-service"
        src = module_dir("jobset")
        self.crds(*sorted((src / "config" / "components" / "crd" / "bases").glob("*.yaml")))
        self.webhook_service(svc, ns, port)
        certs = self.dir / "jobset-certs"
        serving_cert(self.cp, certs, f"{svc}.{ns}.svc")
        config = self.dir / "jobset-config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.jobset.x-k8s.io/v1alpha1", "kind": "Configuration",
            "leaderElection": {"leaderElect": False}, "internalCertManagement": {"enable": False},
            "webhook": {"port": port, "certDir": str(certs)},
            "health": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}"},
            "metrics": {"bindAddress": "0"}}))
        self.webhooks(src / "config" / "components" / "webhook", svc, ns, ca_bundle=True)
        self._spawn("jobset", [self.bins["jobset"], f"--config={config}", "--metrics-bind-address=0",
                               f"--health-probe-bind-address=127.0.0.1:{free_port()}", "--zap-log-level=info"])
        self.wait_webhook_served("jobset", port)

    def start_trainer(self) -> None:
        port, ns, svc = free_port(), "kubeflow-system", "kubeflow-trainer-controller-manager"
        src = module_dir("trainer")
        self.crds(*sorted((src / "manifests" / "base" / "crds").glob("trainer.kubeflow.org_*.yaml")))
        # The scheduler-plugins' PodGroup, at the version Trainer builds against: Trainer's coscheduling plugin (a
        # runtime's podGroupPolicy) makes one per TrainJob, and needs the CRD before it starts.
        plugins = dependency_dir("trainer", "sigs.k8s.io/scheduler-plugins")
        self.crds(plugins / "config" / "crd" / "bases" / "scheduling.x-k8s.io_podgroups.yaml")
        self.webhook_service(svc, ns, port)
        # controller-runtime serves from $TMPDIR/k8s-webhook-server/serving-certs when Trainer manages no certs.
        tmp = self.dir / "trainer-tmp"
        serving_cert(self.cp, tmp / "k8s-webhook-server" / "serving-certs", f"{svc}.{ns}.svc")
        config = self.dir / "trainer-config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.trainer.kubeflow.org/v1alpha1", "kind": "Configuration",
            "health": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}", "readinessEndpointName": "readyz",
                       "livenessEndpointName": "healthz"},
            "metrics": {"bindAddress": "0"}, "webhook": {"port": port, "host": ""},
            "leaderElection": {"leaderElect": False}, "certManagement": {"enable": False}}))
        self.webhooks(src / "manifests" / "base" / "webhook", svc, ns, ca_bundle=True)
        self._spawn("trainer", [self.bins["trainer"], f"--config={config}", "--zap-log-level=info"],
                    env={"TMPDIR": str(tmp), "POD_NAMESPACE": ns})
        self.wait_webhook_served("trainer", port)

    def start_kueue(self) -> None:
        """Kueue managing batch Jobs, JobSets, PyTorchJobs and TrainJobs that carry a queue label (its webhooks see
        every pod and job, so it runs whenever the stack does; a job without the label passes untouched)."""
        port, ns, svc, secret = free_port(), "kueue-system", "kueue-webhook-service", "kueue-webhook-server-cert"
        src, certs = module_dir("kueue"), self.dir / "kueue-certs"
        self.webhook_service(svc, ns, port)
        # Kueue's default: it manages its certificates itself (as the training operator does), into this Secret
        # (shipped empty) and the caBundles of its webhook configurations and CRD conversion webhooks.
        self.apply({"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
                    "metadata": {"name": secret, "namespace": ns}})
        for crd in kustomize(self.cp, src / "config" / "components" / "crd"):
            hook = ((crd["spec"].get("conversion") or {}).get("webhook") or {}).get("clientConfig")
            if hook:  # its conversion webhook is Kueue's own server
                hook["service"].update(name=svc, namespace=ns)
            self.apply(crd, server_side=True)
        config = self.dir / "kueue-config.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "config.kueue.x-k8s.io/v1beta2", "kind": "Configuration", "namespace": ns,
            "health": {"healthProbeBindAddress": f"127.0.0.1:{free_port()}"}, "metrics": {"bindAddress": "0"},
            "webhook": {"port": port, "certDir": str(certs)}, "leaderElection": {"leaderElect": False},
            "internalCertManagement": {"enable": True, "webhookServiceName": svc, "webhookSecretName": secret},
            "manageJobsWithoutQueueName": False,
            "integrations": {"frameworks": ["batch/job", "jobset.x-k8s.io/jobset", "kubeflow.org/pytorchjob",
                                            "trainer.kubeflow.org/trainjob"]}}))
        self.webhooks(src / "config" / "components" / "webhook", svc, ns, ca_bundle=False, name_prefix="kueue-")
        # Its visibility API server is an aggregated API server of its own (in-cluster credentials): not here.
        self._spawn("kueue", [self.bins["kueue"], f"--config={config}", "--zap-log-level=2",
                              "--feature-gates=VisibilityOnDemand=false"])
        self.mount_secret(ns, secret, certs)
        self.wait_webhook_served("kueue", port)

    def start(self) -> "KubeflowStack":
        self.dir.mkdir(parents=True, exist_ok=True)
        self.start_scheduler()
        self.start_kwok()
        self.start_training_operator()
        self.start_jobset()
        self.start_trainer()
        self.start_kueue()
        return self


def describe() -> str:
    return ", ".join(f"{c} {module_version(c)[1]}" for c in COMPONENTS) + ", kube-scheduler from the control plane"
