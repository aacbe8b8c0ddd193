"""Every Grafana panel against data. A real Prometheus scrapes a real operator (on the real API server tier) and a
real 2-process trainer stage. It finds the trainer's pod through the API server, as the chart's PodMonitor tells
the Prometheus Operator to: the pod is made from the operator's own PyTorchJob template, so the labels the queries
join on come from the operator, the chart's relabelings and Prometheus, not from this test. Each panel's queries,
with the dashboard's variables substituted, must return data through Prometheus' HTTP API; the chart's alert rules
are loaded too and must evaluate without errors on the same data."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from testing.control_plane import REPO, helm_template, stop_group
from testing.operator_scenarios import NS, wait_for
from testing.prometheus_tools import prometheus
from vita_api.plan import PathRoots, stage_args
from vita_api.spec import VitaTrainingRunSpec
from vita_trainer.demo.run import build_run, prepare
from vita_trainer.local import free_port

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]

DASHBOARD = REPO / "helm" / "vita-operator" / "dashboards" / "vita-training.json"
OPERATOR_NAMESPACE = "vita-system"
RUN_NAME = "dash"

# Panels this scenario cannot fill, and why. Every other panel must return data.
NOT_FILLED = {
    "GPU memory (rank 0 peak)": "the trainer runs on CPU here: there is no GPU memory to report",
    "GPU memory by rank (peak)": "the trainer runs on CPU here: there is no GPU memory to report",
    "MFU (model FLOPs over the GPUs' bf16 peak)": "the trainer runs on CPU here: no card peak to divide by "
                                                  "(test_metrics covers the gauge)",
    "Benchmark scores": "needs lmms-eval Jobs after a stage (test_benchmarks_after_stage reads the same gauge from "
                        "the operator's /metrics)",
    "Skipped samples (1h)": "needs unreadable samples in the stage's data (the tiny demo data are all readable; "
                            "test_data_errors covers the counter)",
}


def pod_monitor_scrape_config(kubeconfig: Path) -> dict:
    """The scrape config the Prometheus Operator generates for the chart's PodMonitor (role pod; the selector and
    port as keep rules; namespace, pod and container target labels; then the PodMonitor's own relabelings)."""
    monitor = yaml.safe_load(helm_template("--set", "metrics.podMonitor.enabled=true",
                                           "--show-only", "templates/podmonitor.yaml"))["spec"]
    endpoint = monitor["podMetricsEndpoints"][0]

    def sanitized(label: str) -> str:
        return "".join(c if c.isalnum() else "_" for c in label)
    relabel = [{"action": "keep", "source_labels": [f"__meta_kubernetes_pod_label_{sanitized(k)}"], "regex": v}
               for k, v in monitor["selector"]["matchLabels"].items()]
    relabel += [{"action": "keep", "source_labels": ["__meta_kubernetes_pod_container_port_name"],
                 "regex": endpoint["port"]},
                {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
                {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
                {"source_labels": ["__meta_kubernetes_pod_container_name"], "target_label": "container"}]
    relabel += [{"source_labels": r["sourceLabels"], "target_label": r["targetLabel"]}
                for r in endpoint.get("relabelings", [])]
    return {"job_name": "trainers", "honor_labels": endpoint.get("honorLabels", False),
            "kubernetes_sd_configs": [{"role": "pod", "kubeconfig_file": str(kubeconfig),
                                       "namespaces": {"names": [NS]}}],
            "relabel_configs": relabel}


def service_monitor_scrape_config(port: int) -> dict:
    """The operator's target as the ServiceMonitor makes it: the Service's namespace and the pod as target labels,
    and the monitor's honorLabels (the per-run series carry the run's namespace)."""
    monitor = yaml.safe_load(helm_template("--set", "metrics.serviceMonitor.enabled=true",
                                           "--show-only", "templates/servicemonitor.yaml"))["spec"]
    return {"job_name": "operator", "honor_labels": monitor["endpoints"][0].get("honorLabels", False),
            "static_configs": [{"targets": [f"127.0.0.1:{port}"],
                                "labels": {"namespace": OPERATOR_NAMESPACE, "pod": "vita-operator-7d9c-x2k4q"}}]}


class Prometheus:
    def __init__(self, workdir: Path, config: dict, rules: Path):
        self.port = free_port()
        config = {"global": {"scrape_interval": "1s", "evaluation_interval": "1s"}, "rule_files": [str(rules)],
                  **config}
        (workdir / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = open(workdir / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [str(prometheus()), f"--config.file={workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={workdir / 'tsdb'}", f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ready, timeout=60, what="Prometheus ready")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def api(self, path: str, **params: str) -> dict:
        url = f"http://127.0.0.1:{self.port}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def values(self, expr: str) -> list[tuple[dict, float]]:
        return [(r["metric"], float(r["value"][1])) for r in self.api("query", query=expr)["result"]]

    def close(self) -> None:
        stop_group(self.proc, timeout=10)
        self.log.close()


def panel_queries(variables: dict[str, str]) -> dict[str, list[str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = {}
    for panel in dash["panels"]:
        exprs = []
        for target in panel.get("targets", []):
            expr = target["expr"]
            for name, value in variables.items():
                expr = expr.replace(f"${name}", value)
            assert "$" not in expr, (panel["title"], expr)  # every variable the dashboard uses is substituted
            exprs.append(expr)
        if exprs:
            out[panel["title"]] = exprs
    return out


def has_data(prom: Prometheus, expr: str) -> bool:
    return any(not math.isnan(v) for _, v in prom.values(expr))


def trainer_pod(job: dict) -> dict:
    """The master pod the training operator makes from the PyTorchJob's template, running on a node, with its IP
    (here 127.0.0.1, where the local trainer listens)."""
    template = job["spec"]["pytorchReplicaSpecs"]["Master"]["template"]
    name = f"{job['metadata']['name']}-master-0"
    labels = {**template["metadata"].get("labels", {}), "training.kubeflow.org/replica-type": "master",
              "training.kubeflow.org/job-name": job["metadata"]["name"]}
    container = template["spec"]["containers"][0]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NS, "labels": labels,
                         "annotations": template["metadata"].get("annotations", {}),
                         "ownerReferences": [{"apiVersion": "kubeflow.org/v1", "kind": "PyTorchJob",
                                              "name": job["metadata"]["name"], "controller": True,
                                              "uid": job["metadata"]["uid"]}]},
            "spec": {**template["spec"], "nodeName": "gpu-node-1"},
            "status": {"phase": "Running", "podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}],
                       "containerStatuses": [{"name": container["name"], "image": container["image"],
                                              "imageID": "", "ready": True, "restartCount": 0,
                                              "state": {"running": {"startedAt": "2026-12-07T00:00:00Z"}}}]}}


def the_run(out: Path, port: int) -> dict:
    """The tiny demo's first stage as a run on the cluster: 2 processes, a step a second or so, a checkpoint and a
    validation every 5 steps."""
    run = build_run(RUN_NAME, 1.0, "none", 2)
    run["metadata"]["namespace"] = NS
    spec = run["spec"]
    spec["stages"] = spec["stages"][:1]
    spec["stages"][0]["evalHoldout"] = 0.1
    spec["stages"][0]["args"].update(max_steps=5000, logging_steps=1, save_steps=5, save_total_limit=1,
                                     per_device_train_batch_size=4, eval_strategy="steps", eval_steps=5)
    spec["trainer"]["metricsPort"] = port
    spec["preflight"] = {"enabled": False}
    spec["volumes"] = {"dataset": {"claimName": "data", "mountPath": "/data"},
                       "checkpoints": {"claimName": "ckpt", "mountPath": "/ckpt"}}
    return run


def test_every_panel_has_data_from_a_real_operator_and_trainer(cluster, tmp_path):
    out = tmp_path / "demo"
    prepare(out, small=True)
    port = free_port()
    run = the_run(out, port)
    rendered = yaml.safe_load(helm_template("--set", "metrics.prometheusRule.enabled=true",
                                            "--show-only", "templates/prometheusrule.yaml"))
    rules = tmp_path / "rules.yaml"
    rules.write_text(yaml.safe_dump({"groups": rendered["spec"]["groups"]}))
    trainer = None
    # resync every 5 s, as a cluster's operator does every minute: the reconcile-latency panel needs reconciles
    with cluster.operator("operator-dashboard", resync_seconds=5,
                          env={"VITA_OPERATOR_PROGRESS_TICK_SECONDS": "1"}) as op:
        prom = Prometheus(tmp_path, {"scrape_configs": [service_monitor_scrape_config(op.metrics_port),
                                                        pod_monitor_scrape_config(cluster.cp.admin_kubeconfig)]},
                          rules)
        try:
            cluster.apply({"apiVersion": "v1", "kind": "Node", "metadata": {"name": "gpu-node-1"}})
            cluster.apply(run)
            job = wait_for(lambda: cluster.jobs().get(f"{RUN_NAME}-base-lm-1"), what="the stage's PyTorchJob")
            cluster.put_pod(trainer_pod(job))
            spec = VitaTrainingRunSpec.model_validate(run["spec"])
            args = stage_args(spec, 0, PathRoots(data=str(out), checkpoints=str(out)))
            log = open(tmp_path / "trainer.log", "wb")
            trainer = subprocess.Popen(
                [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                 "127.0.0.1", "--master_port", str(free_port()), "-m", "vita_trainer.train", *args,
                 "--metrics_port", str(port)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                env={**os.environ, "OMP_NUM_THREADS": "1"})
            queries = panel_queries({"namespace": NS, "run": RUN_NAME, "stage": "base-lm"})
            assert set(NOT_FILLED) <= set(queries), sorted(set(NOT_FILLED) - set(queries))
            wanted = {t: q for t, q in queries.items() if t not in NOT_FILLED}

            def empty() -> list[str]:
                assert trainer.poll() is None, (tmp_path / "trainer.log").read_text()[-3000:]
                return [f"{t}: {e}" for t, exprs in wanted.items() for e in exprs if not has_data(prom, e)]
            missing: list[str] = []
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                missing = empty()
                if not missing:
                    break
                time.sleep(2)
            assert not missing, "panels without data:\n" + "\n".join(missing)

            # the joins, checked: the trainer's series carry the run's namespace and run (from the pod the
            # operator's template made) and the node; the operator's per-run series keep the run's namespace
            ranks = prom.values(f'vita_train_rank_tokens_per_second{{run="{RUN_NAME}"}}')
            assert sorted(m["rank"] for m, _ in ranks) == ["0", "1"]
            assert {(m["namespace"], m["node"], m["node_rank"]) for m, _ in ranks} == {(NS, "gpu-node-1", "0")}
            phase = prom.values(f'vita_operator_run_phase_transition_timestamp_seconds{{run="{RUN_NAME}"}}')
            assert [(m["namespace"], m["phase"], m["stage"]) for m, _ in phase] == [(NS, "Running", "base-lm")]
            assert prom.values("vita_operator_leader") and all(v == 1 for _, v in prom.values("vita_operator_leader"))
            # the operator read the same endpoint into the run's status
            assert wait_for(lambda: (cluster.run_status(RUN_NAME).get("progress") or {}).get("step"),
                            what="status.progress from the trainer")
            # every alert rule evaluated on this data without an error (a many-to-many join would show here)
            groups = wait_for(lambda: [g for g in prom.api("rules")["groups"]
                                       if all(r.get("lastEvaluation", "").startswith("2") for r in g["rules"])],
                              what="rules evaluated")
            bad = [(r["name"], r.get("lastError")) for g in groups for r in g["rules"] if r["health"] != "ok"]
            assert not bad, bad
        finally:
            if trainer is not None:
                stop_group(trainer, timeout=10)
            prom.close()
    cluster.cp.kubectl("delete", "vitatrainingrun", RUN_NAME, "-n", NS, "--timeout=30s")
