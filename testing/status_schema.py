"""Checks a status the operator would write against the CRD's generated status schema, as the API server stores
it: a merge patch's nulls removed."""

from __future__ import annotations

import functools
from typing import Any

import jsonschema

from vita_operator.controller.reconcile import pruned  # a merge patch's nulls, removed


@functools.cache
def _validator() -> jsonschema.Draft7Validator:
    from vita_operator.crd import crd
    schema = crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["status"]
    return jsonschema.Draft7Validator(schema)


def assert_valid_status(status: dict[str, Any]) -> None:
    errors = [f"{'.'.join(map(str, e.absolute_path)) or '<status>'}: {e.message}"
              for e in _validator().iter_errors(pruned(status))]
    assert not errors, errors
