"""Mail members for the benchmarks: each agent its own process on loopback, as in a pod, and always cleaned up.

Why this module exists: every mail benchmark needs the same things around the
figure it measures: real Dovecot or Cyrus members run by ``python -m
mailshard.agent``, their readiness, a way to read a member's store, and a
teardown that leaves nothing behind whether the run ends, fails, or is
interrupted. ``Members`` is a context manager; its ``stop`` SIGTERMs every
agent (which stops its daemon), then kills whatever is left by process group
and removes the directory. Each agent also gets SIGTERM if the benchmark's
process dies without cleaning up (``PR_SET_PDEATHSIG``). ``run`` wires SIGINT
and SIGTERM to an orderly cancellation and turns a run that cannot start into
one line and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from mailshard.agent import cyruspreload
from mailshard.agent.cyrustools import CyrusInstall, CyrusTools
from mailshard.agent.doveadm import Doveadm
from mailshard.agent.identity import resolve_run_as
from mailshard.agent.observe import MailboxState
from mailshard.backends import Backend
from mailshard.backends.cyrus import IMAPD_CONF
from mailshard.backends.dovecot import CONF_FILE
from mailshard_harness.testing import free_loopback_ports

REPO = Path(__file__).resolve().parents[1]
PASSWORD = "bench-password"
TOKEN = "bench"
PORT_NAMES = ("imap", "pop3", "lmtp", "managesieve", "doveadm", "agent")
T = TypeVar("T")


class CannotRunError(Exception):
    """The benchmark cannot run here; the message is the one line that says why."""


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(fraction * (len(ordered) - 1)))]


def cyrus_root() -> Path:
    """Where ``.ci/install-cyrus-prefix`` extracts Cyrus (the same defaults as the script)."""
    if os.environ.get("MAILSHARD_CYRUS_ROOT"):
        return Path(os.environ["MAILSHARD_CYRUS_ROOT"])
    return Path("/var/cache/mailshard/cyrus-root") if os.geteuid() == 0 else Path.home() / ".cache/mailshard/cyrus-root"


def check_can_run(backends: list[Backend]) -> None:
    """Raise CannotRunError naming the first thing missing for these backends."""
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("vmail")
        except KeyError:
            raise CannotRunError(
                "running as root needs the unprivileged user vmail (run .ci/install-mail-deps)"
            ) from None
    if Backend.DOVECOT in backends and (shutil.which("dovecot") is None or shutil.which("doveadm") is None):
        raise CannotRunError("dovecot is not installed (run .ci/install-mail-deps)")
    if Backend.CYRUS in backends:
        if not (cyrus_root() / ".complete").exists():
            raise CannotRunError(f"no Cyrus prefix at {cyrus_root()} (run .ci/install-cyrus-prefix)")
        if shutil.which("gcc") is None:
            raise CannotRunError("gcc is needed to build the library the agent preloads into Cyrus")


def _die_with_parent() -> None:
    """In the agent's process: SIGTERM when the benchmark dies, so the agent still stops its daemon."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Member:
    """One member: its directory, ports and agent process."""

    name: str
    root: Path
    backend: Backend
    ports: dict[str, int]
    proc: subprocess.Popen[bytes] | None = None

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def mail_dir(self) -> Path:
        return self.data_dir / "mail"

    def status(self) -> dict[str, Any] | None:
        """The agent's ``/status``, or None while it does not answer."""
        request = urllib.request.Request(
            f"http://127.0.0.1:{self.ports['agent']}/status", headers={"Authorization": f"Bearer {TOKEN}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                document: dict[str, Any] = json.loads(response.read())
                return document
        except (OSError, ValueError):
            return None

    def store_reader(self) -> Callable[[], Awaitable[tuple[MailboxState, ...]]]:
        """Reads every mailbox's state straight from this member's store (doveadm, or Cyrus's tools)."""
        run_as = resolve_run_as(None)
        if self.backend is Backend.CYRUS:
            return CyrusTools(CyrusInstall(cyrus_root()), self.data_dir / "conf" / IMAPD_CONF, run_as).mailbox_status
        return Doveadm("doveadm", self.data_dir / "conf" / CONF_FILE, run_as).mailbox_status

    def last_log_line(self) -> str:
        """The daemon's last fatal line, else the agent's last error, else its last line: what to say why."""
        try:
            lines = (self.root / "agent.log").read_text(errors="replace").splitlines()
        except OSError:
            return "(no log)"
        for mark in ("Fatal:", " ERROR "):
            found = [line for line in lines if mark in line]
            if found:
                return found[-1]
        return lines[-1] if lines else "(empty log)"


@dataclass
class Members:
    """Members under one temporary directory, sharing one users file; ``stop`` removes every trace."""

    users: list[str]
    base: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="ms-bench-")))
    members: list[Member] = field(default_factory=list)
    _preload: Path | None = None

    def __post_init__(self) -> None:
        self.base.chmod(0o755)  # the daemons run as vmail
        users_file = self.base / "users"
        users_file.write_text("".join(f"{user}:{{PLAIN}}{PASSWORD}::::::\n" for user in self.users))
        users_file.chmod(0o644)
        (self.base / "token").write_text(TOKEN + "\n")

    def __enter__(self) -> Members:
        return self

    def __exit__(self, *_: object) -> None:
        self.stop()

    def lone_master(self, backend: Backend, name: str) -> Member:
        """A master whose replica is down: its peer's ports are configured, and nothing listens on them."""
        master = self._member(backend, name)
        self._start(master, self._ports(), "master")
        return master

    def pair(self, backend: Backend, name: str) -> tuple[Member, Member]:
        """A replicating pair; the replica starts first, so the master never begins against a closed port."""
        master, replica = self._member(backend, f"{name}-a"), self._member(backend, f"{name}-b")
        self._start(replica, master.ports, "replica")
        self._start(master, replica.ports, "master")
        return master, replica

    def _member(self, backend: Backend, name: str) -> Member:
        root = self.base / name
        (root / "data").mkdir(parents=True)
        for directory in (root, root / "data"):
            directory.chmod(0o755)
        member = Member(name, root, backend, self._ports())
        self.members.append(member)
        return member

    def _ports(self) -> dict[str, int]:
        """Free ports below the ephemeral range, none handed out twice in this run (see `free_loopback_ports`)."""
        return dict(zip(PORT_NAMES, free_loopback_ports(len(PORT_NAMES)), strict=True))

    def _start(self, member: Member, peer_ports: dict[str, int], role: str) -> None:
        config = {
            "shard": "bench",
            "backend": member.backend.value,
            "member": member.name,
            "listenAddress": "127.0.0.1",
            "ports": {key: value for key, value in member.ports.items() if key != "agent"},
            "peer": {
                "name": "peer",
                "host": "127.0.0.1",
                "doveadmPort": peer_ports["doveadm"],
                "agentPort": peer_ports["agent"],
            },
            "usersFile": str(self.base / "users"),
            "doveadmPassword": "bench-secret",
        }
        (member.root / "runtime.json").write_text(json.dumps(config))
        (member.root / "role").write_text(role + "\n")
        argv = [sys.executable, "-m", "mailshard.agent", "--config", str(member.root / "runtime.json")]
        argv += ["--role-file", str(member.root / "role"), "--data-dir", str(member.data_dir)]
        argv += ["--listen", f"127.0.0.1:{member.ports['agent']}", "--token-file", str(self.base / "token")]
        env = dict(os.environ, PYTHONPATH=str(REPO / "operator"), PYTHONUNBUFFERED="1")
        if member.backend is Backend.CYRUS:
            env["MAILSHARD_CYRUS_ROOT"] = str(cyrus_root())
            env[cyruspreload.ENV_PRELOAD] = str(self._cyrus_preload())
        with open(member.root / "agent.log", "ab") as log:
            member.proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads start processes here
            )

    def _cyrus_preload(self) -> Path:
        """The library the agent preloads into Cyrus (its logs; unique mailbox ids), built as the image builds it."""
        if self._preload is None:
            library = self.base / cyruspreload.DEFAULT_PRELOAD.name
            subprocess.run(cyruspreload.compile_command(library), check=True, capture_output=True)
            library.chmod(0o755)
            self._preload = library
        return self._preload

    def stop(self) -> None:
        for member in self.members:
            if member.proc is not None and member.proc.poll() is None:
                member.proc.send_signal(signal.SIGTERM)
        for member in self.members:
            if member.proc is None:
                continue
            try:
                member.proc.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(member.proc.pid, signal.SIGKILL)
                member.proc.wait()
            with contextlib.suppress(OSError, ValueError, ProcessLookupError, PermissionError):
                os.killpg(int((member.data_dir / "run" / "master.pid").read_text().strip()), signal.SIGKILL)
        self.members.clear()
        shutil.rmtree(self.base, ignore_errors=True)


async def wait_for(
    member: Member, predicate: Callable[[dict[str, Any]], bool], what: str, *, within: float = 120.0
) -> dict[str, Any]:
    """Poll the member's status until ``predicate`` holds; CannotRunError naming what never happened."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if member.proc is not None and member.proc.poll() is not None:
            raise CannotRunError(f"the agent of {member.name} exited: {member.last_log_line()}")
        status = await asyncio.to_thread(member.status)
        if status is not None and predicate(status):
            return status
        await asyncio.sleep(0.2)
    raise CannotRunError(f"{member.name}: no {what} within {within:.0f} s; its log ends: {member.last_log_line()}")


def master_ready(status: dict[str, Any]) -> bool:
    return bool(status["readyAsMaster"])


def in_sync(status: dict[str, Any]) -> bool:
    replication = status["replication"]
    return bool(replication["state"] == "in-sync" and replication["lagSeconds"] == 0)


async def together(*steps: Coroutine[Any, Any, T]) -> list[T]:
    """Run steps at once; unlike ``gather``, every one of them has ended when this returns or raises.

    So a cancelled benchmark never stops its members under a step still
    talking to them. The first failure is raised as itself.
    """
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(step) for step in steps]
    except BaseExceptionGroup as failed:
        raise failed.exceptions[0] from None
    return [task.result() for task in tasks]


def run(name: str, main: Callable[[], Coroutine[Any, Any, None]]) -> int:
    """Run a benchmark's coroutine; SIGINT and SIGTERM cancel it (its ``with Members`` cleans up); an exit code."""

    async def cancellable() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        await main()

    try:
        asyncio.run(cancellable())
    except CannotRunError as exc:
        print(f"{name}: {exc}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        print(f"{name}: interrupted; everything it started is stopped and removed", file=sys.stderr)
        return 130
    except Exception as exc:  # one line, as for a run that cannot start; the members are gone either way
        print(f"{name}: failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


def machine() -> dict[str, Any]:
    """What else the machine was doing: the figures are only comparable with this beside them."""
    return {
        "cores": os.cpu_count(),
        "load_average_1_5_15": [round(value, 2) for value in os.getloadavg()],
        "date": time.strftime("%Y-%m-%d %H:%M %Z"),
    }
