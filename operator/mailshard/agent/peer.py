"""Talks to the other member of the pair: its doveadm server and its agent.

Why this module exists: two checks that only the network can answer. The
doveadm probe logs in to the peer's doveadm server exactly as dsync does (the
doveadm protocol's ``PLAIN`` handshake with ``doveadm_password``), so a wrong
shared secret or an unreachable peer shows up as a named error in ``/status``
instead of only as failed syncs in a log. The agent client reads the peer's
``/status`` to compare mailbox states for lag.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import enum
from dataclasses import dataclass
from typing import Any

import aiohttp


class ProbeResult(enum.StrEnum):
    OK = "ok"
    AUTH_FAILED = "auth-failed"
    UNREACHABLE = "unreachable"
    PROTOCOL_ERROR = "protocol-error"


@dataclass(frozen=True)
class Probe:
    result: ProbeResult
    detail: str


async def probe_doveadm(host: str, port: int, password: str, *, wait_seconds: float = 3.0) -> Probe:
    """Authenticate to a doveadm server and disconnect without running any command."""
    where = f"{host}:{port}"
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait_seconds)
    except (OSError, TimeoutError) as exc:
        return Probe(ProbeResult.UNREACHABLE, f"doveadm server {where} unreachable: {exc or type(exc).__name__}")
    try:
        credentials = base64.b64encode(b"\0doveadm\0" + password.encode()).decode()
        writer.write(f"VERSION\tdoveadm-server\t1\t0\nPLAIN\t{credentials}\n".encode())
        await writer.drain()
        greeting = await asyncio.wait_for(reader.readline(), wait_seconds)
        if greeting == b"+\n":
            return Probe(ProbeResult.OK, f"doveadm server {where} accepts us without a password")
        if greeting != b"-\n":
            return Probe(ProbeResult.PROTOCOL_ERROR, f"doveadm server {where} greeted with {greeting[:40]!r}")
        answer = await asyncio.wait_for(reader.readline(), wait_seconds)
    except (OSError, TimeoutError) as exc:
        return Probe(ProbeResult.UNREACHABLE, f"doveadm server {where}: {exc or type(exc).__name__}")
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
    if answer == b"+\n":
        return Probe(ProbeResult.OK, f"doveadm server {where} accepted our doveadm password")
    if answer == b"-\n":
        return Probe(
            ProbeResult.AUTH_FAILED,
            f"doveadm server {where} rejected our doveadm password: the shared replication secret differs",
        )
    return Probe(ProbeResult.PROTOCOL_ERROR, f"doveadm server {where} answered {answer[:40]!r}")


class PeerAgentError(RuntimeError):
    pass


class PeerAgent:
    """The peer's agent API, with the token both members share."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str, *, timeout: float = 2.0) -> None:
        self.session = session
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def status(self) -> dict[str, Any]:
        url = f"{self.base_url}/status"
        try:
            async with self.session.get(
                url, headers={"Authorization": f"Bearer {self.token}"}, timeout=self.timeout
            ) as response:
                if response.status == 401:
                    raise PeerAgentError(f"peer agent {url} rejected our token (401)")
                if response.status != 200:
                    raise PeerAgentError(f"peer agent {url} answered HTTP {response.status}")
                data = await response.json()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise PeerAgentError(f"peer agent {url} unreachable: {exc or type(exc).__name__}") from exc
        if not isinstance(data, dict):
            raise PeerAgentError(f"peer agent {url} sent a non-object status")
        return data

    async def push_all(self, *, within: float) -> dict[str, Any]:
        """Ask the peer, a Cyrus master, to push every user to its replica (``POST /push``); its answer."""
        url = f"{self.base_url}/push"
        try:
            async with self.session.post(
                url, headers={"Authorization": f"Bearer {self.token}"}, timeout=aiohttp.ClientTimeout(total=within)
            ) as response:
                data = await response.json(content_type=None)
                if response.status != 200:
                    raise PeerAgentError(f"peer agent {url} answered HTTP {response.status}: {data}")
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PeerAgentError(f"peer agent {url} failed: {exc or type(exc).__name__}") from exc
        if not isinstance(data, dict):
            raise PeerAgentError(f"peer agent {url} sent a non-object answer")
        return data
