"""The chart's alerts under Prometheus' own rule unit tests (`promtool test rules`, as kube-prometheus and the
Prometheus Operator test theirs): each fires in the scenario it exists for, with the labels a router needs, and
stays quiet in the nearest innocent one. Series and expected alerts are written by hand here, minute by minute."""

import subprocess

import pytest
import yaml

from testing.control_plane import helm_template
from testing.prometheus_tools import promtool

pytestmark = pytest.mark.subprocess

TRAINER = 'namespace="team-a", run="r1", stage="s1"'
ROUTE = {"namespace": "team-a", "run": "r1", "stage": "s1"}


def series(name: str, labels: str, values: str) -> dict:
    return {"series": f"{name}{{{labels}}}", "values": values}


def alert(at: str, name: str, *expected: dict) -> dict:
    """Every alert links its runbook: the README's section named after it (GitHub's anchor: the name lowercased)."""
    for e in expected:
        e["exp_annotations"].setdefault("runbook_url", f"{RUNBOOKS}#{name.lower()}")
    return {"eval_time": at, "alertname": name, "exp_alerts": list(expected)}


def fired(labels: dict, **annotations: str) -> dict:
    return {"exp_labels": labels, "exp_annotations": annotations}


RUNBOOKS = "https://github.com/vita-trainer/vita-trainer/blob/main/README.md"
PHASE = "vita_operator_run_phase_transition_timestamp_seconds"


def in_phase(phase: str, reason: str, values: str, pod: str = "op-0") -> dict:
    """The run's series as the operator exports it: its value is when the run entered the phase (Unix seconds;
    promtool's clock starts at 0, so a run that failed at minute 5 reads 300)."""
    return series(PHASE, f'namespace="team-a", run="r1", stage="s1", phase="{phase}", reason="{reason}", '
                         f'pod="{pod}"', values)


def failed(reason: str, summary: str, description: str) -> dict:
    return fired({"severity": "warning", **ROUTE, "reason": reason}, summary=summary, description=description)


PERMANENT = failed("PermanentError", "Run team-a/r1 failed (PermanentError)",
                   "kubectl describe vitatrainingrun r1 -n team-a says why.")
RETRIES = failed("JobFailed", "Run team-a/r1 stage s1 spent its retries (JobFailed)",
                 "status.stages[].failures lists each attempt's reason and nodes; raising the stage's retryLimit "
                 "resumes the run.")
PREFLIGHT = failed("PreflightFailed",
                   "Run team-a/r1 failed its data check before any GPU job",
                   "status.preflight.problems lists the first bad samples; status.preflight.reportPath has them all.")

NOT_LEADING = {"labels": {"severity": "critical"},
               "summary": "No VITA operator replica is leading: runs are not being advanced"}

# (what, input series, alert tests)
SCENARIOS = [
    ("a run fails: one alert with its route for 15 minutes, then quiet while the failed run is kept",
     [in_phase("Running", "StageRunning", "0x4"), in_phase("Failed", "PermanentError", "_x5 300x40")],
     [alert("8m", "VitaTrainingRunFailed", PERMANENT), alert("24m", "VitaTrainingRunFailed")]),
    ("an operator restarted 25 minutes after the failure exports it again: an old failure, quiet",
     [in_phase("Failed", "PermanentError", "_x5 300x5 _x20 300x10")],
     [alert("32m", "VitaTrainingRunFailed")]),
    ("a leader handover: both replicas export the failed run for a moment, one alert",
     [in_phase("Failed", "PermanentError", "_x5 300x10"), in_phase("Failed", "PermanentError", "_x7 300x8", "op-1")],
     [alert("8m", "VitaTrainingRunFailed", PERMANENT)]),
    ("a stage spends its retries (and the generic failure alert stays quiet: one alert per failure)",
     [in_phase("Failed", "JobFailed", "_x5 300x30")],
     [alert("8m", "VitaTrainingRetriesExhausted", RETRIES), alert("8m", "VitaTrainingRunFailed"),
      alert("25m", "VitaTrainingRetriesExhausted")]),
    ("the preflight finds bad samples",
     [in_phase("Failed", "PreflightFailed", "_x5 300x30")],
     [alert("8m", "VitaTrainingPreflightFailed", PREFLIGHT), alert("8m", "VitaTrainingRunFailed")]),
    ("a run whose retried stage is running again", [in_phase("Running", "StageRunning", "300x30")],
     [alert("8m", "VitaTrainingPreflightFailed"), alert("8m", "VitaTrainingRetriesExhausted")]),
    ("a run Blocked for over an hour",
     [in_phase("Blocked", "VolumeNotReady", "_x5 300x80")],
     [alert("60m", "VitaTrainingRunBlocked"),
      alert("70m", "VitaTrainingRunBlocked", fired(
          {"severity": "warning", **ROUTE, "reason": "VolumeNotReady"},
          summary="Run team-a/r1 has been Blocked (VolumeNotReady) for over 60 minutes",
          description="status.message says what a person must change."))]),
    ("a run Blocked for half an hour, then running once its claim was created",
     [in_phase("Blocked", "VolumeNotReady", "0x30"), in_phase("Running", "StageRunning", "_x30 1800x50")],
     [alert("70m", "VitaTrainingRunBlocked")]),
    ("a run Queued for over 6 hours",
     [in_phase("Queued", "JobQueued", "0x380")],
     [alert("370m", "VitaTrainingRunQueuedTooLong", fired(
         {"severity": "info", **ROUTE, "reason": "JobQueued"},
         summary="Run team-a/r1 stage s1 has waited for admission or placement for over 360 minutes",
         description="status.message has Kueue's or the scheduler's reason."))]),
    ("a run Queued for 2 hours, then admitted",
     [in_phase("Queued", "JobQueued", "0x120"), in_phase("Running", "StageRunning", "_x120 7200x260")],
     [alert("370m", "VitaTrainingRunQueuedTooLong")]),
    ("only a standby answers (the leader's pod is gone)",
     [series("vita_operator_leader", 'pod="op-1"', "0x20")],
     [alert("10m", "VitaOperatorNotLeading", fired(**NOT_LEADING))]),
    ("no operator is scraped at all", [series("up", 'job="other"', "1x20")],
     [alert("10m", "VitaOperatorNotLeading", fired(**NOT_LEADING))]),
    ("a leader and its standby; and a handover shorter than 5 minutes",
     [series("vita_operator_leader", 'pod="op-0"', "1x10 _x3 _x7"), series("vita_operator_leader", 'pod="op-1"',
                                                                       "0x10 0x3 1x7")],
     [alert("9m", "VitaOperatorNotLeading"), alert("19m", "VitaOperatorNotLeading")]),
    ("NaN loss",
     [series("vita_train_loss", TRAINER, "2.0 2.0 NaN NaN NaN NaN")],
     [alert("5m", "VitaTrainingLossNotFinite", fired({"severity": "critical", **ROUTE},
                                                     summary="Training loss of stage s1 is NaN or infinite"))]),
    ("a finite loss", [series("vita_train_loss", TRAINER, "2.0 1.9 1.8 1.7 1.6 1.5")],
     [alert("5m", "VitaTrainingLossNotFinite")]),
    ("a running stage whose step stopped",
     [series("vita_train_stage_info", TRAINER, "1x60"), series("vita_train_global_step", TRAINER, "0+1x10 10x50")],
     [alert("50m", "VitaTrainingStalled", fired({"severity": "warning", **ROUTE}, summary=(
         "Run team-a/r1 stage s1 made no optimizer step in 30 minutes")))]),
    ("a stage that steps; and a finished stage (its info gauge 0) whose step no longer moves",
     [series("vita_train_stage_info", TRAINER, "1x60"), series("vita_train_global_step", TRAINER, "0+1x60"),
      series("vita_train_stage_info", 'namespace="team-a", run="r1", stage="s0"', "0x60"),
      series("vita_train_global_step", 'namespace="team-a", run="r1", stage="s0"', "500x60")],
     [alert("50m", "VitaTrainingStalled")]),
    ("a loss flat for hours",
     [series("vita_train_stage_info", TRAINER, "1x300"), series("vita_train_loss", TRAINER, "1.0x300")],
     [alert("280m", "VitaTrainingLossNotDecreasing", fired({"severity": "warning", **ROUTE}, summary=(
         "Run team-a/r1 stage s1: the loss over the last 120 minutes is no lower than over the window before")))]),
    ("a loss that falls", [series("vita_train_stage_info", TRAINER, "1x300"),
                           series("vita_train_loss", TRAINER, "5-0.01x300")],
     [alert("280m", "VitaTrainingLossNotDecreasing")]),
    ("tokens/s halved",
     [series("vita_train_stage_info", TRAINER, "1x340"),
      series("vita_train_tokens_per_second", TRAINER, "1000x300 300x40")],
     [alert("330m", "VitaTrainingThroughputHalved", fired({"severity": "warning", **ROUTE}, summary=(
         "Run team-a/r1 stage s1 trains at under half its own median tokens/s of the last 6 hours")))]),
    ("steady tokens/s, and a dip shorter than 15 minutes",
     [series("vita_train_stage_info", TRAINER, "1x340"),
      series("vita_train_tokens_per_second", TRAINER, "1000x300 300x5 1000x35")],
     [alert("330m", "VitaTrainingThroughputHalved"), alert("310m", "VitaTrainingThroughputHalved")]),
    ("the operator cannot read a running run's endpoint",
     [series("vita_operator_progress_stale", 'namespace="team-a", run="r1"', "0 0 1x20")],
     [alert("15m", "VitaTrainingProgressStale", fired(
         {"severity": "warning", "namespace": "team-a", "run": "r1"},
         summary="The operator cannot read run team-a/r1's trainer metrics",
         description="kubectl get vitatrainingrun -o jsonpath='{.status.progress.staleReason}' says why."))]),
    ("one missed read (the next one answered)",
     [series("vita_operator_progress_stale", 'namespace="team-a", run="r1"', "0 0 1 1 1 0x20")],
     [alert("15m", "VitaTrainingProgressStale")]),
    ("a stage skipping samples",
     [series("vita_train_skipped_samples_total", TRAINER + ', reason="decode"', "0+2x40")],
     [alert("35m", "VitaTrainingSkippingSamples", fired({"severity": "info", "reason": "decode", **ROUTE},
                                                        summary="Stage s1 is skipping unreadable samples (decode)"))]),
    ("samples skipped once, long ago",
     [series("vita_train_skipped_samples_total", TRAINER + ', reason="decode"', "0 3x40")],
     [alert("35m", "VitaTrainingSkippingSamples")]),
    ("the operator's API calls fail",
     [series("vita_operator_reconcile_errors_total", 'reason="api"', "0+1x30")],
     [alert("25m", "VitaOperatorReconcileErrors", fired({"severity": "warning", "reason": "api"},
                                                        summary="The VITA operator is failing to reconcile (api)"))]),
    ("a tenant's Blocked run (a refused create, a claim that does not fit) on every resync",
     [series("vita_operator_reconcile_errors_total", 'reason="create_refused"', "0+1x30"),
      series("vita_operator_reconcile_errors_total", 'reason="volume"', "0+1x30")],
     [alert("25m", "VitaOperatorReconcileErrors")]),
]


@pytest.fixture(scope="module")
def rules(tmp_path_factory):
    rendered = yaml.safe_load(helm_template("--set", "metrics.prometheusRule.enabled=true",
                                            "--show-only", "templates/prometheusrule.yaml"))
    path = tmp_path_factory.mktemp("rules") / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": rendered["spec"]["groups"]}))
    return path


def test_the_rules_pass_promtools_checks(rules):
    done = subprocess.run([str(promtool()), "check", "rules", str(rules)], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_every_alert_fires_in_its_scenario_and_only_then(rules):
    names = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tested = {t["alertname"] for _, _, tests in SCENARIOS for t in tests}
    firing = {t["alertname"] for _, _, tests in SCENARIOS for t in tests if t["exp_alerts"]}
    quiet = {t["alertname"] for _, _, tests in SCENARIOS for t in tests if not t["exp_alerts"]}
    assert names == tested == firing == quiet, (names, firing, quiet)
    unit = rules.parent / "tests.yaml"
    unit.write_text(yaml.safe_dump({"rule_files": [rules.name], "evaluation_interval": "1m", "tests": [
        {"name": what, "interval": "1m", "input_series": inputs, "alert_rule_test": tests}
        for what, inputs, tests in SCENARIOS]}, sort_keys=False))
    done = subprocess.run([str(promtool()), "test", "rules", str(unit)], capture_output=True, text=True,
                          cwd=rules.parent)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_reconcile_error_alert_reads_the_operators_own_fault_reasons():
    from vita_operator.controller.metrics import OPERATOR_FAULTS
    rendered = yaml.safe_load(helm_template("--set", "metrics.prometheusRule.enabled=true",
                                            "--show-only", "templates/prometheusrule.yaml"))
    rule = next(r for g in rendered["spec"]["groups"] for r in g["rules"]
                if r.get("alert") == "VitaOperatorReconcileErrors")
    assert f'reason=~"{"|".join(OPERATOR_FAULTS)}"' in rule["expr"]


def test_the_operator_exports_every_alerted_series_from_its_start():
    """What the scenarios above assume: a fresh operator process exports RunFailed and each reconcile error reason
    at 0 (increase() over a series that appears at 1 is 0: without them the first failure after every start, and so
    after every upgrade, would not alert). A new process: this one's counters may have counted other tests' runs."""
    import sys

    from testing.control_plane import REPO
    from vita_operator.controller.metrics import OPERATOR_FAULTS, TENANT_STATES
    text = subprocess.run(
        [sys.executable, "-c", "from prometheus_client import generate_latest; from vita_operator.controller.metrics "
                               "import REGISTRY; print(generate_latest(REGISTRY).decode())"],
        capture_output=True, text=True, check=True, env={"PYTHONPATH": f"{REPO / 'operator'}:{REPO}"}).stdout
    assert 'vita_operator_stage_transitions_total{reason="RunFailed"} 0.0' in text
    assert "vita_operator_leader 0.0" in text  # until it leads (handlers.startup)
    for reason in OPERATOR_FAULTS + TENANT_STATES:
        assert f'vita_operator_reconcile_errors_total{{reason="{reason}"}} 0.0' in text


def test_every_alert_has_its_runbook_section_in_the_readme(rules):
    from testing.control_plane import REPO
    headings = {line.removeprefix("#### ").strip() for line in (REPO / "README.md").read_text().splitlines()
                if line.startswith("#### ")}
    names = {r["alert"] for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"] if "alert" in r}
    assert names <= headings, sorted(names - headings)
