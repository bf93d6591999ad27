"""The routing sidecar's metrics: the version in force, when it was applied, and how late it came."""

from __future__ import annotations

import datetime
from dataclasses import replace
from pathlib import Path

import pytest

from mailshard.api.routing import RoutingTable, ShardRoute, ShardState, as_written_at, render_table
from mailshard.proxy.metrics import SidecarMetrics
from mailshard.proxy.sidecar import Applied, apply_table

pytestmark = pytest.mark.unit

WRITTEN = as_written_at(datetime.datetime(2025, 6, 1, 12, 0, 0, 250000, tzinfo=datetime.UTC))
TABLE = RoutingTable(
    version=3,
    slots=("s1",) * 4,
    shards={"s1": ShardRoute(state=ShardState.SERVING, master="s1-a", master_host="s1-a-0.s1-a.mail.svc")},
    written_at=WRITTEN,
)
LABELS = {"namespace": "mail", "cluster": "demo"}


def value(metrics: SidecarMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name, LABELS)


class Sidecar:
    """`apply_table` and the metrics as `watch` drives them, with a clock the test sets."""

    def __init__(self, routes: Path) -> None:
        self.routes = routes
        self.metrics = SidecarMetrics("mail", "demo")
        self.table: RoutingTable | None = None
        self.now = 0.0

    def take(self, table: RoutingTable | str, *, at: float) -> Applied:
        self.now = at
        text = table if isinstance(table, str) else render_table(table)
        applied = apply_table(text, previous=self.table, routes_file=self.routes, clock=lambda: self.now)
        applied.tell(self.metrics, replaced=self.table)
        self.table = applied.table
        return applied


def test_the_first_table_is_in_force_but_is_no_propagation(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path / "routes.txt")
    assert value(sidecar.metrics, "mailshard_proxy_routing_table_version") is None  # no table: no made-up version
    assert value(sidecar.metrics, "mailshard_proxy_route_propagation_seconds_count") == 0
    assert value(sidecar.metrics, "mailshard_proxy_routing_tables_refused_total") == 0
    applied = sidecar.take(TABLE, at=WRITTEN.timestamp() + 3600)  # started an hour after the table was written
    assert applied.applied_at == WRITTEN.timestamp() + 3600
    assert value(sidecar.metrics, "mailshard_proxy_routing_table_version") == 3
    assert value(sidecar.metrics, "mailshard_proxy_routing_table_applied_timestamp_seconds") == applied.applied_at
    assert value(sidecar.metrics, "mailshard_proxy_route_propagation_seconds_count") == 0


def test_a_new_version_observes_applied_minus_written(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path / "routes.txt")
    sidecar.take(TABLE, at=WRITTEN.timestamp() + 60)
    moved = replace(TABLE, version=4, written_at=WRITTEN + datetime.timedelta(seconds=100))
    sidecar.take(moved, at=WRITTEN.timestamp() + 100.4)
    assert value(sidecar.metrics, "mailshard_proxy_routing_table_version") == 4
    assert value(sidecar.metrics, "mailshard_proxy_route_propagation_seconds_count") == 1
    assert value(sidecar.metrics, "mailshard_proxy_route_propagation_seconds_sum") == pytest.approx(0.4)
    bucket = {**LABELS, "le": "0.5"}
    assert sidecar.metrics.registry.get_sample_value("mailshard_proxy_route_propagation_seconds_bucket", bucket) == 1
    assert (
        sidecar.metrics.registry.get_sample_value(
            "mailshard_proxy_route_propagation_seconds_bucket", {**LABELS, "le": "0.25"}
        )
        == 0
    )


def test_the_same_version_again_and_refused_documents_apply_nothing(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path / "routes.txt")
    sidecar.take(TABLE, at=WRITTEN.timestamp() + 1)
    again = sidecar.take(TABLE, at=WRITTEN.timestamp() + 50)  # a re-list after a reconnect
    assert again.applied_at is None
    assert value(sidecar.metrics, "mailshard_proxy_routing_table_applied_timestamp_seconds") == WRITTEN.timestamp() + 1
    sidecar.take(replace(TABLE, version=2), at=WRITTEN.timestamp() + 60)
    sidecar.take("{", at=WRITTEN.timestamp() + 61)
    assert value(sidecar.metrics, "mailshard_proxy_routing_tables_refused_total") == 2
    assert value(sidecar.metrics, "mailshard_proxy_routing_table_version") == 3
    assert value(sidecar.metrics, "mailshard_proxy_route_propagation_seconds_count") == 0


def test_a_table_without_a_write_time_or_a_skewed_clock(tmp_path: Path) -> None:
    sidecar = Sidecar(tmp_path / "routes.txt")
    sidecar.take(replace(TABLE, written_at=None), at=1.0)
    sidecar.take(replace(TABLE, version=4, written_at=None), at=2.0)  # an older operator's table: nothing to measure
    assert value(sidecar.metrics, "mailshard_proxy_routing_table_version") == 4
    assert value(sidecar.metrics, "mailshard_proxy_route_propagation_seconds_count") == 0
    sidecar.take(replace(TABLE, version=5), at=WRITTEN.timestamp() - 2)  # the proxy's clock 2 s behind
    assert value(sidecar.metrics, "mailshard_proxy_route_propagation_seconds_count") == 1
    assert value(sidecar.metrics, "mailshard_proxy_route_propagation_seconds_sum") == 0


def test_a_table_restored_after_a_restart_is_the_version_in_force_and_no_propagation() -> None:
    metrics = SidecarMetrics("mail", "demo")
    metrics.restored(TABLE, at=1_700_000_000.0)
    assert value(metrics, "mailshard_proxy_routing_table_version") == 3
    assert value(metrics, "mailshard_proxy_routing_table_applied_timestamp_seconds") == 1_700_000_000.0
    assert value(metrics, "mailshard_proxy_route_propagation_seconds_count") == 0
