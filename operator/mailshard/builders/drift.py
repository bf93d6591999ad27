"""Whether a live object already holds everything we want in it: the test that keeps reconciles write-free.

A reconcile of an unchanged shard must write nothing, so before applying a
manifest the service asks whether the live object already "contains" it. The
API server adds defaults, status and metadata of its own, so containment is a
subset test: every field we set must be there with an equal value; fields we
do not set are none of our business. Two normalisations keep the server's
canonical forms from looking like drift: quantities compare by value ("0.5"
equals "500m"), and an absent field equals an empty one.

A live object that differs is either drift (someone edited it) or a change
we want (a failover moved the master, the spec changed). Only drift deserves
the `DriftReverted` Event, so each applied object carries a stamp of the
manifest it was applied from (`APPLIED_ANNOTATION`, `stamped`): a live object
whose stamp is that of the manifest we want now was changed by someone else.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any

from mailshard.api.quantity import is_quantity, parse_quantity

APPLIED_ANNOTATION = "mailshard.io/applied"
"""On every child the operator applies: a digest of the manifest it applied (see `stamped`)."""


def manifest_digest(manifest: Mapping[str, Any]) -> str:
    """A short digest of a builder's manifest, its own stamp left out."""
    metadata = manifest.get("metadata") or {}
    annotations = metadata.get("annotations")
    if isinstance(annotations, Mapping) and APPLIED_ANNOTATION in annotations:
        # Only the two levels on the way to the stamp are copied: this runs for every child at every reconcile.
        rest = {key: value for key, value in annotations.items() if key != APPLIED_ANNOTATION}
        trimmed = {key: value for key, value in metadata.items() if key != "annotations" or rest}
        if rest:
            trimmed["annotations"] = rest
        manifest = {**manifest, "metadata": trimmed}
    canonical = json.dumps(manifest, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


def stamped(manifest: Mapping[str, Any], digest: str | None = None) -> dict[str, Any]:
    """`manifest` with `APPLIED_ANNOTATION` set to `digest`, by default its own.

    Pass the builder's digest when the manifest applied is the builder's adjusted to the live object (fields
    the API forbids changing): the stamp then names what we wanted, not what the server had defaulted. The
    manifest given is not changed; only the levels on the way to the stamp are copied.
    """
    metadata = manifest.get("metadata") or {}
    stamp = digest if digest is not None else manifest_digest(manifest)
    annotations = {**(metadata.get("annotations") or {}), APPLIED_ANNOTATION: stamp}
    return {**manifest, "metadata": {**metadata, "annotations": annotations}}


def applied_stamp(live: Mapping[str, Any]) -> str | None:
    """The digest a live object carries, None when it carries none (created by an older operator)."""
    annotations = (live.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(APPLIED_ANNOTATION)
    return value if isinstance(value, str) else None


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
