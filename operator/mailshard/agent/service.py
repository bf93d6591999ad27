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
named errors in ``/status`` and in the log, and never change the role.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
from pydantic import ValidationError

from mailshard.agent.cyrustools import CyrusInstall, CyrusToolError, CyrusTools, create_inboxes, probe_sync_port
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
from mailshard.agent.identity import RunAs
from mailshard.agent.lag import LagReading, LagTracker
from mailshard.agent.metrics import AgentMetrics
from mailshard.agent.observe import MailboxKey, MailboxState, ParseError, ReplicatorUser, summary_index
from mailshard.agent.peer import PeerAgent, PeerAgentError, Probe, ProbeResult, probe_doveadm
from mailshard.agent.state import FenceMarker, RoleFile
from mailshard.agent.supervisor import DaemonSupervisor
from mailshard.backends import (
    Backend,
    InstancePaths,
    MemberRuntimeConfig,
    ReplicationStrategy,
    ServingMode,
    render_dovecot,
)
from mailshard.backends.cyrus import (
    CYRUS_CONF,
    IMAPD_CONF,
    SASLDB_FILE,
    SYNC_ADMIN,
    CyrusSettings,
    render_cyrus,
    sasl_users,
)
from mailshard.backends.dovecot import CONF_FILE

log = logging.getLogger("mailshard.agent")

KICK_INTERVAL = 5.0
"""Seconds between two nudges of the replicator (``doveadm replicator replicate``)."""
PROBE_EVERY = 5
LAG_DEFINITION = (
    "age of the oldest change the replica lacks, from when it was first observed on the master "
    "(UIDNEXT per mailbox, plus message and unseen counts); a lower bound, resolution = poll interval"
)
"""Probe the peer's doveadm server every this many polls."""


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
        problems = "; ".join(
            f"{'.'.join(str(part) for part in error['loc']) or '<root>'}: {error['msg']}" for error in exc.errors()
        )
        raise ValueError(f"runtime config {path} is invalid: {problems}") from exc


class Agent:
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
        self.provisioned = False
        """Cyrus: every user's INBOX exists on this master (see ``create_inboxes``). Reset by every role change."""
        self.provision_error: str | None = None
        self.tracker = LagTracker()
        self._lock = asyncio.Lock()
        self._stopping = asyncio.Event()
        self._poller: asyncio.Task[None] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._polls = 0
        self._last_kick = 0.0
        self.started_at = time.time()
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

    @property
    def mode(self) -> ServingMode:
        """What the member serves: fenced whenever there is no valid config to serve with."""
        return ServingMode.FENCED if self.config is None else self.member.mode

    # -- lifecycle -----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._session = aiohttp.ClientSession()
        self._load()
        if self.config is not None:
            self.metrics = AgentMetrics(self.config.shard, self.config.member)
            self._use_backend(self.config.backend)
            self._write_config()
            await self._write_users()
            self.supervisor.start()
        else:
            self.metrics = AgentMetrics("unknown", "unknown")
        self._poller = asyncio.create_task(self._poll_loop(), name="agent-poller")

    async def stop(self) -> None:
        self._stopping.set()
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        await self.supervisor.stop()
        if self._session is not None:
            await self._session.close()

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
            self.supervisor.env = self.cyrus_install.env()

    def _on_restart(self) -> None:
        if self.metrics is not None:
            self.metrics.restarts.inc()

    # -- state and rendering -------------------------------------------------------------------------------------

    def _load(self) -> None:
        """(Re)read the runtime config, the doveadm password, the role and the fence."""
        try:
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
                settings=CyrusSettings(libexec=self.cyrus_install.libexec),
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
        if self.backend is Backend.CYRUS:  # Cyrus binds its idle and notify sockets here but never creates it
            (self.paths.state_dir / "socket").mkdir(mode=0o750, exist_ok=True)
            self.settings.run_as.own(self.paths.state_dir / "socket")
        for name, content in files.items():
            path = self.paths.conf_dir / name
            tmp = path.with_name(f".{name}.tmp")
            tmp.write_text(content, encoding="utf-8")
            tmp.chmod(0o600)
            self.settings.run_as.own(tmp)
            tmp.replace(path)
        log.info("rendered %s for mode %s", ", ".join(sorted(files)), self.member.mode)

    async def _write_users(self) -> None:
        """Cyrus only: (re)build the sasldb from the users file, plus the replication admin."""
        if self.backend is not Backend.CYRUS or self.config is None or self.doveadm_password is None:
            return
        try:
            users = sasl_users(self.config.users_file.read_text(encoding="utf-8"))
            await self.cyrus.write_sasldb(self.paths.conf_dir / SASLDB_FILE, users, {SYNC_ADMIN: self.doveadm_password})
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
            if action is Action.PROMOTE and self.config.peer is not None:
                await self._observe_peer()
                peer_mode = self._peer_mode() if self.peer_error is None else None
            decision = decide_action(action, self.member, peer_mode=peer_mode, force=force)
            if not decision.allowed:
                log.warning("refused to %s: %s", action, decision.reason)
                return 409, {"error": decision.reason, "status": self.status()}
            if decision.changes:
                log.info("%s: %s -> %s", action, self.member, decision.target)
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
                await self.supervisor.restart()
                await self._wait_up(within=20)
                await self._provision()
                await self._observe()
            return 200, {"result": decision.reason, "changed": decision.changes, "status": self.status()}

    async def raise_uidnext(self, floors: dict[str, int]) -> tuple[int, dict[str, Any]]:
        """Raise UIDNEXT of each `user/mailbox` to at least its floor (a failover's RaiseUidNext step).

        Only a master does it: it is the member that hands out new UIDs. Mailboxes
        that do not exist here are skipped (they have no UIDs to reuse); floors below
        the current UIDNEXT change nothing, so the call is idempotent.
        """
        async with self._lock:
            if self.member.mode is not ServingMode.MASTER or not self.supervisor.up:
                return 409, {"error": f"only a running master raises UIDNEXT (this member is {self.mode.value})"}
            if self.backend is Backend.CYRUS:
                return 501, {"error": "raising UIDNEXT is not implemented for Cyrus", "raised": 0}
            await self._observe()  # the mailboxes as they are now, not as of the last poll
            existing = {f"{state.user}/{state.mailbox}" for state in self.mailboxes}
            per_user: dict[str, dict[str, int]] = {}
            for key, floor in floors.items():
                user, _, mailbox = key.partition("/")
                if key in existing and mailbox:
                    per_user.setdefault(user, {})[mailbox] = floor
            limit = asyncio.Semaphore(4)

            async def one(user: str, mailboxes: dict[str, int]) -> str | None:
                async with limit:
                    try:
                        await self.doveadm.raise_uidnext(user, mailboxes)
                    except DoveadmError as exc:
                        return f"{user}: {exc}"
                return None

            failures = [f for f in await asyncio.gather(*(one(u, m) for u, m in per_user.items())) if f]
            await self._observe()
            raised = sum(len(m) for m in per_user.values())
            if failures:
                log.error("raising UIDNEXT failed for %d user(s): %s", len(failures), "; ".join(failures[:3]))
                return 500, {"error": "; ".join(failures[:5]), "raised": raised - len(failures)}
            log.info("raised UIDNEXT on %d mailbox(es) of %d user(s)", raised, len(per_user))
            return 200, {"raised": raised, "skipped": len(floors) - raised, "status": self.status()}

    async def _wait_up(self, within: float) -> None:
        deadline = time.monotonic() + within
        # Nothing signals the pid file's appearance, so poll it briefly.
        while not self.supervisor.up and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.05)
        # Cyrus's master writes its pid file before it binds its services: wait for the one port that matters.
        port = self._cyrus_port()
        while port is not None and time.monotonic() < deadline:
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(port[0], port[1])
                writer.close()
                return
            await asyncio.sleep(0.05)

    async def _provision(self) -> None:
        """Cyrus master: create the INBOX of every user in the users file that lacks one, before it is needed."""
        if self.provisioned or self.backend is not Backend.CYRUS or self.member.mode is not ServingMode.MASTER:
            return
        port = self._cyrus_port()
        if port is None or self.config is None or self.doveadm_password is None or not self.supervisor.up:
            return
        try:
            users = [user for user, _ in sasl_users(self.config.users_file.read_text(encoding="utf-8"))]
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
                    await self._observe()
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

    async def _observe(self) -> None:
        self._polls += 1
        if self.config is None:
            return
        mode = self.member.mode
        up = self.supervisor.up
        if up and self.backend is Backend.CYRUS:
            await self._provision()
            try:
                self.mailboxes, self.mailbox_error = await self.cyrus.mailbox_status(), None
            except (CyrusToolError, ParseError) as exc:
                self.mailbox_error = str(exc)
        elif up:
            try:
                self.mailboxes, self.mailbox_error = await self.doveadm.mailbox_status(), None
            except (DoveadmError, ParseError) as exc:
                self.mailbox_error = str(exc)
            if mode is ServingMode.MASTER:  # only the master runs a replicator
                try:
                    self.replicator_users, self.replicator_error = await self.doveadm.replicator_status(), None
                except (DoveadmError, ParseError) as exc:
                    self.replicator_error = str(exc)
            else:
                self.replicator_users, self.replicator_error = (), None
        await self._observe_peer()
        peer = self.config.peer
        # Cyrus: only a master's sync client talks to the peer (a Cyrus master has no sync server to probe).
        probing = mode is ServingMode.MASTER if self.backend is Backend.CYRUS else mode is not ServingMode.FENCED
        if peer is not None and probing and self.doveadm_password is not None:
            # Every poll while the peer is unreachable (cheap, and the nudge below waits on it); otherwise
            # every PROBE_EVERY polls, since each rejected login is an error line in the peer's log.
            if self._polls % PROBE_EVERY == 1 or self.probe is None or self.probe.result is ProbeResult.UNREACHABLE:
                if self.backend is Backend.CYRUS:
                    probe = await probe_sync_port(peer.host, peer.doveadm_port)
                else:
                    probe = await probe_doveadm(peer.host, peer.doveadm_port, self.doveadm_password)
                if probe.result is not ProbeResult.OK and (self.probe is None or self.probe != probe):
                    log.error("%s", probe.detail)
                self.probe = probe
        else:
            self.probe = None
        now = time.time()
        self.observed_at = now
        self._update_lag(now, mode, up)
        ages = [user.last_success_age for user in self.replicator_users if user.last_success_age is not None]
        if ages:
            self.last_success_sync = now - min(ages)
        await self._maybe_kick(now, mode)
        self._update_metrics()

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

    async def _maybe_kick(self, now: float, mode: ServingMode) -> None:
        """Nudge the replicator when the peer is reachable again but users wait in the failed queue."""
        if mode is not ServingMode.MASTER or self.probe is None or self.probe.result is not ProbeResult.OK:
            return
        if self.backend is not Backend.DOVECOT:  # Cyrus's rolling sync_client retries on its own
            return
        stuck = any(user.failed for user in self.replicator_users)
        behind = self.lag is not None and not self.lag.in_sync and self.lag.lag_seconds > KICK_INTERVAL
        if not (stuck or behind) or now - self._last_kick < KICK_INTERVAL:
            return
        self._last_kick = now
        try:
            await self.doveadm.replicate("*", full=behind and not stuck)
            log.info("asked the replicator to resync all users (failed users: %s, behind: %s)", stuck, behind)
        except DoveadmError as exc:
            log.error("could not nudge the replicator: %s", exc)

    def _update_metrics(self) -> None:
        if self.metrics is None:
            return
        self.metrics.daemon_up.set(1 if self.supervisor.up else 0)
        self.metrics.set_mode(self.mode)
        self.metrics.lag.set(self.lag.lag_seconds if self.lag is not None else math.nan)
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
        ]
        failed = [user.username for user in self.replicator_users if user.failed]
        if failed:
            found.append(f"replicator: last sync failed for {len(failed)} user(s): {', '.join(failed[:5])}")
        if self.mode is ServingMode.MASTER and self._peer_mode() is ServingMode.MASTER and not self.peer_error:
            found.append("split brain: the peer also serves as master")
        return [error for error in dict.fromkeys(found) if error]

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
        )
        if config is None:
            state = ReplicationState.OFF
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
                "lagSeconds": None if self.lag is None else round(self.lag.lag_seconds, 3),
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
            },
            "observedAt": _iso(self.observed_at),
            "errors": self.errors(),
        }
