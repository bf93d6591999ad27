"""Turns a pydantic model's JSON schema into a Kubernetes structural schema.

A pydantic JSON schema is not something the API server accepts: it uses `$ref`
and `$defs`, spells optional fields as `anyOf: [X, {type: null}]`, forbids extra
keys with `additionalProperties: false` (which Kubernetes refuses next to
`properties`), and knows nothing of the `x-kubernetes-*` markers. This module
rewrites it into a structural schema (every node typed, no references, no
unions except int-or-string) and refuses, with the path of the offending node,
anything it cannot translate faithfully, so that the CRDs can never silently
diverge from the models.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from pydantic import BaseModel

JsonSchema = dict[str, Any]


class NotStructuralError(ValueError):
    """A model uses a construct a Kubernetes structural schema cannot express."""


_DROPPED_KEYS: Final = frozenset({"title", "$defs", "examples", "readOnly", "writeOnly", "$schema"})
_NULL: Final = {"type": "null"}
_INT_OR_STRING_ANY_OF: Final = [{"type": "integer"}, {"type": "string"}]
_UNTYPED_MARKERS: Final = ("x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")


def structural_schema(model: type[BaseModel]) -> JsonSchema:
    """The structural OpenAPI v3 schema of `model`, with camelCase property names."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    definitions = raw.pop("$defs", {})
    return _convert(raw, definitions, path=model.__name__, expanding=())


def _convert(node: JsonSchema, definitions: JsonSchema, *, path: str, expanding: tuple[str, ...]) -> JsonSchema:
    node, expanding = _inline(node, definitions, path=path, expanding=expanding)
    result: JsonSchema = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS or (key == "default" and value is None):
            continue
        if key == "additionalProperties" and value is False:
            # Unknown fields are refused by strict field validation, not by the schema: see crd.py.
            continue
        if key == "const":
            result["enum"] = [value]
        elif key == "uniqueItems":
            if value:
                # The API server refuses uniqueItems (quadratic); a set-typed list says the same.
                result["x-kubernetes-list-type"] = "set"
        elif key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            bound = "minimum" if key == "exclusiveMinimum" else "maximum"
            result[bound] = value
            result[key] = True
        elif key == "properties":
            result["properties"] = {
                name: _convert(child, definitions, path=f"{path}.{name}", expanding=expanding)
                for name, child in value.items()
            }
        elif key == "items":
            result["items"] = _convert(value, definitions, path=f"{path}[]", expanding=expanding)
        elif key == "additionalProperties" and isinstance(value, dict):
            result["additionalProperties"] = _convert(value, definitions, path=f"{path}{{}}", expanding=expanding)
        elif key == "anyOf":
            if value != _INT_OR_STRING_ANY_OF or not node.get("x-kubernetes-int-or-string"):
                raise NotStructuralError(f"{path}: a union other than int-or-string cannot be structural: {value}")
            result["anyOf"] = copy.deepcopy(value)
        elif key in ("oneOf", "allOf", "not", "discriminator", "$ref", "prefixItems"):
            raise NotStructuralError(f"{path}: {key} is not supported in a structural schema")
        else:
            result[key] = copy.deepcopy(value)
    _check_typed(result, path=path)
    return result


def _inline(
    node: JsonSchema, definitions: JsonSchema, *, path: str, expanding: tuple[str, ...]
) -> tuple[JsonSchema, tuple[str, ...]]:
    """Resolve `$ref`, single-member `allOf` and `anyOf [X, null]` into one node.

    Keys written next to the reference (the field's description, default and CEL
    rules) win over the referenced definition's own (a model's docstring).
    """
    while True:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[-1]
            if name in expanding:
                raise NotStructuralError(f"{path}: recursive model {name} cannot be inlined")
            if name not in definitions:
                raise NotStructuralError(f"{path}: unresolved reference {node['$ref']}")
            expanding = (*expanding, name)
            siblings = {key: value for key, value in node.items() if key != "$ref"}
            node = {**definitions[name], **siblings}
        elif "allOf" in node and len(node["allOf"]) == 1:
            siblings = {key: value for key, value in node.items() if key != "allOf"}
            node = {**node["allOf"][0], **siblings}
        elif "anyOf" in node and _NULL in node["anyOf"]:
            others = [option for option in node["anyOf"] if option != _NULL]
            if len(others) != 1:
                raise NotStructuralError(f"{path}: an optional union of {len(others)} types cannot be structural")
            siblings = {key: value for key, value in node.items() if key != "anyOf"}
            # Optional means "may be left out": it drops out of `required`, and an explicit null
            # is pruned by the API server rather than stored.
            node = {**others[0], **siblings}
        else:
            return node, expanding


def _check_typed(node: JsonSchema, *, path: str) -> None:
    if "type" in node:
        if node.get("x-kubernetes-int-or-string"):
            raise NotStructuralError(f"{path}: an int-or-string node must not have a type")
        return
    if any(node.get(marker) for marker in _UNTYPED_MARKERS):
        return
    raise NotStructuralError(f"{path}: every node of a structural schema needs a type: {sorted(node)}")
