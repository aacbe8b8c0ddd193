"""A run's NetworkPolicies: its pods reach each other (torchrun's rendezvous, NCCL) and DNS, and are reached only by
each other and by the scrapers the platform names (the operator reading progress, Prometheus); nothing else in the
cluster reaches the rendezvous store, the NCCL ports or /metrics. Only the pods that download (the initializer's
`vita-data`/`vita-model download`, the evaluation's benchmark datasets) may open connections out of the cluster, on
HTTPS. More egress for the trainers (an experiment tracker, a mirror) is the platform's choice (chart value).

Both are owned by the run: deleting the run deletes them. Without a NetworkPolicy controller they are inert.
"""

from __future__ import annotations

import json
from typing import Any

from vita_api.naming import LABEL_RUN
from vita_api.spec import API_GROUP, VitaTrainingRunSpec

# The chart sets it: {"ingress": [NetworkPolicyPeer...] (who scrapes trainers), "egress": [NetworkPolicyEgressRule...]
# (more egress for every pod of a run)}; unset or "off": no policies.
ENV = "VITA_OPERATOR_TRAINER_NETWORK_POLICY"
DNS = {"ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]}
HTTPS_OUT = {"ports": [{"port": 443, "protocol": "TCP"}]}
# On the pods that fetch from the Hub or a mirror (initializer, evaluation): the downloads policy selects them.
DOWNLOADS = {f"{API_GROUP}/egress": "https"}


def settings_from_env(value: str | None) -> dict[str, Any] | None:
    """The chart's setting, checked at startup (a bad value stops the operator with the reason)."""
    if not value or value == "off":
        return None
    try:
        parsed = json.loads(value)
    except ValueError as e:
        raise SystemExit(f"{ENV}: not JSON ({e}); the chart writes it from trainerNetworkPolicy") from e
    if not isinstance(parsed, dict) or set(parsed) - {"ingress", "egress"}:
        raise SystemExit(f"{ENV}: expected {{\"ingress\": [...], \"egress\": [...]}}, got {value[:200]}")
    return {"ingress": list(parsed.get("ingress") or []), "egress": list(parsed.get("egress") or [])}


def policy_names(run_name: str) -> tuple[str, str]:
    return f"{run_name}-pods", f"{run_name}-downloads"


def run_network_policies(run_name: str, namespace: str, spec: VitaTrainingRunSpec,
                         platform: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's pods isolated; and, when the run downloads (initializers) or benchmarks (evaluation), HTTPS out
    for those pods only (they carry DOWNLOADS)."""
    own = {"podSelector": {"matchLabels": {LABEL_RUN: run_name}}}
    isolated, downloads = policy_names(run_name)
    scrape = [{"from": platform["ingress"], "ports": [{"port": spec.trainer.metrics_port, "protocol": "TCP"}]}]
    policies = [_policy(isolated, namespace, run_name, own["podSelector"],
                        ingress=[{"from": [own]}, *(scrape if platform["ingress"] else [])],
                        egress=[{"to": [own]}, DNS, *platform["egress"]])]
    if spec.initializers is not None or spec.evaluation is not None:
        policies.append(_policy(downloads, namespace, run_name, {"matchLabels": {LABEL_RUN: run_name, **DOWNLOADS}},
                                ingress=None, egress=[HTTPS_OUT]))
    return policies


def _policy(name: str, namespace: str, run_name: str, selector: dict[str, Any], *,
            ingress: list[dict[str, Any]] | None, egress: list[dict[str, Any]]) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": selector, "policyTypes": ["Egress"] if ingress is None else
                            ["Ingress", "Egress"], "egress": egress}
    if ingress is not None:
        spec["ingress"] = ingress
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": name, "namespace": namespace, "labels": {LABEL_RUN: run_name}}, "spec": spec}
