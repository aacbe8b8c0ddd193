"""Generate the VitaTrainingRun CRD from the run spec model (the single source of truth).

`vita-operator-crd > manifests/crd/vitatrainingruns.yaml` regenerates it; a test fails when the checked-in copies
(manifests/ and the Helm chart's crds/) drift from this output.
"""

from __future__ import annotations

from typing import Any

import copy
import sys

import yaml

from vita_api.spec import (API_GROUP, CLUSTER_RULES, FIX, JOB_SETTING_ARGS, KIND, PLAN_DERIVED_ARGS, RUN_NAME,
                           RUN_NAME_MAX, VitaTrainingRunSpec)
from vita_api.status import VitaTrainingRunStatus
from vita_api.presets import all_presets

PLURAL = "vitatrainingruns"
VERSION = "v1alpha1"


def _cel_string(pattern: str) -> str:
    """A regex as the body of a single-quoted CEL string: its backslashes escaped."""
    return pattern.replace("\\", "\\\\")


def _add_rule(node: dict[str, Any], rule: str, message: str) -> None:
    node["x-kubernetes-validations"] = [*node.get("x-kubernetes-validations", []), {"rule": rule, "message": message}]


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
    if "patternProperties" in node:  # a map with constrained keys (pydantic writes the key pattern there)
        node = dict(node)
        [(pattern, values)] = node.pop("patternProperties").items()
        names = node.pop("propertyNames", {})
        node["additionalProperties"] = values
        # Structural schemas cannot constrain keys: a CEL rule on the map does (maxProperties bounds its cost).
        _add_rule(node, f"self.all(k, k.matches('{_cel_string(pattern)}'))",
                  names.get("description", f"keys must match {pattern}"))
    if FIX in node:  # a pattern's fix, as a CEL rule beside it (the pattern's own error shows only the regex)
        node = dict(node)
        _add_rule(node, f"self.matches('{_cel_string(node['pattern'])}')", node.pop(FIX))
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


# A stage that has started keeps its name: its checkpoints, attempts and progress are filed under it. Only the API
# server sees the old object, so this rule has no twin in the model (the operator deletes a renamed stage's job).
STARTED_STAGE_KEPT = ("a stage that has started (status.stages[].phase other than Pending) cannot be renamed or "
                      "removed: its checkpoints and progress belong to its name. To start it anew under another "
                      "name, delete the run and apply it again (the checkpoint volume keeps its outputs)")


def started_stages_rule() -> dict[str, Any]:
    return {"rule": "!has(oldSelf.status) || !has(oldSelf.status.stages) || oldSelf.status.stages.all(s, "
                    "!has(s.name) || !has(s.phase) || s.phase == 'Pending' || "
                    "self.spec.stages.exists(t, t.name == s.name))",
            "message": STARTED_STAGE_KEPT, "fieldPath": ".spec.stages"}


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
    # An object whose values are of several types has no CEL type for its keys: the run policy (a
    # ValidatingAdmissionPolicy, which reads the object untyped) checks that they are flag names.
    args.pop("x-kubernetes-validations")
    args["x-kubernetes-preserve-unknown-fields"] = True
    args["properties"] = {a: {"type": "string", "description": "Derived by the stage plan; may not be set"}
                          for a in PLAN_DERIVED_ARGS}
    args["properties"].update({a: {"type": "string", "description": f"Moved to the stage's {field}; may not be set"}
                               for a, field in JOB_SETTING_ARGS.items()})
    schema["x-kubernetes-validations"] = [*schema.get("x-kubernetes-validations", []), *CLUSTER_RULES]
    return schema


def status_schema() -> dict[str, Any]:
    raw = VitaTrainingRunStatus.model_json_schema(by_alias=True)
    schema: dict[str, Any] = _structural(raw, raw.get("$defs", {}))
    # API conventions: conditions are a map keyed by type (server-side apply merges them by type)
    schema["properties"]["conditions"].update({"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]})
    return schema


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
              "x-kubernetes-validations": [name_rule(), started_stages_rule()],
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
