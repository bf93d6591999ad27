"""How full the member's mail volume is, and when it is too full to take mail.

Why this module exists: a mail store that fills up must refuse mail for a
while, never accept it and lose it, and the agent must say so. Measured on
Debian bookworm with the data directory on a 2 MiB tmpfs: once a write fails
with ENOSPC, Dovecot 2.3.19's LMTP answers ``451 4.2.0 Internal error
occurred`` and Cyrus 3.6.1's ``451 4.3.1 cannot copy message to temporary
file``, so neither loses an acknowledged message by itself; but by then the
store has no room left for its own index, uidlist, seen and replication-state
updates, nothing tells the operator, and a replica in that state still looks
in sync. So the agent keeps a **reserve**: once the free space (or free
inodes: Maildir takes one per message) would fall below it, the master's LMTP
front refuses deliveries with ``452 4.3.1`` before the daemon sees them, a
replica refuses journal entries, replication is reported ``failing`` rather
than in sync, and ``/status``, ``/metrics`` and the log name the volume.

The reserve is the smaller of 1 GiB and 1 % of the volume (and of 10,000
inodes and 1 % of them), or what ``--min-free-bytes`` says. Free space is what
an unprivileged writer may use (``f_bavail``), since the daemon runs as one.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Final

log = logging.getLogger("mailshard.agent")

GIB: Final = 1024**3
DEFAULT_RESERVE_FRACTION: Final = 0.01
DEFAULT_RESERVE_BYTES_CAP: Final = GIB
DEFAULT_RESERVE_INODES_CAP: Final = 10_000


@dataclass(frozen=True)
class VolumeReading:
    """One ``statvfs`` of the volume, in bytes and inodes an unprivileged writer may use."""

    total_bytes: int
    free_bytes: int
    total_inodes: int
    """0 on filesystems that allocate inodes on demand (no limit to watch)."""
    free_inodes: int


def read_volume(path: Path) -> VolumeReading:
    stat = os.statvfs(path)
    return VolumeReading(
        total_bytes=stat.f_blocks * stat.f_frsize,
        free_bytes=stat.f_bavail * stat.f_frsize,
        total_inodes=stat.f_files,
        free_inodes=stat.f_favail,
    )


@dataclass(frozen=True)
class Reserve:
    """What must stay free on the volume; None means the default share of the volume."""

    min_free_bytes: int | None = None

    def bytes_for(self, reading: VolumeReading) -> int:
        if self.min_free_bytes is not None:
            return self.min_free_bytes
        return min(DEFAULT_RESERVE_BYTES_CAP, int(reading.total_bytes * DEFAULT_RESERVE_FRACTION))

    @staticmethod
    def inodes_for(reading: VolumeReading) -> int:
        return min(DEFAULT_RESERVE_INODES_CAP, int(reading.total_inodes * DEFAULT_RESERVE_FRACTION))


def shortage(
    reading: VolumeReading, reserve: Reserve, *, incoming_bytes: int = 0, incoming_files: int = 0
) -> str | None:
    """Why the volume cannot take this much more and keep its reserve, or None when it can."""
    keep = reserve.bytes_for(reading)
    if reading.free_bytes - incoming_bytes < keep:
        needed = f" (and {incoming_bytes} bytes are waiting)" if incoming_bytes else ""
        return f"{reading.free_bytes} bytes free of {reading.total_bytes}, below the reserve of {keep}{needed}"
    if reading.total_inodes:
        keep_inodes = Reserve.inodes_for(reading)
        if reading.free_inodes - incoming_files < keep_inodes:
            return f"{reading.free_inodes} inodes free of {reading.total_inodes}, below the reserve of {keep_inodes}"
    return None


class VolumeWatch:
    """The mail volume as last read, and whether it is full; read again at every question."""

    def __init__(self, path: Path, reserve: Reserve) -> None:
        self.path = path
        self.reserve = reserve
        self.reading: VolumeReading | None = None
        self.full: str | None = None
        """Why the volume is below its reserve, while it is; logged when that changes."""
        self.error: str | None = None
        self.refused = 0
        """Writes refused for space (LMTP commands, messages, journal entries)."""

    def room_for(self, incoming_bytes: int, files: int) -> str | None:
        """Why the volume cannot take this much more and keep its reserve, or None when it can.

        Asked with nothing incoming (each poll), it only decides whether the
        volume is reported full; asked before a write, a refusal is counted. An
        unreadable volume refuses nothing: the daemon's own write then decides.
        """
        try:
            reading = read_volume(self.path)
        except OSError as exc:
            error = f"cannot tell how full the mail volume {self.path} is: {exc}"
            if error != self.error:
                log.error("%s", error)
            self.reading, self.error = None, error
            return None
        self.reading, self.error = reading, None
        found = shortage(reading, self.reserve)
        full = (
            None if found is None else f"mail volume {self.path} is full: {found}; it takes no mail until there is room"
        )
        if full is not None and self.full is None:
            log.error("%s", full)
        elif full is None and self.full is not None:
            log.info("mail volume %s has room again: %d bytes free", self.path, reading.free_bytes)
        self.full = full
        refused = full or shortage(reading, self.reserve, incoming_bytes=incoming_bytes, incoming_files=files)
        if refused is not None and (incoming_bytes or files):
            self.refused += 1
            if full is None:  # refused for this write's size alone
                log.warning("refused a write of %d bytes: mail volume %s: %s", incoming_bytes, self.path, refused)
        return refused

    def to_json(self) -> dict[str, object]:
        reading = self.reading
        return {
            "path": str(self.path),
            "totalBytes": reading.total_bytes if reading else None,
            "freeBytes": reading.free_bytes if reading else None,
            "reserveBytes": self.reserve.bytes_for(reading) if reading else None,
            "totalInodes": reading.total_inodes if reading else None,
            "freeInodes": reading.free_inodes if reading else None,
            "reserveInodes": Reserve.inodes_for(reading) if reading else None,
            "full": self.full is not None,
            "refusedForSpace": self.refused,
        }
