"""Whether a live object already holds everything we want in it: the test that keeps reconciles write-free.

A reconcile of an unchanged shard must write nothing, so before applying a
manifest the service asks whether the live object already "contains" it. The
API server adds defaults, status and metadata of its own, so containment is a
subset test: every field we set must be there with an equal value; fields we
do not set are none of our business. Two normalisations keep the server's
canonical forms from looking like drift: quantities compare by value ("0.5"
equals "500m"), and an absent field equals an empty one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mailshard.api.quantity import is_quantity, parse_quantity


def _empty(value: Any) -> bool:
    return value is None or value in ({}, [])


def _equal_scalars(wanted: Any, live: Any) -> bool:
    if wanted == live:
        return True
    if isinstance(wanted, str | int) and isinstance(live, str | int) and not isinstance(wanted, bool):
        return is_quantity(wanted) and is_quantity(live) and parse_quantity(wanted) == parse_quantity(live)
    return False


def contains(live: Any, wanted: Any) -> bool:
    """True when `live` holds every field of `wanted` with an equal value."""
    if isinstance(wanted, Mapping):
        if not isinstance(live, Mapping):
            return _empty(live) and all(_empty(v) for v in wanted.values())
        return all(contains(live.get(key), value) if key in live else _empty(value) for key, value in wanted.items())
    if isinstance(wanted, Sequence) and not isinstance(wanted, str):
        if not isinstance(live, Sequence) or isinstance(live, str):
            return _empty(live) and not wanted
        return len(live) == len(wanted) and all(contains(a, b) for a, b in zip(live, wanted, strict=True))
    return _equal_scalars(wanted, live)


def differences(live: Any, wanted: Any, path: str = "") -> list[str]:
    """The paths where `live` does not hold `wanted` (for logs and Events; empty when `contains`)."""
    if isinstance(wanted, Mapping) and isinstance(live, Mapping):
        found: list[str] = []
        for key, value in wanted.items():
            if key not in live:
                if not _empty(value):
                    found.append(f"{path}.{key}")
            else:
                found += differences(live[key], value, f"{path}.{key}")
        return found
    if (
        isinstance(wanted, Sequence)
        and not isinstance(wanted, str)
        and isinstance(live, Sequence)
        and not isinstance(live, str)
        and len(live) == len(wanted)
    ):
        found = []
        for index, (a, b) in enumerate(zip(live, wanted, strict=True)):
            found += differences(a, b, f"{path}[{index}]")
        return found
    return [] if contains(live, wanted) else [path or "."]
