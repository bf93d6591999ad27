"""The pydantic-to-structural-schema conversion: what it rewrites, and what it refuses to guess."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, Field

from mailshard.api.structural import NotStructuralError, structural_schema

pytestmark = pytest.mark.unit


class Inner(BaseModel):
    """An inner object."""

    value: int = Field(default=1, description="A value.")


class Outer(BaseModel):
    inner: Inner | None = Field(default=None, description="Described at the field.")
    tags: set[str] = Field(default_factory=set, description="Distinct tags.")
    count: int = Field(gt=0, description="Strictly positive.")
    mode: str = Field(default="x", json_schema_extra={"x-kubernetes-validations": [{"rule": "true"}]})


def test_references_and_optionals_are_inlined_with_the_field_description_winning() -> None:
    schema = structural_schema(Outer)
    inner = schema["properties"]["inner"]
    assert inner["type"] == "object"
    assert inner["description"] == "Described at the field."
    assert inner["properties"]["value"] == {"type": "integer", "default": 1, "description": "A value."}
    assert "$defs" not in schema
    assert "title" not in schema


def test_sets_become_set_typed_lists_instead_of_unique_items() -> None:
    tags = structural_schema(Outer)["properties"]["tags"]
    assert tags["x-kubernetes-list-type"] == "set"
    assert "uniqueItems" not in tags


def test_numeric_exclusive_bounds_become_openapi_v3_booleans() -> None:
    count = structural_schema(Outer)["properties"]["count"]
    assert count["minimum"] == 0
    assert count["exclusiveMinimum"] is True
    assert structural_schema(Outer)["required"] == ["count"]


def test_schema_extras_are_kept() -> None:
    assert structural_schema(Outer)["properties"]["mode"]["x-kubernetes-validations"] == [{"rule": "true"}]


class Ambiguous(BaseModel):
    value: int | str


class Untyped(BaseModel):
    value: Any


class Node(BaseModel):
    children: list[Node] = []


@pytest.mark.parametrize(
    ("model", "complaint"),
    [(Ambiguous, "union"), (Untyped, "needs a type"), (Node, "recursive")],
)
def test_constructs_without_a_structural_equivalent_are_refused(model: type[BaseModel], complaint: str) -> None:
    with pytest.raises(NotStructuralError, match=complaint):
        structural_schema(model)
