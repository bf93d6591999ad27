"""Child processes the harness owns: start detached, record, find again, and stop for sure.

A test run can crash or be interrupted at any point, and the next run must be
able to clean up what the last one left, and only that. So every process is
recorded with its PID *and* its kernel start time, and a recorded process is
only ever signalled after both still match and its command line still names
the instance directory. A reused PID is never mistaken for ours.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

_PR_SET_PDEATHSIG = 1


@dataclass(frozen=True)
class ProcessRecord:
    """A started process as the state file remembers it."""

    name: str
    pid: int
    start_ticks: int
    log: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ProcessRecord:
        return cls(
            name=str(data["name"]), pid=int(data["pid"]), start_ticks=int(data["start_ticks"]), log=str(data["log"])
        )


def start_ticks(pid: int) -> int | None:
    """The process' start time in clock ticks since boot, or None if it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses: split after its closing one.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])


def is_alive(record: ProcessRecord) -> bool:
    if start_ticks(record.pid) != record.start_ticks:
        return False
    try:
        state = Path(f"/proc/{record.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def is_ours(record: ProcessRecord, marker: str) -> bool:
    """Alive, the same process we started, and still naming our instance directory."""
    return is_alive(record) and marker in command_line(record.pid)


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    name: str,
    argv: Sequence[str],
    *,
    log: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    die_with_parent: bool = False,
) -> tuple[subprocess.Popen[bytes], ProcessRecord]:
    """Start a process in its own session, output to its log file."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            # A pytest-owned cluster must not outlive a SIGKILLed pytest; a
            # shell-started one (`cluster-up`) must outlive the CLI.
            preexec_fn=_die_with_parent if die_with_parent else None,  # noqa: PLW1509
        )
    ticks = start_ticks(process.pid)
    return process, ProcessRecord(name=name, pid=process.pid, start_ticks=ticks or 0, log=str(log))


def stop(
    records: Sequence[ProcessRecord],
    marker: str,
    *,
    grace: float = 3.0,
    children: Sequence[subprocess.Popen[bytes]] = (),
) -> None:
    """SIGTERM, then SIGKILL after `grace` seconds; only processes that are provably ours.

    kube-apiserver drains for about 60 s on SIGTERM, so the grace is short on
    purpose: a test cluster has nothing worth draining. `children` are the
    Popen handles of processes this very process started, polled so that they
    do not linger as zombies (which would still look alive).
    """
    ours = [r for r in records if is_ours(r, marker)]
    for record in ours:
        _signal_group(record.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(is_alive(r) for r in ours):
        _poll(children)
        time.sleep(0.1)
    for record in ours:
        if is_alive(record):
            _signal_group(record.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(is_alive(r) for r in ours):
        _poll(children)
        time.sleep(0.05)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    # Each component leads its own session (start_new_session), so its process
    # group holds it and anything it forked.
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _poll(children: Sequence[subprocess.Popen[bytes]]) -> None:
    for child in children:
        child.poll()
