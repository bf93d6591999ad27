"""Timing a routing table on its way: every version of a routing ConfigMap as the API delivers it, and percentiles.

The propagation tests measure from a change (a shard's status, a table
written) to its effect (a new table version, a login on the new master). A
watch on the object, in its own thread and with its own API client, records
each change with the moment it arrived, so the measuring side polls nothing
and adds no load to the API server it is timing.
"""

from __future__ import annotations

import functools
import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Generic, TypeVar

from kubernetes import client, config, watch

from mailshard.api.constants import GROUP
from mailshard.api.routing import RoutingTable, RoutingTableError, parse_table
from mailshard.api.v1alpha1 import VERSION, MailShardStatus
from mailshard.proxy.sidecar import config_map_text

T = TypeVar("T")


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def describe(values: Sequence[float]) -> str:
    """`p50 … ms, p99 … ms, max … ms over N`, the line every propagation test prints."""
    return (
        f"p50 {statistics.median(values) * 1000:.0f} ms, p99 {percentile(values, 0.99) * 1000:.0f} ms, "
        f"max {max(values) * 1000:.0f} ms over {len(values)}"
    )


class ObjectWatch(Generic[T]):
    """What one object reads as (`read`, None: nothing yet) each time it changes, with when the watch delivered it.

    `kind` is a list function of the kubernetes client taking a namespace and a field selector (as
    `list_namespaced_config_map`), made from the watch's own API client.
    """

    def __init__(
        self,
        kubeconfig: Path,
        namespace: str,
        name: str,
        *,
        kind: Callable[[client.ApiClient], Callable[..., Any]],
        read: Callable[[Any], T | None],
    ) -> None:
        self.namespace, self.name, self._read = namespace, name, read
        self.seen: list[tuple[float, T]] = []
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._api = config.new_client_from_config(config_file=str(kubeconfig))
        self._list = kind(self._api)
        self._thread = threading.Thread(target=self._follow, name=f"watch-{name}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        selector = f"metadata.name={self.name}"
        resource_version: str | None = None
        while not self._stopped.is_set():
            try:
                if resource_version is None:
                    listed = self._list(self.namespace, field_selector=selector)
                    for item in _items(listed):
                        self._record(item)
                    resource_version = _resource_version(listed)
                stream = watch.Watch().stream(
                    self._list,
                    self.namespace,
                    field_selector=selector,
                    resource_version=resource_version,
                    timeout_seconds=2,  # comes back every 2 s to notice stop()
                )
                for event in stream:
                    resource_version = _resource_version(event["object"])
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(event["object"])
            except client.ApiException as error:
                if error.status == 410:  # expired: list again
                    resource_version = None
                else:
                    time.sleep(0.2)
            except Exception:  # a dropped connection: watch again from where it was
                time.sleep(0.2)

    def _record(self, item: Any) -> None:
        arrived = time.monotonic()
        value = self._read(item)
        if value is None:
            return
        with self._changed:
            if not self.seen or self.seen[-1][1] != value:
                self.seen.append((arrived, value))
            self._changed.notify_all()

    def wait_for(self, check: Callable[[T], bool], *, since: float, timeout: float, what: str) -> tuple[T, float]:
        """The first value delivered at or after `since` (monotonic) for which `check` holds, and when it came."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for arrived, value in self.seen:
                    if arrived >= since and check(value):
                        return value, arrived
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {what} within {timeout} s (last seen: {self.seen[-3:]})")
                self._changed.wait(left)

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._api.close()


def _items(listed: Any) -> list[Any]:
    return list(listed["items"] if isinstance(listed, dict) else listed.items)


def _resource_version(item: Any) -> str:
    return str(item["metadata"]["resourceVersion"] if isinstance(item, dict) else item.metadata.resource_version)


def _routing_table(config_map: Any) -> RoutingTable | None:
    text = config_map_text(config_map)
    try:
        return parse_table(text) if text is not None else None
    except RoutingTableError:
        return None


def table_watch(kubeconfig: Path, namespace: str, name: str) -> ObjectWatch[RoutingTable]:
    """Each version of the routing ConfigMap `name`."""
    return ObjectWatch(
        kubeconfig,
        namespace,
        name,
        kind=lambda api: client.CoreV1Api(api).list_namespaced_config_map,
        read=_routing_table,
    )


def _routed_member(shard: Any) -> str | None:
    raw = {k: v for k, v in (shard.get("status") or {}).items() if k != "kopf"}
    return MailShardStatus.model_validate(raw).routed_member if raw else None


def routed_member_watch(kubeconfig: Path, namespace: str, shard: str) -> ObjectWatch[str]:
    """Each change of the member a MailShard's status routes its users to (`MailShardStatus.routed_member`)."""

    def kind(api: client.ApiClient) -> Callable[..., Any]:
        return functools.partial(
            client.CustomObjectsApi(api).list_namespaced_custom_object, GROUP, VERSION, plural="mailshards"
        )

    return ObjectWatch(kubeconfig, namespace, shard, kind=kind, read=_routed_member)
