"""Prometheus metrics of one agent, in a registry of its own.

Why this module exists: the numbers an operator alerts on (daemon up, serving
mode, lag, last successful sync, restarts, a full volume) are defined once here. Each agent
gets its own ``CollectorRegistry`` rather than the global one, so several
agents can live in one process (tests) without clashing.
"""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from mailshard.backends import ServingMode

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class AgentMetrics:
    def __init__(self, shard: str, member: str) -> None:
        self.registry = CollectorRegistry()
        labels = {"shard": shard, "member": member}
        names = list(labels)
        self._labels = labels
        self.daemon_up = Gauge(
            "mailshard_daemon_up", "1 when the mail daemon runs and has started.", names, registry=self.registry
        ).labels(**labels)
        self.mode = Gauge(
            "mailshard_serving_mode",
            "1 for the mode this member serves in (master, replica or fenced), 0 for the others.",
            [*names, "mode"],
            registry=self.registry,
        )
        self.lag = Gauge(
            "mailshard_replication_lag_seconds",
            "Age of the oldest change the replica lacks, as first observed (NaN when unknown).",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.last_sync = Gauge(
            "mailshard_replication_last_success_timestamp_seconds",
            "Unix time of the most recent successful dsync of any user reported by the replicator.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.restarts = Counter(
            "mailshard_daemon_restarts", "Times the daemon was restarted after it died.", names, registry=self.registry
        ).labels(**labels)
        self.journal_entries = Gauge(
            "mailshard_journal_entries",
            "Deliveries held in this member's journal until it is known to hold them (replica side).",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.journaled = Counter(
            "mailshard_deliveries_journaled",
            "Deliveries this master's LMTP front wrote to the replica's journal before acknowledging them.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.unjournaled = Counter(
            "mailshard_deliveries_unjournaled",
            "Deliveries acknowledged without a journal copy on the replica (it was unreachable): at risk.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.volume_free_bytes = Gauge(
            "mailshard_volume_free_bytes",
            "Bytes the daemon may still write on the mail volume (statvfs f_bavail).",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.volume_full = Gauge(
            "mailshard_volume_full",
            "1 while the mail volume is below its reserve: the member takes no mail (LMTP 452 4.3.1).",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.refused_for_space = Counter(
            "mailshard_deliveries_refused_for_space",
            "LMTP commands (MAIL, RCPT, a message) and journal entries refused because the volume would fall "
            "below its reserve.",
            names,
            registry=self.registry,
        ).labels(**labels)
        self.lag.set(math.nan)

    def set_mode(self, mode: ServingMode) -> None:
        for candidate in ServingMode:
            self.mode.labels(**self._labels, mode=candidate.value).set(1 if candidate is mode else 0)

    def render(self) -> bytes:
        return generate_latest(self.registry)
