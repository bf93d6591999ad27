"""The library preloaded into every Cyrus process the agent runs (``cyrus_preload.c``), and how it is found.

Why this module exists: two things Debian's Cyrus 3.6 does cannot be changed
by its configuration, only from inside its processes:

- it logs only through syslog(3) to ``/dev/log``, which a pod lacks and uid
  10001 cannot create; the library sends the lines to the agent's socket
  instead (``daemonlog``);
- built without libuuid, it makes a new mailbox's unique id from ``rand()``
  seeded with the current second, so two processes that create a mailbox in
  the same second give both the same id, which breaks replication of both
  users for good; the library mixes kernel randomness into every seed.

The Cyrus image builds the library at ``DEFAULT_PRELOAD`` (the
Dockerfile runs ``compile_command``'s command); elsewhere
``MAILSHARD_CYRUS_PRELOAD`` names it. Without it Cyrus still runs, and the
agent warns that its log lines are lost and mailbox ids may collide.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Final

from mailshard.agent.daemonlog import ENV_SOCKET

PRELOAD_SOURCE: Final = Path(__file__).with_name("cyrus_preload.c")
DEFAULT_PRELOAD: Final = Path("/opt/mailshard/lib/libmailshard-cyrus.so")
"""Where the Cyrus image builds the library."""
ENV_PRELOAD: Final = "MAILSHARD_CYRUS_PRELOAD"


def compile_command(output: Path, source: Path = PRELOAD_SOURCE) -> list[str]:
    """How the library is built (the Cyrus Dockerfile runs the same command)."""
    return ["gcc", "-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o", str(output), str(source)]


def preload_path() -> Path:
    return Path(os.environ.get(ENV_PRELOAD) or DEFAULT_PRELOAD)


def daemon_environment(base: dict[str, str], library: Path, syslog_socket: Path) -> dict[str, str]:
    """``base`` plus the preloaded library, told to send syslog lines to ``syslog_socket``."""
    preload = " ".join(filter(None, [str(library), base.get("LD_PRELOAD")]))
    return {**base, "LD_PRELOAD": preload, ENV_SOCKET: str(syslog_socket)}
