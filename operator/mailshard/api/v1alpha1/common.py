"""Building blocks shared by the v1alpha1 kinds: base models, quantities, conditions, CEL rules.

The conventions of the whole API are set here once: camelCase on the wire,
snake_case in Python, unknown spec fields refused, status fields tolerated, and
every Kubernetes-specific schema marker (`x-kubernetes-*`) attached to the type
that needs it so that the CRD generator stays generic.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Annotated, Any, ClassVar, Final, Self

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator
from pydantic.alias_generators import to_camel

from mailshard.api.constants import DNS_LABEL_PATTERN, GROUP, MAX_NAME_LENGTH
from mailshard.api.quantity import QUANTITY_PATTERN, parse_quantity

VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

JsonSchema = dict[str, Any]

_DNS_LABEL = re.compile(DNS_LABEL_PATTERN)


class SpecModel(BaseModel):
    """Base of everything a user writes: a typo must fail loudly, not be ignored."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        frozen=True,
    )


class StatusModel(BaseModel):
    """Base of everything the operator writes.

    Unknown keys are ignored rather than refused: a status written by a newer
    operator version must not make an older one unable to read the resource.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )


def cel(rule: str, message: str) -> JsonSchema:
    """One `x-kubernetes-validations` entry: a CEL rule the API server runs on every write."""
    return {"rule": rule, "message": message}


def validations(*rules: JsonSchema) -> JsonSchema:
    """Schema extras carrying CEL rules, for `Field(json_schema_extra=...)`."""
    return {"x-kubernetes-validations": list(rules)}


def _check_quantity(value: int | str) -> int | str:
    parse_quantity(value)
    return value


Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A resource quantity as Kubernetes core types accept it: `2`, `"500m"`, `"1Gi"`."""

FreeFormObject = Annotated[
    dict[str, Any],
    WithJsonSchema({"type": "object", "x-kubernetes-preserve-unknown-fields": True}),
]
"""A Kubernetes core type we pass through untouched (tolerations, affinity); the pod validates it."""

DnsLabelName = Annotated[
    str,
    Field(min_length=1, max_length=MAX_NAME_LENGTH, pattern=DNS_LABEL_PATTERN),
]
"""The name of a MailShard or MailCluster, usable as a prefix of Service and StatefulSet names."""


def check_resource_name(name: str, *, kind: str) -> str:
    """Refuse a name that would make a derived object name invalid (see MAX_NAME_LENGTH)."""
    if len(name) > MAX_NAME_LENGTH:
        raise ValueError(
            f"{kind} name {name!r} is {len(name)} characters long; at most {MAX_NAME_LENGTH} are allowed "
            "because the StatefulSets and Services derived from it must stay valid DNS labels"
        )
    if not _DNS_LABEL.fullmatch(name):
        raise ValueError(
            f"{kind} name {name!r} must be an RFC 1035 label (lower-case letters, digits and '-', "
            "starting with a letter) because Services are named after it"
        )
    return name


def name_rules(kind: str, *, derived: str) -> list[JsonSchema]:
    """Root-level CEL rules enforcing `check_resource_name` in the API server.

    `derived` names the objects whose names are built from this one, for the message.
    """
    return [
        cel(
            f"self.metadata.name.size() <= {MAX_NAME_LENGTH}",
            f"metadata.name of a {kind} must be at most {MAX_NAME_LENGTH} characters: "
            f"{derived} are named after it and must stay valid DNS labels",
        ),
        cel(
            f"self.metadata.name.matches('{DNS_LABEL_PATTERN}')",
            f"metadata.name of a {kind} must be an RFC 1035 label (lower-case letters, digits and '-', "
            f"starting with a letter): {derived} are named after it",
        ),
    ]


class ResourceMetadata(BaseModel):
    """The parts of `metadata` the operator needs; everything else is the API server's business."""

    model_config = ConfigDict(
        alias_generator=to_camel, validate_by_name=True, validate_by_alias=True, extra="ignore", frozen=True
    )

    name: str = Field(min_length=1, description="Object name, unique in the namespace.")
    namespace: str = Field(min_length=1, description="Namespace of the object.")
    uid: str = Field(default="", description="Set by the API server; owner references need it.")
    generation: int = Field(default=0, description="Increments on every spec change.")


class ResourceRequirements(SpecModel):
    """Compute resources of a container, as in a Pod's `resources` (requests and limits)."""

    requests: dict[str, Quantity] | None = Field(
        default=None,
        description="Minimum resources the scheduler reserves, e.g. {cpu: 250m, memory: 256Mi}.",
    )
    limits: dict[str, Quantity] | None = Field(
        default=None,
        description="Maximum resources the container may use, e.g. {memory: 1Gi}.",
    )

    def to_manifest(self) -> dict[str, dict[str, int | str]]:
        """The `resources` block of a container, leaving out what is unset."""
        manifest: dict[str, dict[str, int | str]] = {}
        if self.requests:
            manifest["requests"] = dict(sorted(self.requests.items()))
        if self.limits:
            manifest["limits"] = dict(sorted(self.limits.items()))
        return manifest


class ConditionStatus(enum.StrEnum):
    """The status of a condition, as in metav1.Condition."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """One observation about the resource, shaped like metav1.Condition so generic tools read it."""

    type: str = Field(
        min_length=1,
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
        description="Type of the condition in CamelCase, e.g. Ready.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        min_length=1,
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="Programmatic identifier of the last transition, in CamelCase.",
    )
    message: str = Field(default="", max_length=32768, description="Human-readable details of the transition.")
    last_transition_time: datetime = Field(description="When the status last changed from one value to another.")
    observed_generation: int | None = Field(
        default=None,
        ge=0,
        description="The metadata.generation the condition was computed from.",
    )


CONDITIONS_LIST: Final[JsonSchema] = {
    "x-kubernetes-list-type": "map",
    "x-kubernetes-list-map-keys": ["type"],
}
"""Schema extras making `conditions` a map keyed by type, so server-side apply merges them."""


def plain(value: Any) -> Any:
    """A deep copy of a Kubernetes body made of plain dicts and lists (kopf hands out mapping views)."""
    if isinstance(value, Mapping):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value


class ResourceModel(BaseModel):
    """A whole custom resource as the API returns it, parsed once at the boundary.

    Subclasses set `resource_kind` (used to check that the name leaves room for
    the names derived from it) and declare apiVersion, kind, metadata, spec and
    status.
    """

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="ignore",
        frozen=True,
    )
    resource_kind: ClassVar[str]

    @field_validator("metadata", check_fields=False)
    @classmethod
    def _name_fits_derived_names(cls, metadata: ResourceMetadata) -> ResourceMetadata:
        check_resource_name(metadata.name, kind=cls.resource_kind)
        return metadata

    @classmethod
    def from_resource(cls, body: Mapping[str, Any]) -> Self:
        """Parse a whole object (apiVersion, kind, metadata, spec, status); an absent or null section is left out.

        Raises pydantic.ValidationError when the object does not match the model.
        """
        document = plain(body)
        for section in ("spec", "status"):
            if document.get(section) is None:
                document.pop(section, None)
        return cls.model_validate(document)
