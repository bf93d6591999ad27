"""The CRD field reference in Markdown, generated from the same schemas as `crds/`.

A reference written by hand drifts from the API; this one is rendered from
the generated CRDs (so from the pydantic models and their descriptions) and
CI fails when `docs/reference.md` is out of date, like the CRDs themselves.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

from mailshard.api.crd import custom_resource_definitions

HEADER = (
    "<!-- Generated from the pydantic models by `python -m mailshard crds --write crds/`; do not edit. -->\n"
    "# CRD field reference\n"
)


def _type_of(schema: Mapping[str, Any]) -> str:
    if schema.get("x-kubernetes-int-or-string"):
        return "int or string"
    kind = str(schema.get("type", "object"))
    if kind == "array":
        return f"[]{_type_of(schema.get('items', {}))}"
    if kind == "object" and "additionalProperties" in schema:
        return f"map[string]{_type_of(schema['additionalProperties'])}"
    return kind


def _constraints(schema: Mapping[str, Any]) -> str:
    parts = []
    if "enum" in schema:
        parts.append("one of " + ", ".join(f"`{v}`" for v in schema["enum"]))
    if "default" in schema and schema["default"] not in ({}, []):
        parts.append(f"default `{schema['default']}`")
    for key, word in (("minimum", "≥"), ("maximum", "≤"), ("minLength", "length ≥"), ("maxLength", "length ≤")):
        if key in schema:
            parts.append(f"{word} {schema[key]}")
    for rule in schema.get("x-kubernetes-validations", []):
        parts.append(str(rule.get("message", rule["rule"])))
    return "; ".join(parts)


def _rows(schema: Mapping[str, Any], path: str, required: frozenset[str]) -> Iterator[tuple[str, str, str, str]]:
    for name, child in sorted((schema.get("properties") or {}).items()):
        here = f"{path}.{name}" if path else name
        description = " ".join(str(child.get("description", "")).split()).replace("|", "\\|")
        mark = " (required)" if name in required else ""
        yield here, _type_of(child) + mark, description, _constraints(child).replace("|", "\\|")
        target = child.get("items", {}) if child.get("type") == "array" else child
        if target.get("properties"):
            yield from _rows(
                target, f"{here}[]" if child.get("type") == "array" else here, frozenset(target.get("required", []))
            )


def render_reference() -> str:
    lines = [HEADER]
    for crd in custom_resource_definitions():
        names = crd["spec"]["names"]
        version = crd["spec"]["versions"][0]
        root = version["schema"]["openAPIV3Schema"]
        lines.append(f"\n## {names['kind']} (`{crd['spec']['group']}/{version['name']}`)\n")
        short = ", ".join(names.get("shortNames", []))
        lines.append(f"Plural `{names['plural']}`, short name `{short}`, scope {crd['spec']['scope']}.\n")
        for section in ("spec", "status"):
            schema = root["properties"].get(section)
            if schema is None:
                continue
            lines.append(f"\n### {section}\n")
            lines.append("| field | type | description | constraints |")
            lines.append("|---|---|---|---|")
            for path, kind, description, constraints in _rows(schema, section, frozenset(schema.get("required", []))):
                lines.append(f"| `{path}` | {kind} | {description} | {constraints} |")
    return "\n".join(lines) + "\n"
