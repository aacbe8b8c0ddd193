"""Act: carry out a decision's actions on the cluster, idempotently (names are deterministic; a 409 means an
earlier pass did it). A create the API server refuses raises Refused for the reconcile to report."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, cast

import kopf
from kubernetes.client.exceptions import ApiException

from vita_api.plan import with_stage_args
from vita_api.spec import VitaTrainingRunSpec

from ..core.decision import CREATES, CreateEvaluation, CreateJob, CreateStepJob, Decision, DeleteJob, SetJobSuspend
from ..core.state import decide_evaluation_refused
from ..jobs import evaluation as ev
from ..jobs.backend import JobBackend
from ..jobs.network_policy import run_network_policies
from ..jobs.pods import with_avoided_nodes, with_trainer_uid
from ..jobs.steps import STEP_JOBS
from . import kube, metrics
from .config import settings
from .clock import now_rfc3339


class Refused(Exception):
    """The API server refused a create for a reason that retrying the same body cannot fix (admission)."""

    def __init__(self, job: str, kind: str, message: str):
        super().__init__(message)
        self.job, self.kind, self.message = job, kind, message


# Refusals a person must act on: a bad request, a policy or webhook denial (403 also when the operator's own RBAC
# lacks the verb), an invalid object. Anything else (5xx, timeouts) kopf retries.
REFUSED_STATUSES = (400, 403, 422)


def api_message(e: ApiException) -> str:
    """The API server's own message (admission denials name the policy and say why)."""
    try:
        return str(json.loads(e.body or "{}").get("message") or e.reason)
    except ValueError:
        return str(e.reason)


def create_owned(run: dict[str, Any], body: dict[str, Any], create: Callable[[dict[str, Any]], None]) -> None:
    """Create a job owned by the run (ownerReferences: deleting the run deletes its jobs), its pods as the
    platform's UID setting says. A 409 means an earlier pass created it: names are deterministic. Only the owner
    reference: kopf.adopt would also copy the run's labels, so Argo CD's instance label would let it prune running
    jobs, and a queue-name label would bypass the spec."""
    body = with_trainer_uid(body, settings().trainer_uid)
    kopf.append_owner_reference(body, owner=cast(kopf.Body, run))  # kopf reads only its metadata
    try:
        create(body)
    except ApiException as e:
        if e.status in REFUSED_STATUSES:
            raise Refused(body["metadata"]["name"], body.get("kind", "job"), api_message(e)) from e
        if e.status != 409:
            raise


def apply_actions(run: dict[str, Any], spec: VitaTrainingRunSpec, backend: JobBackend, decision: Decision,
                  network: dict[str, Any] | None = None) -> None:
    """Carry out the decision's actions; a refused create raises Refused (the actions after it wait). `network`:
    the platform's trainer network settings; the run's NetworkPolicies are made before any of its pods."""
    meta = run["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    if network is not None and any(isinstance(a, CREATES) for a in decision.actions):
        for policy in run_network_policies(name, namespace, spec, network):
            create_owned(run, policy, lambda body: kube.create_network_policy(namespace, body))
    for action in decision.actions:
        if isinstance(action, CreateEvaluation):
            _create_evaluation(run, spec, action.index, decision)
        elif isinstance(action, CreateStepJob):
            create_owned(run, STEP_JOBS[action.step].build(name, namespace, spec, action.attempt),
                         lambda body: kube.create_batch_job(namespace, body))
        elif isinstance(action, CreateJob):
            attempt_spec = with_avoided_nodes(with_stage_args(spec, action.index, action.arg_overrides), action.index,
                                              action.avoid_nodes)
            create_owned(run, backend.build(name, namespace, attempt_spec, action.index, action.attempt,
                                            suspend=action.suspend),
                         lambda body: kube.create_custom(backend.api_version, backend.plural, namespace, body))
        elif isinstance(action, DeleteJob):
            kube.delete_custom(backend.api_version, backend.plural, namespace, action.name)
        elif isinstance(action, SetJobSuspend):
            kube.patch_custom(backend.api_version, backend.plural, namespace, action.name,
                              backend.suspend_patch(action.suspend))


def _create_evaluation(run: dict[str, Any], spec: VitaTrainingRunSpec, index: int, decision: Decision) -> None:
    """A refused benchmark Job (a quota, a policy) fails that evaluation, reported on the run with the decision's
    status; training goes on."""
    meta = run["metadata"]
    try:
        create_owned(run, ev.evaluation_job(meta["name"], meta["namespace"], spec, index),
                     lambda body: kube.create_batch_job(meta["namespace"], body))
    except Refused as refused:
        refusal = decide_evaluation_refused(decision.status, spec.stages[index].name, refused.message,
                                            now_rfc3339())
        decision.status = refusal.status
        decision.events += refusal.events
        metrics.RECONCILE_ERRORS.labels("create_refused").inc()
