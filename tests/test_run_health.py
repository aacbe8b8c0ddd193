"""The run's health as the tools read it: Argo CD's custom health check (the chart's argocd/health.lua, run by Lua
5.1 as Argo CD's gopher-lua is) and kstatus' generic rules (Flux, kpt), on every status the state table produces."""

from pathlib import Path

import pytest
from lupa import lua51

from tests.test_operator_state import CASES
from vita_operator.core.state import decide, decide_blocked, decide_refused

HEALTH_LUA = Path(__file__).resolve().parents[1] / "helm" / "vita-operator" / "argocd" / "health.lua"
NOW = "2026-11-26T00:00:00Z"

# Argo CD's health statuses as its docs define them, per phase: a run working or waiting its turn is
# Progressing, one a person must fix is Degraded, a finished one Healthy, spec.suspend Suspended.
ARGO = {"Running": "Progressing", "Queued": "Progressing", "Suspended": "Suspended", "Succeeded": "Healthy",
        "Failed": "Degraded", "Blocked": "Degraded"}
# kstatus' result per phase: InProgress until the run ends, Failed when it is stuck, Current otherwise.
KSTATUS = {"Running": "InProgress", "Queued": "InProgress", "Suspended": "Current", "Succeeded": "Current",
           "Failed": "Failed", "Blocked": "Failed"}


def argo_health(obj: dict) -> dict:
    lua = lua51.LuaRuntime()
    check = lua.execute(f"return function(obj)\n{HEALTH_LUA.read_text()}\nend")
    hs = check(lua.table_from(obj, recursive=True))
    return {"status": hs["status"], "message": hs["message"]}


def kstatus(obj: dict) -> str:
    """kstatus' generic status for a resource with conditions (sigs.k8s.io/cli-utils/pkg/kstatus, README): an
    unobserved generation or Reconciling=True is InProgress, Stalled=True is Failed, else Current."""
    st = obj.get("status") or {}
    if st.get("observedGeneration") != obj["metadata"]["generation"]:
        return "InProgress"
    conds = {c["type"]: c["status"] for c in st.get("conditions") or []}
    if conds.get("Reconciling") == "True":
        return "InProgress"
    return "Failed" if conds.get("Stalled") == "True" else "Current"


def decided_statuses():
    """(case, status) for every row of the state table, and a Blocked run of each kind."""
    for case, sp, st, jobs, *_ in CASES:
        if case.endswith("InvalidSpec"):
            sp = sp.model_copy(update={"stages": [sp.stages[0],
                                                  sp.stages[1].model_copy(update={"preset": "nope"})]})
        status = decide("run", 3, sp, st, jobs, NOW, "pytorchjob").status
        # rows whose input status is hand-written and whose decision keeps the phase have no conditions to read
        if status.get("conditions"):
            yield case, status
    yield "blocked: no claim", decide_blocked({"phase": "Running"}, "VolumeNotReady", "claim data is missing", NOW,
                                              3).status
    yield "blocked: create refused", decide_refused({"phase": "Running"}, "run-s1-1", "PyTorchJob", "denied", NOW,
                                                    3).status


@pytest.mark.parametrize("case,status", list(decided_statuses()))
def test_argo_cd_and_kstatus_read_each_phase_as_its_health(case, status):
    status = {**status, "observedGeneration": 3}
    obj = {"metadata": {"name": "run", "generation": 3}, "status": status}
    assert argo_health(obj)["status"] == ARGO[status["phase"]], case
    assert argo_health(obj)["message"] == status["message"]
    assert kstatus(obj) == KSTATUS[status["phase"]], case
    ready = {c["type"]: c for c in status["conditions"]}["Ready"]
    assert ready["status"] == ("True" if status["phase"] in ("Running", "Queued", "Succeeded") else "False"), case
    assert ready["reason"], case
    if status["phase"] == "Suspended":  # not the reason of what it would be doing (StageRunning)
        assert ready["reason"] == "RunSuspended", case


def test_a_spec_the_operator_has_not_read_is_progressing():
    st = decide("run", 3, CASES[3][1], CASES[3][2], CASES[3][3], NOW, "pytorchjob").status
    assert st["phase"] == "Succeeded"
    obj = {"metadata": {"name": "run", "generation": 4}, "status": st}
    assert argo_health(obj)["status"] == "Progressing" and kstatus(obj) == "InProgress"
    assert argo_health({"metadata": {"name": "run", "generation": 1}})["status"] == "Progressing"


def test_the_phase_transition_time_moves_only_with_the_phase():
    sp, jobs = CASES[1][1], CASES[1][3]  # a running job, nothing to do
    first = decide("run", 3, sp, None, [], NOW, "pytorchjob").status
    assert first["phase"] == "Running" and first["phaseTransitionTime"] == NOW
    later = decide("run", 3, sp, first, jobs, "2026-11-26T05:00:00Z", "pytorchjob").status
    assert later["phaseTransitionTime"] == NOW
    queued = decide("run", 3, sp, first, [jobs[0].__class__(jobs[0].name, "s1", 1, "Suspended")],
                    "2026-11-26T06:00:00Z", "pytorchjob").status
    assert queued["phase"] == "Queued" and queued["phaseTransitionTime"] == "2026-11-26T06:00:00Z"


def test_the_table_reaches_every_phase_checked_above():
    assert {st["phase"] for _, st in decided_statuses()} == set(ARGO)
