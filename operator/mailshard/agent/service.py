"""The agent itself: holds the member's state, runs the daemon, observes, and carries out role changes.

Why this module exists: it is the one place where the pure parts (renderer,
decisions, lag) meet the I/O parts (files, the daemon, doveadm, the peer). It
gathers facts on a fixed interval into one snapshot that ``/status`` and
``/metrics`` serve, and serialises role changes so that they happen one at a
time, in order: persist the new role or fence, re-render, restart the daemon,
wait until it is up.

Failure handling, in one place: an unreadable or invalid runtime config means
no daemon at all (nothing to render), a clear ``configError`` and a failing
``/healthz``; an unknown role means the daemon serves as fenced; a missing
binary, a wrong replication secret or an unreachable peer are reported as
named errors in ``/status`` and in the log, and never change the role; a mail
volume below its reserve (``volume.py``) is reported the same way, and the
member takes no mail until there is room again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from mailshard.agent.cyruspreload import daemon_environment, preload_path
from mailshard.agent.cyrustools import (
    AdminLogin,
    CyrusInstall,
    CyrusToolError,
    CyrusTools,
    create_inboxes,
)
from mailshard.agent.cyrustools import journal_ids as cyrus_journal_ids
from mailshard.agent.daemonlog import SyslogReceiver
from mailshard.agent.decide import (
    Action,
    MemberState,
    ReplicationState,
    decide_action,
    master_and_replica,
    ready_as_master,
    replication_state,
)
from mailshard.agent.doveadm import Doveadm, DoveadmError
from mailshard.agent.front import JournalingFront
from mailshard.agent.identity import RunAs
from mailshard.agent.journal import DeliveryJournal, JournalEntry, prunable, users_caught_up
from mailshard.agent.lag import LagReading, LagTracker
from mailshard.agent.lmtp import LmtpClient, LmtpError
from mailshard.agent.metrics import AgentMetrics
from mailshard.agent.observe import MailboxKey, MailboxState, ParseError, ReplicatorUser, summary_index
from mailshard.agent.peer import PeerAgent, PeerAgentError, Probe, ProbeResult, probe_cyrus_sync, probe_doveadm
from mailshard.agent.state import FenceMarker, RoleFile
from mailshard.agent.supervisor import DaemonSupervisor
from mailshard.agent.volume import Reserve, VolumeWatch
from mailshard.backends import (
    Backend,
    InstancePaths,
    MemberRuntimeConfig,
    ReplicationStrategy,
    Role,
    ServingMode,
    render_dovecot,
)
from mailshard.backends.cyrus import (
    CYRUS_CONF,
    IMAPD_CONF,
    SASLDB_FILE,
    SYNC_ADMIN,
    CyrusSettings,
    delivery_user,
    render_cyrus,
    sasl_users,
)
from mailshard.backends.cyrus import LMTP_SOCKET as CYRUS_LMTP_SOCKET
from mailshard.backends.dovecot import CONF_FILE
from mailshard.backends.dovecot import LMTP_SOCKET as DOVECOT_LMTP_SOCKET

log = logging.getLogger("mailshard.agent")

KICK_INTERVAL = 5.0
"""Seconds between two nudges of the replicator (``doveadm replicator replicate``)."""
PROBE_EVERY = 5
LAG_DEFINITION = (
    "age of the oldest change the replica lacks, from when it was first observed on the master "
    "(UIDNEXT per mailbox, plus message and unseen counts); a lower bound, resolution = poll interval; "
    "null while the replica lacks something it already lacked when this agent first compared (no bound)"
)
"""Probe the peer's doveadm server every this many polls."""
QUICK_STOP_SECONDS = 0.2
"""How long a replica's or fenced member's daemon gets to stop after SIGTERM before its group is SIGKILLed.

Dovecot only: such a daemon serves no client, Dovecot's indexes and mail files
are crash-safe by design, and a dsync cut short is redone by the next one.
Cyrus keeps its graceful stop (its databases need ``ctl_cyrusdb -r`` after a kill).
"""
STARTUP_PEER_TRIES = 3
"""A member recorded as master asks its peer this many times (1 s apart) whether it was superseded."""
JOURNAL_TIMEOUT = 5.0
"""Seconds the front waits for the replica to store a journal entry before acknowledging without one."""
RESEED_PARALLEL = 4
RESEED_ATTEMPTS = 3
RESEED_ATTEMPT_SECONDS = 15.0
"""One user's first re-seed attempt; a returning old master only pulls its difference, which takes well under a
second, so a first attempt this long has stalled (see `_pull_all_users`)."""


def reseed_attempt_seconds(attempt: int) -> float:
    """The bound of one user's re-seed attempt: 15 s, then 60 s, then 240 s.

    The later attempts copy the user whole (its copy set aside), which for a mailbox of thousands of messages on
    a loaded machine takes longer than a stalled incremental attempt may; a fixed 15 s failed every whole copy in
    CI while the master took mail, and the re-seed never finished.
    """
    return float(RESEED_ATTEMPT_SECONDS * 4 ** max(attempt - 1, 0))


SYSLOG_SOCKET = "syslog"
"""The socket in the run directory that Cyrus's syslog lines are sent to (``daemonlog``)."""
PUSH_SECONDS = 3600.0
"""Longest a Cyrus master's full push of every user to a re-seeded replica may take."""
REPLAY_MARGIN_SECONDS = 3600
"""The replay looks for journal ids among messages saved this long before the oldest entry, and since."""


@dataclass(frozen=True)
class NewMailbox:
    """A mailbox a new master is asked to create (`POST /uidnext`), as the old master had it."""

    uidvalidity: int
    uidnext: int
    """Its next UID must be at least this."""


def _not_kept(key: str, new: NewMailbox, actual: int, why: str) -> dict[str, Any]:
    return {"mailbox": key, "uidvalidity": new.uidvalidity, "actual": actual, "why": why}


@dataclass(frozen=True)
class AgentSettings:
    config_path: Path
    role_file: Path
    data_dir: Path
    token: str
    run_as: RunAs
    dovecot_binary: str = "dovecot"
    doveadm_binary: str = "doveadm"
    poll_interval: float = 1.0
    cyrus_root: Path = field(default_factory=lambda: Path(os.environ.get("MAILSHARD_CYRUS_ROOT", "/")))
    """Where Cyrus is installed (``/``, or a prefix extracted by ``.ci/install-cyrus-prefix``).
    Used only when the runtime config says ``backend: cyrus``; not yet a CLI flag."""
    reserve: Reserve = field(default_factory=Reserve)
    """What must stay free on the mail volume (see ``volume.py``)."""
    config_problem: str | None = None
    """Why the config could not even be derived before the agent started (a pod's unreadable shard.json):
    reported as the config error, so the agent never serves."""


def _iso(timestamp: float | None) -> str | None:
    return None if timestamp is None else datetime.fromtimestamp(timestamp, UTC).isoformat()


def load_config(path: Path) -> MemberRuntimeConfig:
    """Read and validate the runtime config; raise ValueError with a one-line reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"runtime config {path} is unreadable: {exc}") from exc
    try:
        return MemberRuntimeConfig.model_validate_json(text)
    except ValidationError as exc:
        raise ValueError(f"runtime config {path} is invalid: {validation_problems(exc)}") from exc


def validation_problems(error: ValidationError) -> str:
    """A pydantic error on one line: each field's path and what is wrong with it."""
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc']) or '<root>'}: {problem['msg']}" for problem in error.errors()
    )


class Agent:
    cyrus_users: frozenset[str] = frozenset()
    """Cyrus: who may receive mail (see ``_is_cyrus_user``); replaced whenever the users file is read."""
    _polls = 0
    _last_kick = 0.0

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        data = settings.data_dir
        self.paths = InstancePaths(
            conf_dir=data / "conf", base_dir=data / "run", state_dir=data / "state", mail_dir=data / "mail"
        )
        self.role_file = RoleFile(settings.role_file)
        self.fence = FenceMarker(data / "fenced")
        self.config: MemberRuntimeConfig | None = None
        self.config_error: str | None = None
        self.doveadm_password: str | None = None
        self.member = MemberState(role=None, fenced=True)
        self.role_error: str | None = None
        self.metrics: AgentMetrics | None = None
        self.supervisor = DaemonSupervisor(
            [settings.dovecot_binary, "-F", "-c", str(self.paths.conf_dir / CONF_FILE)],
            run_as=settings.run_as,
            pid_file=self.paths.base_dir / "master.pid",
            on_restart=self._on_restart,
        )
        self.doveadm = Doveadm(settings.doveadm_binary, self.paths.conf_dir / CONF_FILE, settings.run_as)
        self.cyrus_install = CyrusInstall(settings.cyrus_root)
        self.cyrus = CyrusTools(self.cyrus_install, self.paths.conf_dir / IMAPD_CONF, settings.run_as)
        self.backend = Backend.DOVECOT
        self.syslog = SyslogReceiver(self.paths.base_dir / SYSLOG_SOCKET)  # Cyrus only (see ``daemonlog``)
        self.provisioned = False
        """Cyrus: every user's INBOX exists on this master (see ``create_inboxes``). Reset by every role change."""
        self.provision_error: str | None = None
        self.tracker = LagTracker()
        self.journal = DeliveryJournal(data / "journal")
        self.front: JournalingFront | None = None
        self._users_seen: tuple[int, int] | None = None
        """The users file's (mtime, size) when the Cyrus user database was last built from it."""
        self.front_error: str | None = None
        self.replay_error: str | None = None
        self.mailboxes_from: float | None = None
        """When the current mailbox observation started (this member's clock)."""
        self.peer_observed_from: float | None = None
        """When the peer's last reported mailbox observation started (the peer's clock)."""
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        # Observations, replaced wholesale by each poll.
        self.mailboxes: tuple[MailboxState, ...] = ()
        self.mailbox_error: str | None = None
        self.replicator_users: tuple[ReplicatorUser, ...] = ()
        self.replicator_error: str | None = None
        self.peer_status: dict[str, Any] | None = None
        self.peer_seen_at: float | None = None
        self.peer_mailboxes: dict[MailboxKey, MailboxState] | None = None
        self.peer_error: str | None = None
        self.probe: Probe | None = None
        self.lag: LagReading | None = None
        self.last_success_sync: float | None = None
        self.last_in_sync: float | None = None
        self.observed_at: float | None = None
        self.volume = VolumeWatch(self.paths.mail_dir, settings.reserve)

    @property
    def mode(self) -> ServingMode:
        """What the member serves: fenced whenever there is no valid config to serve with."""
        return ServingMode.FENCED if self.config is None else self.member.mode

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._load()
        self.journal.load()
        if self.config is not None:
            self.metrics = AgentMetrics(self.config.shard, self.config.member)
            self._use_backend(self.config.backend)
            await self._fence_if_superseded()
            self._write_config()
            self._listen_for_syslog()
            await self._write_users()
            self.supervisor.start()
            await self._sync_front()
        else:
            self.metrics = AgentMetrics("unknown", "unknown")
        self._poller = asyncio.create_task(self._poll_loop(), name="agent-poller")

    async def stop(self) -> None:
        self._stopping.set()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        if self.front is not None:
            await self.front.stop()
        await self.supervisor.close()
        self.syslog.stop()
        if self._session is not None:
            await self._session.close()

    async def _fence_if_superseded(self) -> None:
        """A member that was master when it died must not come back as one while its peer serves as master.

        Its role file still says master, but a failover may have promoted the
        peer meanwhile. Starting as master would run its replicator at once, and
        dsync would push the messages it accepted but never replicated into the
        new master, beside their journal replays. So it reads the shard's
        contract first: when a failover replaced it, the operator recorded it
        there as superseded (``shard.json``) until it is re-seeded, and it
        starts fenced whatever it can reach. Otherwise it asks the peer and
        fences itself when the peer is master. Either way the operator then
        demotes and re-seeds it. When neither says so (a cold start of the whole
        pair), it starts as recorded: the operator's routing fence and
        split-brain repair cover that case.
        """
        if self.member.mode is not ServingMode.MASTER or self.config is None:
            return
        if self.config.superseded:
            self.fence.set(f"fenced at start, {_iso(time.time())}: the shard's contract says a failover superseded it")
            self.member = MemberState(role=self.member.role, fenced=True)
            log.warning("the shard's contract says a failover superseded this master: starting fenced")
            return
        if self.config.peer is None:
            return
        for _ in range(STARTUP_PEER_TRIES):
            await self._observe_peer()
            if self.peer_error is None:
                break
            await asyncio.sleep(1.0)
        if self.peer_error is None and self._peer_mode() is ServingMode.MASTER:
            self.fence.set(f"fenced at start, {_iso(time.time())}: the peer serves as master")
            self.member = MemberState(role=self.member.role, fenced=True)
            log.warning("the peer %s serves as master: starting fenced, not as a second one", self.config.peer.name)

    def _use_backend(self, backend: Backend) -> None:
        """Point the supervisor at the backend's daemon. Chosen once, at start: a change needs a new agent."""
        self.backend = backend
        if backend is Backend.CYRUS:
            conf = self.paths.conf_dir
            self.supervisor.argv = [
                str(self.cyrus_install.libexec / "master"),
                "-D",
                "-p",
                str(self.paths.base_dir / "master.pid"),
                "-M",
                str(conf / CYRUS_CONF),
                "-C",
                str(conf / IMAPD_CONF),
            ]
            env = self.cyrus_install.env()
            library = preload_path()
            if library.exists():
                env = daemon_environment(env, library, self.syslog.path)
            else:
                log.warning(
                    "%s is missing: Cyrus's own log lines are lost, and mailboxes created in the same second "
                    "by two Cyrus processes may get one id (see mailshard.agent.cyruspreload)",
                    library,
                )
            self.supervisor.env = env
            if not self.cyrus_install.has_pop3d:
                log.warning("%s is missing (package cyrus-pop3d): not serving POP3", self.cyrus_install.pop3d)

    def _listen_for_syslog(self) -> None:
        """Cyrus: bind the socket its syslog lines are sent to, before it starts (they go nowhere otherwise)."""
        if self.backend is not Backend.CYRUS or self.syslog.listening:
            return
        try:
            self.syslog.start(self.settings.run_as)
        except OSError as exc:
            log.error("cannot receive Cyrus's syslog lines at %s: %s", self.syslog.path, exc)

    def _on_restart(self) -> None:
        if self.metrics is not None:
            self.metrics.restarts.inc()

    # -- state and rendering -------------------------------------------------------------------------------------

    def _load(self) -> None:
        """(Re)read the runtime config, the doveadm password, the role and the fence."""
        try:
            if self.settings.config_problem is not None:
                raise ValueError(self.settings.config_problem)
            config = load_config(self.settings.config_path)
            if config.doveadm_password_file is not None:
                try:
                    password = config.doveadm_password_file.read_text(encoding="utf-8").strip()
                except OSError as exc:
                    raise ValueError(f"doveadm password file {config.doveadm_password_file}: {exc}") from exc
                if not password:
                    raise ValueError(f"doveadm password file {config.doveadm_password_file} is empty")
            else:
                assert config.doveadm_password is not None
                password = config.doveadm_password.get_secret_value()
        except ValueError as exc:
            if self.config_error != str(exc):
                log.error("%s; not starting the daemon, never serving as master", exc)
            self.config, self.config_error, self.doveadm_password = None, str(exc), None
        else:
            self.config, self.config_error, self.doveadm_password = config, None, password
            if config.mail_dir is not None:
                self.paths = InstancePaths(
                    conf_dir=self.paths.conf_dir,
                    base_dir=self.paths.base_dir,
                    state_dir=self.paths.state_dir,
                    mail_dir=config.mail_dir,
                )
        reading = self.role_file.read()
        if reading.error is not None:
            log.error("%s", reading.error)
        self.member = MemberState(role=reading.role, fenced=self.fence.is_set())
        self.role_error = reading.error
        if self.member.fenced:
            log.warning("fence marker %s is present: serving as fenced", self.fence.path)

    def _write_config(self) -> None:
        assert self.config is not None
        if self.backend is Backend.CYRUS:
            assert self.doveadm_password is not None
            files = render_cyrus(
                self.config,
                self.member.mode,
                paths=self.paths,
                identity=self.settings.run_as.identity,
                sync_password=self.doveadm_password,
                settings=CyrusSettings(libexec=self.cyrus_install.libexec, pop3=self.cyrus_install.has_pop3d),
            )
        else:
            files = render_dovecot(
                self.config,
                self.member.mode,
                paths=self.paths,
                identity=self.settings.run_as.identity,
                strategy=ReplicationStrategy.REPLICATOR,
                doveadm_password_from_file=self.doveadm_password,
            )
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        for directory in (self.paths.conf_dir, self.paths.base_dir, self.paths.state_dir, self.paths.mail_dir):
            directory.mkdir(parents=True, exist_ok=True)
            # Dovecot insists on a world-readable base_dir (login processes connect to its sockets).
            directory.chmod(0o755 if directory == self.paths.base_dir else 0o750)
            self.settings.run_as.own(directory)
        if self.backend is Backend.CYRUS:  # Cyrus binds its sockets in one and keeps its skiplist stamp in the other
            for name in ("socket", "db"):
                (self.paths.state_dir / name).mkdir(mode=0o750, exist_ok=True)
                self.settings.run_as.own(self.paths.state_dir / name)
        for name, content in files.items():
            path = self.paths.conf_dir / name
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(content, encoding="utf-8")
            tmp.chmod(0o600)
            self.settings.run_as.own(tmp)
            tmp.replace(path)
        log.info("rendered %s for mode %s", ", ".join(sorted(files)), self.member.mode)

    def _users_stamp(self) -> tuple[int, int] | None:
        if self.config is None:
            return None
        try:
            stat = self.config.users_file.stat()
        except OSError:
            return None
        return stat.st_mtime_ns, stat.st_size

    async def _follow_users(self) -> None:
        """Cyrus: rebuild the sasldb and provision INBOXes when the users file changed (the operator updates the
        shard's users Secret in place). Dovecot needs nothing: its passwd-file is re-read when it changes."""
        if self.backend is not Backend.CYRUS or self._users_seen == self._users_stamp():
            return
        log.info("the users file changed: rebuilding the user database")
        await self._write_users()
        self.provisioned = False

    async def _write_users(self) -> None:
        """Cyrus only: (re)build the sasldb from the users file, plus the replication admin."""
        if self.backend is not Backend.CYRUS or self.config is None or self.doveadm_password is None:
            return
        self._users_seen = self._users_stamp()
        try:
            users = sasl_users(self.config.users_file.read_text(encoding="utf-8"))
            await self.cyrus.write_sasldb(self.paths.conf_dir / SASLDB_FILE, users, {SYNC_ADMIN: self.doveadm_password})
            self.cyrus_users = frozenset(user for user, _ in users)
        except (OSError, ValueError, CyrusToolError) as exc:
            self.config_error = f"cannot build the Cyrus user database: {exc}"
            log.error("%s", self.config_error)

    # -- role changes --------------------------------------------------------------------------------------------

    async def act(self, action: Action, *, force: bool = False) -> tuple[int, dict[str, Any]]:
        """Carry out one role change; returns an HTTP status and a JSON body."""
        async with self._lock:
            self._load()
            if self.config is None:
                return 409, {"error": f"cannot {action}: {self.config_error}", "status": self.status()}
            peer_mode = None
            if action is Action.PROMOTE and self.config.peer is not None and not force:
                # Forced, the peer's mode does not matter (the operator knows it is gone or fenced); asking a
                # dead peer would only add its timeout to the failover.
                await self._observe_peer()
                peer_mode = self._peer_mode() if self.peer_error is None else None
            decision = decide_action(action, self.member, peer_mode=peer_mode, force=force)
            if not decision.allowed:
                log.warning("refused to %s: %s", action, decision.reason)
                return 409, {"error": decision.reason, "status": self.status()}
            if decision.changes:
                quick_stop = self.mode is not ServingMode.MASTER and self.backend is Backend.DOVECOT
                log.info("%s: %s -> %s", action, self.member, decision.target)
                if decision.target.mode is not ServingMode.MASTER and self.front is not None:
                    await self.front.stop()  # first: a fence cuts deliveries off before anything else
                if decision.target.fenced and not self.member.fenced:
                    self.fence.set(f"fenced by the agent API at {_iso(time.time())}")
                if decision.target.role is not None and decision.target.role is not self.member.role:
                    self.role_file.write(decision.target.role)
                if not decision.target.fenced and self.member.fenced:
                    self.fence.clear()
                self.member = decision.target
                self.role_error = None if decision.target.role is not None else self.role_error
                self._write_config()
                await self._write_users()
                self.provisioned = False
                self.tracker.reset()
                self.lag = None
                # A daemon that served no client (replica or fenced) need not finish a graceful shutdown,
                # which takes Dovecot 2.3 about a second: that second is part of every failover.
                await self.supervisor.restart(grace=QUICK_STOP_SECONDS if quick_stop else None)
                await self._wait_up(within=20)
                await self._sync_front()
                await self._provision()
                await self._observe_here()
            return 200, {"result": decision.reason, "changed": decision.changes, "status": self.status()}

    async def raise_uidnext(
        self, floors: Mapping[str, int], create: Mapping[str, NewMailbox] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """Raise each `user/mailbox`'s UIDNEXT to its floor and create the mailboxes asked for (the RaiseUidNext step).

        Only a master does it: it is the member that hands out new UIDs. Floors of
        mailboxes that do not exist here are skipped (they have no UIDs to reuse);
        floors below the current UIDNEXT change nothing. A mailbox to create (one
        the old master had and this member never got) that does not exist is
        created under the UIDVALIDITY asked for, its next UID at least the one
        asked for; one that exists under that UIDVALIDITY is only raised; one
        that exists under another is left alone, its messages being what clients
        hold now. The answer names every mailbox to create that does not have the
        UIDVALIDITY asked for in the end (`uidvalidityNotKept`): its clients will
        download it again, and the operator tells a human. Idempotent.
        """
        wanted = dict(create or {})
        async with self._lock:
            if self.member.mode is not ServingMode.MASTER or not self.supervisor.up:
                return 409, {"error": f"only a running master raises UIDNEXT (this member is {self.mode.value})"}
            await self._observe_here()  # the mailboxes as they are now, not as of the last poll
            current = {f"{state.user}/{state.mailbox}": state for state in self.mailboxes}
            raise_to = {key: floor for key, floor in floors.items() if key in current and key.partition("/")[2]}
            applied = len(raise_to)
            missing: dict[str, NewMailbox] = {}
            present: list[str] = []
            not_kept: list[dict[str, Any]] = []
            for key, new in sorted(wanted.items()):
                state = current.get(key)
                if state is None:
                    missing[key] = new
                elif state.uidvalidity == new.uidvalidity:
                    present.append(key)
                    raise_to[key] = max(raise_to.get(key, 0), new.uidnext)
                else:
                    not_kept.append(_not_kept(key, new, state.uidvalidity, "it exists here under another UIDVALIDITY"))
            failures = await self._apply_uidnext(raise_to, missing, current)
            await self._observe_here()
            after = {f"{state.user}/{state.mailbox}": state for state in self.mailboxes}
            created = []
            for key, new in missing.items():
                state = after.get(key)
                if state is not None and state.uidvalidity == new.uidvalidity:
                    created.append(key)
                elif state is not None:
                    not_kept.append(_not_kept(key, new, state.uidvalidity, "created here under a new UIDVALIDITY"))
            answer: dict[str, Any] = {
                "raised": applied,
                "skipped": len(floors) - applied,
                "created": created,
                "present": present,
                "uidvalidityNotKept": not_kept,
            }
            if not_kept:
                log.warning("UIDVALIDITY not kept: %s", "; ".join(f"{n['mailbox']} ({n['why']})" for n in not_kept))
            if failures:
                log.error("raising UIDNEXT failed for %d user(s): %s", len(failures), "; ".join(failures[:3]))
                return 500, {"error": "; ".join(failures[:5]), **answer}
            log.info("raised UIDNEXT on %d mailbox(es), created %d", len(raise_to), len(created))
            return 200, {**answer, "status": self.status()}

    async def _apply_uidnext(
        self, raise_to: Mapping[str, int], missing: Mapping[str, NewMailbox], current: Mapping[str, MailboxState]
    ) -> list[str]:
        """Create the missing mailboxes and raise the floors, user by user, four users at a time; the failures."""
        per_user: dict[str, tuple[dict[str, int], dict[str, NewMailbox]]] = {}
        for key, floor in raise_to.items():
            user, _, mailbox = key.partition("/")
            per_user.setdefault(user, ({}, {}))[0][mailbox] = floor
        for key, new in missing.items():
            user, _, mailbox = key.partition("/")
            per_user.setdefault(user, ({}, {}))[1][mailbox] = new
        limit = asyncio.Semaphore(4)

        async def one(user: str, floors_of: dict[str, int], new_of: dict[str, NewMailbox]) -> str | None:
            async with limit:
                try:
                    # INBOX first: creating any other mailbox of a user who has none creates the INBOX too,
                    # under a new UIDVALIDITY (seen on Dovecot 2.3.19).
                    for mailbox in sorted(new_of, key=lambda name: (name != "INBOX", name)):
                        await self._create_mailbox(user, mailbox, new_of[mailbox])
                    if self.backend is Backend.CYRUS:
                        for mailbox, floor in floors_of.items():
                            if floor > current[f"{user}/{mailbox}"].uidnext:
                                await self.cyrus.raise_uidnext(user, mailbox, floor)
                    elif floors_of:
                        await self.doveadm.raise_uidnext(user, floors_of)
                except (DoveadmError, CyrusToolError) as exc:
                    return f"{user}: {exc}"
            if new_of and self.backend is Backend.DOVECOT:
                with contextlib.suppress(DoveadmError):  # the replicator's next full sync carries it anyway
                    await self.doveadm.replicate(user)
            return None

        results = await asyncio.gather(*(one(user, *work) for user, work in per_user.items()))
        return [failure for failure in results if failure]

    async def _create_mailbox(self, user: str, mailbox: str, new: NewMailbox) -> None:
        if self.backend is Backend.DOVECOT:
            await self.doveadm.create_mailbox(user, mailbox, new.uidvalidity, new.uidnext)
            return
        port = self._cyrus_port()
        if port is None or self.doveadm_password is None:
            raise CyrusToolError("no IMAP port or admin password to create mailboxes with")
        admin = AdminLogin(port[0], port[1], SYNC_ADMIN, self.doveadm_password)
        await self.cyrus.create_mailbox(admin, user, mailbox, new.uidvalidity, new.uidnext)

    # -- the delivery journal (see journal.py and front.py) -------------------------------------------------------

    def _daemon_lmtp(self) -> Path:
        if self.backend is Backend.CYRUS:
            return self.paths.state_dir / CYRUS_LMTP_SOCKET
        return self.paths.base_dir / DOVECOT_LMTP_SOCKET

    async def _sync_front(self) -> None:
        """The LMTP front listens exactly while this member serves as master."""
        config = self.config
        if config is None or self.member.mode is not ServingMode.MASTER:
            if self.front is not None:
                await self.front.stop()
            return
        if self.front is None:
            self.front = JournalingFront(
                self._daemon_lmtp(),
                config.member,
                self._journal_on_peer,
                recipient_known=self._is_cyrus_user if self.backend is Backend.CYRUS else None,
                space=self._room_for,
            )
        if not self.front.listening:
            try:
                await self.front.start(config.listen_address, config.ports.lmtp)
            except OSError as exc:
                self.front_error = f"cannot listen for LMTP on {config.listen_address}:{config.ports.lmtp}: {exc}"
                log.error("%s", self.front_error)
                return
        self.front_error = None

    def _is_cyrus_user(self, recipient: str) -> bool:
        """Cyrus would autocreate an INBOX for any recipient at all: only users in the users file get mail."""
        return delivery_user(recipient) in self.cyrus_users

    async def _journal_on_peer(self, entry: JournalEntry, message: bytes) -> str | None:
        """The front's journal writer: store the entry on the peer (the replica); None once it is durable there."""
        config, session = self.config, self._session
        problem: str | None = None
        if config is None or config.peer is None or session is None:
            problem = "no peer is configured"
        else:
            url = f"http://{config.peer.host}:{config.peer.agent_port}/journal"
            headers = {
                "Authorization": f"Bearer {self.settings.token}",
                "Content-Type": "message/rfc822",
                "X-Mailshard-Journal-Entry": json.dumps(entry.to_json()),
            }
            try:
                async with session.post(
                    url, data=message, headers=headers, timeout=aiohttp.ClientTimeout(total=JOURNAL_TIMEOUT)
                ) as response:
                    if response.status != 200:
                        problem = f"{url} answered HTTP {response.status}: {(await response.text())[:200]}"
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = f"{url} failed: {exc or type(exc).__name__}"
        if self.metrics is not None:
            (self.metrics.journaled if problem is None else self.metrics.unjournaled).inc()
        return problem

    async def receive_journal(self, meta: str, message: bytes) -> tuple[int, dict[str, Any]]:
        """Store one journal entry sent by the master's front; only a replica keeps a journal."""
        try:
            entry = JournalEntry.from_json(json.loads(meta))
        except ValueError as exc:
            return 400, {"error": f"bad journal entry: {exc}"}
        if self.mode is not ServingMode.REPLICA:
            return 409, {"error": f"only a replica keeps the journal (this member is {self.mode.value})"}
        if self._room_for(len(message), 2) is not None:  # the message and its entry
            return 507, {"error": f"cannot store the journal entry: {self.volume.full or 'the volume is too full'}"}
        try:
            await asyncio.to_thread(self.journal.write, entry, message)
        except OSError as exc:
            log.error("cannot store journal entry %s: %s", entry.id, exc)
            return 507, {"error": f"cannot store the journal entry: {exc}"}
        self.journal.index(entry)
        return 200, {"stored": entry.id}

    def _prune_journal(self, master: Mapping[MailboxKey, MailboxState], in_sync: bool) -> None:
        """Drop the entries this replica is now sure to hold (see journal.py for why this is safe)."""
        if self.peer_observed_from is None or not len(self.journal):
            return
        caught_up = None if in_sync else users_caught_up(master, summary_index(self.mailboxes))
        held = prunable(self.journal.entries(), self.peer_observed_from, caught_up)
        if held:
            self.journal.remove(entry.id for entry in held)

    async def replay(self) -> tuple[int, dict[str, Any]]:
        """A failover step on the new master: deliver each journal entry to the recipients whose store lacks it.

        Presence is decided by the ``X-Mailshard-Journal`` id among the messages
        saved since shortly before the oldest entry, so a message that did
        replicate is never delivered twice; an entry is removed once every
        recipient holds it. Idempotent: a repeated call finds them all present.
        """
        async with self._lock:
            if self.member.mode is not ServingMode.MASTER or not self.supervisor.up:
                return 409, {"error": f"only a running master replays the journal (this member is {self.mode.value})"}
            entries = self.journal.entries()
            if not entries:
                return 200, {"entries": 0, "replayed": 0, "present": 0, "kept": 0}
            present, failures = await self._journal_presence(entries)
            replayed, already, more_failures = await self._deliver_missing(entries, present)
            failures += more_failures
            await self._observe_here()
            summary = {"entries": len(entries), "replayed": replayed, "present": already, "kept": len(self.journal)}
            if failures:
                self.replay_error = f"journal replay incomplete: {'; '.join(failures[:3])}"
                log.error("%s", self.replay_error)
                return 500, {"error": self.replay_error, **summary}
            self.replay_error = None
            log.info("journal replayed: %d delivered again, %d already present", replayed, already)
            return 200, summary

    async def _journal_presence(self, entries: list[JournalEntry]) -> tuple[dict[str, set[str]], list[str]]:
        """Per recipient, the journal ids its store already holds (one doveadm fetch, or IMAP session, per user)."""
        window = int(time.time() - min(entry.delivered_at for entry in entries)) + REPLAY_MARGIN_SECONDS
        # IMAP's SAVEDSINCE takes a day (the server's): one day earlier covers any time zone.
        since = (datetime.now(UTC) - timedelta(seconds=window, days=1)).date()
        port = self._cyrus_port()
        present: dict[str, set[str]] = {}
        failures: list[str] = []
        for recipient in sorted({recipient for entry in entries for recipient in entry.recipients}):
            try:
                if self.backend is Backend.CYRUS:
                    assert port is not None
                    assert self.doveadm_password is not None
                    admin = AdminLogin(port[0], port[1], SYNC_ADMIN, self.doveadm_password)
                    present[recipient] = await cyrus_journal_ids(admin, delivery_user(recipient), since)
                else:
                    present[recipient] = await self.doveadm.journal_ids(recipient, window)
            except (DoveadmError, ParseError, CyrusToolError) as exc:
                failures.append(f"{recipient}: {exc}")
        return present, failures

    async def _deliver_missing(
        self, entries: list[JournalEntry], present: dict[str, set[str]]
    ) -> tuple[int, int, list[str]]:
        """Deliver each entry to its recipients that lack it; remove the entries every recipient now holds."""
        replayed = already = 0
        done: list[str] = []
        failures: list[str] = []
        client: LmtpClient | None = None
        try:
            for entry in entries:
                if any(recipient not in present for recipient in entry.recipients):
                    continue  # could not look: keep it for the next call
                missing = [r for r in entry.recipients if entry.id not in present[r]]
                if not missing:
                    already += 1
                    done.append(entry.id)
                    continue
                if client is None:
                    hostname = self.config.member if self.config else "mailshard"
                    client = await LmtpClient.connect(self._daemon_lmtp(), hostname)
                message = await asyncio.to_thread(self.journal.read, entry.id)
                refused = {r: a for r, a in (await client.deliver(entry.sender, missing, message)).items() if not a.ok}
                if refused:
                    failures += [f"{entry.id} to {r}: {a.code} {a.text}" for r, a in refused.items()]
                    continue
                replayed += 1
                done.append(entry.id)
        except (LmtpError, OSError) as exc:
            failures.append(str(exc))
        finally:
            if client is not None:
                await client.close()
        self.journal.remove(done)
        return replayed, already, failures

    async def reseed(self) -> tuple[int, dict[str, Any]]:
        """Rejoin a demoted, fenced member as a replica, after making its store identical to the master's.

        This is how a returning old master sheds what it accepted but never
        replicated: those messages were delivered again on the new master from
        the journal (with new UIDs above the raised UIDNEXT), so keeping the old
        copies would duplicate them, and their old UIDs would collide. An
        unfenced replica is already replicating: nothing to do.
        """
        async with self._lock:
            self._load()
            config = self.config
            if config is None:
                return 409, {"error": f"cannot reseed: {self.config_error}"}
            pushed = self.backend is Backend.DOVECOT or not self._push_pending.exists()
            if self.member.mode is ServingMode.REPLICA and pushed:
                return 200, {"result": "already a replica", "changed": False, "status": self.status()}
            if self.member.mode is not ServingMode.REPLICA and (
                self.member.role is not Role.REPLICA or not self.member.fenced
            ):
                return 409, {"error": "only a demoted (role replica) and fenced member is re-seeded; demote it first"}
            if config.peer is None:
                return 409, {"error": "no peer to re-seed from"}
            if self.backend is Backend.DOVECOT:
                problem = await self._pull_all_users(f"{config.peer.host}:{config.peer.doveadm_port}")
                if problem is not None:
                    log.error("re-seed from %s failed: %s", config.peer.name, problem)
                    return 500, {"error": f"re-seed from {config.peer.name} failed: {problem}"}
                log.info("re-seeded from %s: this store now equals the master's", config.peer.name)
            elif self.member.mode is not ServingMode.REPLICA:
                await self.supervisor.stop()
                await asyncio.to_thread(self._set_aside_cyrus_store)
        if self.backend is Backend.DOVECOT:
            return await self.act(Action.UNFENCE)
        if self.member.mode is not ServingMode.REPLICA:
            code, answer = await self.act(Action.UNFENCE)
            if code != 200:
                return code, answer
        # Until the master has pushed everything, a repeated /reseed pushes again (the marker says so).
        problem = await self._pulled_from_master()
        if problem is not None:
            log.error("re-seed from %s failed: %s; the old store is kept in %s", config.peer.name, problem, self._aside)
            return 500, {"error": f"re-seed from {config.peer.name} failed: {problem}", "status": self.status()}
        self._push_pending.unlink(missing_ok=True)
        await asyncio.to_thread(shutil.rmtree, self._aside, True)
        log.info("re-seeded from %s: this store now equals the master's", config.peer.name)
        return 200, {"result": "re-seeded", "changed": True, "status": self.status()}

    @property
    def _push_pending(self) -> Path:
        """Cyrus: present from the moment the old store is set aside until the master has pushed its own."""
        return self.settings.data_dir / "reseed-push-pending"

    @property
    def _aside(self) -> Path:
        return self.settings.data_dir / "reseed-set-aside"

    def _set_aside_cyrus_store(self) -> None:
        """Move the whole Cyrus store (databases and mail) out of the way: the replica starts empty.

        Why not keep it: Cyrus's replication copies a replica's messages that
        its master lacks back to the master, so the old master's
        never-replicated copies would come back beside their journal replays,
        as duplicates (seen on 3.6.1). An empty replica gets exactly the
        master's store. The old one is removed once the master has pushed.
        """
        aside = self._aside / f"cyrus.{time.time_ns()}"
        aside.mkdir(parents=True)
        self._push_pending.write_text(str(aside) + "\n")
        for directory in (self.paths.state_dir, self.paths.mail_dir):
            if directory.exists():
                directory.rename(aside / directory.name)
        log.warning("set the old Cyrus store aside to %s: the master pushes its whole store", aside)

    async def _pulled_from_master(self) -> str | None:
        """Ask the master to push every user here (``POST /push``); None once it has."""
        config, session = self.config, self._session
        if config is None or config.peer is None or session is None:
            return "no peer to re-seed from"
        agent = PeerAgent(session, f"http://{config.peer.host}:{config.peer.agent_port}", self.settings.token)
        try:
            await agent.push_all(within=PUSH_SECONDS + 30)
        except PeerAgentError as exc:
            return str(exc)
        return None

    async def push_all(self) -> tuple[int, dict[str, Any]]:
        """A Cyrus master pushes every user, whole, to its replica: what a re-seeded (empty) replica needs.

        Rolling replication sends only what changes from now on; a replica that
        starts empty must first get everything (``sync_client -A``).
        """
        async with self._lock:
            if self.backend is not Backend.CYRUS:
                return 501, {"error": "only a Cyrus master pushes its store (Dovecot's replica pulls with dsync)"}
            if self.member.mode is not ServingMode.MASTER or not self.supervisor.up:
                return 409, {"error": f"only a running master pushes its store (this member is {self.mode.value})"}
            started = time.monotonic()
            try:
                await self.cyrus.push_all_users(within=PUSH_SECONDS)
            except CyrusToolError as exc:
                log.error("pushing every user to the replica failed: %s", exc)
                return 500, {"error": f"pushing every user to the replica failed: {exc}"}
            seconds = round(time.monotonic() - started, 3)
            log.info("pushed every user to the replica in %.1f s", seconds)
            return 200, {"pushed": True, "seconds": seconds}

    async def _pull_all_users(self, peer: str) -> str | None:
        """`doveadm backup -R` of every user, a few at a time, each retried; None when all succeeded.

        Per user, with a bound on each attempt. Measured on 2.3.19: one dsync in
        a hundred or so stalls right after a failover (both sides waiting at
        ``mailbox_delete``) and never ends. Usually a fresh attempt goes
        through, but for some stores every attempt stalls the same way (seen in
        CI: three in a row for one user). So after a stalled or failed attempt
        this member's copy of that user is set aside and the next attempt copies
        the user whole from the master. That loses nothing: this member is
        fenced, the master holds every acknowledged message (the journal was
        replayed there first), and a backup would make the copy identical to
        the master's anyway. The set-aside copy is removed once the user is
        re-seeded, and kept for a human if not.
        """
        try:
            users = await self.doveadm.users()
        except DoveadmError as exc:
            return f"cannot list the users: {exc}"
        limit = asyncio.Semaphore(RESEED_PARALLEL)

        async def one(user: str) -> str | None:
            error: DoveadmError | None = None
            set_aside: Path | None = None
            async with limit:
                for attempt in range(1, RESEED_ATTEMPTS + 1):
                    try:
                        await self.doveadm.pull_user(user, peer, within=reseed_attempt_seconds(attempt))
                    except DoveadmError as exc:
                        error = exc
                        log.warning("re-seed of %s, attempt %d of %d: %s", user, attempt, RESEED_ATTEMPTS, exc)
                        set_aside = set_aside or await asyncio.to_thread(self._set_aside_user, user)
                        continue
                    if set_aside is not None:
                        await asyncio.to_thread(shutil.rmtree, set_aside, True)
                        log.info("re-seeded %s whole from the master; removed its old copy", user)
                    return None
            return f"{user}: {error}"

        failures = [failure for failure in await asyncio.gather(*(one(user) for user in users)) if failure]
        return "; ".join(failures[:3]) if failures else None

    def _set_aside_user(self, user: str) -> Path | None:
        """Move this member's copy of one user (its home, `mail_dir/<lower-cased user>`) out of Dovecot's sight."""
        home = self.paths.mail_dir / user.lower()
        if not home.exists():
            return None
        aside = self.paths.mail_dir.parent / "reseed-set-aside" / f"{user.lower()}.{time.time_ns()}"
        aside.parent.mkdir(parents=True, exist_ok=True)
        home.rename(aside)
        log.warning("set %s's copy aside to %s: the next attempt copies the user whole", user, aside)
        return aside

    async def _wait_up(self, within: float) -> None:
        deadline = time.monotonic() + within

        # Nothing signals the pid file's appearance, so poll it briefly.
        def waiting() -> bool:  # a shutdown (see ``stop``) ends the wait: the daemon will not come up
            return time.monotonic() < deadline and not self._stopping.is_set()

        while not self.supervisor.up and waiting():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        # Cyrus's master writes its pid file before it binds its services: wait for the one port that matters.
        port = self._cyrus_port()
        while port is not None and waiting():
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(port[0], port[1])
                writer.close()
                return
            await asyncio.sleep(0.05)

    async def _provision(self) -> None:
        """Cyrus master: create the INBOX of every user in the users file that lacks one, before it is needed.

        Except an INBOX the peer was last seen holding: after a failover the peer is
        the old master, and the operator's RaiseUidNext step creates it here under
        the UIDVALIDITY it had there (created now, it would get a new one, and its
        clients would download it again). Should that step never come, ``lmtpd``
        creates it at its first delivery, as for a user added between two provisionings.
        """
        if self.provisioned or self.backend is not Backend.CYRUS or self.member.mode is not ServingMode.MASTER:
            return
        port = self._cyrus_port()
        if port is None or self.config is None or self.doveadm_password is None or not self.supervisor.up:
            return
        on_peer = {key.user for key in self.peer_mailboxes or {} if key.mailbox == "INBOX"}
        try:
            listed = [user for user, _ in sasl_users(self.config.users_file.read_text(encoding="utf-8"))]
            users = [user for user in listed if user not in on_peer]
            created = await create_inboxes(port[0], port[1], SYNC_ADMIN, self.doveadm_password, users)
        except (OSError, ValueError, CyrusToolError) as exc:
            if self.provision_error != str(exc):
                log.error("%s", exc)
            self.provision_error = str(exc)
            return
        self.provisioned, self.provision_error = True, None
        log.info("every user has an INBOX (%d created)", created)

    def _cyrus_port(self) -> tuple[str, int] | None:
        if self.backend is not Backend.CYRUS or self.config is None:
            return None
        host = self.config.listen_address
        host = "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host
        if self.member.mode is ServingMode.MASTER:
            return host, self.config.ports.imap
        if self.member.mode is ServingMode.REPLICA:
            return host, self.config.ports.doveadm
        return None

    # -- observation ---------------------------------------------------------------------------------------------

    async def _poll_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                async with self._lock:
                    await self._follow_users()
                    await self._observe_local()
                await self._observe_remote()  # outside the lock: see its docstring
                async with self._lock:
                    await self._settle_observation()
            except Exception:  # one bad poll must not end observation
                log.exception("observation failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self.settings.poll_interval)

    def _peer_mode(self) -> ServingMode | None:
        if self.peer_status is None:
            return None
        try:
            return ServingMode(str(self.peer_status.get("mode")))
        except ValueError:
            return None

    async def _observe_peer(self) -> None:
        config = self.config
        if config is None or config.peer is None or self._session is None:
            return
        agent = PeerAgent(self._session, f"http://{config.peer.host}:{config.peer.agent_port}", self.settings.token)
        try:
            status = await agent.status()
            if status.get("member") == config.member:
                # A peer address that loops back to this agent (a misconfigured host, or loopback in tests)
                # would make this member its own peer: its own role must never count as the peer's.
                raise PeerAgentError(f"the peer address {config.peer.host} reaches this member itself")
            summary = status.get("mailboxes", {}).get("summary")
            peer_mailboxes = None
            if isinstance(summary, list) and status.get("daemonUp"):
                peer_mailboxes = summary_index(MailboxState.from_json(row) for row in summary)
        except (PeerAgentError, ParseError, AttributeError) as exc:
            if self.peer_error != str(exc):
                log.error("%s", exc)
            self.peer_error = str(exc)
            return
        if self.peer_error is not None:
            log.info("peer agent reachable again")
        self.peer_status, self.peer_error = status, None
        if peer_mailboxes is not None:
            self.peer_mailboxes, self.peer_seen_at = peer_mailboxes, time.time()
            observed_from = status.get("mailboxes", {}).get("observedFromTimestamp")
            usable = isinstance(observed_from, int | float) and not isinstance(observed_from, bool)
            self.peer_observed_from = float(observed_from) if usable else None

    async def _observe_local(self) -> None:
        """This member's own store and replicator: local calls only, bounded by the daemon's own speed."""
        self._polls += 1
        if self.config is None:
            return
        self._room_for(0, 0)
        mode = self.member.mode
        up = self.supervisor.up
        if up and self.backend is Backend.CYRUS:
            await self._provision()
            started = time.time()
            try:
                self.mailboxes, self.mailbox_error = await self.cyrus.mailbox_status(), None
                self.mailboxes_from = started
            except (CyrusToolError, ParseError) as exc:
                self.mailbox_error = str(exc)
        elif up:
            started = time.time()
            try:
                self.mailboxes, self.mailbox_error = await self.doveadm.mailbox_status(), None
                self.mailboxes_from = started
            except (DoveadmError, ParseError) as exc:
                self.mailbox_error = str(exc)
            if mode is ServingMode.MASTER:  # only the master runs a replicator
                try:
                    self.replicator_users, self.replicator_error = await self.doveadm.replicator_status(), None
                except (DoveadmError, ParseError) as exc:
                    self.replicator_error = str(exc)
            else:
                self.replicator_users, self.replicator_error = (), None

    async def _observe_remote(self) -> None:
        """The peer's agent and its replication listener, over the network.

        A dead peer costs this up to the peer call's and the probe's timeouts (5 s when its address black-holes),
        so it never runs under the lock, nor inside a role change or a failover step: each of those waited that
        long in the e2e tier, one after the other (a promotion took 5 s, the UIDNEXT raise 6 s).
        """
        if self.config is None:
            return
        await self._observe_peer()
        peer, mode = self.config.peer, self.member.mode
        # Cyrus: only a master's sync client talks to the peer (a Cyrus master has no sync server to probe).
        probing = mode is ServingMode.MASTER if self.backend is Backend.CYRUS else mode is not ServingMode.FENCED
        if peer is not None and probing and self.doveadm_password is not None:
            # Every poll while the peer is unreachable (cheap, and the nudge below waits on it); otherwise
            # every PROBE_EVERY polls, since each rejected login is an error line in the peer's log.
            if self._polls % PROBE_EVERY == 1 or self.probe is None or self.probe.result is ProbeResult.UNREACHABLE:
                if self.backend is Backend.CYRUS:
                    probe = await probe_cyrus_sync(peer.host, peer.doveadm_port, SYNC_ADMIN, self.doveadm_password)
                else:
                    probe = await probe_doveadm(peer.host, peer.doveadm_port, self.doveadm_password)
                if probe.result is not ProbeResult.OK and (self.probe is None or self.probe != probe):
                    log.error("%s", probe.detail)
                self.probe = probe
        else:
            self.probe = None

    async def _settle_observation(self) -> None:
        """Lag, last sync and metrics from the latest local and remote observations."""
        if self.config is None:
            return
        mode, up = self.member.mode, self.supervisor.up
        now = time.time()
        self.observed_at = now
        self._update_lag(now, mode, up)
        ages = [user.last_success_age for user in self.replicator_users if user.last_success_age is not None]
        if ages:
            self.last_success_sync = now - min(ages)
        await self._maybe_kick(now, mode)
        self._update_metrics()

    async def _observe_here(self) -> None:
        """What an action needs to answer with: this member's store as it is now; the peer as last seen."""
        await self._observe_local()
        await self._settle_observation()

    def _update_lag(self, now: float, mode: ServingMode, up: bool) -> None:
        sides = master_and_replica(mode, self._peer_mode() if self.peer_error is None else None)
        own = summary_index(self.mailboxes)
        if sides is None or not up or self.mailbox_error is not None or self.peer_mailboxes is None:
            self.lag = None
            self.tracker.reset()
            return
        if sides == ("peer", "self") and self.peer_error is not None:
            self.lag = None  # a replica that cannot see its master cannot know what it lacks
            return
        master, replica = (own, self.peer_mailboxes) if sides[0] == "self" else (self.peer_mailboxes, own)
        self.lag = self.tracker.update(now, master, replica)
        if self.lag.in_sync:
            self.last_in_sync = now
        if sides == ("peer", "self"):
            self._prune_journal(master, self.lag.in_sync)

    async def _maybe_kick(self, now: float, mode: ServingMode) -> None:
        """Nudge the replicator when the peer is reachable again but users wait in the failed queue."""
        if mode is not ServingMode.MASTER or self.probe is None or self.probe.result is not ProbeResult.OK:
            return
        if self.backend is not Backend.DOVECOT:  # Cyrus's rolling sync_client retries on its own
            return
        stuck = any(user.failed for user in self.replicator_users)
        lag = self.lag
        behind = lag is not None and not lag.in_sync and (lag.lag_seconds is None or lag.lag_seconds > KICK_INTERVAL)
        if not (stuck or behind) or now - self._last_kick < KICK_INTERVAL:
            return
        self._last_kick = now
        try:
            await self.doveadm.replicate("*", full=behind and not stuck)
            log.info("asked the replicator to resync all users (failed users: %s, behind: %s)", stuck, behind)
        except DoveadmError as exc:
            log.error("could not nudge the replicator: %s", exc)

    def _room_for(self, incoming_bytes: int, files: int) -> str | None:
        """The volume's answer (``VolumeWatch.room_for``) for the LMTP front, the journal and each poll."""
        self.volume.path = self.paths.mail_dir  # a runtime config may move the mail elsewhere
        refused_before = self.volume.refused
        problem = self.volume.room_for(incoming_bytes, files)
        if self.metrics is not None:
            if self.volume.refused > refused_before:
                self.metrics.refused_for_space.inc()
            if self.volume.reading is not None:
                self.metrics.volume_free_bytes.set(self.volume.reading.free_bytes)
            self.metrics.volume_full.set(1 if self.volume.full else 0)
        return problem

    def _update_metrics(self) -> None:
        if self.metrics is None:
            return
        self.metrics.daemon_up.set(1 if self.supervisor.up else 0)
        self.metrics.set_mode(self.mode)
        lag = self.lag.lag_seconds if self.lag is not None else None
        self.metrics.lag.set(lag if lag is not None else math.nan)
        self.metrics.journal_entries.set(len(self.journal))
        if self.last_success_sync is not None:
            self.metrics.last_sync.set(self.last_success_sync)

    # -- reporting -----------------------------------------------------------------------------------------------

    def peer_problem(self) -> str | None:
        if self.probe is not None and self.probe.result is not ProbeResult.OK:
            return self.probe.detail
        if self.mode is ServingMode.REPLICA and self.peer_error is not None:
            return self.peer_error
        return None

    def errors(self) -> list[str]:
        found = [
            self.config_error,
            self.role_error,
            self.supervisor.last_error,
            self.mailbox_error,
            self.replicator_error,
            self.peer_error,
            self.peer_problem() if self.probe is not None else None,
            self.provision_error,
            self.front_error,
            self.replay_error,
            self.volume.full,
            self.volume.error,
            *self.journal.load_errors,
        ]
        failed = [user.username for user in self.replicator_users if user.failed]
        if failed:
            found.append(f"replicator: last sync failed for {len(failed)} user(s): {', '.join(failed[:5])}")
        if self.mode is ServingMode.MASTER and self._peer_mode() is ServingMode.MASTER and not self.peer_error:
            found.append("split brain: the peer also serves as master")
        return [error for error in dict.fromkeys(found) if error]

    def _journal_status(self) -> dict[str, Any]:
        oldest = self.journal.oldest()
        counters = self.front.counters if self.front is not None else None
        return {
            "entries": len(self.journal),
            "oldestAgeSeconds": None if oldest is None else round(max(0.0, time.time() - oldest), 3),
            "frontListening": self.front is not None and self.front.listening,
            "deliveries": counters.deliveries if counters else 0,
            "journaled": counters.journaled if counters else 0,
            "unjournaled": counters.unjournaled if counters else 0,
            "lastJournalError": counters.last_journal_error if counters else None,
        }

    def status(self) -> dict[str, Any]:
        config = self.config
        mode = self.mode
        up = self.supervisor.up
        failed = [user.username for user in self.replicator_users if user.failed]
        pending = [user.username for user in self.replicator_users if user.pending]
        state = replication_state(
            mode=mode,
            have_peer_state=self.lag is not None,
            in_sync=self.lag is not None and self.lag.in_sync,
            peer_problem=self.peer_problem(),
            failed_users=len(failed),
            volume_full=self.volume.full is not None,
        )
        if config is None:
            state = ReplicationState.OFF
        lag_seconds = None if self.lag is None else self.lag.lag_seconds
        return {
            "shard": config.shard if config else None,
            "member": config.member if config else None,
            "backend": config.backend.value if config else None,
            "role": self.member.role.value if self.member.role is not None else None,
            "fenced": self.member.fenced,
            "mode": mode.value,
            "readyAsMaster": ready_as_master(mode=mode, daemon_up=up, config_error=self.config_error)
            and (self.provisioned or self.backend is not Backend.CYRUS),
            "daemonUp": up,
            "daemon": {
                "pid": self.supervisor.pid,
                "restarts": self.supervisor.restarts,
                "lastExit": self.supervisor.last_exit,
                "error": self.supervisor.last_error,
            },
            "configError": self.config_error,
            "roleError": self.role_error,
            "replication": {
                "strategy": "cyrus-rolling" if self.backend is Backend.CYRUS else ReplicationStrategy.REPLICATOR.value,
                "state": state.value,
                "lagSeconds": None if lag_seconds is None else round(lag_seconds, 3),
                "lagDefinition": LAG_DEFINITION,
                "behindMailboxes": None if self.lag is None else self.lag.behind_mailboxes,
                "divergedMailboxes": None if self.lag is None else self.lag.diverged_mailboxes,
                "lastSuccessfulSync": _iso(self.last_success_sync),
                "lastSuccessfulSyncTimestamp": self.last_success_sync,
                "lastInSync": _iso(self.last_in_sync),
                "pendingUsers": len(pending),
                "failedUsers": failed,
                "peerDoveadm": None if self.probe is None else self.probe.result.value,
                "peerAgent": None if config is None or config.peer is None else ("error" if self.peer_error else "ok"),
                "peerMode": None if self.peer_error else (self._peer_mode() or None),
                "peerSeenAt": _iso(self.peer_seen_at),
            },
            "mailboxes": {
                "count": len(self.mailboxes),
                "users": len({state.user for state in self.mailboxes}),
                "summary": [state.to_json() for state in self.mailboxes],
                "observedFromTimestamp": self.mailboxes_from,
            },
            "journal": self._journal_status(),
            "volume": self.volume.to_json(),
            "observedAt": _iso(self.observed_at),
            "errors": self.errors(),
        }
