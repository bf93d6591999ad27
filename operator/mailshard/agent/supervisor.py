"""Starts, watches and stops one foreground daemon process (``dovecot -F`` or Cyrus ``master -D``).

Why this module exists: in a pod the agent is PID 1's only child that matters,
so it must do what an init would: start the daemon in its own process group,
forward its output to our stdout, restart it with exponential backoff when it
dies, say clearly when the binary is missing, and on shutdown stop it with
SIGTERM, then SIGKILL the whole group if it lingers, so no child survives.
Shutdown is final (``close``): a role change still in flight when SIGTERM
came cannot start the daemon again behind the agent's back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mailshard.agent.identity import RunAs

log = logging.getLogger("mailshard.agent.supervisor")
daemon_log = logging.getLogger("mailshard.agent.daemon")

PID_FILE_GRACE = 10.0
"""Seconds a daemon may run without its pid file naming it before it counts as up anyway (see
`DaemonSupervisor.up`): Dovecot and Cyrus write theirs within a second of starting, and die when they cannot set
up their listeners."""


class DaemonSupervisor:
    def __init__(
        self,
        argv: Sequence[str],
        *,
        run_as: RunAs,
        pid_file: Path,
        initial_backoff: float = 0.5,
        max_backoff: float = 30.0,
        stop_timeout: float = 15.0,
        min_uptime: float = 0.5,
        on_restart: Callable[[], None] | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.argv = list(argv)
        self.env = None if env is None else dict(env)
        self.run_as = run_as
        self.pid_file = pid_file
        self.initial_backoff = initial_backoff
        self.max_backoff = max_backoff
        self.stop_timeout = stop_timeout
        self.min_uptime = min_uptime
        self._spawned_at = 0.0
        self.on_restart = on_restart
        self.restarts = 0
        self.last_error: str | None = None
        self.last_exit: int | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._closed = False

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.returncode is None else None

    @property
    def up(self) -> bool:
        """The process runs and has written its pid file (Dovecot does so once its listeners are set up).

        A daemon that has run `PID_FILE_GRACE` seconds while the file is gone or names another process is up
        all the same, and the file is written again: another incarnation of this pod on the same volume took
        it. That happens when a pod is force-deleted (grace period 0): the StatefulSet starts its successor at
        once, while the kubelet is still stopping the old containers, whose agent removes the "stale" file or
        whose daemon writes its own (seen in the e2e tier: a Cyrus master that ran for minutes, reported down,
        its pod never ready).
        """
        pid = self.pid
        if pid is None:
            return False
        try:
            named: int | None = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            named = None
        if named == pid:
            return True
        if time.monotonic() - self._spawned_at < PID_FILE_GRACE:
            return False
        log.warning(
            "the pid file %s names %s, not our daemon (pid %d, running for %.0fs): another incarnation of this "
            "pod took it; writing it again",
            self.pid_file,
            "no process" if named is None else f"pid {named}",
            pid,
            time.monotonic() - self._spawned_at,
        )
        try:
            self.pid_file.write_text(f"{pid}\n")
        except OSError as exc:
            log.warning("cannot write the pid file %s: %s", self.pid_file, exc)
        return True

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    def start(self) -> None:
        if self.running or self._closed:
            return
        self._stopping = asyncio.Event()
        self._task = asyncio.create_task(self._run(), name="daemon-supervisor")

    async def stop(self, *, grace: float | None = None) -> None:
        """SIGTERM, then SIGKILL of the whole group after `grace` seconds (default `stop_timeout`)."""
        self._stopping.set()
        await self._terminate(self.stop_timeout if grace is None else grace)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def close(self) -> None:
        """Stop for good: nothing starts the daemon again (the agent is shutting down)."""
        self._closed = True
        await self.stop()

    async def restart(self, *, grace: float | None = None) -> None:
        await self.stop(grace=grace)
        self.start()

    async def _terminate(self, grace: float) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        # Dovecot 2.3 stopped within a few ms of starting hangs 5 s in shutdown (its replicator waits for a
        # stats handshake that never comes). Let a fresh daemon settle first; this costs nothing otherwise.
        settle = self.min_uptime - (time.monotonic() - self._spawned_at)
        if settle > 0:
            await asyncio.sleep(settle)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            if grace >= self.stop_timeout:
                log.warning("daemon pid %d ignored SIGTERM for %.0fs; killing its group", proc.pid, grace)
        # Whatever is left in the group (the daemon's children) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()

    def _kill_stale(self) -> None:
        """Before a start: end a daemon a crashed agent left, and remove the pid file of any earlier run.

        The pid file lives on the mail volume, so it outlives the pod. In a new pod (a new pid namespace) the
        pid it names may belong to an unrelated process, even one of the agent's own threads, and Dovecot 2.3
        refuses to start while that pid exists ("Dovecot is already running with PID 8"), for ever. Nothing of
        ours runs when the supervisor starts the daemon, so whatever the file names is stale.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            pid = None
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if pid is not None else []
        except OSError:
            cmdline = []
        if pid is not None and self.argv[-1].encode() in cmdline:
            log.warning("stopping a stale daemon (pid %d) left by a previous agent", pid)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        elif pid is not None:
            log.info("removing the stale pid file %s (pid %d is not our daemon)", self.pid_file, pid)
        try:
            self.pid_file.unlink(missing_ok=True)
        except OSError as exc:  # the daemon's own start then says what is wrong
            log.warning("cannot remove the stale pid file %s: %s", self.pid_file, exc)

    async def _forward(self, stream: asyncio.StreamReader) -> None:
        while line := await stream.readline():
            daemon_log.info("%s", line.decode(errors="replace").rstrip())

    async def _run(self) -> None:
        backoff = self.initial_backoff
        first = True
        while not self._stopping.is_set():
            if not first:
                self.restarts += 1
                if self.on_restart is not None:
                    self.on_restart()
            first = False
            self._kill_stale()
            started = self._spawned_at = time.monotonic()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.argv,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,
                    env=self.env,
                    **self.run_as.spawn_kwargs(),  # type: ignore[arg-type]
                )
            except (FileNotFoundError, PermissionError) as exc:
                self.last_error = f"cannot start {self.argv[0]!r}: {exc.strerror or exc}"
                log.error("%s; retrying in %.1fs", self.last_error, backoff)
            else:
                self.last_error = None
                log.info("started %s (pid %d)", " ".join(self.argv), self._proc.pid)
                if self._stopping.is_set():  # stop() ran while we were spawning
                    with contextlib.suppress(ProcessLookupError):
                        self._proc.send_signal(signal.SIGTERM)
                assert self._proc.stdout is not None
                forward = asyncio.create_task(self._forward(self._proc.stdout))
                code = await self._proc.wait()
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self._proc.pid, signal.SIGKILL)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(forward, 2)
                self.last_exit = code
                if self._stopping.is_set():
                    log.info("daemon stopped (exit %d)", code)
                    return
                self.last_error = f"daemon exited unexpectedly with status {code}"
                if time.monotonic() - started > 60:
                    backoff = self.initial_backoff
                log.error("%s; restarting in %.1fs", self.last_error, backoff)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), backoff)
            backoff = min(backoff * 2, self.max_backoff)
