"""Kubernetes resource quantities ("10Gi", "500m") parsed and compared without the kubernetes client.

The models must refuse a malformed size before it reaches a StatefulSet, and the
reconciler must know whether an inherited storage size grew or shrank; both need
the quantity grammar of k8s.io/apimachinery, which this module mirrors.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Final

QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
"""The pattern the Kubernetes OpenAPI schemas put on every quantity (same as controller-gen's)."""

_QUANTITY = re.compile(
    r"^(?P<number>[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))"
    r"(?P<suffix>[KMGTPE]i|[numkMGTPE]|[eE][+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+))?$"
)

_BINARY_SUFFIXES: Final = {
    "Ki": Decimal(2**10),
    "Mi": Decimal(2**20),
    "Gi": Decimal(2**30),
    "Ti": Decimal(2**40),
    "Pi": Decimal(2**50),
    "Ei": Decimal(2**60),
}
_DECIMAL_SUFFIXES: Final = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}


def parse_quantity(value: str | int) -> Decimal:
    """The exact value of a quantity, e.g. `parse_quantity("1Gi") == 1073741824`.

    Raises ValueError for anything the API server would not accept as a quantity.
    """
    if isinstance(value, int):
        return Decimal(value)
    match = _QUANTITY.fullmatch(value)
    if match is None:
        raise ValueError(f"{value!r} is not a Kubernetes quantity (examples: 10Gi, 500M, 250m, 2)")
    number = Decimal(match["number"])
    suffix = match["suffix"] or ""
    if suffix in _BINARY_SUFFIXES:
        return number * _BINARY_SUFFIXES[suffix]
    if suffix in _DECIMAL_SUFFIXES:
        return number * _DECIMAL_SUFFIXES[suffix]
    return number * Decimal(10) ** Decimal(suffix[1:])


def is_quantity(value: object) -> bool:
    """Whether the API server would accept `value` where a quantity is expected."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        return False
    try:
        parse_quantity(value)
    except ValueError:
        return False
    return True
