"""Cyrus's log lines, which it writes only to syslog, reach the agent's stdout.

Why this module exists: Cyrus 3.6 logs only through syslog(3), which sends to
the unix socket ``/dev/log``. A pod has no syslog daemon, and an agent running
as uid 10001 can neither create ``/dev/log`` (``/dev`` is the runtime's
root-owned tmpfs) nor start a syslogd that would (busybox's needs the same).
So Cyrus runs with a preloaded library (``cyruspreload``) that sends each line
to the unix datagram socket named by ``MAILSHARD_SYSLOG_SOCKET`` instead;
``SyslogReceiver`` binds that socket in the member's run directory and writes
every line to the agent's log, at the line's own severity. This works for any
uid, and the mail tier runs it with the extracted Cyrus prefix exactly as the
image does.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import socket
from pathlib import Path
from typing import Final

from mailshard.agent.identity import RunAs

ENV_SOCKET: Final = "MAILSHARD_SYSLOG_SOCKET"
"""Read by the preloaded library in every Cyrus process: where to send the lines."""
RECEIVE_BUFFER: Final = 1024 * 1024
"""Bytes of lines the kernel queues for the agent: a burst of logins must not be dropped."""

_PRIORITY = re.compile(rb"^<(\d{1,3})>")
_LEVELS: Final = (
    logging.CRITICAL,  # emerg
    logging.CRITICAL,  # alert
    logging.CRITICAL,  # crit
    logging.ERROR,  # err
    logging.WARNING,  # warning
    logging.INFO,  # notice
    logging.INFO,  # info
    logging.DEBUG,  # debug
)

log = logging.getLogger("mailshard.agent.daemonlog")
cyrus_log = logging.getLogger("mailshard.agent.cyrus")


def parse_line(datagram: bytes) -> tuple[int, str]:
    """``<PRI>ident[pid]: text`` → (logging level, ``ident[pid]: text``); no priority is logged as INFO."""
    match = _PRIORITY.match(datagram)
    level = _LEVELS[int(match.group(1)) & 7] if match else logging.INFO
    text = datagram[match.end() :] if match else datagram
    return level, text.decode(errors="replace").rstrip("\n\0")


class SyslogReceiver:
    """A unix datagram socket whose every line goes to the agent's log."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sock: socket.socket | None = None
        self.received = 0

    @property
    def listening(self) -> bool:
        return self._sock is not None

    def start(self, owner: RunAs) -> None:
        """Bind (replacing a socket left by an earlier agent), writable by the daemon's user only."""
        if self._sock is not None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
            sock.setblocking(False)
            sock.bind(str(self.path))
            self.path.chmod(0o600)
            owner.own(self.path)
        except OSError:
            sock.close()
            raise
        self._sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain)
        log.info("Cyrus's syslog lines are read from %s", self.path)

    def _drain(self) -> None:
        assert self._sock is not None
        while True:
            try:
                datagram = self._sock.recv(65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                log.error("reading Cyrus's syslog lines failed: %s", exc)
                return
            self.received += 1
            level, text = parse_line(datagram)
            cyrus_log.log(level, "%s", text)

    def stop(self) -> None:
        """Read what is queued, then close and remove the socket."""
        if self._sock is None:
            return
        self._drain()
        sock, self._sock = self._sock, None
        asyncio.get_running_loop().remove_reader(sock.fileno())
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
