"""Generate the VitaTrainingRun CRD from the run spec model (the single source of truth).

`vita-operator-crd > manifests/crd/vitatrainingruns.yaml` regenerates it; a test fails when the checked-in copies
(manifests/ and the Helm chart's crds/) drift from this output.
"""

from __future__ import annotations

from typing import Any

import copy
import sys

import yaml

from vita_api.spec import (API_GROUP, JOB_BACKENDS, KIND, PLAN_DERIVED_ARGS, RUN_NAME, RUN_NAME_MAX,
                               VitaTrainingRunSpec)
from vita_api.presets import all_presets

PLURAL = "vitatrainingruns"
VERSION = "v1alpha1"
# Pending: nothing created yet; Initializing: models and datasets are fetched (spec.initializers); Preflight: the
# data check runs; Queued: a job waits for Kueue or the scheduler;
# Running; Suspended (spec.suspend); Blocked: a person must act (a create refused, a missing claim or CRD);
# Exporting / Evaluating: every stage succeeded and the export Job (spec.export) or benchmark Jobs
# (spec.evaluation) still run.
PHASES = ["Pending", "Initializing", "Preflight", "Queued", "Running", "Suspended", "Blocked", "Exporting",
          "Evaluating", "Succeeded", "Failed"]


def _structural(node: Any, defs: dict[str, Any]) -> Any:
    """Pydantic JSON schema -> Kubernetes structural OpenAPI v3 (inline refs, nullable, no titles)."""
    if isinstance(node, list):
        return [_structural(n, defs) for n in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = copy.deepcopy(defs[node["$ref"].split("/")[-1]])
        extra = {k: v for k, v in node.items() if k != "$ref"}
        return _structural({**target, **extra}, defs)
    if "anyOf" in node:
        options = [o for o in node["anyOf"] if o.get("type") != "null"]
        rest = {k: v for k, v in node.items() if k != "anyOf"}
        if len(options) == 1:  # Optional[X]
            merged: dict[str, Any] = _structural({**options[0], **rest}, defs)
            if rest.get("default") is None:
                merged.pop("default", None)
            return merged
        # scalars of several types (stage args values): keep them as they are
        return {k: v for k, v in _structural(rest, defs).items()} | {"x-kubernetes-preserve-unknown-fields": True}
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in ("title", "$defs") or (key == "additionalProperties" and value is False):
            continue  # structural schemas forbid additionalProperties: false; the API server prunes instead
        if key == "additionalProperties" and value is True:  # free-form (affinity): kept as written
            out["x-kubernetes-preserve-unknown-fields"] = True
            continue
        if key == "const":
            out["enum"] = [value]
            continue
        out[key] = _structural(value, defs)
    if "enum" in out and "type" not in out:
        out["type"] = "string"
    if out.get("type") == "object" and "properties" not in out and "additionalProperties" not in out:
        out["x-kubernetes-preserve-unknown-fields"] = True
    return out


def spec_schema() -> dict[str, Any]:
    raw = VitaTrainingRunSpec.model_json_schema(by_alias=True)
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    schema["description"] = ("What to train: base model, dataset registry, the ordered stages with their presets "
                             "and overrides, resources and volumes.")
    # Presets are data; the API server rejects names that no preset or alias defines.
    names = sorted({n for p in all_presets().values() for n in [p.name, *p.aliases]})
    schema["properties"]["stages"]["items"]["properties"]["preset"]["enum"] = names
    # Values of several scalar types, kept as written. The flags the plan derives are declared so that CEL can ask
    # has(self.args.output_dir): the API server compiles rules against the schema, and undeclared keys have no type.
    args = schema["properties"]["stages"]["items"]["properties"]["args"]
    args.pop("additionalProperties")
    args["x-kubernetes-preserve-unknown-fields"] = True
    args["properties"] = {a: {"type": "string", "description": "Derived by the stage plan; may not be set"}
                          for a in PLAN_DERIVED_ARGS}
    return schema


def status_schema() -> dict[str, Any]:
    time = {"type": "string", "format": "date-time"}
    stage = {"type": "object", "properties": {
        "name": {"type": "string"},
        "phase": {"type": "string", "enum": ["Pending", "Running", "Succeeded", "Failed"]},
        "jobName": {"type": "string", "description": "Job (PyTorchJob or TrainJob) of the latest attempt"},
        "attempts": {"type": "integer", "minimum": 0},
        "startTime": time, "completionTime": time,
        "checkpointPath": {"type": "string", "description": "Where the stage writes checkpoints and its output"},
        "finalLoss": {"type": "number", "description": "Last logged training loss, from the master pod's "
                                                        "termination message; unset when not reported"},
        "finalEvalLoss": {"type": "number", "description": "Validation loss at the stage's end, from the same "
                                                            "message; unset when the stage had no validation data"},
        "argOverrides": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                         "description": "Stage args the operator changed for the attempts from now on (after "
                                        "running out of memory: the micro-batch and the accumulation)"},
        "oomAdjustments": {"type": "array", "description": "Each out-of-memory retry (oomPolicy adjust)",
                           "items": {"type": "object", "properties": {
                               "attempt": {"type": "integer", "description": "The attempt that ran out of memory"},
                               "step": {"type": "integer"},
                               "perDeviceTrainBatchSize": {"type": "integer", "description": "It ran with this"},
                               "gradientAccumulationSteps": {"type": "integer"},
                               "nextPerDeviceTrainBatchSize": {"type": "integer", "description": "The next "
                                                               "attempt's; unset when none was left to try"},
                               "nextGradientAccumulationSteps": {"type": "integer"}}}},
        "message": {"type": "string"}}}
    condition = {"type": "object", "required": ["type", "status"], "properties": {
        "type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
        "reason": {"type": "string"}, "message": {"type": "string"}, "lastTransitionTime": time,
        "observedGeneration": {"type": "integer"}}}
    preflight = {"type": "object", "description": "The data check before the first stage (spec.preflight)",
                 "properties": {
                     "phase": {"type": "string", "enum": ["Pending", "Running", "Succeeded", "Failed"]},
                     "attempts": {"type": "integer", "minimum": 0}, "jobName": {"type": "string"},
                     "samples": {"type": "integer"}, "badSamples": {"type": "integer"},
                     "problemsByReason": {"type": "object", "additionalProperties": {"type": "integer"}},
                     "problems": {"type": "array", "maxItems": 20, "items": {"type": "string"},
                                  "description": "The first problems; every one is in the report"},
                     "reportPath": {"type": "string", "description": "The full JSON report, on the checkpoint "
                                                                     "volume"},
                     "completionTime": time, "message": {"type": "string"}}}
    progress = {"type": "object", "description": "The current stage's progress, read from its rank-0 metrics "
                                                 "endpoint every spec.progressIntervalSeconds",
                "properties": {
                    "stage": {"type": "string"}, "job": {"type": "string"},
                    "step": {"type": "integer"}, "totalSteps": {"type": "integer"},
                    "percent": {"type": "integer"}, "summary": {"type": "string", "description": "step/total (%)"},
                    "samplesPerSecond": {"type": "number"}, "tokensPerSecond": {"type": "number"},
                    "eta": {"type": "string", "description": "Time left at the pace since the job was first seen"},
                    "etaSeconds": {"type": "integer"},
                    "gpuHoursSoFar": {"type": "number", "description": "GPUs x time since the stage started"},
                    "gpuHoursEstimate": {"type": "number", "description": "So far plus GPUs x eta"},
                    "updateTime": time, "lastStepTime": time,
                    "firstSeen": {"type": "object", "properties": {"step": {"type": "integer"}, "time": time}},
                    "evalLoss": {"type": "number", "description": "Validation loss at the stage's latest "
                                                                "evaluation (--eval_strategy)"},
                    "stale": {"type": "boolean", "description": "The endpoint did not answer at the last read"},
                    "staleReason": {"type": "string"}}}
    evaluation = {"type": "object", "description": "Benchmarks after one stage (spec.evaluation)", "properties": {
        "stage": {"type": "string"},
        "phase": {"type": "string", "enum": ["Running", "Succeeded", "Failed"]},
        "jobName": {"type": "string"}, "startTime": time, "completionTime": time,
        "scores": {"type": "object", "description": "task -> metric -> value, computed by lmms-eval",
                   "additionalProperties": {"type": "object", "additionalProperties": {"type": "number"}}},
        "resultsPath": {"type": "string", "description": "lmms-eval's full results and per-sample logs, on the "
                                                         "checkpoint volume"},
        "message": {"type": "string", "description": "Why it failed, or why its pod waits"}}}
    export = {"type": "object", "description": "The export after the last stage (spec.export)", "properties": {
        "phase": {"type": "string", "enum": ["Pending", "Running", "Succeeded", "Failed"]},
        "attempts": {"type": "integer", "minimum": 0}, "jobName": {"type": "string"},
        "path": {"type": "string", "description": "The exported folder, on the checkpoint volume"},
        "completionTime": time, "message": {"type": "string"}}}
    initializers = {"type": "object", "description": "The downloads before preflight (spec.initializers)",
                    "properties": {
                        "phase": {"type": "string", "enum": ["Pending", "Running", "Succeeded", "Failed"]},
                        "attempts": {"type": "integer", "minimum": 0}, "jobName": {"type": "string"},
                        "files": {"type": "integer", "description": "Files of the run's models and datasets"},
                        "bytes": {"type": "integer", "description": "Their size"},
                        "transferredBytes": {"type": "integer", "description": "What this run fetched (the rest "
                                                                               "was already there)"},
                        "progress": {"type": "object", "description": "While it runs, read from the initializer "
                                                                        "pod every spec.progressIntervalSeconds",
                                     "properties": {"bytes": {"type": "integer"}, "expectedBytes": {"type": "integer"},
                                                    "percent": {"type": "integer"}, "updateTime": time}},
                        "completionTime": time, "message": {"type": "string"}}}
    return {"type": "object", "description": "Observed state, written by the operator.", "properties": {
        "initializers": initializers,
        "export": export,
        "evaluations": {"type": "array", "items": evaluation},
        "preflight": preflight,
        "progress": progress,
        "phase": {"type": "string", "enum": PHASES},
        "message": {"type": "string", "description": "Why the run is in its phase, and what to change"},
        "currentStage": {"type": "string"}, "currentJob": {"type": "string"},
        "backend": {"type": "string", "enum": list(JOB_BACKENDS),
                    "description": "The job backend the run uses: spec.trainer.backend, else the operator's default "
                                   "when the run started"},
        "observedGeneration": {"type": "integer"},
        "conditions": {"type": "array", "items": condition,
                       "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        "stages": {"type": "array", "items": stage}}}


def name_rule() -> dict[str, Any]:
    """metadata.name, checked by the API server (the schema cannot constrain metadata), as the run model does."""
    return {"rule": f"!has(self.metadata) || !has(self.metadata.name) || "
                    f"(self.metadata.name.matches('{RUN_NAME}') && self.metadata.name.size() <= {RUN_NAME_MAX})",
            "message": f"metadata.name must be at most {RUN_NAME_MAX} characters of lowercase letters, digits and "
                       f"'-', starting with a letter and ending with a letter or digit (DNS-1035): it starts the "
                       f"names of the run's jobs and is a label value on their pods"}


def crd() -> dict[str, Any]:
    schema = {"type": "object", "description": "A progressive VITA-1.5 training run: one PyTorchJob or TrainJob per "
                                               "stage attempt.",
              "x-kubernetes-validations": [name_rule()],
              "required": ["spec"], "properties": {
                  "apiVersion": {"type": "string"}, "kind": {"type": "string"}, "metadata": {"type": "object"},
                  "spec": spec_schema(), "status": status_schema()}}
    return {"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{PLURAL}.{API_GROUP}"},
            "spec": {"group": API_GROUP, "scope": "Namespaced",
                     "names": {"plural": PLURAL, "singular": "vitatrainingrun", "kind": KIND, "shortNames": ["vtr"],
                               "categories": ["all", "vita"]},
                     "versions": [{"name": VERSION, "served": True, "storage": True,
                                   "subresources": {"status": {}},
                                   "additionalPrinterColumns": [
                                       {"name": "Stage", "type": "string", "jsonPath": ".status.currentStage"},
                                       {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                                       {"name": "Job", "type": "string", "jsonPath": ".status.currentJob"},
                                       {"name": "Progress", "type": "string", "jsonPath": ".status.progress.summary"},
                                       {"name": "ETA", "type": "string", "jsonPath": ".status.progress.eta"},
                                       {"name": "Backend", "type": "string", "jsonPath": ".status.backend",
                                        "priority": 1},
                                       {"name": "Eval Loss", "type": "number",
                                        "jsonPath": ".status.progress.evalLoss", "priority": 1},
                                       {"name": "Message", "type": "string", "jsonPath": ".status.message",
                                        "priority": 1},
                                       {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                                   "schema": {"openAPIV3Schema": schema}}]}}


def render() -> str:
    return "# Generated by `vita-operator-crd` from vita_api.spec; do not edit by hand.\n" + yaml.safe_dump(
        crd(), sort_keys=False, width=120)


def main() -> None:
    sys.stdout.write(render())
