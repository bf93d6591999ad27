"""Which changes to a child are ours (`Updated`) and which are someone else's (`DriftReverted`)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mailshard.builders.drift import APPLIED_ANNOTATION, applied_stamp, manifest_digest, stamped
from mailshard.services.children import ChildChanges, ensure_children

pytestmark = pytest.mark.unit

Manifest = dict[str, Any]


def config_map(value: str) -> Manifest:
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "ns"}, "data": {"k": value}}


class Store:
    """Objects by (kind, name), as the API server would keep what `apply` wrote (pure logic under test)."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], Manifest] = {}
        self.applied = 0

    def get(self, kind: str, name: str, namespace: str | None = None) -> Manifest | None:
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found is not None else None

    def apply(self, manifest: Manifest) -> Manifest:
        self.applied += 1
        self.objects[(manifest["kind"], manifest["metadata"]["name"])] = copy.deepcopy(manifest)
        return manifest


def ensure(store: Store, manifest: Manifest, **kwargs: Any) -> ChildChanges:
    """`ensure_children` of one manifest against the in-memory store."""
    return ensure_children(store, "ns", [manifest], **kwargs)  # type: ignore[arg-type]


def test_the_stamp_is_a_digest_of_the_manifest_without_the_stamp() -> None:
    wanted = config_map("a")
    stamp = stamped(wanted)
    assert applied_stamp(stamp) == manifest_digest(wanted) == manifest_digest(stamp)
    assert manifest_digest(config_map("b")) != manifest_digest(wanted)
    assert APPLIED_ANNOTATION not in (wanted["metadata"].get("annotations") or {}), "the builder's dict is untouched"
    assert applied_stamp(config_map("a")) is None


def test_created_then_left_alone_then_updated_when_we_want_a_change() -> None:
    store = Store()
    assert ensure(store, config_map("a")).created == ["ConfigMap/c"]
    unchanged = ensure(store, config_map("a"))
    assert (unchanged.created, unchanged.updated, unchanged.reverted, store.applied) == ([], [], [], 1)
    changes = ensure(store, config_map("b"))
    assert changes.updated == ["ConfigMap/c (.data.k)"]
    assert changes.reverted == []
    assert store.objects[("ConfigMap", "c")]["data"] == {"k": "b"}


def test_an_edit_by_someone_else_is_reverted_drift() -> None:
    store = Store()
    ensure(store, config_map("a"))
    store.objects[("ConfigMap", "c")]["data"]["k"] = "edited by hand"
    changes = ensure(store, config_map("a"))
    assert changes.reverted == ["ConfigMap/c (.data.k)"]
    assert changes.updated == []
    assert store.objects[("ConfigMap", "c")]["data"] == {"k": "a"}


def test_an_object_an_older_operator_applied_is_updated_once() -> None:
    store = Store()
    store.apply(config_map("a"))  # no stamp: applied before stamps existed
    changes = ensure(store, config_map("a"))
    assert changes.updated == ["ConfigMap/c (.metadata.annotations)"]
    assert changes.reverted == []
    again = ensure(store, config_map("a"))
    assert (again.updated, again.reverted) == ([], [])


def test_fields_kept_from_the_live_object_do_not_change_the_stamp() -> None:
    """A StatefulSet's immutable fields go back as the server defaulted them; the stamp stays the builder's."""

    def keep_live(wanted: Manifest, live: Manifest) -> Manifest:
        return {**wanted, "data": {**wanted["data"], "immutable": live["data"]["immutable"]}}

    def built() -> Manifest:
        manifest = config_map("a")
        manifest["data"]["immutable"] = "as built"
        return manifest

    store = Store()
    ensure(store, built(), keep_live=keep_live)
    store.objects[("ConfigMap", "c")]["data"]["immutable"] = "as the server defaulted it"
    again = ensure(store, built(), keep_live=keep_live)
    assert (again.created, again.updated, again.reverted, store.applied) == ([], [], [], 1)
