"""Timing a routing table on its way: every version of a routing ConfigMap as the API delivers it, and percentiles.

The propagation tests measure from a change (a shard's status, a table
written) to its effect (a new table version, a login on the new master). A
watch on the ConfigMap, in its own thread and with its own API client, records
each version with the moment it arrived, so the measuring side polls nothing
and adds no load to the API server it is timing.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from kubernetes import client, config, watch

from mailshard.api.routing import RoutingTable, RoutingTableError, parse_table
from mailshard.proxy.sidecar import config_map_text


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def describe(values: Sequence[float]) -> str:
    """`p50 … ms, p99 … ms, max … ms over N`, the line every propagation test prints."""
    return (
        f"p50 {statistics.median(values) * 1000:.0f} ms, p99 {percentile(values, 0.99) * 1000:.0f} ms, "
        f"max {max(values) * 1000:.0f} ms over {len(values)}"
    )


class TableWatch:
    """Each version of ConfigMap `name` in `namespace`, with the `time.monotonic()` at which the watch delivered it."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str) -> None:
        self.namespace, self.name = namespace, name
        self.seen: list[tuple[float, RoutingTable]] = []
        self._changed = threading.Condition()
        self._stopped = threading.Event()
        self._api = config.new_client_from_config(config_file=str(kubeconfig))
        self._thread = threading.Thread(target=self._follow, name=f"watch-{name}", daemon=True)
        self._thread.start()

    def _follow(self) -> None:
        core = client.CoreV1Api(self._api)
        selector = f"metadata.name={self.name}"
        resource_version: str | None = None
        while not self._stopped.is_set():
            try:
                if resource_version is None:
                    listed = core.list_namespaced_config_map(self.namespace, field_selector=selector)
                    for item in listed.items:
                        self._record(item)
                    resource_version = listed.metadata.resource_version
                stream = watch.Watch().stream(
                    core.list_namespaced_config_map,
                    self.namespace,
                    field_selector=selector,
                    resource_version=resource_version,
                    timeout_seconds=2,  # comes back every 2 s to notice stop()
                )
                for event in stream:
                    resource_version = event["object"].metadata.resource_version
                    if event["type"] in ("ADDED", "MODIFIED"):
                        self._record(event["object"])
            except client.ApiException as error:
                if error.status == 410:  # expired: list again
                    resource_version = None
                else:
                    time.sleep(0.2)
            except Exception:  # a dropped connection: watch again from where it was
                time.sleep(0.2)

    def _record(self, config_map: object) -> None:
        arrived = time.monotonic()
        text = config_map_text(config_map)
        if text is None:
            return
        try:
            table = parse_table(text)
        except RoutingTableError:
            return
        with self._changed:
            if not self.seen or self.seen[-1][1] != table:
                self.seen.append((arrived, table))
            self._changed.notify_all()

    def wait_for(
        self, check: Callable[[RoutingTable], bool], *, since: float, timeout: float, what: str
    ) -> tuple[RoutingTable, float]:
        """The first version delivered at or after `since` (monotonic) for which `check` holds, and when it came."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                for arrived, table in self.seen:
                    if arrived >= since and check(table):
                        return table, arrived
                left = deadline - time.monotonic()
                if left <= 0:
                    versions = [table.version for _, table in self.seen[-5:]]
                    raise AssertionError(f"no table with {what} within {timeout} s (last versions seen: {versions})")
                self._changed.wait(left)

    def latest(self) -> RoutingTable | None:
        with self._changed:
            return self.seen[-1][1] if self.seen else None

    def stop(self) -> None:
        self._stopped.set()
        self._thread.join(5)
        self._api.close()
