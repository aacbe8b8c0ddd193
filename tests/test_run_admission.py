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


@pytest.fixture(scope="module")
def policed(cluster):
    """The chart's run policy, allowing the scenarios' image."""
    rendered = helm_template("--show-only", "templates/runpolicy.yaml",
                             "--set", "runPolicy.allowedImagePrefixes={trainer:}")
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
