"""The chart's CRD upgrade on a real control plane: `helm install` of an older chart, a run started, `helm upgrade`
to this one; the new field is accepted and kept, and the run goes on."""

from __future__ import annotations

import copy

import pytest
import yaml

from testing.apiserver_cluster import Cluster, assert_no_forbidden
from testing.control_plane import REPO, ControlPlane, install_pytorchjob_crd
from testing.operator_scenarios import RUN, wait_for

pytestmark = [pytest.mark.apiserver, pytest.mark.slow]


def test_helm_upgrade_upgrades_the_crd_and_the_run_goes_on(tmp_path, control_plane_binaries):
    """The chart's CRD is a template, so `helm upgrade` upgrades it (Helm never touches crds/).
    Installed from a chart whose CRD lacks a field (a release from before `trainer.env`), a run starts; the upgrade
    to this chart adds the field; the run and its job go on, and the new field is kept."""
    import shutil
    import subprocess

    from testing.control_plane import wait_established
    from testing.k8s_tools import tool
    old_chart = tmp_path / "old-chart"
    shutil.copytree(REPO / "helm" / "vita-operator", old_chart)
    template = old_chart / "templates" / "crd.yaml"
    lines = template.read_text().splitlines(keepends=True)
    doc = yaml.safe_load("".join(line for line in lines if not line.startswith(("{{", "#"))))
    trainer = doc["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]["trainer"]
    del trainer["properties"]["env"]
    template.write_text("{{- if .Values.crds.install }}\n" + yaml.safe_dump(doc, sort_keys=False) + "{{- end }}\n")

    with ControlPlane(tmp_path / "cp", control_plane_binaries) as cp:
        install_pytorchjob_crd(cp)
        cp.kubectl("apply", "--server-side", "-f", str(REPO / "third_party" / "kubeflow-trainer"))

        def helm(*args: str) -> None:
            done = subprocess.run([str(tool("helm")), *args, "-n", "vita-system", "--kubeconfig",
                                   str(cp.admin_kubeconfig), "--set", "backends.trainjob.enabled=true",
                                   "--set", "runPolicy.enabled=false"], capture_output=True, text=True)
            assert done.returncode == 0, f"helm {args[0]}: {done.stderr}"
        helm("install", "vita-operator", str(old_chart), "--create-namespace")
        wait_established(cp, "vitatrainingruns.vita.training.dev")
        cluster = Cluster(cp, cp.service_account_kubeconfig("vita-system", "vita-operator"), tmp_path)
        from testing.operator_scenarios import CLAIMS
        for pvc in CLAIMS:
            cluster.apply(pvc)
        run = copy.deepcopy(RUN)
        run["metadata"]["name"] = "upgraded"
        with_env = copy.deepcopy(run)
        with_env["spec"]["trainer"]["env"] = {"NCCL_DEBUG": "INFO"}
        # kubectl asks for strict field validation: the old schema refuses the field (other clients: pruned)
        assert 'unknown field "spec.trainer.env"' in cluster.apply(with_env, check=False).stderr
        with cluster.operator("operator-helm-upgrade") as op:
            cluster.apply(run)
            wait_for(lambda: "upgraded-s1-1" in cluster.jobs(), what="the run's first job")
            helm("upgrade", "vita-operator", str(REPO / "helm" / "vita-operator"))
            crd = cluster.get("crd", "vitatrainingruns.vita.training.dev", namespace="default")
            assert "env" in crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
                "properties"]["trainer"]["properties"]
            assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"

            def applied_env():
                done = cluster.apply(with_env, check=False)
                return done.returncode == 0 and cluster.get("vitatrainingrun", "upgraded")["spec"]["trainer"].get("env")
            assert wait_for(applied_env, what="trainer.env kept after the upgrade") == {"NCCL_DEBUG": "INFO"}
            assert "upgraded-s1-1" in cluster.jobs() and cluster.run_status("upgraded")["phase"] == "Running"
            cluster.set_job("upgraded-s1-1", "Succeeded")
            wait_for(lambda: "upgraded-s2-1" in cluster.jobs(), what="the run goes on after the upgrade")
            assert_no_forbidden(op)
