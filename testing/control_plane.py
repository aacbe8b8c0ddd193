"""A real Kubernetes control plane on 127.0.0.1: etcd, kube-apiserver (RBAC) and kube-controller-manager.

The binaries are built once per machine from pinned Go modules by hack/control-plane/build.sh and cached
outside the checkout. Certificates and keys are generated per session with openssl; every process is
stopped (and waited for) at the end, so nothing outlives the test session.

Identities: `admin` (a static token in system:masters) sets the cluster up and plays the other
controllers (it flips PyTorchJob status as Kubeflow would); the operator gets a ServiceAccount token
bound to exactly the chart's ClusterRole, so a missing RBAC verb fails a test.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from vita_trainer.data.shared_files import exclusive
from vita_trainer.local import free_port

REPO = Path(__file__).resolve().parents[1]
BUILD_SCRIPT = REPO / "hack" / "control-plane" / "build.sh"
BINARIES = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
SERVICE_CIDR = "10.96.0.0/16"


def k8s_version() -> str:
    for line in (REPO / "hack" / "control-plane" / "go.mod").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "k8s.io/kubernetes":
            return parts[1]
    raise RuntimeError("hack/control-plane/go.mod does not require k8s.io/kubernetes")


def bin_dir() -> Path:
    default = Path.home() / ".cache" / "vita" / "k8s" / k8s_version()
    return Path(os.environ.get("VITA_K8S_BIN", default))


def ensure_binaries() -> Path:
    """Build (first run on a machine, ~15 min on 2 cores) or reuse the cached binaries."""
    out = bin_dir()
    if not all((out / b).is_file() for b in BINARIES):
        out.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(out):  # parallel test workers: one builds, the others wait for it
            if not all((out / b).is_file() for b in BINARIES):
                subprocess.run(["bash", str(BUILD_SCRIPT), str(out)], check=True)
    return out


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_pki(d: Path) -> None:
    """A CA, the API server's serving certificate (127.0.0.1/localhost) and the service-account key pair."""
    d.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
             "-subj", "/CN=vita-test-ca", cwd=d)
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "apiserver.key", "-out", "apiserver.csr",
             "-subj", "/CN=kube-apiserver", cwd=d)
    (d / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost,DNS:kubernetes.default.svc\n"
                               "extendedKeyUsage=serverAuth\n")
    _openssl("x509", "-req", "-in", "apiserver.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", "apiserver.crt", "-days", "2", "-extfile", "san.ext", cwd=d)
    _openssl("genrsa", "-out", "sa.key", "2048", cwd=d)
    _openssl("rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub", cwd=d)


def kubeconfig(path: Path, server: str, ca: Path, token: str, user: str) -> Path:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": user,
        "clusters": [{"name": "test", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "test", "user": user, "namespace": "default"}}]}))
    return path


class _Started:
    """`with X(...) as x:` starts it and always stops it, also when the start itself fails half-way."""

    def start(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError

    def __enter__(self):
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()


def stop_group(proc: subprocess.Popen, timeout: float) -> int:
    """SIGTERM the process group, then SIGKILL it after `timeout`; returns the exit code."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    return proc.returncode


class _Processes(_Started):
    """Named processes, each in its own process group (stop() signals the group, so no child outlives the session)
    and logging to <dir>/<name>.log; stopped in the reverse of their start order."""

    def __init__(self, workdir: Path):
        self.dir = Path(workdir)
        self.procs: dict[str, subprocess.Popen] = {}

    def _spawn(self, name: str, argv: list, env: dict | None = None) -> None:
        log = open(self.dir / f"{name}.log", "wb")
        self.procs[name] = subprocess.Popen([str(a) for a in argv], stdout=log, stderr=subprocess.STDOUT,
                                            env={**os.environ, **(env or {})}, start_new_session=True)

    def log(self, name: str) -> str:
        return (self.dir / f"{name}.log").read_text(errors="replace")

    def check_alive(self) -> None:
        for name, p in self.procs.items():
            if p.poll() is not None:
                raise RuntimeError(f"{name} exited with {p.returncode}; log tail:\n{self.log(name)[-3000:]}")

    def stop(self) -> None:
        for p in reversed(list(self.procs.values())):
            stop_group(p, timeout=20)
        self.procs.clear()


class ControlPlane(_Processes):
    """Start with `with ControlPlane(workdir) as cp:`; `cp.admin_kubeconfig` is cluster-admin."""

    # Garbage collection (ownerReferences), namespace deletion, the default ServiceAccounts, and the aggregation
    # of ClusterRoles into admin/edit/view (the chart's user roles).
    CONTROLLERS = ("garbagecollector", "namespace", "serviceaccount", "clusterrole-aggregation")

    def __init__(self, workdir: Path, bins: Path | None = None, extra_controllers: tuple[str, ...] = ()):
        super().__init__(workdir)
        self.controllers = self.CONTROLLERS + extra_controllers
        self.bins = bins or ensure_binaries()
        self.port = free_port()
        self.server = f"https://127.0.0.1:{self.port}"
        self.pki = self.dir / "pki"
        self.admin_token = secrets.token_hex(16)
        self.admin_kubeconfig = self.dir / "admin.kubeconfig"

    # --- processes -------------------------------------------------------------------------------
    def _wait_ready(self, timeout: float = 120.0) -> None:
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        req = urllib.request.Request(f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.admin_token}"})
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            self.check_alive()
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=5) as r:
                    if r.status == 200:
                        return
            except Exception as e:  # not up yet
                last = str(e)
            time.sleep(0.5)
        raise RuntimeError(f"kube-apiserver not ready after {timeout:.0f}s: {last}")

    def start(self) -> "ControlPlane":
        self.dir.mkdir(parents=True, exist_ok=True)
        make_pki(self.pki)
        etcd_port, peer_port = free_port(), free_port()
        self._spawn("etcd", [self.bins / "etcd",
            "--name", "test", "--data-dir", str(self.dir / "etcd"),
            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer_port}",
            "--unsafe-no-fsync", "--log-level", "warn"])
        (self.pki / "tokens.csv").write_text(f'{self.admin_token},admin,admin,"system:masters"\n')
        self._spawn("kube-apiserver", [self.bins / "kube-apiserver",
            f"--etcd-servers=http://127.0.0.1:{etcd_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--tls-cert-file={self.pki / 'apiserver.crt'}", f"--tls-private-key-file={self.pki / 'apiserver.key'}",
            f"--token-auth-file={self.pki / 'tokens.csv'}",
            "--authorization-mode=RBAC", "--anonymous-auth=false",
            # What hardened clusters run: blockOwnerDeletion needs update on the owner's finalizers.
            "--enable-admission-plugins=OwnerReferencesPermissionEnforcement",
            "--service-account-issuer=https://kubernetes.default.svc",
            f"--service-account-key-file={self.pki / 'sa.pub'}",
            f"--service-account-signing-key-file={self.pki / 'sa.key'}",
            "--api-audiences=https://kubernetes.default.svc",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            # Webhooks reach a Service's endpoints, not its ClusterIP: there is no kube-proxy here.
            "--enable-aggregator-routing=true",
            f"--cert-dir={self.dir / 'apiserver-certs'}", "-v=1"])
        kubeconfig(self.admin_kubeconfig, self.server, self.pki / "ca.crt", self.admin_token, "admin")
        self._wait_ready()
        self._spawn("kube-controller-manager", [self.bins / "kube-controller-manager",
            f"--kubeconfig={self.admin_kubeconfig}", f"--authentication-kubeconfig={self.admin_kubeconfig}",
            f"--authorization-kubeconfig={self.admin_kubeconfig}",
            f"--controllers={','.join(self.controllers)}",
            "--leader-elect=false", "--secure-port=0", "--use-service-account-credentials=false", "-v=1"])
        return self

    # --- clients ---------------------------------------------------------------------------------
    def kubectl(self, *args: str, kubeconfig_path: Path | None = None, input: str | None = None,
                check: bool = True) -> subprocess.CompletedProcess:
        from testing.k8s_tools import tool
        done = subprocess.run([str(tool("kubectl")), f"--kubeconfig={kubeconfig_path or self.admin_kubeconfig}",
                               *args], input=input, capture_output=True, text=True)
        if check and done.returncode:
            raise RuntimeError(f"kubectl {' '.join(args)} failed ({done.returncode}):\n{done.stderr}")
        return done

    def api_client(self, kubeconfig_path: Path | None = None):
        from kubernetes import client, config
        cfg = client.Configuration()
        config.load_kube_config(config_file=str(kubeconfig_path or self.admin_kubeconfig),
                                client_configuration=cfg)
        return client.ApiClient(cfg)

    def service_account_kubeconfig(self, namespace: str, name: str) -> Path:
        """A kubeconfig holding a bound token of that ServiceAccount (what a pod of the operator would get)."""
        token = self.kubectl("create", "token", name, "-n", namespace, "--duration=6h").stdout.strip()
        return kubeconfig(self.dir / f"{namespace}-{name}.kubeconfig", self.server, self.pki / "ca.crt", token,
                          f"system:serviceaccount:{namespace}:{name}")


def helm_template(*args: str) -> str:
    from testing.k8s_tools import tool
    return subprocess.run([str(tool("helm")), "template", "vita-operator", str(REPO / "helm" / "vita-operator"),
                           "-n", "vita-system", *args], capture_output=True, text=True, check=True).stdout


# Both backends enabled: the chart's RBAC then grants PyTorchJobs and TrainJobs, and it ships its runtime.
BOTH_BACKENDS = ("--set", "backends.trainjob.enabled=true")


def install_operator_prerequisites(cp: ControlPlane, *, pytorchjob_crd: bool = True) -> Path:
    """The chart's CRDs, namespace, ServiceAccount and RBAC (as `helm template` renders them with both backends);
    the Kubeflow PyTorchJob CRD; Kubeflow Trainer's TrainJob and ClusterTrainingRuntime CRDs and the chart's
    runtime. Returns the operator's kubeconfig."""
    cp.kubectl("create", "namespace", "vita-system")
    cp.kubectl("apply", "--server-side", "-f", str(REPO / "manifests" / "crd"))
    rendered = helm_template(*BOTH_BACKENDS, "--show-only", "templates/serviceaccount.yaml",
                             "--show-only", "templates/rbac.yaml")
    cp.kubectl("apply", "-f", "-", input=rendered)
    wait_established(cp, "vitatrainingruns.vita.training.dev")
    if pytorchjob_crd:
        install_pytorchjob_crd(cp)
    cp.kubectl("apply", "--server-side", "-f", str(REPO / "third_party" / "kubeflow-trainer"))
    for crd in ("trainjobs.trainer.kubeflow.org", "clustertrainingruntimes.trainer.kubeflow.org"):
        wait_established(cp, crd)
    # The real API server checks the shipped runtime against Trainer's schema and CEL rules.
    cp.kubectl("apply", "-f", "-", input=helm_template(*BOTH_BACKENDS, "--show-only",
                                                       "templates/clustertrainingruntime.yaml"))
    from testing.operator_scenarios import CLAIMS
    for pvc in CLAIMS:  # the scenarios' run mounts these (Pending without a provisioner: the operator checks modes)
        cp.kubectl("apply", "-f", "-", input=json.dumps(pvc))
    return cp.service_account_kubeconfig("vita-system", "vita-operator")


def install_pytorchjob_crd(cp: ControlPlane) -> None:
    cp.kubectl("apply", "--server-side", "-f", str(REPO / "third_party" / "kubeflow"))
    wait_established(cp, "pytorchjobs.kubeflow.org")


def wait_established(cp: ControlPlane, crd: str, timeout: float = 60.0) -> None:
    # `kubectl wait` fails outright when the CRD has no status yet, so poll.
    deadline = time.monotonic() + timeout
    path = '{.status.conditions[?(@.type=="Established")].status}'
    while cp.kubectl("get", "crd", crd, "-o", f"jsonpath={path}", check=False).stdout != "True":
        if time.monotonic() > deadline:
            raise RuntimeError(f"CRD {crd} not Established after {timeout:.0f}s")
        time.sleep(0.2)


class OperatorProcess(_Started):
    """`python -m vita_operator`, as the image runs it, with the operator's own kubeconfig."""

    def __init__(self, kubeconfig_path: Path, log_path: Path, *, resync_seconds: float = 60.0,
                 metrics_port: int = 0, backends: str = "pytorchjob,trainjob", env: dict | None = None):
        self.kubeconfig, self.log_path, self.backends, self.env = kubeconfig_path, log_path, backends, env or {}
        self.resync, self.metrics_port = resync_seconds, metrics_port
        self.liveness_port = free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "OperatorProcess":
        env = {k: v for k, v in os.environ.items() if k != "VITA_OPERATOR_API_URL"}
        env.update(KUBECONFIG=str(self.kubeconfig), VITA_OPERATOR_RESYNC_SECONDS=str(self.resync),
                   VITA_OPERATOR_METRICS_PORT=str(self.metrics_port), VITA_OPERATOR_BACKENDS=self.backends,
                   VITA_OPERATOR_LIVENESS=f"http://127.0.0.1:{self.liveness_port}/healthz",
                   PYTHONPATH=os.pathsep.join([str(REPO / "operator"), str(REPO)]), **self.env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "vita_operator"], env=env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"operator exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=2):
                    return self
            except Exception:
                time.sleep(0.3)
        raise RuntimeError(f"operator not live after 60s:\n{self.log()[-3000:]}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def samples(self) -> list:
        """Every sample of this process's /metrics, parsed by prometheus_client; [] while it does not answer."""
        from prometheus_client.parser import text_string_to_metric_families
        assert self.metrics_port, "start the operator with a metrics_port to read its metrics"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return []
        return [s for f in text_string_to_metric_families(text) for s in f.samples]

    def reconciles(self) -> float:
        """How many reconciles this process has finished: the count of its reconcile-latency histogram, read from
        its /metrics. A test waits on this before asserting that something did *not* happen."""
        return next((s.value for s in self.samples() if s.name == "vita_operator_reconcile_seconds_count"), 0.0)

    def stop(self) -> int:
        return stop_group(self.proc, timeout=30) if self.proc else 0


def have_go() -> bool:
    return shutil.which("go") is not None
